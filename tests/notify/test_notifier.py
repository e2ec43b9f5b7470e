"""The notifier as the passes drive it: in the background (a slow provider never holds a pass), exactly once across
a crash at every point but one (between the provider's answer and the cursor write, where the one event is sent
again with its id), only under the lease, draining at the end of `--once`, forgetting removed notifications, and
reporting its health for `reconcile status`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from contract.models import EventType
from contract.store import Store, open_store
from contract.store.docs import read_document
from fleetlab.receiver import Receiver, Reply, receiver
from reconciler.core.state import State
from reconciler.desired.manifests import Desired, NotificationManifest
from reconciler.notify.cursor import NotificationCursor, cursor_key
from reconciler.notify.deliver import NotificationWorker, Notifier
from reconciler.notify.health import read_health
from tests.notify.records import deployment, state, with_events
from tests.notify.test_providers import FakeClock

S = EventType


@dataclass(frozen=True)
class Snap:
    state: State


@dataclass(frozen=True)
class Pass:
    """What the notifier reads of a `PassOutcome`."""

    snapshot: Snap
    state_after: State
    desired: Desired


def manifest(spec: dict[str, Any], name: str = "hook") -> NotificationManifest:
    return NotificationManifest.model_validate(
        {"apiVersion": "deploy/v1", "kind": "Notification", "metadata": {"name": name}, "spec": spec})


def desired(*manifests: NotificationManifest) -> Desired:
    return Desired(commit=None, notifications={m.metadata.name: m for m in manifests})


def a_pass(before: State, after: State, wanted: Desired) -> Pass:
    return Pass(Snap(before), after, wanted)


@pytest.fixture
def server() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(f"file://{tmp_path / 'store'}")


def delivered_ids(server: Receiver) -> list[str | None]:
    return [request.header("X-Fleetshift-Delivery") for request in server.requests]


def test_a_slow_provider_never_holds_a_pass(server: Receiver, store: Store) -> None:
    server.default = Reply(200, delay=1.0)
    notifier = Notifier(store, may_deliver=lambda: True)
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.BATCH_STARTED]))
    try:
        started = time.monotonic()
        notifier.on_pass(a_pass(State(), records, desired(manifest({"webhook": {"url": server.url}}))))
        assert time.monotonic() - started < 0.2
        result = notifier.drain(timedelta(seconds=10))
        assert result.done and delivered_ids(server) == ["d-1.1", "d-1.2"]
    finally:
        notifier.close()


def test_only_the_lease_holder_delivers(server: Receiver, store: Store) -> None:
    holding = {"lease": False}
    notifier = Notifier(store, may_deliver=lambda: holding["lease"])
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED]))
    try:
        notifier.on_pass(a_pass(State(), records, desired(manifest({"webhook": {"url": server.url}}))))
        time.sleep(0.3)  # give the worker thread every chance to (wrongly) send
        assert server.requests == [] and store.get(cursor_key("hook")) is None
        holding["lease"] = True
        notifier.on_pass(a_pass(State(), records, desired(manifest({"webhook": {"url": server.url}}))))
        assert notifier.drain(timedelta(seconds=5)).done
        assert delivered_ids(server) == ["d-1.1"]
    finally:
        notifier.close()


class Killed(BaseException):
    """The process dying at a write (nothing after it runs)."""


class DiesAtWrite:
    """A store whose `n`-th write of the cursor kills the process, before or after the write lands."""

    def __init__(self, inner: Store, die_at: int, *, after_write: bool) -> None:
        self.inner = inner
        self.url = inner.url
        self.writes = 0
        self.die_at = die_at
        self.after_write = after_write

    def _write(self, write: Any) -> str:
        self.writes += 1
        if self.writes == self.die_at and not self.after_write:
            raise Killed
        version = str(write())
        if self.writes == self.die_at:
            raise Killed
        return version

    def get(self, key: str, *, if_version_not: str | None = None) -> Any:
        return self.inner.get(key, if_version_not=if_version_not)

    def put(self, key: str, data: bytes) -> str:
        return self._write(lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._write(lambda: self.inner.put_if_absent(key, data))

    def put_if_version(self, key: str, data: bytes, version: str) -> str:
        return self._write(lambda: self.inner.put_if_version(key, data, version))

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str) -> Any:
        return self.inner.list(prefix)


ROLLOUT = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.BATCH_STARTED, S.HOST_SUCCEEDED,
                                   S.DEPLOYMENT_SUCCEEDED]))
EXPECTED = ["d-1.1", "d-1.2", "d-1.3", "d-1.4"]


@pytest.mark.parametrize("die_at", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("after_write", [False, True])
def test_a_crash_at_any_cursor_write_sends_nothing_twice_but_the_event_in_flight(
        server: Receiver, store: Store, die_at: int, after_write: bool) -> None:
    """Writes: 1 creates the cursor, 2..5 follow the four deliveries. Dying before write k (k >= 2) is dying between
    the provider's 2xx and the cursor write: that one event is sent again, with the same id; nothing else is.

    Dying before the cursor was ever created (write 1 lost) leaves a notification that never started: the restarted
    reconciler starts it from its own "now" (its first pass's records), and the rollout's events so far are not
    sent (docs/notifications.md says so)."""
    spec = manifest({"webhook": {"url": server.url}}).spec
    dying = DiesAtWrite(store, die_at, after_write=after_write)
    first = NotificationWorker("hook", spec, dying, baseline=State(), clock=FakeClock())
    with pytest.raises(Killed):
        first.step(ROLLOUT)
    restarted = NotificationWorker("hook", spec, store, baseline=ROLLOUT, clock=FakeClock())
    assert restarted.step(ROLLOUT) is None
    sent = delivered_ids(server)
    if die_at == 1 and not after_write:
        assert sent == []
        return
    assert sorted({event_id or "" for event_id in sent}) == EXPECTED, "every event delivered"
    resent = [event_id for event_id in EXPECTED if sent.count(event_id) > 1]
    lost_write = die_at >= 2 and not after_write
    assert resent == ([EXPECTED[die_at - 2]] if lost_write else []), sent
    assert all(sent.count(event_id) <= 2 for event_id in EXPECTED)
    # In order, even across the crash: the ids as first received are the stream's order.
    assert list(dict.fromkeys(sent)) == EXPECTED


def test_a_new_notification_starts_from_now(server: Receiver, store: Store) -> None:
    """Added while a rollout was under way: the events before the pass that first saw it are history."""
    notifier = Notifier(store, may_deliver=lambda: True)
    before = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.BATCH_STARTED]))
    after = state(with_events(before.deployments["d-1"], S.HOST_SUCCEEDED))
    try:
        notifier.on_pass(a_pass(before, after, desired(manifest({"webhook": {"url": server.url}}))))
        assert notifier.drain(timedelta(seconds=5)).done
        assert delivered_ids(server) == ["d-1.3"]
    finally:
        notifier.close()


def test_a_removed_notification_forgets_its_cursor_and_starts_from_now_when_back(server: Receiver,
                                                                                 store: Store) -> None:
    hook = manifest({"webhook": {"url": server.url}})
    notifier = Notifier(store, may_deliver=lambda: True)
    first = state(deployment("d-1", [S.DEPLOYMENT_STARTED]))
    try:
        notifier.on_pass(a_pass(State(), first, desired(hook)))
        assert notifier.drain(timedelta(seconds=5)).done
        assert store.get(cursor_key("hook")) is not None
        second = state(with_events(first.deployments["d-1"], S.DEPLOYMENT_SUCCEEDED))
        notifier.on_pass(a_pass(first, second, desired()))
        assert store.get(cursor_key("hook")) is None
        third = state(with_events(second.deployments["d-1"], S.REVISION_QUARANTINED))
        notifier.on_pass(a_pass(third, third, desired(hook)))
        assert notifier.drain(timedelta(seconds=5)).done
        assert delivered_ids(server) == ["d-1.1"], "nothing from while it was gone, nothing replayed"
    finally:
        notifier.close()


def test_drain_gives_up_at_its_timeout_and_says_what_is_left(server: Receiver, store: Store) -> None:
    server.default = Reply(500, b"down for maintenance")
    notifier = Notifier(store, may_deliver=lambda: True)
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_SUCCEEDED]))
    spec = {"webhook": {"url": server.url}, "retry": {"attempts": 10, "backoff": "100ms", "maxBackoff": "200ms"}}
    ticks: list[float] = []
    try:
        notifier.on_pass(a_pass(State(), records, desired(manifest(spec))))
        started = time.monotonic()
        result = notifier.drain(timedelta(seconds=1), tick=lambda: ticks.append(time.monotonic()))
        waited = time.monotonic() - started
        # Up to the timeout (it may end a retry interval early: the next attempt would come after the deadline).
        assert 0.6 <= waited < 2.0
        assert result.left == {"hook": 2} and result.total == 2
        assert ticks, "the caller's tick (renewing the lease) ran while waiting"
        assert len(server.requests) >= 3, "retried meanwhile"
    finally:
        notifier.close()


def test_drain_ends_early_when_only_a_distant_retry_is_left(server: Receiver, store: Store) -> None:
    server.default = Reply(503, b"", {"Retry-After": "600"})
    notifier = Notifier(store, may_deliver=lambda: True)
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED]))
    try:
        notifier.on_pass(a_pass(State(), records, desired(manifest({"webhook": {"url": server.url}}))))
        started = time.monotonic()
        result = notifier.drain(timedelta(seconds=30))
        assert time.monotonic() - started < 5
        assert result.left == {"hook": 1}
    finally:
        notifier.close()


def test_health_shows_last_delivery_last_error_and_totals(server: Receiver, store: Store) -> None:
    server.script = [Reply(200), Reply(400, b'{"message": "bad payload"}')]
    hook = manifest({"webhook": {"url": server.url}})
    quiet = manifest({"slack": {"urlFrom": {"env": "UNSET_FOR_THIS_TEST"}}, "events": ["revision.quarantined"]},
                     name="quiet")
    notifier = Notifier(store, may_deliver=lambda: True)
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_FAILED]))
    wanted = desired(hook, quiet)
    try:
        notifier.on_pass(a_pass(State(), records, wanted))
        assert notifier.drain(timedelta(seconds=5)).done
    finally:
        notifier.close()
    health = {item.name: item for item in read_health(store, wanted, records)}
    assert set(health) == {"hook", "quiet"}
    hook_health = health["hook"]
    assert hook_health.provider == "webhook" and hook_health.configured
    assert hook_health.delivered == 1 and hook_health.failed == 1 and hook_health.pending == 0
    assert hook_health.last_error == "HTTP 400: bad payload" and hook_health.last_error_at is not None
    assert not hook_health.healthy
    assert health["quiet"].healthy and health["quiet"].delivered == 0
    # Without the manifests, a cursor is still shown, by its name and provider.
    alone = read_health(store)
    assert [(item.name, item.provider, item.configured) for item in alone] == [
        ("hook", "webhook", False), ("quiet", "slack", False)]


def test_the_result_hook_sees_every_attempt(server: Receiver, store: Store) -> None:
    server.script = [Reply(500)]
    seen: list[tuple[str, str, str]] = []
    notifier = Notifier(store, may_deliver=lambda: True)
    notifier.set_result_hook(lambda name, provider, result: seen.append((name, provider, result)))
    spec = {"webhook": {"url": server.url}, "retry": {"backoff": "10ms", "maxBackoff": "10ms"}}
    try:
        notifier.on_pass(a_pass(State(), state(deployment("d-1", [S.DEPLOYMENT_STARTED])), desired(manifest(spec))))
        assert notifier.drain(timedelta(seconds=5)).done
    finally:
        notifier.close()
    assert seen == [("hook", "webhook", "retried"), ("hook", "webhook", "delivered")]


def test_a_cursor_moved_by_another_writer_is_read_before_sending(server: Receiver, store: Store) -> None:
    spec = manifest({"webhook": {"url": server.url}}).spec
    one = NotificationWorker("hook", spec, store, baseline=State(), clock=FakeClock())
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED]))
    one.step(records)
    other = NotificationWorker("hook", spec, store, baseline=State(), clock=FakeClock())
    more = state(with_events(records.deployments["d-1"], S.DEPLOYMENT_SUCCEEDED))
    other.step(more)  # another reconciler (which held the lease meanwhile) moved the cursor on
    assert one.step(more) is None
    assert delivered_ids(server) == ["d-1.1", "d-1.2"], "the cached cursor was checked, not trusted"


def test_a_cursor_write_lost_to_another_writer_is_read_again(server: Receiver, store: Store) -> None:
    """Two writers at once (which the lease rules out): the loser's compare-and-swap fails, it reads again and goes
    on from the winner's cursor; the event both sent is the only one sent twice."""
    spec = manifest({"webhook": {"url": server.url}}).spec
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_SUCCEEDED]))
    other = NotificationWorker("hook", spec, store, baseline=State(), clock=FakeClock())
    one = NotificationWorker("hook", spec, store, baseline=State(), clock=FakeClock())
    real = one.provider

    class Racing:
        kind = real.kind
        raced = False

        def send(self, event: Any) -> Any:
            answer = real.send(event)
            if not self.raced:
                self.raced = True
                other.step(records)  # the other writer delivers everything and writes its cursor meanwhile
            return answer

        def describe(self) -> str:
            return real.describe()

        def close(self) -> None:
            real.close()

    one.provider = Racing()
    assert one.step(records) is not None, "the lost compare-and-swap: read again, and come back at once"
    assert one.step(records) is None
    assert delivered_ids(server) == ["d-1.1", "d-1.1", "d-1.2"]
    stored = read_document(store, cursor_key("hook"), NotificationCursor)
    assert stored is not None and stored.document.handled == {"d-1": 2}


def test_a_standby_notifier_sleeps_even_with_a_retry_pending(server: Receiver, store: Store) -> None:
    """After `forget_view` (a `watch` lost its lease) a worker that was waiting to retry must sleep until a pass
    hands it records again, not wake over and over at its past retry time (review of issue 18's seventh round: the
    loop spun at 100 % CPU for as long as the standby lasted). When the lease comes back, it sends."""
    server.default = Reply(503)
    holding = {"lease": True}
    clock_calls = [0]

    def clock() -> Any:
        clock_calls[0] += 1
        from contract.clock import utc_now

        return utc_now()

    notifier = Notifier(store, may_deliver=lambda: holding["lease"], clock=clock)
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED]))
    wanted = desired(manifest({"webhook": {"url": server.url},
                               "retry": {"attempts": 50, "backoff": "50ms", "maxBackoff": "50ms"}}))
    try:
        notifier.on_pass(a_pass(State(), records, wanted))
        deadline = time.monotonic() + 10
        while len(server.requests) < 2 and time.monotonic() < deadline:  # retrying every 50 ms
            time.sleep(0.01)
        assert len(server.requests) >= 2
        holding["lease"] = False
        notifier.forget_view()
        time.sleep(0.2)  # a step in flight finishes; its retry time passes
        before, sent = clock_calls[0], len(server.requests)
        time.sleep(1.0)
        assert clock_calls[0] - before < 5, f"the standby worker woke {clock_calls[0] - before} times in 1 s"
        assert len(server.requests) == sent
        server.default = Reply(200)
        holding["lease"] = True
        notifier.on_pass(a_pass(State(), records, wanted))
        assert notifier.drain(timedelta(seconds=10)).done
        assert delivered_ids(server)[-1] == "d-1.1"
    finally:
        notifier.close()
