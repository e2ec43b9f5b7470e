"""A fleet in memory: apply actions to a `State`, let simulated agents answer their commands, repeat.

`reconcile plan` uses it to show the batches a rollout would go through ("assuming every host succeeds"),
by running the real `reconcile()` pass after pass rather than a second copy of the batching rules; the
property tests use it with agents that fail at random. Still pure: the clock is a value that the loop
advances (to the end of a bake, or to a gate's next measurement, when the engine waits for one).

Monitoring gates (docs/gates.md) are assumed to pass, as hosts are assumed to succeed: at each checkpoint the
engine opens, every due measurement is taken on time and is Successful, and no alarm fires. So the simulated
clock moves through each gate's run (initialDelay + (count - 1) x interval) exactly as a healthy rollout would,
and the preview says where the checkpoints were and how long the rollout waited at each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from contract.models import (
    AlarmCheck,
    CommandProgress,
    CommandStatus,
    DeploymentAnalysis,
    DeploymentStatus,
    GateMeasurement,
    GateResult,
    HostCommand,
    HostDeploymentStatus,
    InstalledRevision,
    Revision,
    group_key,
)
from reconciler.core.actions import (
    Action,
    Blocked,
    DispatchBatch,
    FinishDeployment,
    StartDeployment,
    StartRollback,
)
from reconciler.core.gates import WAITING_FOR_ANALYSIS, Checkpoint, checkpoint, due_measurements
from reconciler.core.membership import MembershipIndex
from reconciler.core.observed import Observed, is_online
from reconciler.core.reconcile import reconcile
from reconciler.core.state import DEFAULT_SETTINGS, CoreSettings, State
from reconciler.core.view import deployment_config
from reconciler.desired.manifests import Desired

#: Decides a simulated agent's answer to a command: True = Succeeded.
Outcome = Callable[[HostCommand], bool]


def apply_actions(state: State, actions: Iterable[Action]) -> State:
    """What an executor does, in memory: every write replaces the document under its key."""
    return state.with_documents(write.document for action in actions for write in action.writes())


def run_agents(
    observed: Observed,
    state: State,
    *,
    now: datetime,
    alive: Collection[str],
    outcome: Outcome | None = None,
    heartbeat_timeout: timedelta | None = None,
    commanded: Collection[str] | None = None,
) -> Observed:
    """Every host in `alive` heartbeats at `now` and runs its command if it has a new generation (or finishes
    the one it reported running), at once, with the answer `outcome` gives (success when None). Other hosts
    stay silent.

    With `heartbeat_timeout`, a host whose command does not move keeps its last heartbeat while that still
    makes it online at `now`: a pass reads a heartbeat only to tell online from offline (and to say since when
    a host is offline), so every pass decides exactly as if it had heartbeat, and a tick copies only the
    statuses it changes. `preview_rollout` runs thousands of ticks over large fleets; copying every live host's
    status at each one was a third of the dry run of a 10,000-host plan (issue 18).

    `commanded` (with `heartbeat_timeout` only) narrows the hosts whose command is looked at to those whose
    command may have changed since the last tick: a host that answered its command has nothing to run until it
    is given another. The others are only checked for a heartbeat about to go stale."""
    statuses = dict(observed.statuses)
    # What hosts answering the same command at this tick report is the same: one frozen record for all of them.
    progress: dict[tuple[str, int, bool], CommandProgress] = {}
    installs: dict[str, InstalledRevision] = {}
    hosts: Iterable[str] = alive
    if commanded is not None and heartbeat_timeout is not None:
        hosts = [h for h in alive if h in commanded or not is_online(observed, h, now=now,
                                                                       heartbeat_timeout=heartbeat_timeout)]
    for host in hosts:
        status = statuses.get(host)
        if status is None:
            continue
        command = state.commands.get(host)
        last = status.command
        # A command not started yet, or the one running right now: both finish at this tick.
        running = last is not None and last.status is CommandStatus.IN_PROGRESS
        if command is not None and (
            last is None or last.generation < command.generation or (running and last.generation == command.generation)
        ):
            update: dict[str, object] = {"heartbeat_at": now}
            ok = outcome(command) if outcome is not None else True
            answer = progress.get((command.deployment_id, command.generation, ok))
            if answer is None:
                answer = progress[(command.deployment_id, command.generation, ok)] = CommandProgress(
                    deployment_id=command.deployment_id,
                    generation=command.generation,
                    application=command.application,
                    deployment_group=command.deployment_group,
                    status=CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED,
                    started_at=now,
                    ended_at=now,
                    message=None if ok else "simulated failure",
                )
            update["command"] = answer
            if ok:
                installed = installs.get(command.deployment_id)
                if installed is None:  # a deployment has one application, group and revision
                    installed = installs[command.deployment_id] = InstalledRevision(
                        application=command.application,
                        deployment_group=command.deployment_group,
                        revision=command.revision,
                        deployment_id=command.deployment_id,
                        installed_at=now,
                    )
                key = group_key(command.application, command.deployment_group)
                update["installed"] = {**status.installed, key: installed}
            statuses[host] = status.model_copy(update=update)
        elif heartbeat_timeout is None or not is_online(observed, host, now=now, heartbeat_timeout=heartbeat_timeout):
            statuses[host] = status.model_copy(update={"heartbeat_at": now})
    # EC2 membership stays as read: the simulated agents answer, the instances do not change.
    return Observed(registrations=observed.registrations, statuses=statuses, ec2=observed.ec2)


@dataclass(frozen=True)
class PreviewBatch:
    index: int
    hosts: list[str]
    zone: str | None
    canary: bool
    #: Simulated time from the start of the preview at which the batch is dispatched (bakes show here).
    after: timedelta


@dataclass
class PreviewCheckpoint:
    """A checkpoint the engine opened (reconciler/core/gates.py): after which batch, which gates, and how long the
    rollout waited there for the gates alone (a bake running meanwhile is not counted twice)."""

    name: str
    #: Index of the batch it follows (0: the first).
    batch: int
    #: "after the canary batch", "after batch 2", "after the last batch (batch 4)".
    where: str
    gates: tuple[str, ...]
    #: Simulated time from the start of the preview at which it opened.
    opened: timedelta
    waited: timedelta = timedelta(0)


@dataclass
class PreviewDeployment:
    deployment_id: str
    creator: str
    revision_from: Revision | None
    revision_to: Revision
    hosts: list[str]
    skipped: dict[str, str]
    batches: list[PreviewBatch] = field(default_factory=list)
    checkpoints: list[PreviewCheckpoint] = field(default_factory=list)
    status: DeploymentStatus = DeploymentStatus.IN_PROGRESS
    error_code: str | None = None
    reason: str | None = None


@dataclass
class RolloutPreview:
    """What a group would go through if every online host succeeded, starting from the current state."""

    group: str
    #: Exactly what the next pass would do for this group.
    first_pass: list[Action] = field(default_factory=list)
    deployments: list[PreviewDeployment] = field(default_factory=list)
    #: Why the group does not move, if it does not (from the first pass).
    blocked: list[Blocked] = field(default_factory=list)
    #: False when the simulation hit its pass limit before every deployment ended.
    complete: bool = True


def preview_rollout(
    desired: Desired,
    observed: Observed,
    state: State,
    *,
    now: datetime,
    settings: CoreSettings = DEFAULT_SETTINGS,
    groups: Collection[str] | None = None,
    tick: timedelta = timedelta(seconds=1),
    max_passes: int = 10_000,
) -> dict[str, RolloutPreview]:
    """Run passes until every deployment of the selected groups (default: all) has ended, with online hosts
    succeeding at once, offline ones staying silent, every gate measurement Successful and on time, and no alarm
    firing. Keyed by group; groups with nothing to do map to a preview with no deployments."""
    timeout = settings.heartbeat_timeout
    alive = {h for h in observed.statuses if is_online(observed, h, now=now, heartbeat_timeout=timeout)}
    wanted = set(groups) if groups is not None else set(desired.desired_groups()) | set(state.groups)
    previews = {key: RolloutPreview(group=key) for key in sorted(wanted)}
    by_id: dict[str, PreviewDeployment] = {}
    clock = now
    # The first pass is exactly the one `--once` would run now, events included; the passes after it only move
    # the simulated rollout on, and record no events (a fifth of the dry run's time at 10,000 hosts, issue 18).
    # The simulated agents change statuses only: every pass indexes the same registrations and EC2 read.
    index = MembershipIndex(observed)
    actions = reconcile(desired, observed, state, now=clock, settings=settings, index=index)
    for action in actions:
        if action.group in previews:
            previews[action.group].first_pass.append(action)
            if isinstance(action, Blocked):
                previews[action.group].blocked.append(action)
    analysis: dict[str, DeploymentAnalysis] = dict(observed.analysis)
    complete = False
    # Every live host's command is looked at once; from then on only those given a command since the last tick.
    commanded: Collection[str] = alive
    for passes in range(max_passes):
        _record(previews, by_id, actions, clock - now)
        before = state.commands
        state = apply_actions(state, actions)
        if passes > 0:
            commanded = {h for h, c in state.commands.items() if before.get(h) is not c}
        _record_checkpoints(by_id, open_checkpoints(desired, state), now)
        if not any((g := state.groups.get(key)) is not None and g.deployment_in_flight for key in previews):
            complete = True
            break
        bake_ends = [a.until for a in actions if isinstance(a, Blocked) and a.until is not None]
        following = max(clock + tick, min(bake_ends)) if bake_ends else clock + tick
        _record_gate_waits(by_id, actions, following - clock)
        clock = following
        observed = run_agents(observed, state, now=clock, alive=alive, heartbeat_timeout=timeout,
                              commanded=commanded)
        analysis = assume_gates_pass(desired, state, analysis, now=clock)
        observed = dataclasses.replace(observed, analysis=analysis, alarms=no_alarms(desired, now=clock))
        actions = reconcile(desired, observed, state, now=clock, settings=settings, events=False, index=index)
    for preview in previews.values():
        preview.complete = complete
    return previews


def _record(
    previews: dict[str, RolloutPreview], by_id: dict[str, PreviewDeployment], actions: list[Action], after: timedelta
) -> None:
    for action in actions:
        preview = previews.get(action.group)
        if preview is None:
            continue
        if isinstance(action, StartDeployment | StartRollback):
            entry = PreviewDeployment(
                deployment_id=action.deployment_id,
                creator=action.deployment.creator,
                revision_from=action.revision_from,
                revision_to=action.revision_to,
                hosts=list(action.hosts),
                skipped={h: s.message or "" for h, s in action.deployment.hosts.items() if h not in action.hosts},
            )
            by_id[action.deployment_id] = entry
            preview.deployments.append(entry)
        elif isinstance(action, DispatchBatch):
            if action.deployment_id not in by_id:  # started by an earlier pass
                deployment = action.deployment
                by_id[action.deployment_id] = PreviewDeployment(
                    deployment_id=action.deployment_id,
                    creator=deployment.creator,
                    revision_from=None,
                    revision_to=deployment.revision,
                    hosts=[h for h, s in deployment.hosts.items() if s.status is not HostDeploymentStatus.SKIPPED],
                    skipped={
                        h: s.message or ""
                        for h, s in deployment.hosts.items()
                        if s.status is HostDeploymentStatus.SKIPPED
                    },
                )
                preview.deployments.append(by_id[action.deployment_id])
            by_id[action.deployment_id].batches.append(
                PreviewBatch(index=action.batch, hosts=list(action.hosts), zone=action.zone, canary=action.canary,
                             after=after)
            )
        elif isinstance(action, FinishDeployment) and action.deployment_id in by_id:
            entry = by_id[action.deployment_id]
            entry.status = action.status
            entry.error_code = action.error_code
            entry.reason = action.reason


def open_checkpoints(desired: Desired, state: State) -> dict[str, Checkpoint]:
    """Deployment id -> the checkpoint it is at, for deployments in flight whose group has analysis gates."""
    groups = desired.desired_groups()
    found: dict[str, Checkpoint] = {}
    for key, group_state in state.groups.items():
        deployment = state.deployments.get(group_state.deployment_in_flight or "")
        group = groups.get(key)
        if deployment is None or group is None or not group.analysis:
            continue
        point = checkpoint(deployment, group, deployment_config(desired, deployment, group))
        if point is not None:
            found[deployment.deployment_id] = point
    return found


def assume_gates_pass(
    desired: Desired, state: State, analysis: Mapping[str, DeploymentAnalysis], *, now: datetime
) -> dict[str, DeploymentAnalysis]:
    """`analysis` with every measurement due at `now` taken, on time and Successful: what a healthy service
    gives the gates. Deployments with nothing due keep their record as it is."""
    groups = desired.desired_groups()
    records = dict(analysis)
    for key, group_state in state.groups.items():
        deployment = state.deployments.get(group_state.deployment_in_flight or "")
        group = groups.get(key)
        if deployment is None or group is None or not group.analysis:
            continue
        record = records.get(deployment.deployment_id)
        config = deployment_config(desired, deployment, group)
        due = due_measurements(deployment, group, config, record, now=now)
        if not due:
            continue
        taken = [
            GateMeasurement(gate=item.gate.name, checkpoint=item.checkpoint, index=item.index, due_at=item.due_at,
                            measured_at=item.due_at, result=GateResult.SUCCESSFUL,
                            message="simulated: assumed to pass")
            for item in due
        ]
        records[deployment.deployment_id] = DeploymentAnalysis(
            deployment_id=deployment.deployment_id,
            application=deployment.application,
            deployment_group=deployment.deployment_group,
            measurements=[*(record.measurements if record is not None else []), *taken],
            updated_at=now,
        )
    return records


def no_alarms(desired: Desired, *, now: datetime) -> dict[str, AlarmCheck]:
    """Every watched group's alarms read OK."""
    return {
        key: AlarmCheck(checked_at=now, state="OK", message="simulated: no alarm in ALARM")
        for key, group in desired.desired_groups().items()
        if group.watches_alarms
    }


def _record_checkpoints(by_id: dict[str, PreviewDeployment], points: Mapping[str, Checkpoint], now: datetime) -> None:
    for deployment_id, point in points.items():
        entry = by_id.get(deployment_id)
        if entry is None or any(seen.name == point.name for seen in entry.checkpoints):
            continue
        entry.checkpoints.append(
            PreviewCheckpoint(name=point.name, batch=point.batch, where=point.describe(),
                              gates=tuple(gate.name for gate in point.gates), opened=point.opened_at - now)
        )


def _record_gate_waits(by_id: dict[str, PreviewDeployment], actions: list[Action], elapsed: timedelta) -> None:
    """Time the clock moves while a deployment waits for its gates (and nothing else) counts to its checkpoint."""
    for action in actions:
        if isinstance(action, Blocked) and action.code == WAITING_FOR_ANALYSIS and action.deployment_id in by_id:
            entry = by_id[action.deployment_id]
            if entry.checkpoints:
                entry.checkpoints[-1].waited += elapsed
