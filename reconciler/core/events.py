"""The event stream, decided in the core: what each pass's writes mean to an on-call engineer.

Where it sits: `reconcile()` decides actions; `record_events` then compares every deployment document an action
writes with the same deployment as it was before (recorded, or as an earlier action of this pass left it) and
appends what changed as `RecordedEvent`s to the document itself. The event is therefore stored by the same
compare-and-swap write as the change it reports (the transactional-outbox pattern): a crash before that write
loses both, and the next pass decides the change again and records its event then; a crash after it keeps both,
and the next pass, comparing against the stored document, finds nothing new. So an event is never lost and never
recorded twice, whatever is killed when (docs/events.md, "Exactly once"), and no write is added to a pass.

Events that belong to no deployment (a host that refused a command) go to one bounded log, `events/fleet.json`,
written by `RecordFleetEvents` by compare-and-swap, with the newest refusal already recorded per host, so each
refusal an agent keeps reporting becomes one event.

Derived from documents, not from the actions' reasons, so an event says what was written, in the same words
`reconcile status` and `history` use. Pure: no clock (`at` is the pass's `now`), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from contract.models import (
    FLEET_EVENTS_KEPT,
    Deployment,
    DeploymentStatus,
    EventSeverity,
    EventType,
    FleetEventLog,
    GateResult,
    HostDeploymentState,
    HostDeploymentStatus,
    RecordedEvent,
)
from contract.redact import public_host_text
from reconciler.core.actions import (
    Action,
    FinishDeployment,
    RecordFleetEvents,
    StartDeployment,
    StartRollback,
)
from reconciler.core.observed import Observed
from reconciler.core.state import State

#: Severity of each event type: what Slack colours and `minSeverity` filter on.
SEVERITY: dict[EventType, EventSeverity] = {
    EventType.DEPLOYMENT_STARTED: EventSeverity.INFO,
    EventType.ROLLBACK_STARTED: EventSeverity.WARNING,
    EventType.BATCH_STARTED: EventSeverity.INFO,
    EventType.HOST_SUCCEEDED: EventSeverity.INFO,
    EventType.HOST_FAILED: EventSeverity.WARNING,
    EventType.HOST_LEFT: EventSeverity.INFO,
    EventType.HOST_MISSING: EventSeverity.WARNING,
    EventType.GATE_PASSED: EventSeverity.INFO,
    EventType.GATE_FAILED: EventSeverity.ERROR,
    EventType.GATE_INCONCLUSIVE: EventSeverity.WARNING,
    EventType.DEPLOYMENT_BAKING: EventSeverity.INFO,
    EventType.DEPLOYMENT_SUCCEEDED: EventSeverity.INFO,
    EventType.DEPLOYMENT_FAILED: EventSeverity.ERROR,
    EventType.DEPLOYMENT_STOPPED: EventSeverity.WARNING,
    EventType.DEPLOYMENT_SUPERSEDED: EventSeverity.INFO,
    EventType.ROLLBACK_SUCCEEDED: EventSeverity.WARNING,
    EventType.ROLLBACK_FAILED: EventSeverity.CRITICAL,
    EventType.REVISION_QUARANTINED: EventSeverity.ERROR,
    EventType.COMMAND_REFUSED: EventSeverity.ERROR,
}

_GATE_EVENT = {
    GateResult.SUCCESSFUL: EventType.GATE_PASSED,
    GateResult.FAILED: EventType.GATE_FAILED,
    GateResult.INCONCLUSIVE: EventType.GATE_INCONCLUSIVE,
}

#: Where a finished deployment's status leads, by creator kind (a rollback's end is its own event: the fleet is
#: back on the last good revision, or, worse, is not).
_ENDED = {
    (False, DeploymentStatus.SUCCEEDED): EventType.DEPLOYMENT_SUCCEEDED,
    (False, DeploymentStatus.FAILED): EventType.DEPLOYMENT_FAILED,
    (False, DeploymentStatus.STOPPED): EventType.DEPLOYMENT_STOPPED,
    (False, DeploymentStatus.SUPERSEDED): EventType.DEPLOYMENT_SUPERSEDED,
    (True, DeploymentStatus.SUCCEEDED): EventType.ROLLBACK_SUCCEEDED,
    (True, DeploymentStatus.FAILED): EventType.ROLLBACK_FAILED,
    (True, DeploymentStatus.STOPPED): EventType.DEPLOYMENT_STOPPED,
    (True, DeploymentStatus.SUPERSEDED): EventType.DEPLOYMENT_SUPERSEDED,
}


def record_events(actions: list[Action], state: State, observed: Observed, now: datetime) -> list[Action]:
    """`actions` with every deployment document they write carrying the events of its change, and a
    `RecordFleetEvents` at the end when a host reported a refusal not yet recorded."""
    latest: dict[str, Deployment] = {}
    out: list[Action] = []
    order = 0
    for decided in actions:
        action = decided
        deployment = getattr(action, "deployment", None)
        if isinstance(deployment, Deployment):
            before = latest.get(deployment.deployment_id) or state.deployments.get(deployment.deployment_id)
            stored = state.deployments.get(deployment.deployment_id)
            # Recorded by a version without events: what it had measured by its last write is old news.
            legacy_until = stored.updated_at if stored is not None and not stored.events else None
            drafts = _deployment_changes(before, deployment, action, observed, legacy_until)
            recorded = list(before.events) if before is not None else []
            if drafts or deployment.events != recorded:
                numbered = _numbered(recorded[-1].seq if recorded else 0, drafts, now, order)
                order += len(numbered)
                deployment = deployment.model_copy(update={"events": [*recorded, *numbered]})
                action = action.model_copy(update={"deployment": deployment})
            latest[deployment.deployment_id] = deployment
        out.append(action)
    # An unreadable fleet log is never rewritten from scratch (its numbers would start again at 1): the shell has
    # logged it, and refusals wait until it is readable or removed.
    fleet = None if state.fleet_events_unreadable else fleet_events(state.fleet_events, observed, now, order)
    if fleet is not None:
        out.append(fleet)
    return out


class _Draft:
    """An event before it has its number and time."""

    __slots__ = ("fields", "type")

    def __init__(self, type: EventType, **fields: object) -> None:
        self.type = type
        self.fields = fields


def _numbered(last_seq: int, drafts: Sequence[_Draft], now: datetime, order: int) -> list[RecordedEvent]:
    return [
        RecordedEvent.model_validate(
            {
                "seq": last_seq + offset,
                "type": draft.type,
                "severity": SEVERITY[draft.type],
                "at": now,
                "order": order + offset - 1,
                **draft.fields,
            }
        )
        for offset, draft in enumerate(drafts, start=1)
    ]


def _deployment_changes(
    before: Deployment | None, after: Deployment, action: Action, observed: Observed, legacy_until: datetime | None
) -> list[_Draft]:
    drafts: list[_Draft] = []
    rollback = after.creator == "rollback"
    if before is None:
        drafts.append(_started(after, action))
        drafts.extend(_missing(after, observed))
    drafts.extend(_gates(before, after, observed, legacy_until))
    drafts.extend(_host_results(before, after))
    drafts.extend(_batches(before, after))
    status_before = before.status if before is not None else DeploymentStatus.CREATED
    if after.status != status_before:
        if after.status == DeploymentStatus.BAKING:
            drafts.append(_Draft(EventType.DEPLOYMENT_BAKING, message=_reason(action) or "baking"))
        elif after.status.finished:
            drafts.append(_Draft(_ENDED[(rollback, after.status)], message=_host_words(_ended_message(after), 1000)))
    already = before is not None and any(e.type is EventType.REVISION_QUARANTINED for e in before.events)
    if isinstance(action, FinishDeployment) and action.quarantined and not already:
        drafts.append(
            _Draft(
                EventType.REVISION_QUARANTINED,
                message=_host_words(
                    f"{after.revision.short()} is quarantined: it is not deployed again until the manifests "
                    f"change ({action.reason})",
                    1000,
                ),
            )
        )
    return drafts


def _reason(action: Action) -> str | None:
    reason = getattr(action, "reason", None)
    return reason if isinstance(reason, str) else None


def _started(after: Deployment, action: Action) -> _Draft:
    hosts = [host for host, state in after.hosts.items() if state.status != HostDeploymentStatus.SKIPPED]
    reason = _reason(action)
    reason = _host_words(reason, 1000) if reason else None
    if isinstance(action, StartRollback) or after.creator == "rollback":
        text = f"rolling back {after.rollback_of or 'a failed deployment'} to {after.revision.short()} on "
        return _Draft(EventType.ROLLBACK_STARTED, message=text + _count(hosts) + (f": {reason}" if reason else ""))
    kind = "catch-up of " if after.creator == "outdated" else ""
    text = f"{kind}{after.revision.short()} on {_count(hosts)}"
    if isinstance(action, StartDeployment) and action.revision_from is not None:
        text = f"{kind}{action.revision_from.short()} -> {after.revision.short()} on {_count(hosts)}"
    return _Draft(EventType.DEPLOYMENT_STARTED, message=text + (f": {reason}" if reason else ""))


def _count(hosts: Sequence[str]) -> str:
    return f"{len(hosts)} host" + ("" if len(hosts) == 1 else "s")


def _missing(after: Deployment, observed: Observed) -> Iterable[_Draft]:
    """Members with no agent registered when the deployment starts (an EC2 instance whose agent never came up, a
    named host never seen): each counts as a failed host when its turn comes, so the on-call hears of it now."""
    for host, state in after.hosts.items():
        if state.status == HostDeploymentStatus.SKIPPED or host in observed.registrations:
            continue
        yield _Draft(EventType.HOST_MISSING, host=host, message=f"{host}: no agent has registered as this host")


def _gates(
    before: Deployment | None, after: Deployment, observed: Observed, legacy_until: datetime | None
) -> Iterable[_Draft]:
    """Each gate measurement once, when the first deployment write after it is made (the write that acts on it)."""
    analysis = observed.analysis.get(after.deployment_id)
    if analysis is None:
        return
    seen = {
        (event.gate, event.checkpoint, event.occurred_at)
        for event in (before.events if before is not None else ())
        if event.gate is not None
    }
    for measurement in analysis.measurements:
        if (measurement.gate, measurement.checkpoint, measurement.measured_at) in seen:
            continue
        if legacy_until is not None and measurement.measured_at <= legacy_until:
            continue
        yield _Draft(
            _GATE_EVENT[measurement.result],
            gate=measurement.gate,
            checkpoint=measurement.checkpoint,
            occurred_at=measurement.measured_at,
            message=_host_words(
                f"gate {measurement.gate} at {measurement.checkpoint} (measurement {measurement.index + 1}): "
                f"{measurement.result.value}: {measurement.message}"
            ),
        )


def _host_results(before: Deployment | None, after: Deployment) -> Iterable[_Draft]:
    if before is None:
        return
    ended: list[tuple[str, HostDeploymentState]] = []
    for host, state in after.hosts.items():
        previous = before.hosts.get(host)
        if state is previous or (previous is not None and previous.status == state.status):
            continue
        if state.status in (HostDeploymentStatus.SUCCEEDED, HostDeploymentStatus.FAILED) or (
            state.status == HostDeploymentStatus.SKIPPED and state.left_group
        ):
            ended.append((host, state))
    for host, state in sorted(ended, key=lambda item: (item[1].finished_at or after.updated_at, item[0])):
        if state.status == HostDeploymentStatus.SUCCEEDED:
            kind, text = EventType.HOST_SUCCEEDED, "succeeded"
        elif state.status == HostDeploymentStatus.FAILED:
            kind, text = EventType.HOST_FAILED, "failed"
        else:
            kind, text = EventType.HOST_LEFT, f"left the group ({state.left_group})"
        detail = f": {state.message}" if state.message and kind != EventType.HOST_LEFT else ""
        message = _host_words(f"{host} {text}{detail}")
        yield _Draft(kind, host=host, batch=state.batch, occurred_at=state.finished_at, message=message)


def _batches(before: Deployment | None, after: Deployment) -> Iterable[_Draft]:
    """A batch starts when its hosts are first marked dispatched (one event per batch, not per host)."""
    started: dict[int, list[str]] = {}
    for host, state in after.hosts.items():
        if state.dispatched_at is None or state.batch is None:
            continue
        previous = before.hosts.get(host) if before is not None else None
        if previous is not None and previous.dispatched_at is not None:
            continue
        started.setdefault(state.batch, []).append(host)
    for batch in sorted(started):
        hosts = started[batch]
        yield _Draft(
            EventType.BATCH_STARTED,
            batch=batch,
            hosts=hosts,
            message=f"batch {batch + 1}: {after.revision.short()} to {', '.join(hosts)}",
        )


def _ended_message(after: Deployment) -> str:
    counts: dict[HostDeploymentStatus, int] = {}
    for state in after.hosts.values():
        counts[state.status] = counts.get(state.status, 0) + 1
    summary = ", ".join(f"{count} {status.value.lower()}" for status, count in sorted(counts.items()))
    what = f"{after.revision.short()} {after.status.value.lower()}"
    if after.creator == "rollback":
        what = f"rollback of {after.rollback_of} to {after.revision.short()} {after.status.value.lower()}"
    code = f" [{after.error_code}]" if after.error_code else ""
    reason = f": {after.error_message}" if after.error_message else ""
    return f"{what}{code}{reason} (hosts: {summary})"


#: The most of a host's words one event keeps (the deployment record keeps its own, longer copy): a 10,000-host
#: failure must not double the record's size (the deployment document's read limit is 32 MiB).
EVENT_TEXT_LIMIT = 300


def _host_words(text: str, limit: int = EVENT_TEXT_LIMIT) -> str:
    return public_host_text(text, limit=limit)


def fleet_events(
    log: FleetEventLog | None, observed: Observed, now: datetime, order: int = 0
) -> RecordFleetEvents | None:
    """Refusals reported by agents and not yet recorded (each host reports its last few). A refusal is known by
    its time, key and version as the host reported them, so a host clock that jumps back loses nothing; more
    refusals than a host lists between two reads become one event saying how many were not seen."""
    seen = dict(log.refusals_seen) if log is not None else {}
    totals = dict(log.refused_totals) if log is not None else {}
    drafts: list[tuple[datetime, str, _Draft]] = []
    now_seen: dict[str, list[str]] = {}
    now_totals: dict[str, int] = {}
    for host in sorted(observed.statuses):
        status = observed.statuses[host]
        if status.refused_total:
            now_totals[host] = status.refused_total
        if not status.refusals:
            continue
        known = set(seen.get(host, ()))
        prints = []
        new = 0
        for refusal in status.refusals:
            fingerprint = f"{refusal.at.isoformat()}|{refusal.key}|{refusal.version}"
            prints.append(fingerprint)
            if fingerprint in known:
                continue
            new += 1
            drafts.append((refusal.at, host, _Draft(
                EventType.COMMAND_REFUSED,
                host=host,
                occurred_at=refusal.at,
                message=_host_words(f"{host} refused {refusal.key} (version {refusal.version}): {refusal.reason}"),
            )))
        now_seen[host] = prints
        unseen = status.refused_total - totals.get(host, 0) - new
        if host in totals and unseen > 0:
            drafts.append((now, host, _Draft(
                EventType.COMMAND_REFUSED,
                host=host,
                message=f"{host} refused {unseen} more command(s) than it still lists (it keeps its last "
                f"{len(status.refusals)}); its agent log has each",
            )))
    if not drafts:
        return None
    recorded = list(log.events) if log is not None else []
    ordered = [draft for _, _, draft in sorted(drafts, key=lambda item: (item[0], item[1]))]
    events = _numbered(log.last_seq if log is not None else 0, ordered, now, order)
    kept = [*recorded, *events][-FLEET_EVENTS_KEPT:]
    document = FleetEventLog(
        last_seq=events[-1].seq, events=kept, refusals_seen=now_seen, refused_totals=now_totals, updated_at=now
    )
    return RecordFleetEvents(group="fleet", events=len(events), log=document)
