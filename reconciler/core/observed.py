"""What the fleet reports: the `Observed` side of a pass, read from `hosts/<id>/registration.json` and
`hosts/<id>/status.json` by the shell and handed to `reconcile()` as plain data.

Liveness is judged here, from the heartbeat the agent wrote and the `now` the caller passes, so the rule
("silent for longer than max(heartbeat_timeout, 3 x its own heartbeat interval)") lives in one place that
`reconcile`, `plan` and `status` all share.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from contract.models import AlarmCheck, CommandProgress, DeploymentAnalysis, HostConflict, HostRegistration, HostStatus


class TargetState(StrEnum):
    """Where one host stands in one load balancer, in words common to every provider (docs/traffic.md)."""

    #: Receiving traffic and called healthy by the load balancer's own checks.
    IN_SERVICE = "InService"
    #: Put back (registered, ready) but not yet healthy: health checks still running or failing.
    STARTING = "Starting"
    #: Receives no new requests; open connections are finishing (`sessions` of them, where known).
    DRAINING = "Draining"
    #: Receives nothing: in maintenance, deregistered, or never registered.
    OUT_OF_SERVICE = "OutOfService"
    #: Could not be read; `error` says which API, which target and what it answered.
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class TargetObservation:
    """One load balancer's view of one host, read by the shell (reconciler/traffic) and decided on by the core."""

    state: TargetState
    #: The load balancer's own words, for status and step messages ("haproxy web/host-1: DRAIN, 3 sessions").
    detail: str
    #: Open connections while draining, where the load balancer counts them (HAProxy's `scur`); None: unknown.
    sessions: int | None = None
    error: str | None = None


#: EC2 instance states in which an instance is expected to run an agent: a member of its group.
EXPECTED_EC2_STATES = frozenset({"pending", "running"})
#: EC2 instance states of an instance leaving for good (scale-in, termination): never a failure.
GONE_EC2_STATES = frozenset({"shutting-down", "terminated"})
#: Auto Scaling lifecycle states of an instance leaving its group (prefixes: `Terminating:Wait`, ...).
GONE_ASG_PREFIXES = ("Terminating", "Terminated", "Detaching", "Detached")
#: Auto Scaling lifecycle states of an instance that runs nothing yet or any more (a warm pool's stopped instances).
IDLE_ASG_PREFIXES = ("Warmed",)


@dataclass(frozen=True)
class Ec2Instance:
    """One EC2 instance a group's `ec2TagFilters`/`ec2TagSet`/`autoScalingGroups` selects, as AWS listed it
    (reconciler/fleet/ec2.py). Listed whatever its state, so that a terminated one is recognised as gone."""

    instance_id: str
    #: EC2's state name: pending, running, stopping, stopped, shutting-down, terminated.
    state: str
    zone: str | None = None
    private_ip: str | None = None
    launched_at: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    #: The Auto Scaling group it belongs to (named in the manifest), and its lifecycle state there.
    auto_scaling_group: str | None = None
    lifecycle_state: str | None = None
    #: False for an instance looked up by id only (a host of a deployment in flight that the targets no longer
    #: select): listed for its state, so a terminated one is known gone, never a member by that listing.
    selected: bool = True

    @property
    def gone(self) -> bool:
        """Terminating or terminated (scale-in), or leaving its Auto Scaling group."""
        return self.state in GONE_EC2_STATES or (self.lifecycle_state or "").startswith(GONE_ASG_PREFIXES)

    @property
    def expected(self) -> bool:
        """Expected to run an agent: pending or running, and not leaving (or parked in) its Auto Scaling group."""
        if not self.selected or self.state not in EXPECTED_EC2_STATES or self.gone:
            return False
        return not (self.lifecycle_state or "").startswith(IDLE_ASG_PREFIXES)

    def describe(self) -> str:
        """`running since 2024-05-01T10:00:00+00:00 in eu-west-1a (Auto Scaling web-asg InService)`."""
        since = f" since {self.launched_at.isoformat()}" if self.launched_at is not None and self.expected else ""
        zone = f" in {self.zone}" if self.zone else ""
        asg = ""
        if self.auto_scaling_group is not None:
            asg = f" (Auto Scaling {self.auto_scaling_group} {self.lifecycle_state or 'member'})"
        return f"{self.state}{since}{zone}{asg}"


@dataclass(frozen=True)
class Ec2Membership:
    """One group's instances as this pass read them from EC2 and Auto Scaling. With `error` set the read failed
    and membership from AWS is unknown: the core then neither adds missing hosts nor lets any host go (docs/
    aws-fleet.md, "When AWS cannot be read")."""

    read_at: datetime
    instances: tuple[Ec2Instance, ...] = ()
    #: AWS's words when the read failed ("ec2 DescribeInstances: AccessDenied: ..."); None: the read is complete.
    error: str | None = None
    #: The region read (for messages).
    region: str | None = None

    @property
    def known(self) -> bool:
        return self.error is None

    def instance(self, instance_id: str) -> Ec2Instance | None:
        return self._by_id.get(instance_id)

    @functools.cached_property
    def _by_id(self) -> dict[str, Ec2Instance]:
        return {instance.instance_id: instance for instance in self.instances}


#: The Auto Scaling lifecycle state of an instance a launch lifecycle hook holds.
PENDING_WAIT = "Pending:Wait"


@dataclass(frozen=True)
class HeldLaunch:
    """An instance Auto Scaling holds in Pending:Wait for the launch lifecycle hook a group names
    (`spec.autoScaling.lifecycleHook`), as the shell found it (reconciler/shell/lifecycle.py). AWS does not say
    which hook holds an instance: one in Pending:Wait in the group's Auto Scaling groups is taken as held by the
    group's hook (docs/aws-fleet.md, "Auto Scaling lifecycle hooks")."""

    instance_id: str
    auto_scaling_group: str
    hook: str
    #: When it launched (EC2's LaunchTime), which the timeout counts from; else when the shell first saw it held.
    since: datetime | None = None
    #: The last heartbeat the shell recorded on this lifecycle action (None: none since it started, or since the
    #: reconciler restarted: a lost heartbeat is harmless, the next one is simply due sooner).
    last_heartbeat: datetime | None = None


@dataclass(frozen=True)
class Observed:
    """Agents' documents keyed by host id. A host may have a registration without a status (it never
    heartbeated) or neither (an explicit target that never registered); both count as offline."""

    registrations: Mapping[str, HostRegistration] = field(default_factory=dict)
    statuses: Mapping[str, HostStatus] = field(default_factory=dict)
    #: Unresolved `hosts/<id>/conflicts/*.json`: agent installations refused (or stopped) because another
    #: installation owns the host id. Not used by decisions; `status` shows them (the machine they ran on is
    #: not being deployed to, and nothing else in the store says so).
    conflicts: Mapping[str, tuple[HostConflict, ...]] = field(default_factory=dict)
    #: Group key -> host -> one observation per load balancer of the group's `trafficControl`, in manifest
    #: order. Read only for hosts in a traffic step or left out of rotation by one (reconciler/shell/traffic.py).
    traffic: Mapping[str, Mapping[str, tuple[TargetObservation, ...]]] = field(default_factory=dict)
    #: Deployment id -> what its analysis gates measured (`analysis/<id>.json`, recorded by the shell that took
    #: the measurements; docs/gates.md). Read for deployments in flight whose group has gates.
    analysis: Mapping[str, DeploymentAnalysis] = field(default_factory=dict)
    #: Group key -> this pass's read of the group's CloudWatch alarms, for groups with a user deployment in
    #: flight and an enabled `alarmConfiguration`.
    alarms: Mapping[str, AlarmCheck] = field(default_factory=dict)
    #: Group key -> this pass's read of the EC2 instances and Auto Scaling members its targets select, for groups
    #: with `ec2TagFilters`, `ec2TagSet` or `autoScalingGroups` (reconciler/shell/fleet.py). Absent: not read.
    ec2: Mapping[str, Ec2Membership] = field(default_factory=dict)
    #: Group key -> the instances held in Pending:Wait for the group's launch lifecycle hook, for groups with
    #: `spec.autoScaling` whose EC2 read is complete. Absent: none held, or not read.
    launches: Mapping[str, tuple[HeldLaunch, ...]] = field(default_factory=dict)

    def host_ids(self) -> set[str]:
        return set(self.registrations) | set(self.statuses)

    def tags(self, host_id: str) -> Mapping[str, str]:
        registration = self.registrations.get(host_id)
        return registration.tags if registration is not None else {}

    def last_command(self, host_id: str) -> CommandProgress | None:
        status = self.statuses.get(host_id)
        return status.command if status is not None else None


def liveness_timeout(status: HostStatus, heartbeat_timeout: timedelta) -> timedelta:
    """A host that heartbeats every 5 minutes must not be called dead after the 3-minute default."""
    return max(heartbeat_timeout, _three_heartbeats(status.heartbeat_interval_seconds))


@functools.lru_cache(maxsize=64)
def _three_heartbeats(interval_seconds: float) -> timedelta:
    """Three of an agent's heartbeat intervals. A fleet has a handful of intervals and this is asked per host per
    pass (and per simulated pass of `plan`) for every host whose last heartbeat is older than the timeout: built
    once per interval, not once per question (issue 18)."""
    return timedelta(seconds=3 * interval_seconds)


def is_online(observed: Observed, host_id: str, *, now: datetime, heartbeat_timeout: timedelta) -> bool:
    status = observed.statuses.get(host_id)
    if status is None:
        return False
    silent = now - status.heartbeat_at
    # `silent <= liveness_timeout(...)` (the larger of the two), without building a timedelta: called per host per
    # pass, and per simulated pass by `plan`.
    return silent <= heartbeat_timeout or silent <= _three_heartbeats(status.heartbeat_interval_seconds)
