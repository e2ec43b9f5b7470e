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
    HEALTH_CHECK,
    AlarmCheck,
    CommandStatus,
    Deployment,
    DeploymentAnalysis,
    EventStatus,
    GateMeasurement,
    HostDeploymentStatus,
    QuarantinedRevision,
    Revision,
    StopRequest,
)
from contract.redact import public_host_text, redact_url, redact_urls
from reconciler.cli.common import split_group_key
from reconciler.cli.progress import current_event
from reconciler.core import Observed
from reconciler.core.gates import Checkpoint, checkpoint, checkpoint_batch, gate_run
from reconciler.core.membership import MembershipIndex, flagged_agents, missing_hosts
from reconciler.core.observed import Ec2Instance
from reconciler.core.view import deployment_config
from reconciler.desired.manifests import Desired, DesiredGroup, EffectiveConfig
from reconciler.notify.health import NotificationHealth
from reconciler.shell.lease import LeaseView
from reconciler.shell.observe import identity_problems


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def revision_json(revision: Revision | None) -> dict[str, Any] | None:
    """A revision for `--format json`, with a Git repository URL's credentials redacted (a token in
    `https://TOKEN@host/repo.git` must not reach a CI log through `status`)."""
    if revision is None:
        return None
    data = revision.model_dump(mode="json", by_alias=True, exclude_none=True)
    if "git" in data:
        data["git"]["repository"] = redact_url(data["git"]["repository"])
    return {"short": revision.short(), "identity": redact_urls(revision.identity()), **data}


def shown(text: str | None) -> str | None:
    """Text that came from a host (or a record that quotes one), as `status` and `history` print it: redacted and
    bounded whatever the agent did, since their output lands in CI logs too (docs/trust.md, "Secrets in
    output")."""
    return public_host_text(text) if text else text


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
            error_message=shown(deployment.error_message),
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
class HealthCheckView:
    """The host's HealthCheck step in its last command for the group, as its agent reported it."""

    status: str
    message: str | None
    ended_at: datetime | None

    def text(self) -> str:
        return f"HealthCheck {self.status}" + (f": {self.message}" if self.message else "")

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "endedAt": iso(self.ended_at)}


def health_check_of(observed: Observed, host_id: str, key: str) -> HealthCheckView | None:
    """The HealthCheck event of the host's current or last command for group `key`, once it has started."""
    status = observed.statuses.get(host_id)
    command = status.command if status else None
    if command is None or command.deployment_group != split_group_key(key)[1]:
        return None
    for event in command.events:
        if event.name == HEALTH_CHECK and event.status is not EventStatus.PENDING:
            return HealthCheckView(str(event.status), shown(event.message), event.ended_at)
    return None


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
    #: Its HealthCheck step (the group's `healthCheck`), once started in its last command for the group.
    health_check: HealthCheckView | None = None
    #: Commands its agent refused since it started (docs/trust.md): how many, and the newest reason.
    refused_total: int = 0
    last_refusal: str | None = None
    #: Whether its agent checks signatures (None: not known, no status yet).
    verifies_signatures: bool | None = None
    #: A missing host (issue 16): an instance EC2 lists for the group with no agent registered; what EC2 says of
    #: it ("running since ... in eu-west-1a"). None for every other host.
    missing: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "missing": self.missing,
            "traffic": self.traffic,
            "trafficStep": self.traffic_step,
            "healthCheck": self.health_check.to_json() if self.health_check else None,
            "registered": self.registered,
            "online": self.online,
            "heartbeatAt": iso(self.heartbeat_at),
            "zone": self.zone,
            "installed": revision_json(self.installed),
            "upToDate": self.up_to_date,
            "onEffective": self.on_effective,
            "lastCommand": self.last_command.to_json() if self.last_command else None,
            "refusedTotal": self.refused_total,
            "lastRefusal": self.last_refusal,
            "verifiesSignatures": self.verifies_signatures,
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
class GateView:
    """One analysis gate at one checkpoint of a deployment: how far its run got and its last measurement."""

    gate: str
    #: `batch-<n>`, and in words: "after the canary batch", "after batch 2", "after the last batch (batch 4)".
    checkpoint: str
    where: str
    #: running, passed or failed (the core's verdict over the measurements, `reconciler.core.gates.gate_run`);
    #: None when the gate is no longer in the manifests, so its rules are unknown.
    verdict: str | None
    measured: int
    count: int | None
    last: GateMeasurement | None
    #: Why it failed (the failed measurements, or the inconclusive ones past the limit), when it did.
    failure: str | None = None

    def text(self) -> str:
        """`error-rate after the canary batch: 2 of 3 measured, last 0.0012 (successful)`."""
        of = f" of {self.count}" if self.count is not None else ""
        text = f"{self.gate} {self.where}: "
        if self.verdict in ("passed", "failed"):
            text += f"{self.verdict}, "
        text += f"{self.measured}{of} measured"
        if self.last is not None:
            text += f", last {measurement_text(self.last)}"
        if self.failure:
            text += f": {self.failure}"
        return text

    def to_json(self) -> dict[str, Any]:
        last = self.last
        return {
            "gate": self.gate,
            "checkpoint": self.checkpoint,
            "where": self.where,
            "verdict": self.verdict,
            "measured": self.measured,
            "count": self.count,
            "last": last.model_dump(mode="json", by_alias=True, exclude_none=True) if last is not None else None,
            "failure": self.failure,
        }


def measurement_text(measurement: GateMeasurement) -> str:
    """`0.0012 (successful)`; without a value, the result and why (`inconclusive: the query could not be run`)."""
    result = measurement.result.value.lower()
    if measurement.value is None:
        return f"{result}: {measurement.message}"
    return f"{measurement.value:.6g} ({result})"


@dataclass(frozen=True)
class AlarmView:
    """The last read of the group's CloudWatch alarms recorded for a deployment."""

    state: str
    #: In ALARM (state ALARM) or unreadable (state ERROR).
    alarms: tuple[str, ...]
    checked_at: datetime
    message: str
    #: The alarms the group watches, from the manifests (empty when unknown).
    watched: tuple[str, ...] = ()

    @classmethod
    def of(cls, check: AlarmCheck, watched: tuple[str, ...]) -> AlarmView:
        return cls(check.state, tuple(check.alarms), check.checked_at, check.message, watched)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "alarms": list(self.alarms), "checkedAt": iso(self.checked_at),
                "message": self.message, "watched": list(self.watched)}


@dataclass(frozen=True)
class AnalysisView:
    """What a deployment's gates measured (`analysis/<id>.json`), at its current or last checkpoint."""

    deployment_id: str
    gates: tuple[GateView, ...]
    alarms: AlarmView | None
    #: Every checkpoint that has measurements, in order, with each gate's verdict there: for `history`.
    checkpoints: tuple[tuple[str, tuple[GateView, ...]], ...] = ()
    #: Set when the record could not be read (it is then shown as that, not as "nothing measured").
    problem: str | None = None

    def summary(self) -> str | None:
        """One line for `history`: `gates: error-rate passed at 3 checkpoints`, or where and why one failed."""
        if self.problem:
            return f"gates: the analysis record could not be read: {self.problem}"
        failed = [view for _, views in self.checkpoints for view in views if view.verdict == "failed"]
        if failed:
            first = failed[0]
            why = first.failure or (measurement_text(first.last) if first.last else "")
            return f"gates: {first.gate} failed {first.where}: {why}"
        passed: dict[str, int] = {}
        for _, views in self.checkpoints:
            for view in views:
                if view.verdict == "passed":
                    passed[view.gate] = passed.get(view.gate, 0) + 1
        parts = [f"{gate} passed at {count} checkpoint{'s' if count != 1 else ''}" for gate, count in passed.items()]
        running = [view.text() for view in self.gates if view.verdict not in ("passed", "failed")]
        parts += running
        return ("gates: " + "; ".join(parts)) if parts else None

    def to_json(self) -> dict[str, Any]:
        return {
            "deploymentId": self.deployment_id,
            "gates": [gate.to_json() for gate in self.gates],
            "alarms": self.alarms.to_json() if self.alarms else None,
            "checkpoints": [{"checkpoint": name, "gates": [g.to_json() for g in views]}
                            for name, views in self.checkpoints],
            "problem": self.problem,
        }


def analysis_view(
    deployment: Deployment, record: DeploymentAnalysis, desired: Desired | None, group: DesiredGroup | None
) -> AnalysisView:
    """The gates of `deployment` as `record` has them, judged by the core's own rules (`gate_run`) against the
    group's gates in the manifests. The checkpoint shown is the open one (the engine's `checkpoint`), else the
    last one measured."""
    names = sorted({m.checkpoint for m in record.measurements}, key=checkpoint_batch)
    config = deployment_config(desired, deployment, group) if desired is not None else None
    open_point = checkpoint(deployment, group, config) if config is not None else None
    points = [_past_checkpoint(deployment, record, name, group, config) for name in names]
    if open_point is not None:
        points = [p for p in points if p.name != open_point.name] + [open_point]
    views = [(point.name, tuple(_gate_views(point, record, group))) for point in points]
    current = views[-1][1] if views else ()
    watched = tuple(group.alarms.alarms) if group is not None and group.alarms is not None else ()
    alarms = AlarmView.of(record.alarms, watched) if record.alarms is not None else None
    return AnalysisView(deployment.deployment_id, current, alarms, tuple(views))


def _past_checkpoint(
    deployment: Deployment,
    record: DeploymentAnalysis,
    name: str,
    group: DesiredGroup | None,
    config: EffectiveConfig | None,
) -> Checkpoint:
    """A checkpoint the deployment has measurements for, rebuilt from the record: its batch, and whether it was
    the canary's or the last one (the words of `Checkpoint.describe`)."""
    batch = checkpoint_batch(name)
    measured = [m for m in record.measurements if m.checkpoint == name]
    canary = batch == 0 and config is not None and config.canary is not None
    final = batch == len(deployment.batches) - 1 and not any(
        state.status is HostDeploymentStatus.PENDING for state in deployment.hosts.values())
    opened = min((m.due_at for m in measured), default=deployment.created_at)
    specs = {gate.name: gate for gate in group.analysis} if group is not None else {}
    gates = tuple(specs[m] for m in dict.fromkeys(m.gate for m in measured) if m in specs)
    return Checkpoint(name, max(batch, 0), opened, canary, final, gates)


def _gate_views(point: Checkpoint, record: DeploymentAnalysis, group: DesiredGroup | None) -> list[GateView]:
    where = point.describe()
    views: list[GateView] = []
    known = {gate.name for gate in point.gates}
    for gate in point.gates:
        run = gate_run(point, gate, record)
        failure = run.cause
        views.append(GateView(gate.name, point.name, where, run.verdict, len(run.measurements), gate.count,
                              run.last, failure))
    # Gates measured here that the manifests no longer have: what was measured, without a verdict.
    for name in dict.fromkeys(m.gate for m in record.measurements if m.checkpoint == point.name):
        if name in known:
            continue
        taken = {m.index: m for m in reversed(record.measurements) if m.checkpoint == point.name and m.gate == name}
        last = taken[max(taken)] if taken else None
        views.append(GateView(name, point.name, where, None, len(taken), None, last))
    return views


@dataclass(frozen=True)
class MissingHostView:
    """An expected EC2 instance of the group with no agent registered (reconciler.core.membership.missing_hosts)."""

    instance_id: str
    state: str
    zone: str | None
    launched_at: datetime | None
    auto_scaling_group: str | None
    lifecycle_state: str | None
    #: EC2's view in words: "running since 2025-03-01T11:00:00+00:00 in eu-west-1a".
    description: str

    @classmethod
    def of(cls, instance: Ec2Instance) -> MissingHostView:
        return cls(instance.instance_id, instance.state, instance.zone, instance.launched_at,
                   instance.auto_scaling_group, instance.lifecycle_state, instance.describe())

    def to_json(self) -> dict[str, Any]:
        return {"instanceId": self.instance_id, "state": self.state, "zone": self.zone,
                "launchedAt": iso(self.launched_at), "autoScalingGroup": self.auto_scaling_group,
                "lifecycleState": self.lifecycle_state, "description": self.description}


@dataclass(frozen=True)
class FlaggedAgentView:
    """A registered agent claiming an instance of the group that EC2 does not list for it (`flagged_agents`)."""

    host: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "reason": self.reason}


@dataclass(frozen=True)
class Ec2View:
    """A group's membership as EC2 and Auto Scaling list it, read by `status` the way a pass reads it (issue 16).
    With `error` set the read failed: membership from AWS is unknown, nothing is missing or flagged for sure."""

    region: str | None
    read_at: datetime
    #: AWS's words when the read failed; None when it is complete.
    error: str | None
    #: Instances expected to run an agent (pending or running, not leaving their Auto Scaling group).
    expected: int
    missing: tuple[MissingHostView, ...]
    flagged: tuple[FlaggedAgentView, ...]

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "readAt": iso(self.read_at), "error": self.error, "expected": self.expected,
                "missing": [m.to_json() for m in self.missing], "flagged": [f.to_json() for f in self.flagged]}


def ec2_view(group: DesiredGroup, observed: Observed, index: MembershipIndex | None = None) -> Ec2View | None:
    """The group's EC2 read as `status` shows it, or None when its targets name no EC2 or Auto Scaling targets
    (or nothing was read)."""
    read = observed.ec2.get(group.key)
    if read is None or not group.targets.uses_aws:
        return None
    expected = sum(1 for instance in read.instances if instance.expected) if read.known else 0
    missing = tuple(MissingHostView.of(i) for i in missing_hosts(group, observed, index))
    flagged = tuple(FlaggedAgentView(host, reason) for host, reason in flagged_agents(group, observed, index).items())
    return Ec2View(read.region, read.read_at, read.error, expected, missing, flagged)


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
    #: The monitoring gates of the deployment in flight, or else of the last one, when it has an analysis record.
    analysis: AnalysisView | None = None
    #: EC2 membership (issue 16), for groups with ec2TagFilters, ec2TagSet or autoScalingGroups; None otherwise.
    ec2: Ec2View | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "ec2": self.ec2.to_json() if self.ec2 else None,
            "loadBalancers": list(self.load_balancers),
            "analysis": self.analysis.to_json() if self.analysis else None,
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
    return tuple(HostConflictView(p.host_id, p.kind, p.since, shown(p.message) or "")
                 for p in identity_problems(observed))


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
class NotificationView:
    """One notification's delivery health (docs/notifications.md, "Health"), from its cursor in the store."""

    name: str
    provider: str
    configured: bool
    healthy: bool
    delivered: int
    failed: int
    retrying: bool
    pending: int | None
    last_delivered_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    unreadable: str | None

    @classmethod
    def of(cls, health: NotificationHealth) -> NotificationView:
        return cls(
            name=health.name, provider=health.provider, configured=health.configured, healthy=health.healthy,
            delivered=health.delivered, failed=health.failed, retrying=health.retrying, pending=health.pending,
            last_delivered_at=health.last_delivered_at,
            # A provider's answer is outside text: bounded and redacted like a host's.
            last_error=shown(health.last_error), last_error_at=health.last_error_at,
            unreadable=shown(health.unreadable),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "provider": self.provider, "configured": self.configured, "healthy": self.healthy,
            "delivered": self.delivered, "failed": self.failed, "retrying": self.retrying, "pending": self.pending,
            "lastDeliveredAt": iso(self.last_delivered_at), "lastError": self.last_error,
            "lastErrorAt": iso(self.last_error_at), "unreadable": self.unreadable,
        }


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
    notifications: tuple[NotificationView, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "hostConflicts": [c.to_json() for c in self.host_conflicts],
            "storeMissing": self.store_missing,
            "commit": self.commit,
            "manifestsProblem": self.manifests_problem,
            "lease": self.lease.to_json() if self.lease else None,
            "groups": [group.to_json() for group in self.groups],
            "notifications": [notification.to_json() for notification in self.notifications],
        }


__all__ = [
    "AlarmView",
    "AnalysisView",
    "DeploymentView",
    "Ec2View",
    "FlaggedAgentView",
    "GateView",
    "GroupView",
    "HealthCheckView",
    "HostConflictView",
    "HostView",
    "LastCommand",
    "LeaseStatus",
    "MissingHostView",
    "NotificationView",
    "QuarantineView",
    "RunningHost",
    "StatusReport",
    "analysis_view",
    "ec2_view",
    "health_check_of",
    "host_conflicts",
    "iso",
    "last_command",
    "measurement_text",
    "revision_json",
    "short",
    "shown",
]
