"""Overhead of a no-op deployment: command start to success, beyond the hooks' own run time.

A directory bundle of 100 small files installed to one folder, with trivial hooks (ApplicationStop,
BeforeInstall, AfterInstall, ApplicationStart, ValidateService each run `exit 0`), deployed repeatedly into
one deployment group through `LifecycleRunner.run`, so every run also removes the previous revision's 100
files and runs the previous revision's ApplicationStop, as in steady state. The hooks' own run time is
measured by starting the same five scripts directly with `subprocess.run`. Target: overhead under 150 ms
(issue 3).

    .venv/bin/python bench/bench_agent_noop.py [--runs 20] [--dir DIR]

Most of the overhead is creating ~200 files (the unpacked copy and the installed copy); `--dir /dev/shm`
shows the engine's own share when the disk is busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.lifecycle.runner import LifecycleRunner, RunnerSettings
from contract.logs import configure_logging
from contract.vocabulary import DEFAULT_EVENTS
from contract.wire import HostCommand, LocalLocation, Revision

HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")


def make_bundle(root: Path) -> Path:
    bundle = root / "bundle"
    (bundle / "app").mkdir(parents=True)
    for index in range(100):
        (bundle / "app" / f"file{index:03d}.txt").write_text(f"content {index}\n" * 10)
    (bundle / "scripts").mkdir()
    script = bundle / "scripts" / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    hooks = "".join(f"  {event}:\n    - location: scripts/noop.sh\n      timeout: 30\n" for event in HOOKS)
    (bundle / "appspec.yml").write_text(
        f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /srv/app\nhooks:\n{hooks}"
    )
    return bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dir", default=None, help="scratch folder (default: the system temp folder)")
    options = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-noop-", dir=options.dir) as scratch_text:
        scratch = Path(scratch_text)
        bundle = make_bundle(scratch)
        runner = LifecycleRunner(RunnerSettings(root_dir=scratch / "root", host_root=scratch / "host"))
        revision = Revision(local=LocalLocation(path=str(bundle), bundle_type="directory"))
        totals = []
        for run in range(options.runs + 1):
            command = HostCommand(
                host_id="bench", generation=run + 1, deployment_id=f"d-BENCH{run:04d}", application="bench",
                deployment_group="bench", deployment_group_id="dg-bench", revision=revision,
                events=list(DEFAULT_EVENTS), created_at=datetime.now(UTC),
            )
            started = time.perf_counter()
            outcome = runner.run(command)
            elapsed = time.perf_counter() - started
            if outcome.status != "Succeeded":
                print(f"deployment failed: {outcome.message}", file=sys.stderr)
                return 1
            if run:  # the first run has no previous revision to stop or clean up
                totals.append(elapsed)
        script = str(bundle / "scripts" / "noop.sh")
        direct = []
        for _ in range(options.runs):
            started = time.perf_counter()
            for _hook in HOOKS:
                subprocess.run([script], cwd=bundle, env=dict(os.environ), stdin=subprocess.DEVNULL,
                               capture_output=True, check=True)
            direct.append(time.perf_counter() - started)
        total = statistics.median(totals)
        hooks = statistics.median(direct)
        print(f"noop_deploy_total_median: {total * 1000:.1f} ms")
        print(f"noop_deploy_hooks_alone_median: {hooks * 1000:.1f} ms")
        print(f"noop_deploy_overhead_median: {(total - hooks) * 1000:.1f} ms")
        print(f"noop_deploy_total_p90: {statistics.quantiles(totals, n=10)[-1] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
