"""The write lease against a real FileStore: exclusion, expiry, renewal, release, and many processes at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contract.keys import LEASE_KEY
from contract.models import Lease
from contract.store import Store, StoreUnavailable, open_store
from reconciler.shell.lease import LeaseHeld, LeaseLost, WriteLease, read_lease
from tests.conftest import S3Server


class Clock:
    """A clock the test moves by hand, so expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(f"file://{tmp_path / 'store'}")


def test_first_taker_holds_and_second_is_refused(store: Store) -> None:
    clock = Clock()
    first = WriteLease(store, duration=timedelta(seconds=30), holder="first", clock=clock)
    second = WriteLease(store, duration=timedelta(seconds=30), holder="second", clock=clock)
    assert first.try_acquire()
    assert not second.try_acquire()
    assert first.held and not second.held
    lease = Lease.model_validate_json(store.get(LEASE_KEY).data)  # type: ignore[union-attr]
    assert lease.holder == "first"
    assert lease.expires_at == clock.now + timedelta(seconds=30)


def test_expired_lease_is_taken_over_and_the_old_holder_learns_it(store: Store) -> None:
    clock = Clock()
    first = WriteLease(store, duration=timedelta(seconds=30), holder="first", clock=clock)
    second = WriteLease(store, duration=timedelta(seconds=30), holder="second", clock=clock)
    assert first.try_acquire()
    clock.advance(29)
    assert not second.try_acquire()
    clock.advance(2)  # first's lease ran out (it crashed or paused)
    assert second.try_acquire()
    with pytest.raises(LeaseLost, match="second took it"):
        first.ensure()  # before its next write: it must not write on
    assert not first.held
    assert read_lease(store).holder == "second"  # type: ignore[union-attr]


def test_late_renewal_is_safe_when_nobody_took_over(store: Store) -> None:
    clock = Clock()
    lease = WriteLease(store, duration=timedelta(seconds=10), holder="solo", clock=clock)
    assert lease.try_acquire()
    clock.advance(25)  # expired by the clock, but the document is still ours: renewal by CAS succeeds
    lease.ensure()
    assert lease.held
    assert lease.expires_at == clock.now + timedelta(seconds=10)


def test_ensure_renews_only_past_half_time(store: Store) -> None:
    clock = Clock()
    lease = WriteLease(store, duration=timedelta(seconds=60), holder="solo", clock=clock)
    assert lease.try_acquire()
    before = store.get(LEASE_KEY).version  # type: ignore[union-attr]
    clock.advance(20)
    lease.ensure()
    assert store.get(LEASE_KEY).version == before  # type: ignore[union-attr]
    clock.advance(15)
    lease.ensure()
    assert lease.expires_at == clock.now + timedelta(seconds=60)


def test_release_lets_the_next_one_in_at_once(store: Store) -> None:
    clock = Clock()
    first = WriteLease(store, duration=timedelta(minutes=5), holder="first", clock=clock)
    second = WriteLease(store, duration=timedelta(minutes=5), holder="second", clock=clock)
    assert first.try_acquire()
    first.release()
    assert not first.held
    assert second.try_acquire()
    first.release()  # releasing a lease we no longer hold is a no-op, never a theft
    assert read_lease(store).holder == "second"  # type: ignore[union-attr]


def test_acquire_waits_then_reports_the_holder(store: Store) -> None:
    holder = WriteLease(store, duration=timedelta(minutes=5), holder="ci-runner-7")
    assert holder.try_acquire()
    waiter = WriteLease(store, duration=timedelta(minutes=5), holder="me")
    with pytest.raises(LeaseHeld, match="ci-runner-7") as caught:
        waiter.acquire(wait=timedelta(milliseconds=200), retry_every=timedelta(milliseconds=50))
    assert "only one reconciler writes at a time" in str(caught.value)


def test_a_corrupt_lease_document_does_not_block_forever(store: Store) -> None:
    store.put(LEASE_KEY, b"{not json")
    lease = WriteLease(store, duration=timedelta(seconds=30), holder="fixer")
    assert lease.try_acquire()
    assert read_lease(store).holder == "fixer"  # type: ignore[union-attr]


WORKER = textwrap.dedent(
    """
    import os, sys, time
    from datetime import timedelta
    from contract.store import open_store
    from reconciler.shell.lease import WriteLease

    store = open_store(sys.argv[1])
    journal = sys.argv[2]
    lease = WriteLease(store, duration=timedelta(seconds=20), holder=f"worker-{os.getpid()}")
    for _ in range(int(sys.argv[3])):
        lease.acquire(wait=timedelta(seconds=60), retry_every=timedelta(milliseconds=5))
        with open(journal, "a") as f:
            f.write(f"enter {os.getpid()}\\n")
        time.sleep(0.005)  # hold the lease for a moment so overlaps would show
        with open(journal, "a") as f:
            f.write(f"exit {os.getpid()}\\n")
        lease.release()
    """
)


@pytest.mark.slow
def test_processes_racing_for_the_lease_never_overlap(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    journal = tmp_path / "journal"
    journal.touch()
    url = f"file://{tmp_path / 'store'}"
    root = Path(__file__).resolve().parents[2]
    workers = [
        subprocess.Popen([sys.executable, str(script), url, str(journal), "15"], cwd=root)
        for _ in range(4)
    ]
    for worker in workers:
        assert worker.wait(timeout=90) == 0
    lines = journal.read_text().splitlines()
    assert len(lines) == 4 * 15 * 2
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert enter.startswith("enter ")
        assert leave == "exit " + enter.split()[1], f"two holders at once: {enter!r} then {leave!r}"


# --------------------------------------------------------------------------------------------------
# Store outages while taking the lease (`reconcile --once` at start-up)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_taking_the_lease_waits_out_an_s3_endpoint_that_is_down_then_up(s3_server: S3Server) -> None:
    """The endpoint refuses connections for ~2 s, then answers: the lease is taken, not an exit 8."""
    import threading

    from tests.store.conftest import s3_url
    from tests.store.s3proxy import S3Proxy

    s3_server.client().create_bucket(Bucket="fleetshift-lease-outage")
    port = _free_port()
    store = open_store(s3_url(s3_server, "fleetshift-lease-outage", endpoint=f"http://127.0.0.1:{port}"))
    proxies: list[S3Proxy] = []
    starter = threading.Timer(2.0, lambda: proxies.append(S3Proxy(s3_server.endpoint_url, port=port).start()))
    starter.start()
    try:
        lease = WriteLease(store, duration=timedelta(seconds=30), holder="after-outage")
        assert lease.acquire(wait=timedelta(seconds=5), retry_every=timedelta(milliseconds=200),
                             store_outage=timedelta(seconds=60))
        assert lease.held and read_lease(store) is not None
    finally:
        starter.join()
        for proxy in proxies:
            proxy.stop()


def test_an_outage_longer_than_the_window_is_raised(s3_server: S3Server) -> None:
    from tests.store.conftest import s3_url

    store = open_store(s3_url(s3_server, "fleetshift-lease-outage", endpoint=f"http://127.0.0.1:{_free_port()}"))
    lease = WriteLease(store, duration=timedelta(seconds=30), holder="never")
    with pytest.raises(StoreUnavailable):
        lease.acquire(wait=timedelta(seconds=5), retry_every=timedelta(milliseconds=100),
                      store_outage=timedelta(seconds=1))
    with pytest.raises(StoreUnavailable):  # without a window (the watcher's call): at once
        lease.acquire(wait=timedelta(seconds=5))
