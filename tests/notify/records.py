"""Reconciler records with events, built by hand for the notification tests: a group with deployments whose
documents carry `RecordedEvent`s exactly as the core writes them (contract/models.py), and a fleet event log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from contract.models import (
    Deployment,
    DeploymentStatus,
    EventType,
    FleetEventLog,
    GitLocation,
    GroupState,
    RecordedEvent,
    Revision,
)
from reconciler.core.events import SEVERITY
from reconciler.core.state import State

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
COMMIT = "c0ffee" + "0" * 34
APP_COMMIT = "ab" * 20


def revision() -> Revision:
    return Revision(git=GitLocation(repository="https://git.example/app.git", commit=APP_COMMIT))


def recorded(seq: int, type: EventType, at: datetime, **fields: object) -> RecordedEvent:
    message = fields.pop("message", f"{type.value} #{seq}")
    return RecordedEvent.model_validate({"seq": seq, "type": type, "severity": SEVERITY[type], "at": at,
                                         "message": message, **fields})


def deployment(
    deployment_id: str,
    types: Sequence[EventType],
    *,
    group: str = "shop/web",
    start: datetime = T0,
    creator: Literal["user", "rollback", "outdated"] = "user",
    commit: str | None = COMMIT,
    status: DeploymentStatus = DeploymentStatus.IN_PROGRESS,
) -> Deployment:
    """A deployment whose events are `types`, one second apart from `start`."""
    application, name = group.split("/")
    events = [recorded(seq, type, start + timedelta(seconds=seq), **_extra(type))
              for seq, type in enumerate(types, start=1)]
    return Deployment(deployment_id=deployment_id, application=application, deployment_group=name,
                      revision=revision(), source_commit=commit, deployment_config="CodeDeployDefault.OneAtATime",
                      status=status, creator=creator, created_at=start, updated_at=start, events=events,
                      batches=[["web-1"], ["web-2"]])


def _extra(type: EventType) -> dict[str, object]:
    if type == EventType.BATCH_STARTED:
        return {"batch": 0, "hosts": ["web-1"], "message": "batch 1 of 2: app@ababab to web-1"}
    if type in (EventType.HOST_SUCCEEDED, EventType.HOST_FAILED):
        return {"host": "web-1", "batch": 0}
    return {}


def with_events(deployment: Deployment, *types: EventType) -> Deployment:
    """The same deployment with more events recorded (as a later pass appends them)."""
    last = deployment.events[-1].seq if deployment.events else 0
    at = deployment.events[-1].at if deployment.events else T0
    more = [recorded(last + offset, type, at + timedelta(seconds=offset), **_extra(type))
            for offset, type in enumerate(types, start=1)]
    return deployment.model_copy(update={"events": [*deployment.events, *more]})


def state(*deployments: Deployment, fleet: FleetEventLog | None = None, in_flight: str | None = None) -> State:
    """Records naming `deployments` in their groups' histories (the last one of each group in flight unless
    `in_flight` says otherwise)."""
    groups: dict[str, GroupState] = {}
    for item in deployments:
        key = f"{item.application}/{item.deployment_group}"
        group = groups.get(key) or GroupState(application=item.application, deployment_group=item.deployment_group,
                                               updated_at=T0)
        groups[key] = group.model_copy(update={"history": [*group.history, item.deployment_id]})
    if in_flight is not None:
        for key, group in groups.items():
            if in_flight in group.history:
                groups[key] = group.model_copy(update={"deployment_in_flight": in_flight})
    return State(groups=groups, deployments={item.deployment_id: item for item in deployments}, fleet_events=fleet)


def fleet_log(first_seq: int, count: int, *, start: datetime = T0) -> FleetEventLog:
    events = [recorded(seq, EventType.COMMAND_REFUSED, start + timedelta(seconds=seq), host="web-9",
                       message=f"web-9 refused commands/web-9.json (#{seq})")
              for seq in range(first_seq, first_seq + count)]
    return FleetEventLog(last_seq=first_seq + count - 1, events=events, updated_at=start)
