"""What will happen, asked of the rollout engine itself (`reconciler.core`): its membership, its first pass and
its batch simulator, run against the store's fleet (or, offline, against the hosts the manifests list by id).
This module never restates a batching rule; if the engine changes, plans follow.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from contract.models import GroupState, HostRegistration, HostStatus, Revision
from reconciler.core import CoreSettings, Observed, StartDeployment, State, is_online
from reconciler.core.membership import MembershipIndex, group_members, missing_hosts
from reconciler.core.simulate import PreviewDeployment, RolloutPreview, preview_rollout
from reconciler.core.view import healthy_before, last_attempts
from reconciler.desired.manifests import BUILTIN_PREFIX, Desired, DesiredGroup
from reconciler.plan.diff import canonical
from reconciler.plan.estimate import estimate_duration
from reconciler.plan.gates import alarms_plan, analysis_plans, gate_checkpoints, health_check_plan
from reconciler.plan.inputs import Fleet, PlanOptions
from reconciler.plan.model import Batch, Ec2Plan, GroupRollout, InFlight, MissingHost, PlanWarning, Quarantine
from reconciler.plan.review import review_warnings, selector_text
from reconciler.plan.traffic import traffic_lines

RolloutAction = Literal["deploy", "remove", "settings", "blocked"]


@dataclass(frozen=True)
class _Context:
    """What every group's rollout is judged against: the fleet (or its offline stand-in) and the options."""

    observed: Observed
    state: State
    fleet: Fleet | None
    now: datetime
    options: PlanOptions
    #: One index of the hosts' tags for the whole plan: built per group it made a plan O(groups x hosts).
    index: MembershipIndex = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", MembershipIndex(self.observed))


#: Simulated time between passes; small, so that any gap longer than it between two batches is a bake.
PREVIEW_TICK = timedelta(milliseconds=1)


def _group_signature(group: DesiredGroup) -> dict[str, Any]:
    """Everything the engine reads from a resolved group, canonical (the source location is only where it
    was written, and list order means nothing)."""
    config = group.config
    signature: dict[str, Any] = canonical({
        "revision": group.revision.identity(),
        "targets": group.targets.model_dump(mode="json", by_alias=True, exclude_none=True),
        "config": {
            "name": config.name,
            "minimumHealthyHosts": config.minimum_healthy_hosts.model_dump(mode="json", by_alias=True)
            if config.minimum_healthy_hosts else None,
            "canary": config.canary.model_dump(mode="json", by_alias=True) if config.canary else None,
            "hostTimeout": config.host_timeout.total_seconds() if config.host_timeout else None,
            "zonal": config.zonal.model_dump(mode="json", by_alias=True, exclude_none=True) if config.zonal else None,
        },
        "rollback": group.auto_rollback.model_dump(mode="json", by_alias=True),
        "options": group.options.model_dump(mode="json", by_alias=True, exclude_none=True),
        "suspend": group.suspend,
        "gates": {
            "healthCheck": group.health_check.model_dump(mode="json", by_alias=True) if group.health_check else None,
            "alarms": group.alarms.model_dump(mode="json", by_alias=True) if group.alarms else None,
            "analysis": [gate.model_dump(mode="json", by_alias=True) for gate in group.analysis],
        },
        "traffic": group.traffic.model_dump(mode="json", by_alias=True, exclude_none=True) if group.traffic else None,
    })
    return signature


def _same_group(a: DesiredGroup, b: DesiredGroup) -> bool:
    return bool(_group_signature(a) == _group_signature(b))


def _group_changes(before: DesiredGroup, after: DesiredGroup) -> list[str]:
    old, new = _group_signature(before), _group_signature(after)
    config = after.config.name.removeprefix(BUILTIN_PREFIX)
    words = {"revision": "revision", "targets": "targets", "config": f"deployment config ({config})",
             "rollback": "rollback policy", "options": "options", "suspend": "suspend", "gates": "monitoring gates",
             "traffic": "traffic control"}
    return [label for key, label in words.items() if old[key] != new[key]]


def _offline_observed(groups: Iterable[DesiredGroup], now: datetime) -> Observed:
    """Offline, the only hosts known are the ones listed by id; the engine is shown them as new, online
    hosts so it can lay out the batches. Groups with tag sets get no batches: their hosts are unknowable."""
    registrations: dict[str, HostRegistration] = {}
    statuses: dict[str, HostStatus] = {}
    for group in groups:
        if group.targets.tag_sets:
            continue
        for host in group.targets.hosts:
            registrations[host] = HostRegistration(host_id=host, platform="unknown", hostname=host,
                                                   agent_version="unknown", registered_at=now)
            statuses[host] = HostStatus(host_id=host, heartbeat_at=now, agent_version="unknown")
    return Observed(registrations=registrations, statuses=statuses)


def _batches(entry: PreviewDeployment) -> list[Batch]:
    """The engine's batches; a gap in simulated time between two batches is a bake (canary or zone), once the
    time the rollout waited for analysis gates alone is taken out (reconciler/plan/gates.py shows that)."""
    gate_waits = {point.batch: point.waited for point in entry.checkpoints}
    batches = []
    for position, batch in enumerate(entry.batches):
        bake: float | None = None
        if position + 1 < len(entry.batches):
            waited = gate_waits.get(batch.index, timedelta(0))
            gap = (entry.batches[position + 1].after - batch.after - waited).total_seconds()
            if gap >= 0.05:
                bake = round(gap, 1)
        batches.append(Batch(number=batch.index + 1, hosts=batch.hosts, zone=batch.zone, canary=batch.canary,
                             bake_after_seconds=bake))
    return batches


def _pick_deployment(preview: RolloutPreview, revision: Revision | None) -> PreviewDeployment | None:
    """The deployment that brings the head's revision if there is one, else the first the engine starts."""
    if not preview.deployments:
        return None
    if revision is not None:
        for entry in preview.deployments:
            if entry.revision_to.identity() == revision.identity():
                return entry
    return preview.deployments[0]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector paused while the engine's dry run runs.

    Why: every simulated tick builds statuses, deployments and commands that stay alive until the plan is made,
    so the collector ran again and again over the whole fleet and found nothing to free: 40 % of a 10,000-host
    plan (issue 18). What the dry run builds holds no reference cycles; collecting resumes afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan_rollouts(
    base: Desired | None,
    head: Desired,
    *,
    fleet: Fleet | None,
    now: datetime,
    options: PlanOptions,
) -> tuple[list[GroupRollout], list[PlanWarning]]:
    """One `GroupRollout` per group the change touches or the store has work for, and review warnings."""
    with _collector_paused():
        return _plan_rollouts(base, head, fleet=fleet, now=now, options=options)


def _plan_rollouts(
    base: Desired | None,
    head: Desired,
    *,
    fleet: Fleet | None,
    now: datetime,
    options: PlanOptions,
) -> tuple[list[GroupRollout], list[PlanWarning]]:
    before = base.desired_groups() if base is not None else {}
    after = head.desired_groups()
    settings = CoreSettings(heartbeat_timeout=options.heartbeat_timeout)
    if fleet is not None:
        observed, state = fleet.observed, fleet.state
    else:
        observed, state = _offline_observed(after.values(), now), State()
    # Hosts running a command right now finish it (successfully) at the first simulated tick.
    previews = preview_rollout(head, observed, state, now=now, settings=settings, tick=PREVIEW_TICK)
    touched = {key for key in set(before) | set(after)
               if key not in before or key not in after or not _same_group(before[key], after[key])}
    context = _Context(observed=observed, state=state, fleet=fleet, now=now, options=options)
    rollouts: list[GroupRollout] = []
    warnings: list[PlanWarning] = []
    for key in sorted(touched | set(previews)):
        preview = previews.get(key, RolloutPreview(group=key))
        group = after.get(key)
        from_change = key in touched
        if group is None:
            recorded = state.groups.get(key)
            if from_change or (recorded is not None and not recorded.removed):
                rollouts.append(_removed(key, before.get(key), recorded, from_change, fleet))
            continue
        if not from_change and (fleet is None or not preview.deployments):
            continue
        rollout, group_warnings = _rollout(key, before.get(key), group, preview, context, from_change=from_change)
        rollouts.append(rollout)
        warnings.extend(group_warnings)
    return rollouts, warnings


def _removed(key: str, previous: DesiredGroup | None, recorded: GroupState | None, from_change: bool,
             fleet: Fleet | None) -> GroupRollout:
    in_flight = recorded.deployment_in_flight if recorded else None
    reason = "the group left the manifests: no new deployments start; what is installed stays on the hosts"
    if in_flight:
        reason += f"; {in_flight} in flight stops after its hosts in flight finish"
    revision = recorded.effective_revision if recorded and recorded.effective_revision else (
        previous.revision if previous else None)
    return GroupRollout(group=key, action="remove", from_change=from_change, reason=reason,
                        revision_from=revision, basis="store" if fleet else "selectors")


@dataclass(frozen=True)
class _Decision:
    """What the change does to a group, and the engine's dry run of the deployment shown (if any)."""

    action: RolloutAction
    reason: str = ""
    revision_from: Revision | None = None
    revision_to: Revision | None = None
    entry: PreviewDeployment | None = None
    #: Why the engine's first pass does not move the group, when it does not.
    blocked: str | None = None


def _rollout(
    key: str,
    previous: DesiredGroup | None,
    group: DesiredGroup,
    preview: RolloutPreview,
    context: _Context,
    *,
    from_change: bool,
) -> tuple[GroupRollout, list[PlanWarning]]:
    recorded = context.state.groups.get(key)
    # EC2 members are unknowable offline too: only groups that list every host by id get hosts and batches.
    explicit_only = not group.targets.tag_sets and not group.targets.uses_aws
    known_hosts = context.fleet is not None or explicit_only
    targets = group_members(group, context.observed, context.index) if known_hosts else None
    revision_changed = previous is None or previous.revision.identity() != group.revision.identity()
    if context.fleet is None:
        decision = _decide_offline(previous, group, preview, explicit_only=explicit_only,
                                   revision_changed=revision_changed)
    else:
        decision = _decide_with_store(group, preview, recorded, revision_changed=revision_changed)
    if decision.action == "settings":
        decision = replace(decision, reason=_settings_reason(previous, group, revision_changed=revision_changed))
    entry = decision.entry
    batches = _batches(entry) if entry is not None else None
    offline, unhealthy = _host_health(key, targets, recorded, context) if context.fleet is not None else ([], [])
    checkpoints = entry.checkpoints if entry is not None and batches else None
    estimate = estimate_duration(
        recorded, context.state.deployments, batches or [],
        drain=group.traffic.drain_timeout if group.traffic else None,
        gate_waits=[point.waited for point in checkpoints or []],
        min_healthy=group.health_check.min_healthy_time if group.health_check else None,
    ) if batches else None
    rollout = GroupRollout(
        group=key,
        action=decision.action,
        from_change=from_change,
        reason=decision.reason,
        revision_from=decision.revision_from,
        revision_to=decision.revision_to,
        deployment_config=group.config.name,
        config_description=group.config.describe(),
        minimum_healthy_hosts=group.config.minimum_for(len(targets)) if targets is not None else None,
        rollback_enabled=group.auto_rollback.enabled,
        rollback_events=list(group.auto_rollback.events) if group.auto_rollback.enabled else [],
        suspended=group.suspend,
        selector=selector_text(group.targets),
        basis="store" if context.fleet is not None else "selectors",
        target_hosts=targets,
        deploy_hosts=entry.hosts if entry is not None else None,
        batches=batches,
        offline_hosts=offline,
        unhealthy_hosts=unhealthy,
        quarantined=[Quarantine(revision=q.revision.short(), deployment_id=q.deployment_id, reason=q.reason)
                     for q in (recorded.quarantined if recorded else [])],
        in_flight=_in_flight(recorded, context.state),
        blocked=decision.blocked if decision.action != "deploy" else None,
        simulated_status=str(entry.status) if entry is not None else None,
        simulated_error=entry.error_code if entry is not None else None,
        estimate=estimate,
        traffic=traffic_lines(group.traffic, targets, context.observed) if group.traffic else None,
        health_check=health_check_plan(group.health_check) if group.health_check else None,
        alarms=alarms_plan(group.alarms, group.auto_rollback) if group.alarms else None,
        analysis=analysis_plans(group.analysis, checkpoints) if group.analysis else None,
        gate_checkpoints=gate_checkpoints(checkpoints) if checkpoints else None,
        ec2=_ec2_plan(group, context),
    )
    warnings = review_warnings(rollout, group, entry, preview, revision_changed=revision_changed,
                               with_fleet=context.fleet is not None, options=context.options)
    return rollout, warnings


def _decide_offline(
    previous: DesiredGroup | None,
    group: DesiredGroup,
    preview: RolloutPreview,
    *,
    explicit_only: bool,
    revision_changed: bool,
) -> _Decision:
    """Offline there is no state: a deployment starts exactly when the revision changes. The engine saw only
    the hosts listed by id, as new hosts; for tag sets it has nothing to lay out."""
    if not revision_changed:
        return _Decision("settings")
    entry = _pick_deployment(preview, group.revision) if explicit_only else None
    reason = "new group" if previous is None else "the desired revision changed"
    return _Decision("deploy", reason, previous.revision if previous else None, group.revision, entry)


def _decide_with_store(
    group: DesiredGroup, preview: RolloutPreview, recorded: GroupState | None, *, revision_changed: bool
) -> _Decision:
    """With the store, the engine's dry run says what starts (or why nothing can)."""
    entry = _pick_deployment(preview, group.revision)
    blocked = preview.blocked[0].reason if preview.blocked else None
    effective = recorded.effective_revision if recorded else None
    if entry is not None:
        started = next((a for a in preview.first_pass if isinstance(a, StartDeployment)
                        and a.deployment_id == entry.deployment_id), None)
        if started is not None:
            reason, revision_from = started.reason, started.revision_from
        else:  # started after the deployment in flight ends
            reason = "the desired revision changed; it starts once the deployment in flight has ended"
            revision_from = effective
        return _Decision("deploy", reason, revision_from, entry.revision_to, entry, blocked)
    if blocked is not None and (revision_changed or recorded is None):
        return _Decision("blocked", blocked, effective, group.revision, None, blocked)
    if revision_changed and effective is not None and effective.identity() == group.revision.identity():
        # Back to the last good revision (a revert after a failure): the hosts already run it.
        return _Decision("settings", blocked=blocked)
    if revision_changed:
        reason = "the desired revision changed; the engine starts it on a later pass"
        return _Decision("deploy", reason, effective, group.revision, None, blocked)
    return _Decision("settings", blocked=blocked)


def _settings_reason(previous: DesiredGroup | None, group: DesiredGroup, *, revision_changed: bool) -> str:
    if revision_changed:
        return (f"the desired revision is the group's effective (last good) revision {group.revision.short()}, "
                f"which its hosts already run")
    changed = _group_changes(previous, group) if previous else []
    return (f"{', '.join(changed) or 'settings'} changed; the revision is unchanged, so no deployment "
            f"starts and the next deployment uses the new settings")


def _ec2_plan(group: DesiredGroup, context: _Context) -> Ec2Plan | None:
    """The group's EC2 membership as the CLI read it into the fleet (issue 16): its missing hosts, or why it was
    not read. None for groups without EC2 or Auto Scaling targets."""
    if not group.targets.uses_aws:
        return None
    if context.fleet is None:
        return Ec2Plan(read=False, error="offline: without the store, instances cannot be matched with agents")
    read = context.observed.ec2.get(group.key)
    if read is None:
        return Ec2Plan(read=False, error="not read")
    if not read.known:
        return Ec2Plan(read=False, region=read.region, error=read.error)
    missing = missing_hosts(group, context.observed, context.index)
    return Ec2Plan(read=True, region=read.region, expected=sum(1 for i in read.instances if i.expected),
                   missing=[MissingHost(instance_id=i.instance_id, description=i.describe()) for i in missing])


def _in_flight(recorded: GroupState | None, state: State) -> InFlight | None:
    if recorded is None or not recorded.deployment_in_flight:
        return None
    flying = state.deployments.get(recorded.deployment_in_flight)
    return InFlight(deployment_id=recorded.deployment_in_flight,
                    status=str(flying.status) if flying else "unknown",
                    revision=flying.revision.short() if flying else "unknown")


def _host_health(
    key: str, targets: list[str] | None, recorded: GroupState | None, context: _Context
) -> tuple[list[str], list[str]]:
    """The group's offline hosts, and its online hosts that are not healthy by the engine's own rule
    (`reconciler.core.view.healthy_before`: its last attempt in the group failed, or it never ran the group)."""
    offline: list[str] = []
    unhealthy: list[str] = []
    observed = context.observed
    attempts = last_attempts(recorded, context.state.deployments) if recorded is not None else {}
    for host in targets or []:
        if not is_online(observed, host, now=context.now, heartbeat_timeout=context.options.heartbeat_timeout):
            offline.append(host)
        elif not healthy_before(host, key, attempts, observed):
            unhealthy.append(host)
    return offline, unhealthy
