"""What the fleet reports: the `Observed` side of a pass, read from `hosts/<id>/registration.json` and
`hosts/<id>/status.json` by the shell and handed to `reconcile()` as plain data.

Liveness is judged here, from the heartbeat the agent wrote and the `now` the caller passes, so the rule
("silent for longer than max(heartbeat_timeout, 3 x its own heartbeat interval)") lives in one place that
`reconcile`, `plan` and `status` all share.
"""

from __future__ import annotations

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
    return max(heartbeat_timeout, timedelta(seconds=3 * status.heartbeat_interval_seconds))


def is_online(observed: Observed, host_id: str, *, now: datetime, heartbeat_timeout: timedelta) -> bool:
    status = observed.statuses.get(host_id)
    if status is None:
        return False
    return now - status.heartbeat_at <= liveness_timeout(status, heartbeat_timeout)
