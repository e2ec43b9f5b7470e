"""Advancing the deployment in flight by one step: record what its hosts did, re-write commands a crash
lost, ask `rollout.decide_step` what happens now, and turn that into actions (a batch dispatched, a bake,
a wait, or the end with `ending.finish`, whose rollback is stepped at once)."""

from __future__ import annotations

from datetime import datetime

from contract.models import (
    DEFAULT_EVENTS,
    HEALTH_CHECK,
    TRAFFIC_CONTROL_EVENTS,
    CommandTargets,
    Deployment,
    DeploymentStatus,
    GroupState,
    HostCommand,
    HostHealthCheck,
    TagMatch,
    group_key,
)
from reconciler.core.actions import (
    Action,
    Blocked,
    DispatchBatch,
    RecordHostResults,
    RewriteCommands,
    UpdateDeploymentStatus,
)
from reconciler.core.ending import finish
from reconciler.core.gates import alarm_outcome, hold_for_gates, stop_hosts_in_flight
from reconciler.core.identity import deployment_group_id, same_revision
from reconciler.core.membership import instance_of
from reconciler.core.quarantine import STOPPED_ON_REQUEST, is_quarantined
from reconciler.core.results import take_results
from reconciler.core.rollout import FAILED, IN_PROGRESS, HostFacts, Outcome, Step, decide_step
from reconciler.core.sharing import SharedCopies
from reconciler.core.view import PassView
from reconciler.desired.manifests import DesiredGroup, GroupOptions

GROUP_REMOVED = "GROUP_REMOVED"
VALIDATE_SERVICE = "ValidateService"

#: The group after a step, and the actions that step took.
Stepped = tuple[GroupState, list[Action]]


def drive(
    view: PassView, key: str, group_state: GroupState, deployment: Deployment, group: DesiredGroup | None
) -> Stepped:
    """One step of the deployment in flight; returns the group state after it (and after any end)."""
    if deployment.status.finished:
        # A crash came between writing the finished deployment and the group: apply the group side.
        return end(view, key, group_state, deployment, outcome=None, group=group)
    config = view.config_for(deployment, group)
    deployment, succeeded, failed, left = take_results(view, deployment, config)
    actions = _rewrite_interrupted(view, key, deployment, group)
    facts = view.facts(group_state, deployment, config)
    stop = stop_outcome(group_state, deployment, group)
    canary_and_bakes = deployment.creator == "user"
    step = decide_step(deployment, facts, config, now=view.now, canary_and_bakes=canary_and_bakes, stop=stop)
    alarm = alarm_outcome(group, deployment, view.observed.alarms.get(key)) if stop is None else None
    if alarm is not None and not (step.outcome is not None and step.outcome.status is DeploymentStatus.FAILED):
        # An alarm stops the deployment at once; a failure decided in this same pass keeps its own ending (and
        # the rollback DEPLOYMENT_FAILURE asks for).
        deployment, stopped = stop_hosts_in_flight(deployment, alarm, view.now)
        failed = [*failed, *stopped]
        step = Step(offline=step.offline, outcome=alarm)
    else:
        step = hold_for_gates(
            step, deployment, group, config,
            analysis=view.observed.analysis.get(deployment.deployment_id),
            alarms=view.observed.alarms.get(key),
            now=view.now,
        )
    if step.offline:
        deployment = _fail_offline(deployment, step.offline, facts, view.now)
        failed = [*failed, *step.offline]
    if succeeded or failed or left:
        actions.append(
            RecordHostResults(
                group=key, deployment_id=deployment.deployment_id, succeeded=succeeded, failed=failed,
                skipped=left, deployment=deployment,
            )
        )
    view.remember(deployment)
    if step.outcome is not None:
        group_state, ended = end(view, key, group_state, deployment, outcome=step.outcome, group=group)
        return group_state, [*actions, *ended]
    return group_state, [*actions, *_step_actions(view, key, deployment, group, step)]


def end(
    view: PassView,
    key: str,
    group_state: GroupState,
    deployment: Deployment,
    *,
    outcome: Outcome | None,
    group: DesiredGroup | None,
) -> Stepped:
    """End the deployment; a rollback that starts in its place takes its first step in the same pass."""
    ended = finish(view, key, group_state, deployment, outcome=outcome, group=group)
    if ended.rollback is None:
        return ended.group_state, ended.actions
    group_state, stepped = drive(view, key, ended.group_state, ended.rollback, group)
    return group_state, [*ended.actions, *stepped]


def stop_outcome(group_state: GroupState, deployment: Deployment, group: DesiredGroup | None) -> Outcome | None:
    """How the deployment ends if it is being stopped: group removed, stop request, or superseded."""
    if group is None:
        return Outcome(DeploymentStatus.STOPPED, GROUP_REMOVED, "the group was removed from the manifests")
    request = group_state.stop_request
    if request is not None and request.deployment_id in (None, deployment.deployment_id):
        return Outcome(DeploymentStatus.STOPPED, STOPPED_ON_REQUEST, "stopped on request")
    if (
        not same_revision(group.revision, deployment.revision)
        and not group.suspend
        and is_quarantined(group_state, group.revision) is None
    ):
        commit = f" at commit {group_state.desired_commit[:12]}" if group_state.desired_commit else ""
        return Outcome(DeploymentStatus.SUPERSEDED, None, f"superseded by revision {group.revision.short()}{commit}")
    return None


def _fail_offline(deployment: Deployment, offline: list[str], facts: dict[str, HostFacts], now: datetime) -> Deployment:
    """Pending hosts offline at their turn fail without a command."""
    hosts = dict(deployment.hosts)
    for host in offline:
        update = {"status": FAILED, "finished_at": now, "message": facts[host].offline_reason}
        hosts[host] = hosts[host].model_copy(update=update)
    return deployment.model_copy(update={"hosts": hosts, "updated_at": now})


def _step_actions(
    view: PassView, key: str, deployment: Deployment, group: DesiredGroup | None, step: Step
) -> list[Action]:
    """A step that does not end the deployment: bake, dispatch a batch, or wait."""
    deployment_id = deployment.deployment_id
    if step.baking_until is not None:
        if deployment.status is DeploymentStatus.BAKING:
            return [Blocked(group=key, code="BAKING", reason=step.bake_reason, deployment_id=deployment_id,
                            until=step.baking_until)]
        baking = deployment.model_copy(update={"status": DeploymentStatus.BAKING, "updated_at": view.now})
        return [
            UpdateDeploymentStatus(
                group=key,
                deployment_id=deployment_id,
                status_from=deployment.status,
                status_to=DeploymentStatus.BAKING,
                reason=f"{step.bake_reason}, until {step.baking_until.isoformat()}",
                deployment=baking,
            )
        ]
    if step.dispatch:
        return [_dispatch(view, key, deployment, group, step)]
    if step.waiting is not None:
        return [
            Blocked(
                group=key, code=step.waiting_code, reason=step.waiting, deployment_id=deployment_id,
                until=step.waiting_until,
            )
        ]
    return []


def _rewrite_interrupted(view: PassView, key: str, deployment: Deployment, group: DesiredGroup | None) -> list[Action]:
    """Hosts in flight whose command write a crash lost get the same command again (same generation)."""
    commands: list[HostCommand] = []
    maker: HostCommands | None = None
    for host, host_state in deployment.hosts.items():
        if host_state.status is not IN_PROGRESS or host_state.generation is None:
            continue
        written = view.state.commands.get(host)
        if written is None or written.generation < host_state.generation:
            maker = maker or HostCommands(view, deployment, group)
            created_at = host_state.dispatched_at or view.now
            commands.append(maker.command(host, generation=host_state.generation, created_at=created_at))
    if not commands:
        return []
    hosts = [c.host_id for c in commands]
    return [RewriteCommands(group=key, deployment_id=deployment.deployment_id, hosts=hosts, commands=commands)]


def _dispatch(
    view: PassView, key: str, deployment: Deployment, group: DesiredGroup | None, step: Step
) -> DispatchBatch:
    """The next batch: each host booked for this pass, given its next generation and a command."""
    batch = len(deployment.batches)
    hosts = dict(deployment.hosts)
    commands: list[HostCommand] = []
    maker = HostCommands(view, deployment, group)
    shared = SharedCopies()
    for host in step.dispatch:
        generation = view.next_generation(host)
        view.generation[host] = generation
        view.booked.add(host)
        update = {"status": IN_PROGRESS, "batch": batch, "generation": generation, "dispatched_at": view.now}
        hosts[host] = shared.copy(hosts[host], update)
        commands.append(maker.command(host, generation=generation, created_at=view.now))
    dispatched = deployment.model_copy(
        update={
            "hosts": hosts,
            "batches": [*deployment.batches, list(step.dispatch)],
            "status": DeploymentStatus.IN_PROGRESS,
            "updated_at": view.now,
        }
    )
    view.remember(dispatched)
    return DispatchBatch(
        group=key,
        deployment_id=deployment.deployment_id,
        batch=batch,
        hosts=list(step.dispatch),
        revision=deployment.revision,
        zone=step.zone,
        canary=step.canary,
        deployment=dispatched,
        commands=commands,
    )


class HostCommands:
    """The commands hosts are given for one deployment (the same one again when a crash lost its write).

    What every host's command shares (events, options, timeout, the group's selectors) is worked out once per
    batch rather than once per host: at each batch of a 10,000-host rollout, and at every batch of `plan`'s dry run
    (issue 18)."""

    def __init__(self, view: PassView, deployment: Deployment, group: DesiredGroup | None) -> None:
        self.view = view
        self.deployment = deployment
        self.group = group
        self.options = group.options if group is not None else GroupOptions()
        host_timeout = view.config_for(deployment, group).host_timeout
        self.timeout_seconds = host_timeout.total_seconds() if host_timeout is not None else None
        self.traffic = group is not None and group.traffic is not None
        events = list(TRAFFIC_CONTROL_EVENTS if self.traffic else DEFAULT_EVENTS)
        if group is not None and group.health_check is not None:
            events.insert(events.index(VALIDATE_SERVICE) + 1, HEALTH_CHECK)
        self.events = events
        self.group_id = deployment_group_id(group_key(deployment.application, deployment.deployment_group))
        self.tag_sets = [] if group is None else [
            [TagMatch(key=f.key, value=f.value, type=f.type) for f in tag_set] for tag_set in group.targets.tag_sets
        ]
        self._targets: CommandTargets | None = None

    def targets(self, host: str) -> CommandTargets | None:
        """The group's selectors, for the agent to check that it really belongs to the group (CommandTargets); None
        (not checked) for a group that is gone from the manifests.

        For a group whose membership also comes from EC2 or Auto Scaling, the command names the instance the host
        is a member as: the one EC2 listed for the group (the host's agent must be that instance), or, while EC2
        could not be read, the one its registration claims (docs/trust.md, "Gaps": then only the instance id is
        checked)."""
        if self.group is None:
            return None
        targets = self.group.targets
        if targets.uses_aws:
            instance_id = instance_of(host, self.view.observed)
            return CommandTargets(tag_sets=self.tag_sets, hosts=list(targets.hosts), instance_id=instance_id)
        if self._targets is None:  # the same for every host: one frozen object for the whole batch
            self._targets = CommandTargets(tag_sets=self.tag_sets, hosts=list(targets.hosts))
        return self._targets

    def command(self, host: str, *, generation: int, created_at: datetime) -> HostCommand:
        deployment = self.deployment
        registration = self.view.observed.registrations.get(host)
        health_check: HostHealthCheck | None = None
        if self.group is not None and self.group.health_check is not None:
            spec = self.group.health_check
            health_check = HostHealthCheck(
                url=spec.url_for(host, registration.address if registration is not None else None),
                expected_status=list(spec.expected_status),
                body_match=spec.body_match,
                interval_seconds=spec.interval.total_seconds(),
                timeout_seconds=spec.timeout.total_seconds(),
                min_healthy_seconds=spec.min_healthy_time.total_seconds(),
                healthy_deadline_seconds=spec.healthy_deadline.total_seconds(),
            )
        return HostCommand(
            host_id=host,
            generation=generation,
            deployment_id=deployment.deployment_id,
            application=deployment.application,
            deployment_group=deployment.deployment_group,
            deployment_group_id=self.group_id,
            revision=deployment.revision,
            events=list(self.events),
            health_check=health_check,
            targets=self.targets(host),
            traffic_address=registration.address if self.traffic and registration is not None else None,
            traffic_instance_id=registration.instance_id if self.traffic and registration is not None else None,
            file_exists_behavior=self.options.file_exists_behavior,
            ignore_application_stop_failures=self.options.ignore_application_stop_failures,
            is_rollback=deployment.creator == "rollback",
            timeout_seconds=self.timeout_seconds,
            created_at=created_at,
        )
