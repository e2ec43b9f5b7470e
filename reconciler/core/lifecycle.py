"""Auto Scaling launch lifecycle hooks (issue 16): what to do with each instance Auto Scaling holds in Pending:Wait
for the hook a group names (`spec.autoScaling`), decided after every group of the pass, from what the pass decided.

CodeDeploy's launch flow (reference codedeploy.md §4.6): a new instance is held until the group's last successful
revision is deployed to it, then CONTINUE; ABANDON when that deployment fails (Auto Scaling terminates it and
launches another). Here the deployment is the ordinary catch-up (`start.py`: a member that is online and has
nothing installed gets the effective revision), so this module only watches, per held instance, in this order:

1. the group has no effective revision (no deployment ever succeeded): CONTINUE, nothing to install first; the
   instance gets the group's first deployment as a member (CodeDeploy deploys "the last successful revision",
   and with none there is nothing to hold it for);
2. its agent is online, reports the effective revision installed and is healthy (its last attempt in the group
   succeeded, or it was never attempted): CONTINUE;
3. its last attempt in the group, made since it launched, failed with the effective revision: ABANDON;
4. `timeout` has passed since it launched: ABANDON;
5. otherwise (no agent yet, offline, being caught up, waiting for the deployment in flight to end): wait, with a
   heartbeat every `heartbeat`.

The timeout counts from EC2's launch time, so it survives a restart of the reconciler and needs no state of ours;
heartbeats are timed from the last one the shell recorded (or the launch). Nothing here writes to the store: the
actions are calls the shell makes (`reconciler/shell/lifecycle.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from contract.durations import format_duration
from contract.models import Deployment, GroupState
from reconciler.core.actions import Action, Blocked, CompleteLifecycleAction, RecordLifecycleHeartbeat
from reconciler.core.observed import PENDING_WAIT, Ec2Membership, HeldLaunch
from reconciler.core.rollout import FAILED, IN_PROGRESS, PENDING, host_sort_key
from reconciler.core.view import PassView, healthy_before, last_attempts
from reconciler.desired.manifests import DesiredGroup


@dataclass(frozen=True)
class LaunchDecision:
    """One held instance's fate this pass: `result` CONTINUE or ABANDON, or None to wait (`heartbeat` says whether
    one is due, `wake_at` when waiting next needs a pass: the next heartbeat or the timeout)."""

    held: HeldLaunch
    host: str
    reason: str
    result: str | None = None
    heartbeat: bool = False
    wake_at: datetime | None = None


def held_launches(
    group: DesiredGroup,
    read: Ec2Membership | None,
    *,
    first_seen: Mapping[str, datetime],
    heartbeats: Mapping[tuple[str, str, str], datetime],
    completed: Iterable[tuple[str, str, str]],
) -> tuple[HeldLaunch, ...]:
    """The instances of `read` that the group's hook holds: Pending:Wait in one of its Auto Scaling groups, not
    completed by this shell already (the read may be a few seconds old). `first_seen` (instance id -> when) stands
    in for a launch time EC2 did not give; `heartbeats` and `completed` are keyed (group, instance id, hook)."""
    if group.auto_scaling is None or read is None or not read.known:
        return ()
    hook = group.auto_scaling.lifecycle_hook
    done = set(completed)
    held: list[HeldLaunch] = []
    for instance in read.instances:
        asg = instance.auto_scaling_group
        if instance.lifecycle_state != PENDING_WAIT or asg not in group.targets.auto_scaling_groups or asg is None:
            continue
        call_key = (asg, instance.instance_id, hook)
        if call_key in done:
            continue
        since = instance.launched_at or first_seen.get(instance.instance_id)
        held.append(HeldLaunch(instance.instance_id, asg, hook, since=since, last_heartbeat=heartbeats.get(call_key)))
    return tuple(held)


def launch_actions(view: PassView, decided: Sequence[Action]) -> list[Action]:
    """The lifecycle calls of this pass, after every group decided (`decided`, whose writes are laid over the state
    read: a catch-up that succeeded this pass already counts), then one `Blocked` per group still holding some."""
    if not view.observed.launches:
        return []
    after = view.state.with_documents(write.document for action in decided for write in action.writes())
    actions: list[Action] = []
    for key in sorted(view.observed.launches):
        group = view.desired_groups.get(key)
        held = view.observed.launches[key]
        if group is None or group.auto_scaling is None or not held:
            continue
        decisions = [
            decide_launch(
                view, key, group=group, group_state=after.groups.get(key), deployments=after.deployments, held=one
            )
            for one in sorted(held, key=lambda h: host_sort_key(h.instance_id))
        ]
        actions.extend(_calls(key, group, decisions))
        waiting = [d for d in decisions if d.result is None]
        if waiting:
            wakes = [d.wake_at for d in waiting if d.wake_at is not None]
            shown = "; ".join(f"{d.held.instance_id}: {d.reason}" for d in waiting[:5])
            more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
            actions.append(
                Blocked(
                    group=key,
                    code="HOLDING_LAUNCH",
                    reason=f"{len(waiting)} new instance(s) held at launch by {group.auto_scaling.lifecycle_hook} "
                    f"until they run the effective revision ({shown}{more})",
                    until=min(wakes) if wakes else None,
                )
            )
    return actions


def _calls(key: str, group: DesiredGroup, decisions: list[LaunchDecision]) -> list[Action]:
    calls: list[Action] = []
    region = group.targets.region
    for decision in decisions:
        held = decision.held
        if decision.result in {"CONTINUE", "ABANDON"}:
            calls.append(
                CompleteLifecycleAction(
                    group=key,
                    instance_id=held.instance_id,
                    host=decision.host,
                    auto_scaling_group=held.auto_scaling_group,
                    lifecycle_hook=held.hook,
                    result=decision.result,
                    region=region,
                    reason=decision.reason,
                )
            )
        elif decision.heartbeat:
            calls.append(
                RecordLifecycleHeartbeat(
                    group=key,
                    instance_id=held.instance_id,
                    host=decision.host,
                    auto_scaling_group=held.auto_scaling_group,
                    lifecycle_hook=held.hook,
                    region=region,
                    reason=decision.reason,
                )
            )
    return calls


def decide_launch(
    view: PassView,
    key: str,
    *,
    group: DesiredGroup,
    group_state: GroupState | None,
    deployments: Mapping[str, Deployment],
    held: HeldLaunch,
) -> LaunchDecision:
    """The table in the module docstring, for one held instance."""
    spec = group.auto_scaling
    assert spec is not None
    host = view.index.host_for(held.instance_id)
    effective = group_state.effective_revision if group_state is not None else None
    if effective is None or group_state is None:
        return LaunchDecision(
            held, host, "the group has no effective revision yet: nothing to install first", result="CONTINUE"
        )
    identity = view.identity(effective)
    attempts = last_attempts(group_state, deployments, None, view.identity)
    online = view.online(host)
    installed = view.installed_identity(host, key)
    if online and installed == identity and healthy_before(host, key, attempts, view.observed):
        return LaunchDecision(
            held, host, f"{host} runs the effective revision {effective.short()} and is healthy", result="CONTINUE"
        )
    attempt = attempts.get(host)
    if attempt is not None and attempt.status is FAILED and attempt.revision_identity == identity:
        deployment = deployments[attempt.deployment_id]
        dispatched = deployment.hosts[host].dispatched_at
        if held.since is None or dispatched is None or dispatched >= held.since:
            message = deployment.hosts[host].message or "failed"
            return LaunchDecision(
                held,
                host,
                f"{attempt.deployment_id} of {effective.short()} failed on {host}: {message}",
                result="ABANDON",
            )
    deadline = held.since + spec.timeout if held.since is not None else None
    if deadline is not None and view.now >= deadline:
        return LaunchDecision(
            held,
            host,
            f"still without the effective revision {effective.short()} {format_duration(spec.timeout)} after it "
            f"launched ({_why_waiting(view, host, installed, group_state)})",
            result="ABANDON",
        )
    last = held.last_heartbeat or held.since
    due = last is None or view.now >= last + spec.heartbeat
    next_heartbeat = view.now + spec.heartbeat if due or last is None else last + spec.heartbeat
    wake_at = min(next_heartbeat, deadline) if deadline is not None else next_heartbeat
    return LaunchDecision(held, host, _why_waiting(view, host, installed, group_state), heartbeat=due, wake_at=wake_at)


def _why_waiting(view: PassView, host: str, installed: str | None, group_state: GroupState) -> str:
    if host not in view.observed.registrations:
        return "no agent registered yet"
    if not view.online(host):
        return "its agent is offline"
    in_flight = group_state.deployment_in_flight
    if in_flight is not None:
        deployment = view.deployments.get(in_flight)
        if (
            deployment is not None
            and host in deployment.hosts
            and deployment.hosts[host].status in (PENDING, IN_PROGRESS)
        ):
            return f"being caught up by {in_flight}"
        return f"waits for {in_flight} to end before its catch-up"
    if installed is not None:
        return "runs another revision"
    return "waits for its catch-up"


__all__ = ["LaunchDecision", "decide_launch", "held_launches", "launch_actions"]
