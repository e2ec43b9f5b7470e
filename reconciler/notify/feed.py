"""The events one notification has still to send, in stream order: a pure function of the records and the cursor.

Why from the records and not from what a pass wrote: the records are what survives a crash. A reconciler that
starts again finds every event in the deployment documents and the fleet log, and its notifications' cursors
beside them, so what is pending after a restart is exactly what was pending before it.

Cheap on a large store: a deployment whose last seq the cursor has already handled is skipped on one comparison,
and the public `Event`s (`contract.events`) are built only for deployments with something new that matches. At
1,000 groups with 20 deployments of 20 events in each history (400,000 events), a look that finds nothing new
takes about 80 ms, in the notification's own thread, never in a pass (bench/bench_notify.py).
"""

from __future__ import annotations

import fnmatch

from contract.events import FLEET_SOURCE, Event, from_deployment, from_fleet_log, in_order
from contract.models import Deployment, EventType, RecordedEvent, group_key
from reconciler.core.state import State
from reconciler.desired.notification_spec import STATUS_PROVIDERS, NotificationSpec
from reconciler.notify.cursor import NotificationCursor, is_handled


def pending_events(spec: NotificationSpec, cursor: NotificationCursor, state: State) -> list[Event]:
    """Events of `state` that `spec` sends and `cursor` has not handled, oldest first (`contract.events.in_order`)."""
    types = spec.triggers()
    found: list[Event] = []
    for deployment in state.deployments.values():
        source = deployment.deployment_id
        if not deployment.events:
            continue
        last = deployment.events[-1]
        if is_handled(cursor, source, last.seq, last.at) or not _deployment_may_match(spec, deployment):
            continue
        if not any(_may_match(spec, types, recorded) for recorded in deployment.events
                   if not is_handled(cursor, source, recorded.seq, recorded.at)):
            continue
        found.extend(event for event in from_deployment(deployment)
                     if not is_handled(cursor, source, event.seq, event.at) and spec.wants(event, types))
    log = state.fleet_events
    if log is not None and spec.groups is None and spec.provider not in STATUS_PROVIDERS:
        seen = cursor.handled.get(FLEET_SOURCE, 0)
        if log.events and log.events[-1].seq > seen:
            found.extend(event for event in from_fleet_log(log) if event.seq > seen and spec.wants(event, types))
    return in_order(found)


def fleet_log_start(state: State) -> int | None:
    """The seq of the oldest event the bounded fleet log still keeps (None: it keeps none)."""
    log = state.fleet_events
    return log.events[0].seq if log is not None and log.events else None


def _deployment_may_match(spec: NotificationSpec, deployment: Deployment) -> bool:
    """The cheap checks of `NotificationSpec.wants` that depend on the deployment only."""
    if spec.groups is not None:
        group = group_key(deployment.application, deployment.deployment_group)
        if not any(fnmatch.fnmatchcase(group, pattern) for pattern in spec.groups):
            return False
    return spec.provider not in STATUS_PROVIDERS or (deployment.creator == "user"
                                                      and deployment.source_commit is not None)


def _may_match(spec: NotificationSpec, types: frozenset[EventType], recorded: RecordedEvent) -> bool:
    if recorded.type not in types:
        return False
    return spec.min_severity is None or recorded.severity.rank >= spec.min_severity.rank


__all__ = ["fleet_log_start", "pending_events"]
