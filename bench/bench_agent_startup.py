"""What starting an agent costs: `deploy-agent --help` as a whole process, and an idle `deploy-agent run`'s memory.

- `agent_help_best` / `_median`: wall time of `deploy-agent --help` (the installed console script, a fresh
  process each time), best and median of `--runs`, next to a bare `python -c pass` of the same interpreter.
  Issue 18's target: under 0.15 s.
- `agent_idle_rss_file` / `_s3`: resident memory (VmRSS, with its anonymous and file-backed parts) of a real
  `deploy-agent run` once it has registered and gone idle, on a file store and on an S3 store (a moto server in
  its own process). Issue 18's target: under 30 MiB.
- `agent_idle_rss_<store>_after_deployment`: the same agent once it has run one deployment (a directory bundle of
  20 files and one hook, installed under its scratch folder) and gone idle again: what a host of a real fleet
  runs between deployments, with the install engine, the hook runner and their modules loaded.

    .venv/bin/python bench/bench_agent_startup.py [--runs 20] [--idle-seconds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_startup import timed
from bench_store_status import moto_server

from contract.keys import command_key, status_key
from contract.store import open_store
from contract.vocabulary import DEFAULT_EVENTS, CommandStatus
from contract.wire import HostCommand, HostStatus, LocalLocation, Revision

BIN = Path(sys.executable).parent


def memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of `pid`, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "RssAnon", "RssFile"}:
            found[name] = int(value.split()[0]) / 1024
    return found


def small_bundle(root: Path) -> Path:
    """20 files and an AfterInstall hook, installed under `root` (so the bench needs no root)."""
    bundle = root / "bundle"
    (bundle / "app").mkdir(parents=True)
    for index in range(20):
        (bundle / "app" / f"file{index:02d}.txt").write_text(f"content {index}\n")
    (bundle / "scripts").mkdir()
    hook = bundle / "scripts" / "after.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    (bundle / "appspec.yml").write_text(
        f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: {root / 'installed'}\n"
        "hooks:\n  AfterInstall:\n    - location: scripts/after.sh\n      timeout: 30\n"
    )
    return bundle


def deploy_once(store_url: str, bundle: Path, timeout: float = 60.0) -> None:
    """Give host idle-1 one command and wait until its agent reports it Succeeded."""
    store = open_store(store_url)
    revision = Revision(local=LocalLocation(path=str(bundle), bundle_type="directory"))
    command = HostCommand(
        host_id="idle-1", generation=1, deployment_id="d-IDLEBENCH1", application="bench", deployment_group="bench",
        deployment_group_id="dg-bench", revision=revision, events=list(DEFAULT_EVENTS), created_at=datetime.now(UTC),
    )
    store.put(command_key("idle-1"), command.to_json())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = store.get(status_key("idle-1"))
        progress = HostStatus.model_validate_json(stored.data).command if stored is not None else None
        if progress is not None and progress.generation == 1 and progress.status is not CommandStatus.IN_PROGRESS:
            if progress.status is not CommandStatus.SUCCEEDED:
                raise SystemExit(f"the deployment failed: {progress.message}")
            return
        time.sleep(0.1)
    raise SystemExit("the deployment did not end")


def idle_agent_memory(store_url: str, environment: dict[str, str], idle_seconds: float
                      ) -> tuple[dict[str, float], dict[str, float]]:
    """Memory of an idle agent before any deployment and after one."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        bundle = small_bundle(Path(folder))
        agent = subprocess.Popen(
            [str(BIN / "deploy-agent"), "--log-format", "json", "run", "--host-id", "idle-1", "--store", store_url,
             "--root-dir", f"{folder}/root", "--tag", "app=hello"],
            env={**os.environ, "FLEETSHIFT_AGENT_EC2_METADATA": "disabled", "FLEETSHIFT_AGENT_POLL_INTERVAL": "200ms",
                 **environment},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert agent.stderr is not None
            deadline = time.monotonic() + 60
            for line in agent.stderr:  # the first status write follows registration
                if '"agent.started"' in line:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not start")
            else:
                raise SystemExit(f"the agent exited with {agent.wait()}")
            # Its log is no longer read: drained in the background so that the agent never blocks on a full pipe.
            threading.Thread(target=agent.stderr.read, daemon=True).start()
            time.sleep(idle_seconds)
            before = memory(agent.pid)
            deploy_once(store_url, bundle)
            time.sleep(idle_seconds)
            return before, memory(agent.pid)
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    args = parser.parse_args()
    bare = timed([sys.executable, "-c", "pass"], args.runs)
    helps = timed([str(BIN / "deploy-agent"), "--help"], args.runs)
    print(f"python_bare_best: {min(bare) * 1000:.0f} ms")
    print(f"agent_help_best: {min(helps) * 1000:.0f} ms")
    print(f"agent_help_median: {statistics.median(helps) * 1000:.0f} ms")
    with tempfile.TemporaryDirectory(prefix="bench-startup-store-") as store:
        on_file = idle_agent_memory(f"file://{store}/store", {}, args.idle_seconds)
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_server() as endpoint:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in credentials.items()
                                                     if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket="fleetshift-startup")
        s3_environment = {**credentials, "AWS_ENDPOINT_URL": endpoint}
        os.environ.update(s3_environment)  # this process writes the command
        on_s3 = idle_agent_memory("s3://fleetshift-startup/fleet", s3_environment, args.idle_seconds)
    for name, (before, after) in (("file", on_file), ("s3", on_s3)):
        print(f"agent_idle_rss_{name}: {before['VmRSS']:.1f} MiB")
        print(f"agent_idle_rss_{name}_anonymous: {before['RssAnon']:.1f} MiB")
        print(f"agent_idle_rss_{name}_file_backed: {before['RssFile']:.1f} MiB")
        print(f"agent_idle_rss_{name}_after_deployment: {after['VmRSS']:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
