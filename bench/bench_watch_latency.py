#!/usr/bin/env python3
"""Benchmark: in `reconcile watch` on a local checkout, how long from `git commit` to the first command
written to the store. Target: under 1 s.

A real `reconcile watch` process watches a real Git config repo; a file store holds a fleet of registered
hosts whose in-process agents answer every command, so each commit is a complete rollout. The resync
interval is set to an hour, so every pass measured here was triggered by the commit itself.

Prints `name: value unit` lines:
    watch_commit_to_command_median: ... s
    watch_commit_to_command_p90: ... s
    watch_commit_to_command_max: ... s
    watch_commit_to_converged_median: ... s
Usage: .venv/bin/python bench/bench_watch_latency.py [--commits 20] [--hosts 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.keys import command_key, group_state_key  # noqa: E402
from contract.models import GroupState, HostCommand  # noqa: E402
from contract.store import open_store  # noqa: E402
from tests.reconciler.fleet import APPLICATION, Config, ScriptedAgents, group_manifest, local_revision  # noqa: E402
from tests.reconciler.procs import Reconciler, wait_for  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=20)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    store_url = f"file://{workdir / 'store'}"
    store = open_store(store_url)
    config = Config(workdir / "config")
    config.repo.write("manifests/application.yaml", APPLICATION)
    config.repo.commit("application only")
    agents = ScriptedAgents(store, [f"host-{i:03}" for i in range(args.hosts)])
    agents.register()
    stop = threading.Event()

    def answer() -> None:
        while not stop.wait(0.02):
            agents.answer()

    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    env = {
        "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "50ms",
        "FLEETSHIFT_RECONCILE_RESYNC_INTERVAL": "1h",
        "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "1h",
        "FLEETSHIFT_LOGGING_LEVEL": "warning",
    }
    watcher = Reconciler([*config.args(), "--store", store_url, "--log-level", "info", "watch"],
                         workdir / "watch.log", env)
    to_command: list[float] = []
    to_converged: list[float] = []
    try:
        watcher.wait_event("lease.acquired")
        time.sleep(0.6)  # let the ref watcher settle before the first timed commit
        probe = agents.hosts[0]
        for version in range(1, args.commits + 1):
            wanted = f"bundles/v{version}.zip"
            committed = time.monotonic()
            config.set_group(group_manifest(revision=local_revision(version),
                                            config="CodeDeployDefault.AllAtOnce"), message=f"v{version}")

            def command_for_version(host: str = probe, revision: str = wanted) -> bool:
                stored = store.get(command_key(host))
                return stored is not None and HostCommand.model_validate_json(stored.data).revision.short() == revision

            wait_for(command_for_version, 10, f"the command for {wanted}", every=0.002)
            to_command.append(time.monotonic() - committed)

            def converged(revision: str = wanted) -> bool:
                stored = store.get(group_state_key("hello", "web"))
                if stored is None:
                    return False
                state = GroupState.model_validate_json(stored.data)
                return state.effective_revision is not None and state.effective_revision.short() == revision

            wait_for(converged, 20, f"{wanted} to converge", every=0.005)
            to_converged.append(time.monotonic() - committed)
        watcher.signal(signal.SIGTERM)
        watcher.wait(timeout=10)
    finally:
        stop.set()
        watcher.stop()
        if not os.environ.get("KEEP_BENCH"):
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"watch_commit_to_command_median: {statistics.median(to_command):.3f} s")
    print(f"watch_commit_to_command_p90: {percentile(to_command, 0.9):.3f} s")
    print(f"watch_commit_to_command_max: {max(to_command):.3f} s")
    print(f"watch_commit_to_converged_median: {statistics.median(to_converged):.3f} s ({args.hosts} hosts, "
          f"AllAtOnce, in-process agents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
