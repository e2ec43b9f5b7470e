"""What one idle agent costs on S3: GETs, PUTs and bytes per hour, and dollars per 1,000 hosts per month.

Method: a real `deploy-agent run` process talks to a moto S3 server (its own process) through a counting
HTTP proxy, with the intervals shortened (poll 100ms, heartbeat 1s) so a few seconds show many cycles. The
requests of the idle phase are counted and their sizes measured; the per-hour figures are then
extrapolated to the configured intervals: requests per hour = 3600 / interval, bytes = measured bytes per
request times that. Prices: S3 Standard list prices, GET $0.0004 per 1,000, PUT $0.005 per 1,000; a month is
730 hours. Data transfer inside a region is free and is not priced.

Usage: .venv/bin/python bench/bench_store_idle_agent.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store_status import moto_server

from tests.store.s3proxy import Exchange, running_proxy

GET_PRICE = 0.0004 / 1000
PUT_PRICE = 0.005 / 1000
HOURS_PER_MONTH = 730
#: (poll interval, heartbeat interval) pairs to price: the defaults first.
CONFIGURATIONS = ((5.0, 60.0), (10.0, 300.0), (30.0, 300.0), (2.0, 30.0))


def seed_done_command(endpoint: str) -> None:
    """The usual idle state: the host's last command exists and was reported done, so polls get 304."""
    from datetime import UTC, datetime

    from contract.keys import command_key, status_key
    from contract.models import CommandProgress, CommandStatus, HostCommand, HostStatus, LocalLocation, Revision
    from contract.store import open_store
    from contract.store.docs import write_document

    store = open_store(f"s3://fleetshift-idle/fleet?endpoint={endpoint}")
    now = datetime.now(UTC)
    command = HostCommand(host_id="idle-1", generation=1, deployment_id="d-1", application="hello",
                          deployment_group="production", deployment_group_id="dg-1",
                          revision=Revision(local=LocalLocation(path="/srv/bundle", bundle_type="directory")),
                          created_at=now)
    write_document(store, command_key("idle-1"), command)
    write_document(store, status_key("idle-1"), HostStatus(
        host_id="idle-1", heartbeat_at=now, agent_version="0.1.0",
        command=CommandProgress(deployment_id="d-1", generation=1, application="hello",
                                deployment_group="production", status=CommandStatus.SUCCEEDED, started_at=now,
                                ended_at=now)))


def measure(seconds: float, *, with_command: bool) -> tuple[list[Exchange], float]:
    import boto3

    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(credentials)
    with moto_server() as endpoint, running_proxy(endpoint) as proxy, tempfile.TemporaryDirectory() as folder:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="fleetshift-idle")
        if with_command:
            seed_done_command(endpoint)
        environment = {**os.environ, **credentials, "AWS_ENDPOINT_URL": proxy.endpoint_url}
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--log-format", "json", "run", "--host-id", "idle-1",
             "--store", "s3://fleetshift-idle/fleet", "--root-dir", f"{folder}/root", "--tag", "app=hello",
             "--poll-interval", "100ms", "--heartbeat-interval", "1s"],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not any(e.method == "PUT" and "status.json" in e.path for e in proxy.exchanges):
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise SystemExit("the agent did not start reporting")
                time.sleep(0.05)
            proxy.clear()  # start-up (registration, first status) is not the idle cost
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            idle = list(proxy.exchanges)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
    return idle, elapsed


def report(name: str, idle: list[Exchange], elapsed: float) -> tuple[float, float]:
    gets = [e for e in idle if e.method == "GET"]
    puts = [e for e in idle if e.method == "PUT"]
    print(f"{name}_measured_for: {elapsed:.1f} s")
    print(f"{name}_gets: {len(gets)} requests")
    print(f"{name}_gets_answered_304: {sum(1 for e in gets if e.status == 304)} requests")
    print(f"{name}_gets_answered_404: {sum(1 for e in gets if e.status == 404)} requests")
    print(f"{name}_puts: {len(puts)} requests")
    print(f"{name}_other_requests: {len(idle) - len(gets) - len(puts)} requests")
    get_bytes = sum(e.request_bytes + e.response_bytes for e in gets) / max(1, len(gets))
    body_bytes = sum(e.response_body_bytes for e in gets) / max(1, len(gets))
    put_bytes = sum(e.request_bytes + e.response_bytes for e in puts) / max(1, len(puts))
    print(f"{name}_bytes_per_get: {get_bytes:.0f} bytes")
    print(f"{name}_response_body_bytes_per_get: {body_bytes:.0f} bytes")
    print(f"{name}_bytes_per_put: {put_bytes:.0f} bytes")
    return get_bytes, put_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    get_bytes, put_bytes = report("idle_after_a_command", *measure(args.seconds, with_command=True))
    report("idle_never_commanded", *measure(args.seconds, with_command=False))
    for poll, heartbeat in CONFIGURATIONS:
        name = f"poll_{poll:g}s_heartbeat_{heartbeat:g}s"
        gets_per_hour = 3600 / poll
        puts_per_hour = 3600 / heartbeat
        bytes_per_hour = gets_per_hour * get_bytes + puts_per_hour * put_bytes
        monthly = (gets_per_hour * GET_PRICE + puts_per_hour * PUT_PRICE) * HOURS_PER_MONTH * 1000
        print(f"{name}_gets_per_hour: {gets_per_hour:.0f} requests")
        print(f"{name}_puts_per_hour: {puts_per_hour:.0f} requests")
        print(f"{name}_bytes_per_hour: {bytes_per_hour / 1024:.0f} KiB")
        print(f"{name}_cost_per_1000_hosts_per_month: {monthly:.2f} USD")


if __name__ == "__main__":
    main()
