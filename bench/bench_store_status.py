"""Reading the status of 10,000 hosts, as a reconciler pass does: list `hosts/` with versions, fetch and parse
every status (a cold start), then again after 100 hosts changed (only those 100 are fetched).

Runs against a file store in a temp folder and against a moto S3 server this script starts in its own
process (every request over HTTP on loopback). moto is a test double, far slower than S3 at listing and
serving objects, so its figures bound the client side's cost from above rather than predict S3's.
Prints one `name: value unit` line per figure.

Usage: .venv/bin/python bench/bench_store_status.py [--hosts 10000] [--changed 100] [--skip-s3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.keys import HOSTS_PREFIX, registration_key, status_key
from contract.models import (
    DEFAULT_EVENTS,
    CommandProgress,
    CommandStatus,
    EventReport,
    EventStatus,
    GitLocation,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
)
from contract.store import Store, open_store
from contract.store.docs import DocumentCache

MOTO_SERVER = Path(sys.executable).with_name("moto_server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """moto in its own process, so the server does not share this interpreter's GIL with the client."""
    port = free_port()
    process = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise SystemExit("moto_server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


ROUNDS = 5
NOW = datetime(2026, 1, 1, tzinfo=UTC)
REVISION = Revision(git=GitLocation(repository="https://git.example.com/platform/hello.git", commit="a" * 40))


def host_status(index: int, minute: int = 0) -> HostStatus:
    """A realistic status: one installed group and the last command with its seven events and log tails."""
    started = NOW + timedelta(minutes=minute)
    events = [
        EventReport(name=name, status=EventStatus.SUCCEEDED, started_at=started, ended_at=started,
                    exit_code=0 if name not in ("DownloadBundle", "Install") else None,
                    log_tail="[stdout] ok\n" if name not in ("DownloadBundle", "Install") else None)
        for name in DEFAULT_EVENTS
    ]
    return HostStatus(
        host_id=f"host-{index:05d}",
        heartbeat_at=started,
        agent_version="0.1.0",
        installed={
            "hello/production": InstalledRevision(application="hello", deployment_group="production",
                                                  revision=REVISION, deployment_id="d-ABCDEFGHI",
                                                  installed_at=started)
        },
        command=CommandProgress(deployment_id="d-ABCDEFGHI", generation=3, application="hello",
                                deployment_group="production", status=CommandStatus.SUCCEEDED, events=events,
                                started_at=started, ended_at=started),
    )


def populate(store: Store, hosts: int, workers: int) -> int:
    def write(index: int) -> int:
        body = host_status(index).to_json()
        store.put(status_key(f"host-{index:05d}"), body)
        registration = HostRegistration(host_id=f"host-{index:05d}", tags={"app": "hello", "env": "prod"},
                                        platform="linux", hostname=f"host-{index:05d}", agent_version="0.1.0",
                                        registered_at=NOW)
        store.put(registration_key(f"host-{index:05d}"), registration.to_json())
        return len(body)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(write, range(hosts)))
    return sum(sizes) // len(sizes)


def measure(name: str, store: Store, hosts: int, changed: int, workers: int) -> None:
    started = time.perf_counter()
    size = populate(store, hosts, workers)
    print(f"{name}_populate_{hosts}_hosts: {time.perf_counter() - started:.2f} s", flush=True)
    print(f"{name}_status_document_size: {size} bytes")

    cache = DocumentCache(store, HOSTS_PREFIX, HostStatus)
    started = time.perf_counter()
    cache.refresh(suffix="/status.json", workers=workers)
    full = time.perf_counter() - started
    assert len(cache.documents) == hosts and cache.last_fetched == hosts
    print(f"{name}_full_read_{hosts}_statuses: {full:.3f} s")

    started = time.perf_counter()
    listed = store.list(HOSTS_PREFIX)
    print(f"{name}_list_{len(listed)}_keys_with_versions: {time.perf_counter() - started:.3f} s")

    # Re-reads are repeated: a full garbage collection of the 10,000 cached documents (about 0.25 s in
    # CPython) lands in one of them now and then, so the median is the typical pass and the max the worst.
    rereads, quiet = [], []
    step = max(1, hosts // changed)
    for round_number in range(ROUNDS):
        for index in range(round_number, step * changed, step):
            store.put(status_key(f"host-{index:05d}"), host_status(index, minute=round_number + 1).to_json())
        started = time.perf_counter()
        cache.refresh(suffix="/status.json", workers=workers)
        rereads.append(time.perf_counter() - started)
        assert cache.last_fetched == changed, cache.last_fetched
        started = time.perf_counter()
        cache.refresh(suffix="/status.json", workers=workers)
        quiet.append(time.perf_counter() - started)
        assert cache.last_fetched == 0
    print(f"{name}_reread_{changed}_changed_of_{hosts}_median: {statistics.median(rereads):.3f} s")
    print(f"{name}_reread_{changed}_changed_of_{hosts}_max: {max(rereads):.3f} s")
    print(f"{name}_reread_nothing_changed_median: {statistics.median(quiet):.3f} s")
    print(f"{name}_reread_nothing_changed_max: {max(quiet):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        measure("file", open_store(f"file://{folder}/store"), args.hosts, args.changed, workers=1)

    if args.skip_s3:
        return
    import os

    import boto3

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    with moto_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="fleetshift-bench")
        store = open_store(f"s3://fleetshift-bench/fleet?endpoint={endpoint}")
        measure("s3_moto", store, args.hosts, args.changed, workers=16)


if __name__ == "__main__":
    main()
