"""What one idle agent costs on S3: GETs, PUTs and bytes per hour, and dollars per 1,000 hosts per month.

Method: a real `deploy-agent run` process talks to a moto S3 server (its own process) through a counting
HTTP proxy, with the intervals shortened (poll 100ms, heartbeat 1s) so a few seconds show many cycles. The
requests of the idle phase are counted and their sizes measured; the per-hour figures are then
extrapolated to the configured intervals: requests per hour = 3600 / interval, bytes = measured bytes per
request times that. Prices: S3 Standard list prices, GET $0.0004 per 1,000, PUT $0.005 per 1,000; a month is
730 hours. Data transfer inside a region is free and is not priced.

Three idle states are measured: never commanded; after a command, seen and reported; and in a deployment group
(the host has a revision installed, so it also keeps an eye on the group's record, agent/daemon/rollout_signal.py:
the idle budget must stay one GET per poll interval, split between its command and the group record). GETs per
poll interval are measured, not assumed, and drive the per-hour figures of the last state.

Then how fast a host sees its command once a deployment of its group is in flight (`pickup_*`): a real agent in
a group, the group's record is marked in flight, a poll interval or two later the command is written, and the
agent's `command.received` log line is timed against the write. Intervals are scaled down tenfold (poll 1 s,
busy poll 100 ms), so the figures are a tenth of the defaults' (10 s, 1 s).

Usage: .venv/bin/python bench/bench_store_idle_agent.py [--seconds 8] [--samples 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store_status import moto_server

from tests.store.s3proxy import Exchange, S3Proxy, running_proxy

GET_PRICE = 0.0004 / 1000
PUT_PRICE = 0.005 / 1000
HOURS_PER_MONTH = 730
#: (poll interval, heartbeat interval) pairs to price: the defaults first.
CONFIGURATIONS = ((5.0, 60.0), (10.0, 300.0), (30.0, 300.0), (2.0, 30.0))


BUCKET = "fleetshift-idle"
HOST = "idle-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def store_for(endpoint: str):  # type: ignore[no-untyped-def]
    from contract.store import open_store

    return open_store(f"s3://{BUCKET}/fleet?endpoint={endpoint}")


def command(generation: int):  # type: ignore[no-untyped-def]
    from contract.models import HostCommand, LocalLocation, Revision

    return HostCommand(host_id=HOST, generation=generation, deployment_id=f"d-{generation}", application="hello",
                       deployment_group="production", deployment_group_id="dg-1",
                       revision=Revision(local=LocalLocation(path="/srv/bundle", bundle_type="directory")),
                       events=["ApplicationStop"], created_at=datetime.now(UTC))


def seed_done_command(endpoint: str) -> None:
    """The usual idle state: the host's last command exists and was reported done, so polls get 304."""
    from contract.keys import command_key, status_key
    from contract.models import CommandProgress, CommandStatus, HostStatus
    from contract.store.docs import write_document

    store = store_for(endpoint)
    now = datetime.now(UTC)
    write_document(store, command_key(HOST), command(1))
    write_document(store, status_key(HOST), HostStatus(
        host_id=HOST, heartbeat_at=now, agent_version="0.1.0",
        command=CommandProgress(deployment_id="d-1", generation=1, application="hello",
                                deployment_group="production", status=CommandStatus.SUCCEEDED, started_at=now,
                                ended_at=now)))


def write_group(endpoint: str, *, in_flight: str | None) -> None:
    from contract.keys import group_state_key
    from contract.models import GroupState
    from contract.store.docs import write_document

    write_document(store_for(endpoint), group_state_key("hello", "production"),
                   GroupState(application="hello", deployment_group="production", deployment_in_flight=in_flight,
                              updated_at=datetime.now(UTC)))


def seed_installed(root: Path) -> None:
    """This host has the group's revision installed: what makes the agent track the group's record."""
    from agent.lifecycle.layout import DeploymentRoot
    from contract.wire import InstalledRevision, Revision

    revision = Revision.model_validate_json(command(1).revision.to_json())  # the agent's record of it
    DeploymentRoot(root).group("dg-1").record_installed(InstalledRevision(
        application="hello", deployment_group="production", revision=revision, deployment_id="d-1",
        installed_at=datetime.now(UTC)))


@contextmanager
def s3_behind_proxy() -> Iterator[tuple[str, object]]:
    import boto3

    os.environ.update(CREDENTIALS)
    with moto_server() as endpoint, running_proxy(endpoint) as proxy:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint, proxy


def start_agent(proxy: S3Proxy, folder: str, poll: str, busy: str, heartbeat: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": proxy.endpoint_url,
                   "FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": busy, "FLEETSHIFT_AGENT_EC2_METADATA": "disabled"}
    with open(f"{folder}/agent.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "--log-format", "json", "run", "--host-id", HOST,
             "--store", f"s3://{BUCKET}/fleet", "--root-dir", f"{folder}/root", "--tag", "app=hello",
             "--poll-interval", poll, "--heartbeat-interval", heartbeat],
            env=environment, stdout=subprocess.DEVNULL, stderr=log,
        )


def wait_for_first_status(proxy: S3Proxy, agent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not any(e.method == "PUT" and "status.json" in e.path for e in proxy.exchanges):
        if time.monotonic() > deadline or agent.poll() is not None:
            raise SystemExit("the agent did not start reporting")
        time.sleep(0.05)


def measure(seconds: float, *, state: str) -> tuple[list[Exchange], float]:
    with s3_behind_proxy() as (endpoint, proxy), tempfile.TemporaryDirectory() as folder:
        assert isinstance(proxy, S3Proxy)
        if state in {"after_a_command", "in_a_group"}:
            seed_done_command(endpoint)
        if state == "in_a_group":
            write_group(endpoint, in_flight=None)
            seed_installed(Path(folder) / "root")
        agent = start_agent(proxy, folder, "100ms", "100ms", "1s")
        try:
            wait_for_first_status(proxy, agent)
            time.sleep(1.0)  # past start-up: the claim and first reads are not the idle cost
            proxy.clear()
            started = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - started
            idle = list(proxy.exchanges)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
    return idle, elapsed


def pickup(samples: int) -> list[float]:
    """Seconds from a command's write to the agent's `command.received`, a deployment of its group in flight."""
    delays = []
    for sample in range(samples):
        with s3_behind_proxy() as (endpoint, proxy), tempfile.TemporaryDirectory() as folder:
            assert isinstance(proxy, S3Proxy)
            seed_done_command(endpoint)
            write_group(endpoint, in_flight=None)
            seed_installed(Path(folder) / "root")
            agent = start_agent(proxy, folder, "1s", "100ms", "60s")
            try:
                wait_for_first_status(proxy, agent)
                time.sleep(1.0 + sample * 0.37)  # the write lands at a different point of the poll cycle each time
                write_group(endpoint, in_flight="d-2")
                time.sleep(2.5)  # a rollout: the host's turn comes a while after the deployment started
                from contract.keys import command_key
                from contract.store.docs import write_document

                write_document(store_for(endpoint), command_key(HOST), command(2))
                written = time.time()
                deadline = time.monotonic() + 15
                received = None
                while received is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                    for line in Path(f"{folder}/agent.log").read_text().splitlines():
                        if '"command.received"' in line:
                            received = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
                if received is None:
                    raise SystemExit("the agent did not pick up its command within 15 s")
                delays.append(received - written)
            finally:
                agent.terminate()
                agent.wait(timeout=30)
    return delays


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
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    report("idle_never_commanded", *measure(args.seconds, state="never_commanded"))
    report("idle_after_a_command", *measure(args.seconds, state="after_a_command"))
    idle, elapsed = measure(args.seconds, state="in_a_group")
    get_bytes, put_bytes = report("idle_in_a_group", idle, elapsed)
    gets = [e for e in idle if e.method == "GET"]
    group_gets = sum(1 for e in gets if "/groups/" in e.path)
    per_interval = len(gets) / (elapsed / 0.1)
    print(f"idle_in_a_group_group_record_gets: {group_gets} requests")
    print(f"idle_in_a_group_gets_per_poll_interval: {per_interval:.2f} requests (1.00 before the group records)")
    for poll, heartbeat in CONFIGURATIONS:
        name = f"poll_{poll:g}s_heartbeat_{heartbeat:g}s"
        gets_per_hour = per_interval * 3600 / poll
        puts_per_hour = 3600 / heartbeat
        bytes_per_hour = gets_per_hour * get_bytes + puts_per_hour * put_bytes
        monthly = (gets_per_hour * GET_PRICE + puts_per_hour * PUT_PRICE) * HOURS_PER_MONTH * 1000
        print(f"{name}_gets_per_hour: {gets_per_hour:.0f} requests")
        print(f"{name}_puts_per_hour: {puts_per_hour:.0f} requests")
        print(f"{name}_bytes_per_hour: {bytes_per_hour / 1024:.0f} KiB")
        print(f"{name}_cost_per_1000_hosts_per_month: {monthly:.2f} USD")
    delays = pickup(args.samples)
    print(f"pickup_in_flight_median: {statistics.median(delays) * 1000:.0f} ms (poll 1 s, busy poll 100 ms)")
    print(f"pickup_in_flight_max: {max(delays) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
