"""Traffic steps: a host leaves its group's load balancers before it deploys and comes back after.

Why the reconciler takes these steps and not the agent (docs/traffic.md has the long form): the load
balancer's credentials and admin API stay with one trusted process instead of every host; the rule "a host
counts as done only once its load balancer calls it healthy" lives next to the other rollout rules; and every
decision is a function of what was observed, so a crash anywhere is repaired by the next pass.

How a step runs. A host of a group with `trafficControl` runs CodeDeploy's order with a load balancer; at
BlockTraffic and AllowTraffic its agent reports the event InProgress and waits for `traffic/<host>.json` to
say the step, for its command generation, Succeeded or Failed. Each pass, for each host waiting at a step,
this module reads the load balancers' observations (`Observed.traffic`, taken by the shell) and the last
record (`State.traffic`) and decides:

- BlockTraffic: any load balancer still sends the host traffic -> call `block` (drain); all draining with no
  open connections (or the drain timeout reached) -> call `finish` and record Succeeded; all out -> Succeeded.
- AllowTraffic: any load balancer has the host out -> call `allow`; all call it healthy -> Succeeded; not
  healthy within `healthyTimeout` -> Failed, and the host fails like any other failed step.
- A load balancer that cannot be read, or refuses a call -> Failed with its answer.
- The deployment no longer waits for the host (it was counted failed by a timeout) -> Failed.

The safety net (`_repair`): a host left out of rotation by one of our steps while it is idle and healthy (a
step interrupted by a crash or a cancelled deployment) is put back, with a record marked `repair`. A failed
host is never put back: it stays out until a deployment to it (the rollback) succeeds, whose AllowTraffic
puts it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from contract.durations import format_duration
from contract.models import (
    ALLOW_TRAFFIC,
    BLOCK_TRAFFIC,
    TRAFFIC_STEPS,
    CommandProgress,
    CommandStatus,
    EventStatus,
    HostDeploymentStatus,
    HostStatus,
    HostTraffic,
    TrafficStepState,
    group_key,
)
from reconciler.core.actions import Action, Blocked, TrafficStep
from reconciler.core.observed import TargetObservation, TargetState
from reconciler.core.view import PassView
from reconciler.desired.traffic_spec import TrafficControlSpec

#: How soon a pass looks again at a host whose load balancers are still draining it or checking its health.
RECHECK = timedelta(seconds=1)
#: A repair that failed (the load balancer refused) is tried again this long after.
REPAIR_RETRY = timedelta(seconds=30)

IN_PROGRESS = TrafficStepState.IN_PROGRESS
SUCCEEDED = TrafficStepState.SUCCEEDED
FAILED = TrafficStepState.FAILED
_Call = Literal["block", "finish", "allow"]
_SENDING = frozenset({TargetState.IN_SERVICE, TargetState.STARTING})
_NOT_SENDING = frozenset({TargetState.OUT_OF_SERVICE, TargetState.DRAINING})


def waiting_step(command: CommandProgress | None) -> str | None:
    """The traffic step an agent's command waits at (its BlockTraffic or AllowTraffic event in progress)."""
    if command is None or command.status is not CommandStatus.IN_PROGRESS:
        return None
    for event in command.events:
        if event.name in TRAFFIC_STEPS and event.status is EventStatus.IN_PROGRESS:
            return event.name
    return None


def hosts_needing_traffic(statuses: Mapping[str, HostStatus], records: Mapping[str, HostTraffic]) -> dict[str, str]:
    """Host -> group key of every host whose load balancers a pass must read: waiting at a step, or with a
    record that is not a finished AllowTraffic (a candidate for repair). The shell reads only these, so an
    idle fleet costs its load balancers nothing."""
    wanted: dict[str, str] = {}
    for host, status in statuses.items():
        command = status.command
        if command is not None and waiting_step(command) is not None:
            wanted[host] = group_key(command.application, command.deployment_group)
    for host, record in records.items():
        if host not in wanted and not (record.step == ALLOW_TRAFFIC and record.state is SUCCEEDED):
            wanted[host] = record.group
    return wanted


def traffic_steps(view: PassView) -> list[Action]:
    """Every traffic step this pass takes, hosts in id order."""
    actions: list[Action] = []
    # Only commands in progress can wait at a step; the filter keeps a pass over a big idle fleet cheap.
    waiting: dict[str, tuple[CommandProgress, str]] = {}
    for host, status in view.observed.statuses.items():
        command = status.command
        if command is not None and command.status is CommandStatus.IN_PROGRESS:
            step = waiting_step(command)
            if step is not None:
                waiting[host] = (command, step)
    for host in sorted(waiting):
        actions.extend(_step(view, host, *waiting[host]))
    for host in sorted(view.state.traffic):
        if host not in waiting:
            record = view.state.traffic[host]
            actions.extend(_keep_out(view, host, record) or _repair(view, host, record))
    return actions


# -- a step an agent waits for -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """One host's step this pass: where it is recorded and how to record what comes next."""

    view: PassView
    key: str
    host: str
    base: HostTraffic
    current: HostTraffic | None

    def record(self, state: TrafficStepState, message: str, *, call: _Call | None = None) -> TrafficStep:
        ended_at = None if state is IN_PROGRESS else self.view.now
        traffic = self.base.model_copy(update={"state": state, "ended_at": ended_at, "message": message})
        return TrafficStep(group=self.key, host=self.host, call=call, reason=message, traffic=traffic)

    def wait(self, reason: str, *, until: datetime | None = None) -> Blocked:
        deployment_id = None if self.base.repair else self.base.deployment_id
        return Blocked(
            group=self.key,
            code="WAITING_FOR_TRAFFIC",
            reason=f"{self.host}: {reason}",
            deployment_id=deployment_id,
            until=until or self.view.now + RECHECK,
        )

    @property
    def elapsed(self) -> str:
        return format_duration(self.view.now - self.base.started_at)


def _step(view: PassView, host: str, command: CommandProgress, name: str) -> list[Action]:
    key = group_key(command.application, command.deployment_group)
    record = view.state.traffic.get(host)
    current = (
        record
        if record is not None and record.generation == command.generation and record.step == name and not record.repair
        else None
    )
    if current is not None and current.state is not IN_PROGRESS:
        return []  # decided; the agent reads it
    base = HostTraffic(
        host_id=host,
        generation=command.generation,
        deployment_id=command.deployment_id,
        group=key,
        step=BLOCK_TRAFFIC if name == BLOCK_TRAFFIC else ALLOW_TRAFFIC,
        state=IN_PROGRESS,
        started_at=current.started_at if current is not None else view.now,
    )
    step = _Step(view, key, host, base, current)
    group = view.desired_groups.get(key)
    spec = group.traffic if group is not None else None
    gone = _not_waited_for(view, host, command)
    if gone is not None:
        # After `allow` was called the host may be back in rotation on a revision that failed: take it out.
        call: _Call | None = "block" if name == ALLOW_TRAFFIC and spec is not None else None
        return [step.record(FAILED, gone, call=call)]
    if spec is None:
        # Going on would stop an application its load balancers may still send requests to (or leave a host
        # out with nobody to put it back): the step fails, and the operator is told why.
        what = "the group was removed from the manifests" if group is None else "trafficControl was removed"
        consequence = ("its application was not stopped" if name == BLOCK_TRAFFIC
                       else "put it back in its load balancers by hand")
        return [step.record(FAILED, f"{what} while this host waited at {name}; {consequence}")]
    observations = _observations(view, key, host, spec)
    if observations is None:
        return [step.wait("reading its load balancers")]
    errors = [o.error or o.detail for o in observations if o.state is TargetState.UNKNOWN]
    if errors:
        return [step.record(FAILED, "; ".join(errors))]
    if name == BLOCK_TRAFFIC:
        return _block(step, spec, observations)
    return _allow(step, spec, observations)


def _not_waited_for(view: PassView, host: str, command: CommandProgress) -> str | None:
    """Why the deployment no longer waits for this host's step, if it does not."""
    deployment = view.deployments.get(command.deployment_id)
    if deployment is None:
        return f"deployment {command.deployment_id} is no longer recorded"
    host_state = deployment.hosts.get(host)
    if host_state is None or host_state.generation != command.generation:
        return f"deployment {command.deployment_id} no longer includes this command"
    if host_state.status is not HostDeploymentStatus.IN_PROGRESS:
        detail = f": {host_state.message}" if host_state.message else ""
        return f"deployment {command.deployment_id} already counted this host {host_state.status.value}{detail}"
    return None


def _block(step: _Step, spec: TrafficControlSpec, observations: Sequence[TargetObservation]) -> list[Action]:
    now = step.view.now
    detail = _detail(observations)
    states = {o.state for o in observations}
    if states == {TargetState.OUT_OF_SERVICE}:
        return [step.record(SUCCEEDED, f"out of rotation after {step.elapsed}: {detail}")]
    if states & _SENDING:
        if step.current is not None and now - step.base.started_at >= spec.drain_timeout:
            note = (f"its load balancers still send it traffic {format_duration(spec.drain_timeout)} after it was "
                    f"taken out (drainTimeout); its application was not stopped: {detail}")
            return [step.record(FAILED, note)]
        return [step.record(IN_PROGRESS, f"draining: {detail}", call="block"), step.wait("draining")]
    open_sessions = [o.sessions for o in observations if o.state is TargetState.DRAINING]
    if all(count == 0 for count in open_sessions):
        return [step.record(SUCCEEDED, f"drained in {step.elapsed}: {detail}", call="finish")]
    deadline = step.base.started_at + spec.drain_timeout
    if now >= deadline:
        note = (
            f"drain timeout of {format_duration(spec.drain_timeout)} reached with connections still open; "
            f"taken out anyway: {detail}"
        )
        return [step.record(SUCCEEDED, note, call="finish")]
    actions: list[Action] = []
    if step.current is None:
        actions.append(step.record(IN_PROGRESS, f"draining: {detail}"))
    actions.append(step.wait(f"draining ({detail})", until=min(now + RECHECK, deadline)))
    return actions


def _allow(step: _Step, spec: TrafficControlSpec, observations: Sequence[TargetObservation]) -> list[Action]:
    now = step.view.now
    detail = _detail(observations)
    states = {o.state for o in observations}
    if states == {TargetState.IN_SERVICE}:
        return [step.record(SUCCEEDED, f"in service after {step.elapsed}: {detail}")]
    if now - step.base.started_at >= spec.healthy_timeout:
        # Taken out again: a failed host must not be served to when its checks pass later.
        return [step.record(FAILED, f"not healthy {format_duration(spec.healthy_timeout)} after it was put back, "
                                    f"so taken out again: {detail}", call="block")]
    if states & _NOT_SENDING:
        return [step.record(IN_PROGRESS, f"putting back: {detail}", call="allow"), step.wait("health checks")]
    actions: list[Action] = []
    if step.current is None:
        actions.append(step.record(IN_PROGRESS, f"waiting for health checks: {detail}"))
    actions.append(step.wait(f"health checks ({detail})"))
    return actions


# -- the safety nets ---------------------------------------------------------------------------------


def _keep_out(view: PassView, host: str, record: HostTraffic) -> list[Action]:
    """A host taken out for its command, still deploying, that a load balancer has back (an HAProxy reload
    without a server-state file forgets runtime states): out again, at once."""
    if record.step != BLOCK_TRAFFIC or record.state is not SUCCEEDED or record.repair:
        return []
    command = view.observed.last_command(host)
    if command is None or command.status is not CommandStatus.IN_PROGRESS or command.generation != record.generation:
        return []
    group = view.desired_groups.get(record.group)
    if group is None or group.traffic is None:
        return []
    observations = _observations(view, record.group, host, group.traffic)
    if observations is None or not {o.state for o in observations} & _SENDING:
        return []
    note = (f"taken out again: a load balancer had it back while it deployed (reloaded?): "
            f"{_detail(observations)}")
    traffic = record.model_copy(update={"message": note})
    return [TrafficStep(group=record.group, host=host, call="block", reason=note, traffic=traffic)]


def _untouched(view: PassView, host: str, key: str) -> bool:
    """The host's last command, for this group, failed before ApplicationStop ran (at BlockTraffic, or while
    waiting for it): its application was never touched, so it is as healthy as before."""
    command = view.observed.last_command(host)
    if command is None or command.status is not CommandStatus.FAILED:
        return False
    if group_key(command.application, command.deployment_group) != key:
        return False
    stop = next((e for e in command.events if e.name == "ApplicationStop"), None)
    return stop is not None and stop.status in (EventStatus.PENDING, EventStatus.SKIPPED)


def _repair(view: PassView, host: str, record: HostTraffic) -> list[Action]:
    """Put back a healthy, idle host that one of our steps left out of rotation."""
    if record.step == ALLOW_TRAFFIC and record.state is SUCCEEDED:
        return []
    key = record.group
    group = view.desired_groups.get(key)
    group_state = view.state.groups.get(key)
    if group is None or group.traffic is None or group_state is None:
        return []
    command = view.observed.last_command(host)
    if command is not None and command.status is CommandStatus.IN_PROGRESS:
        return []  # busy: the command's own steps decide
    healthy = _untouched(view, host, key) or view.prior_health(host, key, view.attempts(group_state, exclude=None))
    if not view.online(host) or not healthy:
        return []  # a failed host stays out until a deployment to it succeeds
    now = view.now
    repairing = record.repair and record.step == ALLOW_TRAFFIC
    if repairing and record.state is FAILED and now - (record.ended_at or record.started_at) < REPAIR_RETRY:
        return []
    base = HostTraffic(
        host_id=host,
        generation=record.generation,
        deployment_id=record.deployment_id,
        group=key,
        step=ALLOW_TRAFFIC,
        state=IN_PROGRESS,
        started_at=record.started_at if repairing and record.state is IN_PROGRESS else now,
        repair=True,
    )
    step = _Step(view, key, host, base, record if repairing else None)
    observations = _observations(view, key, host, group.traffic)
    if observations is None:
        return [step.wait("reading its load balancers")]
    errors = [o.error or o.detail for o in observations if o.state is TargetState.UNKNOWN]
    if errors:
        return [step.record(FAILED, "could not put back: " + "; ".join(errors))]
    detail = _detail(observations)
    states = {o.state for o in observations}
    if states == {TargetState.IN_SERVICE}:
        return [step.record(SUCCEEDED, f"healthy and idle, back in service: {detail}")]
    timeout = group.traffic.healthy_timeout
    if now - base.started_at >= timeout:
        return [step.record(FAILED, f"put back, but not healthy {format_duration(timeout)} later: {detail}")]
    if states & _NOT_SENDING or not repairing or record.state is not IN_PROGRESS:
        reason = f"healthy and idle but left out of rotation by {record.step} ({record.state.value}); putting back"
        return [step.record(IN_PROGRESS, f"{reason}: {detail}", call="allow"), step.wait("being put back")]
    return [step.wait(f"being put back ({detail})")]


# -- helpers -----------------------------------------------------------------------------------------


def _observations(
    view: PassView, key: str, host: str, spec: TrafficControlSpec
) -> Sequence[TargetObservation] | None:
    found = view.observed.traffic.get(key, {}).get(host)
    if found is None or len(found) != len(spec.load_balancers):
        return None
    return found


def _detail(observations: Sequence[TargetObservation]) -> str:
    return "; ".join(o.detail for o in observations)
