"""The typed read model behind `reconcile status` and `reconcile history`.

Where it sits: built from a store snapshot and the manifests (`reconciler.cli.status` and
`reconciler.cli.history` do the reading), rendered as text by those modules and as JSON by the `to_json`
methods here. The text and JSON views read the same objects, so they cannot disagree. The JSON field names
and order are a public format (scripts read `status --format json`): change them only on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contract.models import (
    CommandStatus,
    Deployment,
    HostDeploymentStatus,
    QuarantinedRevision,
    Revision,
    StopRequest,
)
from reconciler.cli.common import split_group_key
from reconciler.cli.progress import current_event
from reconciler.core import Observed
from reconciler.shell.lease import LeaseView
from reconciler.shell.observe import identity_problems


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def revision_json(revision: Revision | None) -> dict[str, Any] | None:
    if revision is None:
        return None
    return {"short": revision.short(), "identity": revision.identity(),
            **revision.model_dump(mode="json", by_alias=True, exclude_none=True)}


def short(revision: Revision | None) -> str:
    return revision.short() if revision is not None else "-"


@dataclass(frozen=True)
class RunningHost:
    host: str
    #: The lifecycle event the host's agent reports running, or None (dispatched, not started yet).
    event: str | None

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "event": self.event}


@dataclass(frozen=True)
class DeploymentView:
    """One deployment: who started it, where it stands, how its hosts are doing."""

    deployment_id: str
    creator: str
    rollback_of: str | None
    status: str
    revision: Revision
    source_commit: str | None
    deployment_config: str | None
    batches: int
    #: Hosts by `HostDeploymentStatus` value, every status present (0 when none).
    hosts: dict[str, int]
    total: int
    running: tuple[RunningHost, ...]
    created_at: datetime
    ended_at: datetime | None
    error_code: str | None
    error_message: str | None
    #: Host -> seconds it was out of its load balancers (traffic control only).
    out_of_service: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, deployment: Deployment, observed: Observed | None = None) -> DeploymentView:
        """`observed` (the agents' reports) adds what each busy host is running; history leaves it out."""
        counts = {status.value: 0 for status in HostDeploymentStatus}
        for host in deployment.hosts.values():
            counts[host.status.value] += 1
        running: list[RunningHost] = []
        if observed is not None:
            running = [RunningHost(host_id, current_event(observed, host_id, deployment.deployment_id))
                       for host_id, host in sorted(deployment.hosts.items())
                       if host.status is HostDeploymentStatus.IN_PROGRESS]
        return cls(
            deployment_id=deployment.deployment_id,
            creator=deployment.creator,
            rollback_of=deployment.rollback_of,
            status=str(deployment.status),
            revision=deployment.revision,
            source_commit=deployment.source_commit,
            deployment_config=deployment.deployment_config,
            batches=len(deployment.batches),
            hosts=counts,
            total=len(deployment.hosts),
            running=tuple(running),
            created_at=deployment.created_at,
            ended_at=deployment.ended_at,
            error_code=deployment.error_code,
            error_message=deployment.error_message,
            out_of_service={host: state.out_of_service_seconds for host, state in sorted(deployment.hosts.items())
                            if state.out_of_service_seconds is not None},
        )

    @property
    def seconds(self) -> float | None:
        """How long it ran, once it ended (to a tenth of a second)."""
        if self.ended_at is None:
            return None
        return round((self.ended_at - self.created_at).total_seconds(), 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "deploymentId": self.deployment_id,
            "creator": self.creator,
            "rollbackOf": self.rollback_of,
            "status": self.status,
            "revision": revision_json(self.revision),
            "sourceCommit": self.source_commit,
            "deploymentConfig": self.deployment_config,
            "batches": self.batches,
            "hosts": dict(self.hosts),
            "total": self.total,
            "running": [host.to_json() for host in self.running],
            "createdAt": iso(self.created_at),
            "endedAt": iso(self.ended_at),
            "seconds": self.seconds,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
            "outOfServiceSeconds": dict(self.out_of_service),
        }


@dataclass(frozen=True)
class LastCommand:
    """The host's last command for this group, as its agent reported it."""

    deployment_id: str
    status: str
    #: The event running now, while the command is in progress.
    event: str | None

    def to_json(self) -> dict[str, Any]:
        return {"deploymentId": self.deployment_id, "status": self.status, "event": self.event}


@dataclass(frozen=True)
class HostView:
    """One member of a group: liveness, what it has installed, how that compares with the group's revisions."""

    host: str
    registered: bool
    online: bool
    heartbeat_at: datetime | None
    zone: str | None
    installed: Revision | None
    #: Installed revision == the revision the group should run (desired, or effective when that is unknown).
    up_to_date: bool
    #: Installed revision == the group's last good (effective) revision.
    on_effective: bool
    last_command: LastCommand | None
    #: Where its load balancers have it now ("in service", "draining, 3 sessions", ...); None: the group has
    #: no traffic control.
    traffic: str | None = None
    #: The last traffic step the reconciler took for it ("BlockTraffic Succeeded: drained in 1.2s: ...").
    traffic_step: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "traffic": self.traffic,
            "trafficStep": self.traffic_step,
            "registered": self.registered,
            "online": self.online,
            "heartbeatAt": iso(self.heartbeat_at),
            "zone": self.zone,
            "installed": revision_json(self.installed),
            "upToDate": self.up_to_date,
            "onEffective": self.on_effective,
            "lastCommand": self.last_command.to_json() if self.last_command else None,
        }


def last_command(observed: Observed, host_id: str, key: str) -> LastCommand | None:
    """The host's current or last command if it is for group `key` (APP/GROUP)."""
    status = observed.statuses.get(host_id)
    command = status.command if status else None
    if command is None or command.deployment_group != split_group_key(key)[1]:
        return None
    running = command.status is CommandStatus.IN_PROGRESS
    return LastCommand(command.deployment_id, str(command.status),
                       current_event(observed, host_id, command.deployment_id) if running else None)


@dataclass(frozen=True)
class QuarantineView:
    revision: Revision
    source_commit: str | None
    deployment_id: str
    reason: str
    since: datetime

    @classmethod
    def of(cls, quarantined: QuarantinedRevision) -> QuarantineView:
        return cls(quarantined.revision, quarantined.source_commit, quarantined.deployment_id, quarantined.reason,
                   quarantined.since)

    def to_json(self) -> dict[str, Any]:
        return {"revision": revision_json(self.revision), "sourceCommit": self.source_commit,
                "deploymentId": self.deployment_id, "reason": self.reason, "since": iso(self.since)}


@dataclass(frozen=True)
class GroupView:
    """Everything `status` says about one group."""

    group: str
    #: converged, pending, deploying, rolling back, stopping, quarantined, suspended, new, removed, unknown.
    state: str
    #: False when the manifests could not be read: `desired_revision` is then the one a pass last recorded.
    desired_known: bool
    desired_revision: Revision | None
    desired_commit: str | None
    effective_revision: Revision | None
    effective_commit: str | None
    deployment_config: str | None
    config_description: str | None
    in_flight: DeploymentView | None
    last_deployment: DeploymentView | None
    quarantined: tuple[QuarantineView, ...]
    stop_request: StopRequest | None
    hosts: tuple[HostView, ...]
    updated_at: datetime | None
    #: The group's load balancers (trafficControl), by name; empty without traffic control.
    load_balancers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "loadBalancers": list(self.load_balancers),
            "state": self.state,
            "desiredKnown": self.desired_known,
            "desiredRevision": revision_json(self.desired_revision),
            "desiredCommit": self.desired_commit,
            "effectiveRevision": revision_json(self.effective_revision),
            "effectiveCommit": self.effective_commit,
            "deploymentConfig": self.deployment_config,
            "configDescription": self.config_description,
            "inFlight": self.in_flight.to_json() if self.in_flight else None,
            "lastDeployment": self.last_deployment.to_json() if self.last_deployment else None,
            "quarantined": [q.to_json() for q in self.quarantined],
            "stopRequest": self.stop_request.model_dump(mode="json", by_alias=True, exclude_none=True)
            if self.stop_request else None,
            "hosts": [host.to_json() for host in self.hosts],
            "updatedAt": iso(self.updated_at),
        }


@dataclass(frozen=True)
class HostConflictView:
    """A host id two agent installations claim (`observe.identity_problems`)."""

    host: str
    kind: str
    since: datetime | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "kind": self.kind, "since": iso(self.since), "message": self.message}


def host_conflicts(observed: Observed) -> tuple[HostConflictView, ...]:
    """Hosts whose id two agent installations claim, for a WARNING line each.

    The agent that loses such a fight exits without writing the host's registration or status, so its
    conflict record is the only trace: without this warning a machine that is silently never deployed to
    looks like a healthy host."""
    return tuple(HostConflictView(p.host_id, p.kind, p.since, p.message) for p in identity_problems(observed))


@dataclass(frozen=True)
class LeaseStatus:
    """Which reconciler holds the write lease, and whether it still does."""

    holder: str
    expires_at: datetime
    active: bool

    @classmethod
    def of(cls, lease: LeaseView, now: datetime) -> LeaseStatus:
        return cls(lease.holder, lease.expires_at, lease.active(now))

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.holder, "expiresAt": iso(self.expires_at), "active": self.active}


@dataclass(frozen=True)
class StatusReport:
    """The whole `status` answer: the store, the reconciler holding the lease, and every group asked for."""

    store: str
    host_conflicts: tuple[HostConflictView, ...]
    #: Set when the store does not exist yet (a `file://` folder nobody created).
    store_missing: str | None
    commit: str | None
    #: Why the manifests could not be read, or None.
    manifests_problem: str | None
    lease: LeaseStatus | None
    groups: tuple[GroupView, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "hostConflicts": [c.to_json() for c in self.host_conflicts],
            "storeMissing": self.store_missing,
            "commit": self.commit,
            "manifestsProblem": self.manifests_problem,
            "lease": self.lease.to_json() if self.lease else None,
            "groups": [group.to_json() for group in self.groups],
        }


__all__ = [
    "DeploymentView",
    "GroupView",
    "HostConflictView",
    "HostView",
    "LastCommand",
    "LeaseStatus",
    "QuarantineView",
    "RunningHost",
    "StatusReport",
    "host_conflicts",
    "iso",
    "last_command",
    "revision_json",
    "short",
]
