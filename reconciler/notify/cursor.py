"""Where each notification is in the event stream: `events/notifications/<name>.json`, one document per
notification, written by the reconciler holding the lease, by compare-and-swap, signed like every `events/` key.

What it records: per source (a deployment id, or "fleet") the highest event seq handled, handled meaning
delivered or given up; the head event's attempts and when to try it next (so a backoff survives a restart and a
kill never resets the count); totals; the last delivery and the last error with their times, for
`reconcile status`.

Why per source and not one position in the stream: events are numbered within their document (`<source>.<seq>`,
`contract.events`), and a deployment's numbers never change, so "up to seq 7 of d-3f2a…" means the same thing
to every reconciler that reads it, whatever else was recorded in between.

The transitions are pure functions (`fresh`, `delivered`, `retried`, `abandoned`, `pruned`, `caught_up`) that
return a new cursor; the worker writes each one right after the provider's answer (`reconciler.notify.deliver`).
So a reconciler killed after a provider accepted an event and before this write sends that one event again after
a restart, with the same id; killed at any other point, it sends nothing twice (docs/notifications.md,
"Exactly once").

Bounded: entries of deployments that left every group's history are pruned, and entries of deployments that
finished over an hour ago with every event handled are folded into one time, `compactedBefore` (`compacted`):
an event of a deployment the cursor has no entry for counts as handled when it was recorded before that time. So
the document holds the deployments of the last hour, not every group's whole history (20,000 entries were 430 KiB,
near the 1 MiB an `events/` document may have). Why an hour: events are recorded with the pass's time, and a
deployment's next event cannot be recorded earlier than that unless two reconcilers' clocks disagree by more,
which the lease already rules out (docs/design.md: reconciler machines need NTP).

A new notification, or one whose triggers changed, starts "from now" (as Argo CD's notifications do): its cursor
is created with every event already recorded counted as handled, so adding a Slack channel does not replay
months of history into it. Entries of deployments that left every group's history are pruned, which bounds the
document by the history the store keeps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from pydantic import Field

from contract.events import FLEET_SOURCE, Event
from contract.keys import EVENTS_PREFIX
from contract.models import Document, Model
from reconciler.core.state import State
from reconciler.desired.notification_spec import NotificationSpec

NOTIFICATIONS_PREFIX = f"{EVENTS_PREFIX}notifications/"


def cursor_key(name: str) -> str:
    """Written by the reconciler holding the lease (names are manifest names: safe as a key segment)."""
    return f"{NOTIFICATIONS_PREFIX}{name}.json"


class HeadAttempt(Model):
    """The oldest event not yet handled, after at least one failed try."""

    event_id: str
    attempts: int = Field(ge=1)
    next_attempt_at: datetime
    last_error: str


class NotificationCursor(Document):
    name: str
    #: The manifest's provider field when the cursor was written (shown by status).
    provider: str
    #: A digest of what the notification matches (`trigger_digest`): when it changes, the cursor starts from now.
    triggers: str
    created_at: datetime
    updated_at: datetime
    #: Source (deployment id, or "fleet") -> the highest seq handled (delivered or given up).
    handled: dict[str, int] = Field(default_factory=dict)
    #: Events of a source with no entry in `handled`, recorded before this time, count as handled (`compacted`).
    compacted_before: datetime | None = None
    head: HeadAttempt | None = None
    delivered_total: int = 0
    #: Events given up after their last attempt or a permanent refusal.
    failed_total: int = 0
    #: Attempts that failed and were tried again.
    retried_total: int = 0
    #: Fleet events dropped from the bounded fleet log before they could be sent.
    missed_total: int = 0
    last_delivered_at: datetime | None = None
    last_delivered_event: str | None = None
    last_error_at: datetime | None = None
    last_error_event: str | None = None
    #: The provider's answer (or the transport's failure), without secrets.
    last_error: str | None = None
    last_failed_at: datetime | None = None
    last_failed_event: str | None = None


def trigger_digest(spec: NotificationSpec) -> str:
    """What decides which events a notification sends, as a short digest: types, severity, groups, provider."""
    parts = [
        spec.provider,
        ",".join(sorted(event.value for event in spec.triggers())),
        spec.min_severity.value if spec.min_severity is not None else "",
        ",".join(sorted(spec.groups)) if spec.groups is not None else "*",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def recorded_heads(state: State) -> dict[str, int]:
    """Source -> the last seq recorded in `state`: everything a notification starting now counts as handled."""
    heads = {
        deployment_id: deployment.events[-1].seq
        for deployment_id, deployment in state.deployments.items()
        if deployment.events
    }
    if state.fleet_events is not None and state.fleet_events.last_seq:
        heads[FLEET_SOURCE] = state.fleet_events.last_seq
    return heads


def fresh(name: str, spec: NotificationSpec, baseline: State, now: datetime) -> NotificationCursor:
    """A cursor starting from now: every event in `baseline` handled (folded at once where it can be, so a new
    cursor is small however long the histories are)."""
    cursor = NotificationCursor(name=name, provider=spec.provider, triggers=trigger_digest(spec), created_at=now,
                                updated_at=now, handled=recorded_heads(baseline))
    return compacted(cursor, baseline, [], now)


def restarted(cursor: NotificationCursor, spec: NotificationSpec, baseline: State, now: datetime
              ) -> NotificationCursor:
    """The cursor of a notification whose triggers changed: from now for what it matches now, totals kept."""
    heads = recorded_heads(baseline)
    handled = {source: max(seq, heads.get(source, 0)) for source, seq in cursor.handled.items()}
    handled.update({source: seq for source, seq in heads.items() if source not in handled})
    restarted = cursor.model_copy(update={"provider": spec.provider, "triggers": trigger_digest(spec),
                                          "handled": handled, "head": None, "updated_at": now})
    return compacted(restarted, baseline, [], now)


def _handled(cursor: NotificationCursor, event: Event) -> dict[str, int]:
    return {**cursor.handled, event.source: max(event.seq, cursor.handled.get(event.source, 0))}


def attempts_so_far(cursor: NotificationCursor, event: Event) -> int:
    return cursor.head.attempts if cursor.head is not None and cursor.head.event_id == event.id else 0


def delivered(cursor: NotificationCursor, event: Event, now: datetime) -> NotificationCursor:
    return cursor.model_copy(update={
        "handled": _handled(cursor, event), "head": None, "delivered_total": cursor.delivered_total + 1,
        "last_delivered_at": now, "last_delivered_event": event.id, "updated_at": now,
    })


def retried(cursor: NotificationCursor, event: Event, now: datetime, error: str, next_attempt_at: datetime
            ) -> NotificationCursor:
    head = HeadAttempt(event_id=event.id, attempts=attempts_so_far(cursor, event) + 1,
                       next_attempt_at=next_attempt_at, last_error=error)
    return cursor.model_copy(update={
        "head": head, "retried_total": cursor.retried_total + 1, "last_error": error, "last_error_at": now,
        "last_error_event": event.id, "updated_at": now,
    })


def abandoned(cursor: NotificationCursor, event: Event, now: datetime, error: str) -> NotificationCursor:
    """Given up: handled (later events go on), counted, and remembered as the last failure."""
    return cursor.model_copy(update={
        "handled": _handled(cursor, event), "head": None, "failed_total": cursor.failed_total + 1,
        "last_error": error, "last_error_at": now, "last_error_event": event.id, "last_failed_at": now,
        "last_failed_event": event.id, "updated_at": now,
    })


#: How old a finished deployment's last event must be before its entry is folded into `compacted_before`.
COMPACT_AFTER = timedelta(hours=1)


def is_handled(cursor: NotificationCursor, source: str, seq: int, at: datetime) -> bool:
    """Whether the event `<source>.<seq>` recorded at `at` was handled: by the source's entry, or, without one, by
    `compacted_before`."""
    seen = cursor.handled.get(source)
    if seen is not None:
        return seq <= seen
    return cursor.compacted_before is not None and at < cursor.compacted_before


def compacted(cursor: NotificationCursor, state: State, pending: Iterable[Event], now: datetime
              ) -> NotificationCursor:
    """Entries of deployments that finished, with every event handled, and whose last event is older than
    `COMPACT_AFTER` folded into `compacted_before`. The time never passes a pending event of a source without an
    entry (it would count as handled), and never goes back."""
    horizon = now - COMPACT_AFTER
    for event in pending:
        if event.source not in cursor.handled:
            horizon = min(horizon, event.at)
    if cursor.compacted_before is not None:
        horizon = max(horizon, cursor.compacted_before)
    folded = {
        source for source, seq in cursor.handled.items()
        if (deployment := state.deployments.get(source)) is not None and deployment.status.finished
        and deployment.events and deployment.events[-1].seq <= seq and deployment.events[-1].at < horizon
    }
    if not folded:
        return cursor  # the time moves only with entries folded into it: no write for nothing
    handled = {source: seq for source, seq in cursor.handled.items() if source not in folded}
    return cursor.model_copy(update={"handled": handled, "compacted_before": horizon})


def live_sources(state: State) -> set[str]:
    """Sources whose events can still come: deployments some group names (in flight or in its history), and the
    fleet. Judged from the group records, not from which deployment documents could be read: a deployment that
    is unreadable for a pass must not lose its entry (its events would all be sent again)."""
    live = {FLEET_SOURCE}
    for group in state.groups.values():
        live.update(group.history)
        if group.deployment_in_flight:
            live.add(group.deployment_in_flight)
    return live


def pruned(cursor: NotificationCursor, live: Iterable[str]) -> NotificationCursor:
    keep = set(live)
    handled = {source: seq for source, seq in cursor.handled.items() if source in keep}
    if len(handled) == len(cursor.handled):
        return cursor
    return cursor.model_copy(update={"handled": handled})


def caught_up(cursor: NotificationCursor, fleet_first_seq: int | None, now: datetime
              ) -> tuple[NotificationCursor, int]:
    """When the bounded fleet log dropped events this notification had not handled yet: the cursor moved past
    the gap, and how many were missed (they cannot be sent any more; the count is shown)."""
    if fleet_first_seq is None:
        return cursor, 0
    seen = cursor.handled.get(FLEET_SOURCE, 0)
    missed = fleet_first_seq - 1 - seen
    if missed <= 0:
        return cursor, 0
    handled: Mapping[str, int] = {**cursor.handled, FLEET_SOURCE: fleet_first_seq - 1}
    return cursor.model_copy(update={"handled": dict(handled), "missed_total": cursor.missed_total + missed,
                                     "updated_at": now}), missed


__all__ = [
    "NOTIFICATIONS_PREFIX",
    "HeadAttempt",
    "NotificationCursor",
    "abandoned",
    "attempts_so_far",
    "caught_up",
    "compacted",
    "cursor_key",
    "delivered",
    "fresh",
    "is_handled",
    "live_sources",
    "pruned",
    "recorded_heads",
    "restarted",
    "retried",
    "trigger_digest",
]
