"""What starting an agent costs: `deploy-agent --help` as a whole process, and an idle `deploy-agent run`'s memory.

- `agent_help_best` / `_median`: wall time of `deploy-agent --help` (the installed console script, a fresh
  process each time), best and median of `--runs`, next to a bare `python -c pass` of the same interpreter.
  Issue 18's target: under 0.15 s.
- `agent_idle_rss_file` / `_s3`: resident memory (VmRSS, with its anonymous and file-backed parts) of a real
  `deploy-agent run` once it has registered and gone idle, on a file store and on an S3 store (a moto server in
  its own process). Issue 18's target: under 30 MiB.

    .venv/bin/python bench/bench_agent_startup.py [--runs 20] [--idle-seconds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_startup import timed
from bench_store_status import moto_server

BIN = Path(sys.executable).parent


def memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of `pid`, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "RssAnon", "RssFile"}:
            found[name] = int(value.split()[0]) / 1024
    return found


def idle_agent_memory(store_url: str, environment: dict[str, str], idle_seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
        agent = subprocess.Popen(
            [str(BIN / "deploy-agent"), "--log-format", "json", "run", "--host-id", "idle-1", "--store", store_url,
             "--root-dir", f"{folder}/root", "--tag", "app=hello"],
            env={**os.environ, "FLEETSHIFT_AGENT_EC2_METADATA": "disabled", **environment},
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
            time.sleep(idle_seconds)
            return memory(agent.pid)
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
        on_s3 = idle_agent_memory("s3://fleetshift-startup/fleet",
                                  {**credentials, "AWS_ENDPOINT_URL": endpoint}, args.idle_seconds)
    for name, found in (("file", on_file), ("s3", on_s3)):
        print(f"agent_idle_rss_{name}: {found['VmRSS']:.1f} MiB")
        print(f"agent_idle_rss_{name}_anonymous: {found['RssAnon']:.1f} MiB")
        print(f"agent_idle_rss_{name}_file_backed: {found['RssFile']:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
