"""Delivering notifications: one background worker per `Notification`, fed after every pass.

Where it sits: `Notifier` is a pass listener (it has `on_pass`, like the CLI's progress display). The shell's
loops hand it every pass's outcome; it keeps the records as they are after the pass and wakes its workers, and
returns at once: a pass never waits for a provider. Each worker, in its own thread (so a slow Slack never delays
a webhook), does `NotificationWorker.step`:

1. read its cursor (`reconciler.notify.cursor`), or create it "from now" for a new notification, or restart it
   from now when its triggers changed;
2. work out its pending events (`reconciler.notify.feed`) and send them oldest first; after each answer write the
   cursor by compare-and-swap: delivered; or tried again later, with exponential backoff and jitter (or the
   provider's Retry-After) until `retry.attempts`; or given up, logged at error with the provider's answer;
3. stop at the first event that must wait, so events of one notification are never sent out of order (a commit
   status must not go success -> pending).

Only the reconciler holding the write lease delivers (`may_deliver`, checked before every send and every write):
a standby runs no passes and sends nothing, and a reconciler that lost its lease stops at the next event.

Exactly once, as far as it can be had (docs/notifications.md, "Exactly once"): each event exists once in the
store; its cursor is written right after the provider accepts it, so a reconciler killed between the provider's
answer and that write sends that one event again after restarting, with the same id (a webhook's
`X-Fleetshift-Delivery` and body `id`, SNS's FIFO deduplication id, a commit status that is the same status
again); killed anywhere else, nothing is sent twice. Slack cannot de-duplicate.

`reconcile --once` calls `drain` after its last pass, to wait (up to `--notify-timeout`) for what is pending;
what is left goes out on the next run because the cursor is in the store.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

import structlog

from contract.clock import Now, utc_now
from contract.events import Event
from contract.models import EventType
from contract.store import PreconditionFailed, Store, StoreError
from contract.store.docs import DocumentInvalid, Versioned, create_document, read_if_changed, replace_document
from reconciler.core.state import State
from reconciler.desired.manifests import Desired
from reconciler.desired.notification_spec import NotificationSpec, RetrySpec
from reconciler.notify import cursor as cursors
from reconciler.notify.attempt import Attempt, Provider
from reconciler.notify.cursor import NotificationCursor, cursor_key
from reconciler.notify.feed import fleet_log_start, pending_events

log = structlog.get_logger(__name__)

Result = Literal["delivered", "retried", "failed"]
#: Told about every attempt: (notification name, provider, result). For the metrics counter
#: `fleetshift_notifications_total`; must be quick and must not raise.
ResultHook = Callable[[str, str, Result], None]

#: How soon a worker tries again after the store failed it (a cursor it could not read or write).
STORE_RETRY = timedelta(seconds=5)
#: How long `close` waits for a worker in the middle of a request before leaving it (it is a daemon thread: an
#: answer it never records is sent again by the next reconciler, like after a crash).
CLOSE_GRACE_SECONDS = 1.0


class _SnapshotView(Protocol):
    @property
    def state(self) -> State: ...


class PassView(Protocol):
    """What the notifier reads of a pass (`reconciler.shell.passes.PassOutcome` has it; the shell is a layer above
    and is not imported)."""

    @property
    def snapshot(self) -> _SnapshotView: ...

    @property
    def state_after(self) -> State: ...

    @property
    def desired(self) -> Desired: ...


def make_provider(spec: NotificationSpec, *, clock: Now = utc_now) -> Provider:
    """The provider a spec names, with its own connection pool and the spec's timeout.

    Each provider's module (and urllib3, boto3) is imported here, when a notification needs it: every `reconcile`
    run hands its passes to a `Notifier`, and most config repos define no notification (issue 18)."""
    if spec.sns is not None:
        from reconciler.notify.sns import SnsProvider

        return SnsProvider(spec.sns, spec.timeout)
    from reconciler.notify.http import HttpPoster

    poster = HttpPoster(spec.timeout, clock=clock)
    if spec.webhook is not None:
        from reconciler.notify.webhook import WebhookProvider

        return WebhookProvider(spec.webhook, poster)
    if spec.slack is not None:
        from reconciler.notify.slack import SlackProvider

        return SlackProvider(spec.slack, poster)
    if spec.github_status is not None:
        from reconciler.notify.github import GitHubStatusProvider

        return GitHubStatusProvider(spec.github_status, poster)
    assert spec.gitlab_status is not None, "a spec has exactly one provider"
    from reconciler.notify.gitlab import GitLabStatusProvider

    return GitLabStatusProvider(spec.gitlab_status, poster)


def backoff_delay(retry: RetrySpec, attempts: int, rng: random.Random,
                  retry_after: timedelta | None = None) -> timedelta:
    """The wait before attempt `attempts + 1`: the provider's Retry-After when it gave one; else `backoff` doubled
    per attempt so far, capped at `maxBackoff`, and drawn between half and all of that ("equal jitter"), so
    reconcilers and notifications that failed together do not all come back together."""
    if retry_after is not None:
        return retry_after
    doublings = min(max(0, attempts - 1), 30)  # 2**30 backoffs is past any maxBackoff; more would overflow
    ceiling: timedelta = min(retry.backoff * (1 << doublings), retry.max_backoff)
    return ceiling / 2 + ceiling / 2 * rng.random()


class _Conflict(Exception):
    """Another writer changed the cursor since it was read: read it again before sending anything more."""


@dataclass
class _Reconfigure:
    spec: NotificationSpec
    baseline: State


class NotificationWorker:
    """One notification's deliveries. `step` is synchronous and takes its time from `clock`, so tests drive it
    with a fake clock and no sleeping; `Notifier` runs it in a thread."""

    def __init__(
        self,
        name: str,
        spec: NotificationSpec,
        store: Store,
        *,
        baseline: State,
        clock: Now = utc_now,
        rng: random.Random | None = None,
        on_result: ResultHook | None = None,
        may_deliver: Callable[[], bool] = lambda: True,
        provider: Provider | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_result = on_result
        self.may_deliver = may_deliver
        self.provider = provider or make_provider(spec, clock=clock)
        #: The records a new (or re-triggered) cursor counts as already handled: the state before the pass in
        #: which this notification, as it is now, was first seen.
        self.baseline = baseline
        self.key = cursor_key(name)
        self._cursor: Versioned[NotificationCursor] | None = None
        #: A cursor advanced after a send whose write failed (the store was away): written before anything else.
        self._unsaved: NotificationCursor | None = None
        #: Events still to send after the last step (for `drain` and logs).
        self.pending = 0
        #: When the head event is due again after the last step (None: nothing waits on time).
        self.due: datetime | None = None
        self.stopping = threading.Event()

    # ------------------------------------------------------------------------------------------
    # Configuration

    def reconfigure(self, spec: NotificationSpec, baseline: State) -> None:
        """The manifest changed. A new provider (a new URL, token source, timeout) takes effect for the next send;
        changed triggers also make the cursor start from now, from `baseline`."""
        if spec == self.spec:
            return
        if cursors.trigger_digest(spec) != cursors.trigger_digest(self.spec):
            self.baseline = baseline
        self.provider.close()
        self.spec = spec
        self.provider = make_provider(spec, clock=self.clock)

    def close(self) -> None:
        """Stop after the request in flight, if any (its thread closes the provider when it ends)."""
        self.stopping.set()

    # ------------------------------------------------------------------------------------------
    # One round

    def step(self, state: State) -> datetime | None:
        """Send what is pending in `state`, as far as possible now. Returns when to come back (the head event's
        next attempt), or None when nothing waits on time. Raises StoreError when the store failed it."""
        self.due = None
        if self.stopping.is_set() or not self.may_deliver():
            return None
        try:
            cursor = self._prepared(state)
            pending = pending_events(self.spec, cursor, state)
            self.pending = len(pending)
            folded = cursors.compacted(cursor, state, pending, self.clock())
            if folded is not cursor:
                self._save(folded)
                cursor = folded
            if cursor.head is not None and all(event.id != cursor.head.event_id for event in pending):
                cursor = cursor.model_copy(update={"head": None})  # its event is gone (pruned) or filtered out now
            for event in pending:
                if self.stopping.is_set() or not self.may_deliver():
                    return None
                head = cursor.head
                if head is not None and head.event_id == event.id and head.next_attempt_at > self.clock():
                    self.due = head.next_attempt_at
                    return self.due
                cursor, result = self._deliver(cursor, event)
                if result == "retried":
                    assert cursor.head is not None
                    self.due = cursor.head.next_attempt_at
                    return self.due
                self.pending -= 1
        except _Conflict:
            self._cursor = None
            self.due = self.clock()
            return self.due
        return None

    def _prepared(self, state: State) -> NotificationCursor:
        """The cursor to deliver from: unsaved progress written first; created or restarted from now; entries of
        deployments gone from every history pruned; the fleet log's gap skipped and counted."""
        if self._unsaved is not None:
            self._save(self._unsaved)
        cursor = self._read()
        now = self.clock()
        if cursor is None:
            cursor = cursors.fresh(self.name, self.spec, self.baseline, now)
            self._create(cursor)
            log.info("notify.started", notification=self.name, provider=self.spec.provider,
                     skipped_sources=len(cursor.handled),
                     note="starts from now: events recorded before are not sent")
        elif cursor.triggers != cursors.trigger_digest(self.spec):
            cursor = cursors.restarted(cursor, self.spec, self.baseline, now)
            self._save(cursor)
            log.info("notify.triggers_changed", notification=self.name, provider=self.spec.provider,
                     note="starts from now: events recorded before the change are not sent")
        changed = cursors.pruned(cursor, cursors.live_sources(state))
        if self._takes_fleet_events():
            changed, missed = cursors.caught_up(changed, fleet_log_start(state), now)
            if missed:
                log.warning("notify.missed", notification=self.name, events=missed,
                            reason="the fleet event log dropped them before they could be sent")
        if changed is not cursor:
            self._save(changed)
        return changed

    def _takes_fleet_events(self) -> bool:
        return self.spec.groups is None and EventType.COMMAND_REFUSED in self.spec.triggers()

    def _deliver(self, cursor: NotificationCursor, event: Event) -> tuple[NotificationCursor, Result]:
        """One attempt at `event`, its cursor written, its outcome logged and reported."""
        attempt = self._attempt(event)
        now = self.clock()
        tries = cursors.attempts_so_far(cursor, event) + 1
        result: Result
        if attempt.outcome == "delivered":
            cursor, result = cursors.delivered(cursor, event, now), "delivered"
        elif attempt.outcome == "retry" and tries < self.spec.retry.attempts:
            wait = backoff_delay(self.spec.retry, tries, self.rng, attempt.retry_after)
            cursor, result = cursors.retried(cursor, event, now, attempt.detail, now + wait), "retried"
        else:
            cursor, result = cursors.abandoned(cursor, event, now, attempt.detail), "failed"
        self._report(event, attempt, result, tries, cursor)
        self._save(cursor)
        return cursor, result

    def _attempt(self, event: Event) -> Attempt:
        try:
            return self.provider.send(event)
        except Exception as exc:  # a bug or an unclassified library error: this event's failure, not the worker's
            log.exception("notify.provider_crashed", notification=self.name, event_id=event.id)
            return Attempt.retry(f"unexpected {type(exc).__name__} in the {self.spec.provider} provider")

    def _report(self, event: Event, attempt: Attempt, result: Result, tries: int, cursor: NotificationCursor
                ) -> None:
        fields = {"notification": self.name, "provider": self.spec.provider, "event_id": event.id,
                  "type": event.type.value, "group": event.group}
        if result == "delivered":
            log.info("notify.delivered", **fields, answer=attempt.detail)
        elif result == "retried":
            assert cursor.head is not None
            log.warning("notify.retrying", **fields, attempt=tries, of=self.spec.retry.attempts,
                        next_attempt_at=cursor.head.next_attempt_at.isoformat(), error=attempt.detail)
        else:
            why = "refused" if attempt.outcome == "failed" else f"still failing after {tries} attempts"
            log.error("notify.abandoned", **fields, attempts=tries, why=why, error=attempt.detail,
                      destination=self.provider.describe())
        if self.on_result is not None:
            try:
                self.on_result(self.name, self.spec.provider, result)
            except Exception:
                log.exception("notify.on_result_failed", notification=self.name)

    # ------------------------------------------------------------------------------------------
    # The cursor in the store

    def _read(self) -> NotificationCursor | None:
        """The cursor as stored: a conditional read when one is cached (no bytes move when it is unchanged), so a
        cursor another reconciler moved on meanwhile is seen before anything is sent from a stale one."""
        try:
            self._cursor = read_if_changed(self.store, self.key, NotificationCursor, self._cursor)
        except DocumentInvalid as exc:
            # Unreadable, or refused by signature checks: nothing in it can be believed. Start from now over it
            # (by compare-and-swap on its version), rather than stop notifying for good.
            log.error("notify.cursor_unreadable", notification=self.name, key=self.key, error=str(exc),
                      note="starts from now")
            if exc.version is None:
                raise
            self._cursor = Versioned(cursors.fresh(self.name, self.spec, self.baseline, self.clock()), exc.version)
            self._save(self._cursor.document)
        return self._cursor.document if self._cursor is not None else None

    def _create(self, cursor: NotificationCursor) -> None:
        # Not for a notification being removed (its cursor is being deleted) nor without the lease.
        if self.stopping.is_set() or not self.may_deliver():
            raise _Conflict
        try:
            version = create_document(self.store, self.key, cursor)
        except PreconditionFailed:
            raise _Conflict from None
        self._cursor = Versioned(cursor, version)

    def _save(self, cursor: NotificationCursor) -> None:
        """Compare-and-swap on the version read. A lost race is `_Conflict` (read again); a store outage keeps
        the cursor in memory (`_unsaved`) and raises: nothing more is sent until it is written."""
        assert self._cursor is not None
        try:
            version = replace_document(self.store, self.key, cursor, self._cursor.version)
        except PreconditionFailed:
            self._unsaved = None
            log.warning("notify.cursor_conflict", notification=self.name, key=self.key,
                        note="another reconciler wrote it; read again")
            raise _Conflict from None
        except StoreError:
            self._unsaved = cursor
            raise
        self._cursor = Versioned(cursor, version)
        self._unsaved = None


@dataclass(frozen=True)
class DrainResult:
    """What `Notifier.drain` left: per notification not done, the events it still had to send at its last step
    (0 when the deadline came before it finished one: a request still in flight)."""

    left: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.left.values())

    @property
    def done(self) -> bool:
        return not self.left


class _Runner:
    """A worker's thread: steps on every new pass and when the head event is due."""

    def __init__(self, worker: NotificationWorker, notifier: Notifier) -> None:
        self.worker = worker
        self.notifier = notifier
        self.wake = threading.Event()
        #: The pass generation the worker last finished a step for, and whether that step left work on a timer.
        self.done_generation = -1
        self.failing = False
        self.reconfigure: _Reconfigure | None = None
        self.thread = threading.Thread(target=self._run, name=f"notify-{worker.name}", daemon=True)

    def _run(self) -> None:
        worker = self.worker
        due: datetime | None = None
        seen = -1
        while not worker.stopping.is_set():
            self.wake.clear()
            change, self.reconfigure = self.reconfigure, None
            if change is not None:
                worker.reconfigure(change.spec, change.baseline)
            generation, state = self.notifier.latest()
            if state is None:
                # No records (before the first pass, or on standby: `Notifier.forget_view`): nothing can be sent
                # until a pass hands some over, and wakes this thread. A retry time left from before must not be
                # waited for, or the loop would wake at once, over and over, for as long as the standby lasts.
                due = None
            now = worker.clock()
            if state is not None and (generation != seen or (due is not None and now >= due)):
                seen = generation
                try:
                    due = worker.step(state)
                    self.failing = False
                except StoreError as exc:
                    log.warning("notify.store_failed", notification=worker.name, error=str(exc),
                                retry_in=STORE_RETRY.total_seconds())
                    due, self.failing = worker.clock() + STORE_RETRY, True
                except Exception:
                    log.exception("notify.worker_failed", notification=worker.name)
                    due, self.failing = worker.clock() + STORE_RETRY, True
                self.done_generation = generation
                self.notifier.progressed()
            timeout = None if due is None else max(0.0, (due - worker.clock()).total_seconds())
            self.wake.wait(timeout)
        worker.provider.close()

    def busy(self, generation: int) -> bool:
        return self.done_generation < generation or self.worker.pending > 0 or self.failing


class Notifier:
    """Every notification of the current manifests, delivered in the background; a pass listener."""

    def __init__(
        self,
        store: Store,
        *,
        may_deliver: Callable[[], bool],
        clock: Now = utc_now,
        on_result: ResultHook | None = None,
    ) -> None:
        self.store = store
        self.may_deliver = may_deliver
        self.clock = clock
        self.on_result = on_result
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._generation = 0
        self._state: State | None = None
        self._runners: dict[str, _Runner] = {}
        self._names: frozenset[str] | None = None

    def set_result_hook(self, on_result: ResultHook) -> None:
        """Report every attempt from now on (the metrics counter is wired after the notifier is built)."""
        self.on_result = on_result
        for runner in list(self._runners.values()):
            runner.worker.on_result = on_result

    # ------------------------------------------------------------------------------------------
    # Fed by the passes

    def on_pass(self, outcome: PassView) -> None:
        """Take the records as they are after the pass, start, reconfigure or stop workers, wake them. Returns at
        once; never raises for the store (it is not touched here, but for removed notifications' cursors)."""
        specs = {name: manifest.spec for name, manifest in outcome.desired.notifications.items()}
        names = frozenset(specs)
        if not specs and not self._runners and self._names == names:
            return
        baseline = outcome.snapshot.state
        with self._lock:
            self._generation += 1
            self._state = outcome.state_after
            for name in [name for name in self._runners if name not in specs]:
                gone = self._runners.pop(name)
                gone.worker.close()
                gone.wake.set()
                log.info("notify.stopped", notification=name, reason="no longer in the manifests")
            for name, spec in specs.items():
                runner = self._runners.get(name)
                if runner is None:
                    worker = NotificationWorker(name, spec, self.store, baseline=baseline, clock=self.clock,
                                                on_result=self.on_result, may_deliver=self.may_deliver)
                    runner = self._runners[name] = _Runner(worker, self)
                    runner.thread.start()
                elif spec != runner.worker.spec:
                    runner.reconfigure = _Reconfigure(spec, baseline)
                runner.wake.set()
        if names != self._names:
            self._names = names
            self._forget_removed(names)

    def forget_view(self) -> None:
        """Standby (a `watch` lost its lease): drop the records of the last pass. Workers send nothing meanwhile
        (`may_deliver` is false and they step only on a state) and sleep until a pass wakes them, any retry they
        were waiting for dropped, and when this process leads again its next pass
        hands them the records as they are then; what was recorded meanwhile is in the event stream, which
        their cursors resume from, as after a restart."""
        with self._lock:
            self._generation += 1
            self._state = None
            runners = list(self._runners.values())
        for runner in runners:
            runner.wake.set()  # each drops any retry it was waiting for (`_Runner._run`)

    def latest(self) -> tuple[int, State | None]:
        with self._lock:
            return self._generation, self._state

    def progressed(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _forget_removed(self, names: frozenset[str]) -> None:
        """Delete the cursors of notifications no longer in the manifests, so that one added again later starts
        from now instead of replaying what happened while it was gone. Under the lease only; a store error is
        logged and the cursor left (harmless until the name comes back)."""
        if not self.may_deliver():
            return
        try:
            for item in self.store.list(cursors.NOTIFICATIONS_PREFIX):
                name = item.key[len(cursors.NOTIFICATIONS_PREFIX):].removesuffix(".json")
                if item.key.endswith(".json") and name not in names:
                    self.store.delete(item.key)
                    log.info("notify.cursor_removed", notification=name, key=item.key)
        except StoreError as exc:
            log.warning("notify.cleanup_failed", error=str(exc))

    # ------------------------------------------------------------------------------------------
    # Ending a run

    def drain(self, timeout: timedelta, *, tick: Callable[[], None] | None = None) -> DrainResult:
        """Wait until every notification has sent what the last pass recorded, or `timeout`; `tick` is called
        between waits from the caller's thread (to keep the lease renewed). Ends early when everything left is
        waiting for a retry time past the deadline."""
        deadline = time.monotonic() + timeout.total_seconds()
        generation, _ = self.latest()
        while True:
            runners = list(self._runners.values())
            busy = [runner for runner in runners if runner.busy(generation)]
            remaining = deadline - time.monotonic()
            if not busy or remaining <= 0 or self._all_due_after(busy, remaining):
                return DrainResult({runner.worker.name: runner.worker.pending for runner in busy})
            if tick is not None:
                tick()
            with self._progress:
                self._progress.wait(min(remaining, 0.25))

    def _all_due_after(self, busy: list[_Runner], remaining: float) -> bool:
        now = self.clock()
        dues = [runner.worker.due for runner in busy]
        return all(due is not None and (due - now).total_seconds() > remaining for due in dues) and all(
            runner.done_generation >= self._generation for runner in busy)

    def close(self) -> None:
        """Stop every worker (a request in flight is left to finish or die with the process; what it does not
        record is sent again later, like after a crash)."""
        runners = list(self._runners.values())
        self._runners.clear()
        for runner in runners:
            runner.worker.stopping.set()
            runner.wake.set()
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        for runner in runners:
            runner.thread.join(max(0.0, deadline - time.monotonic()))


__all__ = [
    "DrainResult",
    "NotificationWorker",
    "Notifier",
    "PassView",
    "Result",
    "ResultHook",
    "backoff_delay",
    "make_provider",
]
