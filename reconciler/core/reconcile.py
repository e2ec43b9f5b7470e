"""The reconciler's decision: one pure pass from (desired, observed, state, now) to a list of actions.

Where it sits: the shell loads `Desired` (manifests at a commit), `Observed` (agents' registrations and
statuses) and `State` (groups, deployments, commands) from the store, calls `reconcile()`, and applies the
returned actions in order. Nothing here does I/O, logs, reads a clock or draws random numbers; the same
inputs always give the same actions (deployment ids included), which is what makes `plan` trustworthy and
the golden tests possible.

Per group, a pass pairs the desired group with its recorded state (Argo CD style: a missing side means a
new group or a removed one), then:
1. records a changed desired revision (the commit it changed at keys quarantine);
2. advances the deployment in flight: agents' results, per-host timeouts, offline hosts, interrupted
   command writes, then one rollout step (`rollout.decide_step`) or its end, with rollback and quarantine;
3. with nothing in flight, decides whether a deployment starts: a new desired revision ("user"), or hosts
   that lack the effective revision ("outdated" catch-up), and steps it at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from contract.durations import format_duration
from contract.models import (
    CommandProgress,
    CommandStatus,
    Deployment,
    DeploymentStatus,
    EventStatus,
    GroupState,
    HostCommand,
    HostDeploymentState,
    HostDeploymentStatus,
    QuarantinedRevision,
    Revision,
)
from reconciler.core.actions import (
    Action,
    Blocked,
    ClearStopRequest,
    DispatchBatch,
    FinishDeployment,
    MarkGroupRemoved,
    RecordDesired,
    RecordHostResults,
    RewriteCommands,
    StartDeployment,
    StartRollback,
    UpdateDeploymentStatus,
)
from reconciler.core.membership import MembershipIndex, zone_of
from reconciler.core.observed import Observed, liveness_timeout
from reconciler.core.rollout import (
    REVISION_CURRENT,
    REVISION_OLD,
    REVISION_UNKNOWN,
    HostFacts,
    Outcome,
    Step,
    decide_step,
    host_sort_key,
)
from reconciler.core.state import CoreSettings, State
from reconciler.desired.manifests import (
    BUILTIN_CONFIGS,
    ONE_AT_A_TIME,
    Desired,
    DesiredGroup,
    EffectiveConfig,
    GroupOptions,
)

DEFAULT_SETTINGS = CoreSettings()

PENDING = HostDeploymentStatus.PENDING
IN_PROGRESS = HostDeploymentStatus.IN_PROGRESS
SUCCEEDED = HostDeploymentStatus.SUCCEEDED
FAILED = HostDeploymentStatus.FAILED
SKIPPED = HostDeploymentStatus.SKIPPED

STOPPED_ON_REQUEST = "STOPPED_ON_REQUEST"
GROUP_REMOVED = "GROUP_REMOVED"


def reconcile(
    desired: Desired,
    observed: Observed,
    state: State,
    *,
    now: datetime,
    settings: CoreSettings = DEFAULT_SETTINGS,
) -> list[Action]:
    """Decide what to write now so the fleet moves one safe step toward `desired`.

    Contract:
    - Pure and deterministic. `now` must be timezone-aware; deployment ids are derived from the group key,
      the revision identity, the commit, the creator and `now` (a rollback's from the failed deployment).
    - Re-run safe: applying the returned actions and calling again with nothing new observed returns only
      `Blocked` actions (which write nothing). A crash part-way through applying is completed by the next
      pass (see `reconciler.core.actions`).
    - Per group, at most one deployment is in flight; per host, one command slot: a host whose last
      command has not been reported Succeeded/Failed gets nothing new, whichever group it came from.
    - Groups are handled in key order, so when two groups want the same free host in one pass the first
      key wins and the other waits for the next pass.
    """
    return _Pass(desired, observed, state, now, settings).run()


def deployment_group_id(group_key: str) -> str:
    """A stable id for a group (CodeDeploy's deployment group id), used by agents to name directories."""
    return "dg-" + hashlib.sha256(group_key.encode()).hexdigest()[:20]


def new_deployment_id(group_key: str, revision: Revision, commit: str | None, creator: str, now: datetime) -> str:
    text = "\n".join([group_key, revision.identity(), commit or "", creator, now.isoformat()])
    return "d-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def rollback_deployment_id(failed_deployment_id: str) -> str:
    """Derived from the failed deployment only, so a pass that crashed after pointing the group at the
    rollback but before writing it re-creates the very same deployment."""
    return "d-" + hashlib.sha256(f"rollback\n{failed_deployment_id}".encode()).hexdigest()[:16]


def same_revision(a: Revision | None, b: Revision | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or a.identity() == b.identity()


def is_quarantined(group_state: GroupState, revision: Revision) -> QuarantinedRevision | None:
    """Quarantine is keyed on the revision and the commit at which the group's desired revision last
    changed, so it lifts when the manifest changes again; an empty list (after `retry`) lifts it too."""
    identity = revision.identity()
    for entry in group_state.quarantined:
        if entry.source_commit == group_state.desired_commit and entry.revision.identity() == identity:
            return entry
    return None


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: HostDeploymentStatus
    revision_identity: str
    deployment_id: str


def _command_message(progress: CommandProgress) -> str | None:
    if progress.message:
        return progress.message
    for event in progress.events:
        if event.status is EventStatus.FAILED:
            detail = event.message or (event.error_code.value if event.error_code else "failed")
            return f"{event.name}: {detail}"
    return None


class _Pass:
    """One pass's working memory: indexes built once, hosts booked so far, and the actions."""

    def __init__(
        self, desired: Desired, observed: Observed, state: State, now: datetime, settings: CoreSettings
    ) -> None:
        self.desired = desired
        self.observed = observed
        self.state = state
        self.now = now
        self.settings = settings
        self.index = MembershipIndex(observed)
        self.desired_groups = desired.desired_groups()
        self.booked: set[str] = set()
        #: Deployments as this pass has changed them so far: later decisions in the same pass (a rollback's
        #: host health, a catch-up right after a success) must see this pass's results, not the last one's.
        self.deployments: dict[str, Deployment] = dict(state.deployments)
        self._online: dict[str, bool] = {}
        self._identity: dict[int, str] = {}
        self._attempts: dict[tuple[str, str | None], dict[str, _Attempt]] = {}
        # The highest generation each host was given, whether or not its command write happened.
        self.generation: dict[str, int] = {h: c.generation for h, c in state.commands.items()}
        # Agents' results are recorded for every deployment in flight before any group decides anything, so
        # whether a host's command slot is free reads the same in this pass as in the next one.
        self.results: dict[str, tuple[Deployment, list[str], list[str]]] = {}
        #: Hosts in flight whose command write a crash lost: busy, their command is re-written this pass.
        self.unwritten: set[str] = set()
        for key, group_state in state.groups.items():
            in_flight = state.deployments.get(group_state.deployment_in_flight or "")
            if in_flight is None:
                continue
            for host, host_state in in_flight.hosts.items():
                if host_state.generation is not None and host_state.generation > self.generation.get(host, 0):
                    self.generation[host] = host_state.generation
            if in_flight.status.finished:
                continue
            config = self.config_for(in_flight, self.desired_groups.get(key))
            recorded = self.record_results(in_flight, config)
            self.results[in_flight.deployment_id] = recorded
            self.deployments[in_flight.deployment_id] = recorded[0]
            for host, host_state in recorded[0].hosts.items():
                written = state.commands.get(host)
                if (
                    host_state.status is IN_PROGRESS
                    and host_state.generation is not None
                    and (written is None or written.generation < host_state.generation)
                ):
                    self.unwritten.add(host)

    # ---------------------------------------------------------------------------------------------
    # Facts about hosts

    def remember(self, deployment: Deployment) -> None:
        self.deployments[deployment.deployment_id] = deployment
        self._attempts.clear()

    def identity(self, revision: Revision) -> str:
        key = id(revision)
        found = self._identity.get(key)
        if found is None:
            found = self._identity[key] = revision.identity()
        return found

    def online(self, host: str) -> bool:
        found = self._online.get(host)
        if found is None:
            status = self.observed.statuses.get(host)
            found = status is not None and (
                self.now - status.heartbeat_at <= liveness_timeout(status, self.settings.heartbeat_timeout)
            )
            self._online[host] = found
        return found

    def offline_reason(self, host: str) -> str:
        status = self.observed.statuses.get(host)
        if status is not None:
            return f"host offline: no heartbeat since {status.heartbeat_at.isoformat()}"
        if host in self.observed.registrations:
            return "host offline: registered but never reported a heartbeat"
        return "host offline: never registered"

    def slot_free(self, host: str) -> bool:
        """Free when the command written for the host (if any) is reported finished, nothing is running,
        no command write is pending for it, and no other group took it earlier in this pass."""
        if host in self.booked or host in self.unwritten:
            return False
        last = self.observed.last_command(host)
        if last is not None and last.status is CommandStatus.IN_PROGRESS:
            return False
        written = self.state.commands.get(host)
        if written is None:
            return True
        return last is not None and last.generation >= written.generation

    def next_generation(self, host: str) -> int:
        last = self.observed.last_command(host)
        reported = last.generation if last is not None else 0
        return max(self.generation.get(host, 0), reported) + 1

    def installed_identity(self, host: str, group_key: str) -> str | None:
        status = self.observed.statuses.get(host)
        if status is None:
            return None
        installed = status.installed.get(group_key)
        return self.identity(installed.revision) if installed is not None else None

    def attempts(self, group_state: GroupState, exclude: str | None) -> dict[str, _Attempt]:
        """Each host's last real attempt in this group (a command was sent), newest deployment first."""
        cache_key = (group_key_of(group_state), exclude)
        found = self._attempts.get(cache_key)
        if found is not None:
            return found
        found = {}
        for deployment_id in reversed(group_state.history):
            if deployment_id == exclude:
                continue
            deployment = self.deployments.get(deployment_id)
            if deployment is None:
                continue
            identity = self.identity(deployment.revision)
            for host, host_state in deployment.hosts.items():
                if (
                    host not in found
                    and host_state.generation is not None
                    and host_state.status in (SUCCEEDED, FAILED)
                ):
                    found[host] = _Attempt(host_state.status, identity, deployment_id)
        self._attempts[cache_key] = found
        return found

    def prior_health(self, host: str, group_key: str, attempts: Mapping[str, _Attempt]) -> bool:
        """CodeDeploy's instance health: the last deployment to it succeeded; never deployed is unhealthy."""
        if not self.online(host):
            return False
        attempt = attempts.get(host)
        if attempt is not None:
            return attempt.status is SUCCEEDED or self.installed_by(host, group_key, attempt.deployment_id)
        return self.installed_identity(host, group_key) is not None

    def installed_by(self, host: str, group_key: str, deployment_id: str) -> bool:
        """The agent installed this deployment's revision after all (it reported after the deployment had
        counted it failed: timed out, or offline for a while): its health is what the agent says."""
        status = self.observed.statuses.get(host)
        installed = status.installed.get(group_key) if status is not None else None
        return installed is not None and installed.deployment_id == deployment_id

    def facts(self, group_state: GroupState, deployment: Deployment, config: EffectiveConfig) -> dict[str, HostFacts]:
        group_key = group_key_of(group_state)
        attempts = self.attempts(group_state, exclude=deployment.deployment_id)
        target = self.identity(deployment.revision)
        facts: dict[str, HostFacts] = {}
        for host in deployment.hosts:
            installed = self.installed_identity(host, group_key)
            if installed is None:
                rank = REVISION_UNKNOWN
            elif installed == target:
                rank = REVISION_CURRENT
            else:
                rank = REVISION_OLD
            online = self.online(host)
            facts[host] = HostFacts(
                online=online,
                free=self.slot_free(host),
                healthy=self.prior_health(host, group_key, attempts),
                revision_rank=rank,
                zone=zone_of(host, self.observed, config.zonal) if config.zonal is not None else None,
                offline_reason="" if online else self.offline_reason(host),
                recovered=deployment.hosts[host].status is FAILED
                and self.installed_by(host, group_key, deployment.deployment_id),
            )
        return facts

    def config_for(self, deployment: Deployment, group: DesiredGroup | None) -> EffectiveConfig:
        try:
            return self.desired.effective_config(deployment.deployment_config)
        except KeyError:
            return group.config if group is not None else BUILTIN_CONFIGS[ONE_AT_A_TIME]

    # ---------------------------------------------------------------------------------------------
    # The pass

    def run(self) -> list[Action]:
        actions: list[Action] = []
        for key in sorted(set(self.desired_groups) | set(self.state.groups)):
            group = self.desired_groups.get(key)
            recorded = self.state.groups.get(key)
            if group is not None:
                actions.extend(self.desired_group(key, group, recorded))
            elif recorded is not None:
                actions.extend(self.removed_group(key, recorded))
        return actions

    def desired_group(self, key: str, group: DesiredGroup, recorded: GroupState | None) -> list[Action]:
        actions: list[Action] = []
        group_state = recorded or GroupState(
            application=group.application, deployment_group=group.name, updated_at=self.now
        )
        changed = recorded is None or not same_revision(group_state.desired_revision, group.revision)
        if changed or group_state.removed:
            previous = group_state.desired_revision
            group_state = group_state.model_copy(
                update={
                    "desired_revision": group.revision,
                    "desired_commit": self.desired.commit if changed else group_state.desired_commit,
                    # Entries are keyed on the old desired commit and can never match again.
                    "quarantined": [] if changed else group_state.quarantined,
                    "removed": False,
                    "updated_at": self.now,
                }
            )
            actions.append(
                RecordDesired(
                    group=key,
                    revision_from=previous,
                    revision_to=group.revision,
                    commit=group_state.desired_commit,
                    group_state=group_state,
                )
            )

        group_state = self.clear_stale_stop_request(key, group_state, actions)
        deployment = self.in_flight(key, group_state, group, actions)
        if deployment is not None:
            group_state = self.drive(key, group_state, deployment, group, actions)
        if group_state.deployment_in_flight is None:
            group_state = self.clear_stale_stop_request(key, group_state, actions)
            self.maybe_start(key, group_state, group, actions)
        return actions

    def removed_group(self, key: str, group_state: GroupState) -> list[Action]:
        actions: list[Action] = []
        deployment = self.in_flight(key, group_state, None, actions)
        if deployment is not None:
            group_state = self.drive(key, group_state, deployment, None, actions)
        if group_state.deployment_in_flight is None and not group_state.removed:
            group_state = group_state.model_copy(
                update={"removed": True, "stop_request": None, "updated_at": self.now}
            )
            actions.append(MarkGroupRemoved(group=key, group_state=group_state))
        return actions

    def clear_stale_stop_request(self, key: str, group_state: GroupState, actions: list[Action]) -> GroupState:
        request = group_state.stop_request
        if request is None:
            return group_state
        in_flight = group_state.deployment_in_flight
        if in_flight is not None and request.deployment_id in (None, in_flight):
            return group_state
        reason = (
            "no deployment in flight"
            if in_flight is None
            else f"it names {request.deployment_id}, but {in_flight} is in flight"
        )
        group_state = group_state.model_copy(update={"stop_request": None, "updated_at": self.now})
        actions.append(ClearStopRequest(group=key, reason=reason, group_state=group_state))
        return group_state

    def in_flight(
        self, key: str, group_state: GroupState, group: DesiredGroup | None, actions: list[Action]
    ) -> Deployment | None:
        """The deployment in flight, completing a rollback whose creation a crash interrupted."""
        deployment_id = group_state.deployment_in_flight
        if deployment_id is None:
            return None
        deployment = self.deployments.get(deployment_id)
        if deployment is not None:
            return deployment
        for earlier_id in reversed(group_state.history):
            earlier = self.deployments.get(earlier_id)
            if (
                earlier is not None
                and earlier.status.finished
                and rollback_deployment_id(earlier_id) == deployment_id
                and group_state.effective_revision is not None
            ):
                rollback = self.rollback_deployment(key, group_state, earlier, group)
                actions.append(self.start_rollback_action(key, group_state, earlier, rollback))
                return rollback
        return None

    # ---------------------------------------------------------------------------------------------
    # Advancing a deployment

    def drive(
        self,
        key: str,
        group_state: GroupState,
        deployment: Deployment,
        group: DesiredGroup | None,
        actions: list[Action],
    ) -> GroupState:
        """One step of the deployment in flight; returns the group state after it (and after any end)."""
        if deployment.status.finished:
            # A crash came between writing the finished deployment and the group: apply the group side.
            return self.finish(key, group_state, deployment, outcome=None, group=group, actions=actions)
        config = self.config_for(deployment, group)
        recorded = self.results.pop(deployment.deployment_id, None)
        deployment, succeeded, failed = recorded or self.record_results(deployment, config)
        self.rewrite_interrupted(key, deployment, group, actions)
        facts = self.facts(group_state, deployment, config)
        canary_and_bakes = deployment.creator == "user"
        step = decide_step(
            deployment,
            facts,
            config,
            now=self.now,
            canary_and_bakes=canary_and_bakes,
            stop=self.stop_outcome(group_state, deployment, group),
        )
        if step.offline:
            hosts = dict(deployment.hosts)
            for host in step.offline:
                hosts[host] = hosts[host].model_copy(
                    update={
                        "status": FAILED,
                        "finished_at": self.now,
                        "message": facts[host].offline_reason,
                    }
                )
            deployment = deployment.model_copy(update={"hosts": hosts, "updated_at": self.now})
            failed = [*failed, *step.offline]
        if succeeded or failed:
            actions.append(
                RecordHostResults(
                    group=key,
                    deployment_id=deployment.deployment_id,
                    succeeded=succeeded,
                    failed=failed,
                    deployment=deployment,
                )
            )
        return self.apply_step(
            key, group_state, deployment, group=group, config=config, step=step, actions=actions
        )

    def apply_step(
        self,
        key: str,
        group_state: GroupState,
        deployment: Deployment,
        *,
        group: DesiredGroup | None,
        config: EffectiveConfig,
        step: Step,
        actions: list[Action],
    ) -> GroupState:
        self.remember(deployment)
        if step.outcome is not None:
            return self.finish(key, group_state, deployment, outcome=step.outcome, group=group, actions=actions)
        if step.baking_until is not None:
            if deployment.status is not DeploymentStatus.BAKING:
                baking = deployment.model_copy(update={"status": DeploymentStatus.BAKING, "updated_at": self.now})
                actions.append(
                    UpdateDeploymentStatus(
                        group=key,
                        deployment_id=deployment.deployment_id,
                        status_from=deployment.status,
                        status_to=DeploymentStatus.BAKING,
                        reason=f"{step.bake_reason}, until {step.baking_until.isoformat()}",
                        deployment=baking,
                    )
                )
            else:
                actions.append(
                    Blocked(
                        group=key,
                        code="BAKING",
                        reason=step.bake_reason,
                        deployment_id=deployment.deployment_id,
                        until=step.baking_until,
                    )
                )
            return group_state
        if step.dispatch:
            self.dispatch(key, deployment, group=group, config=config, step=step, actions=actions)
        elif step.waiting is not None:
            code = "STOPPING" if step.waiting_code == "STOPPING" else "WAITING_FOR_HOSTS"
            actions.append(
                Blocked(group=key, code=code, reason=step.waiting, deployment_id=deployment.deployment_id)
            )
        return group_state

    def record_results(
        self, deployment: Deployment, config: EffectiveConfig
    ) -> tuple[Deployment, list[str], list[str]]:
        """Agents' reports for this deployment's generation, per-host timeouts, hosts gone offline."""
        succeeded: list[str] = []
        failed: list[str] = []
        updates: dict[str, HostDeploymentState] = {}
        for host, host_state in deployment.hosts.items():
            if host_state.status is not IN_PROGRESS:
                continue
            last = self.observed.last_command(host)
            generation = host_state.generation or 0
            update: dict[str, object] | None = None
            if (
                last is not None
                and last.generation == generation
                and last.deployment_id == deployment.deployment_id
                and last.status is not CommandStatus.IN_PROGRESS
            ):
                ok = last.status is CommandStatus.SUCCEEDED
                update = {
                    "status": SUCCEEDED if ok else FAILED,
                    "finished_at": last.ended_at or self.now,
                    "message": None if ok else (_command_message(last) or "the command failed"),
                }
            elif last is not None and last.generation > generation:
                update = {
                    "status": FAILED,
                    "finished_at": self.now,
                    "message": f"the host moved on to command {last.generation} without reporting {generation}",
                }
            elif (
                config.host_timeout is not None
                and host_state.dispatched_at is not None
                and self.now - host_state.dispatched_at > config.host_timeout
            ):
                update = {
                    "status": FAILED,
                    "finished_at": self.now,
                    "message": f"timed out: no result {format_duration(config.host_timeout)} after dispatch",
                }
            elif not self.online(host):
                update = {
                    "status": FAILED,
                    "finished_at": self.now,
                    "message": f"{self.offline_reason(host)} while deploying",
                }
            if update is not None:
                updates[host] = host_state.model_copy(update=update)
                (succeeded if update["status"] is SUCCEEDED else failed).append(host)
        if not updates:
            return deployment, succeeded, failed
        hosts = {**deployment.hosts, **updates}
        return deployment.model_copy(update={"hosts": hosts, "updated_at": self.now}), succeeded, failed

    def rewrite_interrupted(
        self, key: str, deployment: Deployment, group: DesiredGroup | None, actions: list[Action]
    ) -> None:
        commands: list[HostCommand] = []
        for host, host_state in deployment.hosts.items():
            if host_state.status is not IN_PROGRESS or host_state.generation is None:
                continue
            written = self.state.commands.get(host)
            if written is None or written.generation < host_state.generation:
                commands.append(
                    self.command(
                        deployment, host, host_state.generation, group, host_state.dispatched_at or self.now
                    )
                )
        if commands:
            actions.append(
                RewriteCommands(
                    group=key,
                    deployment_id=deployment.deployment_id,
                    hosts=[c.host_id for c in commands],
                    commands=commands,
                )
            )

    def stop_outcome(
        self, group_state: GroupState, deployment: Deployment, group: DesiredGroup | None
    ) -> Outcome | None:
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
            return Outcome(
                DeploymentStatus.SUPERSEDED, None, f"superseded by revision {group.revision.short()}{commit}"
            )
        return None

    def command(
        self, deployment: Deployment, host: str, generation: int, group: DesiredGroup | None, created_at: datetime
    ) -> HostCommand:
        options = group.options if group is not None else GroupOptions()
        config = self.config_for(deployment, group)
        key = f"{deployment.application}/{deployment.deployment_group}"
        return HostCommand(
            host_id=host,
            generation=generation,
            deployment_id=deployment.deployment_id,
            application=deployment.application,
            deployment_group=deployment.deployment_group,
            deployment_group_id=deployment_group_id(key),
            revision=deployment.revision,
            file_exists_behavior=options.file_exists_behavior,
            ignore_application_stop_failures=options.ignore_application_stop_failures,
            is_rollback=deployment.creator == "rollback",
            timeout_seconds=config.host_timeout.total_seconds() if config.host_timeout is not None else None,
            created_at=created_at,
        )

    def dispatch(
        self,
        key: str,
        deployment: Deployment,
        *,
        group: DesiredGroup | None,
        config: EffectiveConfig,
        step: Step,
        actions: list[Action],
    ) -> None:
        batch = len(deployment.batches)
        hosts = dict(deployment.hosts)
        commands: list[HostCommand] = []
        for host in step.dispatch:
            generation = self.next_generation(host)
            self.generation[host] = generation
            self.booked.add(host)
            hosts[host] = hosts[host].model_copy(
                update={"status": IN_PROGRESS, "batch": batch, "generation": generation, "dispatched_at": self.now}
            )
            commands.append(self.command(deployment, host, generation, group, self.now))
        dispatched = deployment.model_copy(
            update={
                "hosts": hosts,
                "batches": [*deployment.batches, list(step.dispatch)],
                "status": DeploymentStatus.IN_PROGRESS,
                "updated_at": self.now,
            }
        )
        self.remember(dispatched)
        actions.append(
            DispatchBatch(
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
        )

    # ---------------------------------------------------------------------------------------------
    # Ending a deployment

    def finish(
        self,
        key: str,
        group_state: GroupState,
        deployment: Deployment,
        *,
        outcome: Outcome | None,
        group: DesiredGroup | None,
        actions: list[Action],
    ) -> GroupState:
        """End `deployment` with `outcome` (None: it already ended, only the group side is missing)."""
        if outcome is not None:
            deployment = deployment.model_copy(
                update={
                    "status": outcome.status,
                    "error_code": outcome.error_code,
                    "error_message": outcome.message if outcome.status is not DeploymentStatus.SUCCEEDED else None,
                    "ended_at": self.now,
                    "updated_at": self.now,
                }
            )
        self.remember(deployment)
        status = deployment.status
        stopped_on_request = status is DeploymentStatus.STOPPED and deployment.error_code == STOPPED_ON_REQUEST
        update: dict[str, object] = {"deployment_in_flight": None, "updated_at": self.now}
        if status is DeploymentStatus.SUCCEEDED and deployment.creator == "user":
            update["effective_revision"] = deployment.revision
            update["effective_commit"] = deployment.source_commit

        quarantined = False
        if deployment.creator == "user" and (status is DeploymentStatus.FAILED or stopped_on_request):
            reason = "stopped on request" if stopped_on_request else f"failed: {deployment.error_message}"
            entries = list(group_state.quarantined)
            identity = deployment.revision.identity()
            if not any(
                e.revision.identity() == identity and e.source_commit == deployment.source_commit for e in entries
            ):
                entries.append(
                    QuarantinedRevision(
                        revision=deployment.revision,
                        source_commit=deployment.source_commit,
                        deployment_id=deployment.deployment_id,
                        reason=reason,
                        since=deployment.ended_at or self.now,
                    )
                )
            update["quarantined"] = entries
            quarantined = True

        request = group_state.stop_request
        if request is not None and request.deployment_id in (None, deployment.deployment_id):
            update["stop_request"] = None

        rollback_wanted = False
        if group is not None and deployment.creator == "user":
            auto = group.auto_rollback
            if status is DeploymentStatus.FAILED:
                rollback_wanted = auto.enabled and "DEPLOYMENT_FAILURE" in auto.events
            elif stopped_on_request:
                rollback_wanted = (request is not None and request.rollback) or (
                    auto.enabled and "DEPLOYMENT_STOP_ON_REQUEST" in auto.events
                )
        touched = [h for h, s in deployment.hosts.items() if s.generation is not None]
        start_rollback = False
        if rollback_wanted:
            note = None
            if group_state.effective_revision is None:
                note = "no rollback: the group has no last good revision yet"
            elif same_revision(group_state.effective_revision, deployment.revision):
                note = "no rollback: the last good revision is the one that failed"
            elif not touched:
                note = "no rollback needed: no host received the revision"
            else:
                start_rollback = True
            if note is not None and outcome is not None:
                deployment = deployment.model_copy(
                    update={"error_message": f"{deployment.error_message}; {note}"}
                )
                self.remember(deployment)
        if start_rollback:
            rollback_id = rollback_deployment_id(deployment.deployment_id)
            update["deployment_in_flight"] = rollback_id
            update["history"] = self.bounded_history([*group_state.history, rollback_id])
        group_state = group_state.model_copy(update=update)
        reason = deployment.error_message or (
            outcome.message if outcome is not None else "ended in an earlier pass; the group is updated now"
        )
        actions.append(
            FinishDeployment(
                group=key,
                deployment_id=deployment.deployment_id,
                status=status,
                error_code=deployment.error_code,
                reason=reason,
                revision=deployment.revision,
                quarantined=quarantined,
                deployment=deployment,
                group_state=group_state,
            )
        )
        if start_rollback:
            rollback = self.rollback_deployment(key, group_state, deployment, group)
            actions.append(self.start_rollback_action(key, group_state, deployment, rollback))
            group_state = self.drive(key, group_state, rollback, group, actions)
        return group_state

    def bounded_history(self, history: list[str]) -> list[str]:
        return history[-self.settings.history_limit :]

    def rollback_deployment(
        self, key: str, group_state: GroupState, failed: Deployment, group: DesiredGroup | None
    ) -> Deployment:
        assert group_state.effective_revision is not None
        hosts = {
            host: (
                HostDeploymentState()
                if state.generation is not None
                else HostDeploymentState(status=SKIPPED, message=f"not touched by {failed.deployment_id}")
            )
            for host, state in failed.hosts.items()
        }
        return Deployment(
            deployment_id=rollback_deployment_id(failed.deployment_id),
            application=failed.application,
            deployment_group=failed.deployment_group,
            revision=group_state.effective_revision,
            source_commit=group_state.effective_commit,
            deployment_config=group.config.name if group is not None else failed.deployment_config,
            status=DeploymentStatus.IN_PROGRESS,
            creator="rollback",
            rollback_of=failed.deployment_id,
            hosts=hosts,
            created_at=self.now,
            updated_at=self.now,
        )

    def start_rollback_action(
        self, key: str, group_state: GroupState, failed: Deployment, rollback: Deployment
    ) -> StartRollback:
        return StartRollback(
            group=key,
            deployment_id=rollback.deployment_id,
            rollback_of=failed.deployment_id,
            revision_from=failed.revision,
            revision_to=rollback.revision,
            hosts=[h for h, s in rollback.hosts.items() if s.status is PENDING],
            reason=f"{failed.deployment_id} {failed.status.value.lower()}: {failed.error_message}",
            deployment=rollback,
            group_state=group_state,
        )

    # ---------------------------------------------------------------------------------------------
    # Starting a deployment

    def maybe_start(self, key: str, group_state: GroupState, group: DesiredGroup, actions: list[Action]) -> None:
        effective = group_state.effective_revision
        wants_new = not same_revision(group.revision, effective)
        quarantine = is_quarantined(group_state, group.revision) if wants_new else None
        member_set = self.index.members(group.targets)

        if wants_new and quarantine is None:
            members = sorted(member_set, key=host_sort_key)
            if group.suspend:
                actions.append(
                    Blocked(group=key, code="SUSPENDED", reason=f"suspended: {group.revision.short()} waits")
                )
                return
            if not members:
                actions.append(
                    Blocked(group=key, code="NO_INSTANCES", reason="no registered host matches the group's targets")
                )
                return
            if not any(self.online(h) for h in members):
                actions.append(
                    Blocked(
                        group=key,
                        code="WAITING_FOR_HOSTS",
                        reason=f"none of the {len(members)} target host(s) is online",
                    )
                )
                return
            target_identity = self.identity(group.revision)
            hosts: dict[str, HostDeploymentState] = {}
            for host in members:
                if (
                    group.options.update_outdated_instances_only
                    and self.installed_identity(host, key) == target_identity
                ):
                    hosts[host] = HostDeploymentState(status=SKIPPED, message="already runs this revision")
                else:
                    hosts[host] = HostDeploymentState()
            before = effective.short() if effective else "nothing"
            after = self.start(
                key, group_state, group, revision=group.revision, commit=group_state.desired_commit,
                creator="user", hosts=hosts, reason=f"desired revision changed from {before}", actions=actions,
            )
            settled = is_quarantined(after, group.revision) is not None or same_revision(
                group.revision, after.effective_revision
            )  # guards the recursion: the second look can never start this same deployment again
            if after.deployment_in_flight is None and after.effective_revision is not None and settled:
                # It ended in the pass that started it (HEALTH_CONSTRAINTS_INVALID quarantines the revision):
                # decide the catch-up of outdated hosts now too, or the next pass would do it with nothing new
                # observed, and a pass would not be idempotent.
                self.maybe_start(key, after, group, actions)
            return

        if quarantine is not None:
            actions.append(
                Blocked(
                    group=key,
                    code="QUARANTINED",
                    reason=(
                        f"{group.revision.short()} is quarantined ({quarantine.reason}, {quarantine.deployment_id}); "
                        "it is not retried until the manifest changes or `reconcile retry` clears it"
                    ),
                    deployment_id=quarantine.deployment_id,
                )
            )
        if effective is None:
            return
        # Catch-up: hosts that lack the effective revision get it ("outdated" deployments). While the
        # desired revision is quarantined only hosts with nothing installed qualify: reverting hosts that
        # kept a failed revision is a rollback's job, and only when the group asks for it.
        effective_identity = self.identity(effective)
        drift = not wants_new
        lacking = [
            host
            for host in member_set
            if (installed := self.installed_identity(host, key)) is None or (drift and installed != effective_identity)
        ]
        if not lacking:
            return  # the common case, kept cheap: a converged group costs one look at each member's report
        members = sorted(member_set, key=host_sort_key)
        attempts = self.attempts(group_state, exclude=None)
        outdated: list[str] = []
        waiting_offline: set[str] = set()
        for host in lacking:
            attempt = attempts.get(host)
            if attempt is not None and attempt.status is FAILED and attempt.revision_identity == effective_identity:
                continue  # it already failed this revision; it waits for the next change
            if self.online(host):
                outdated.append(host)
            else:
                waiting_offline.add(host)
        chosen = set(outdated)
        hosts = {
            host: HostDeploymentState()
            if host in chosen
            else HostDeploymentState(
                status=SKIPPED, message="offline; catches up when back" if host in waiting_offline else "up to date"
            )
            for host in members
        }
        if not outdated:
            return
        if group.suspend:
            actions.append(
                Blocked(group=key, code="SUSPENDED", reason=f"suspended: {len(outdated)} outdated host(s) wait")
            )
            return
        self.start(
            key, group_state, group, revision=effective, commit=group_state.effective_commit, creator="outdated",
            hosts=hosts, reason=f"{len(outdated)} host(s) lack the effective revision {effective.short()}",
            actions=actions,
        )

    def start(
        self,
        key: str,
        group_state: GroupState,
        group: DesiredGroup,
        *,
        revision: Revision,
        commit: str | None,
        creator: str,
        hosts: dict[str, HostDeploymentState],
        reason: str,
        actions: list[Action],
    ) -> GroupState:
        """Start a deployment and step it at once; returns the group state after that first step."""
        assert creator in ("user", "outdated")
        deployment_id = new_deployment_id(key, revision, commit, creator, self.now)
        deployment = Deployment(
            deployment_id=deployment_id,
            application=group.application,
            deployment_group=group.name,
            revision=revision,
            source_commit=commit,
            deployment_config=group.config.name,
            status=DeploymentStatus.IN_PROGRESS,
            creator="user" if creator == "user" else "outdated",
            hosts=hosts,
            created_at=self.now,
            updated_at=self.now,
        )
        previous = group_state.effective_revision
        group_state = group_state.model_copy(
            update={
                "deployment_in_flight": deployment_id,
                "history": self.bounded_history([*group_state.history, deployment_id]),
                "updated_at": self.now,
            }
        )
        config = group.config
        facts = self.facts(group_state, deployment, config)
        if creator == "outdated":
            # A catch-up that could not start would fail on every pass (nothing is quarantined for it), so
            # it waits for health to allow it instead, as a late host waits for a free slot.
            trial = decide_step(deployment, facts, config, now=self.now, canary_and_bakes=False)
            if trial.outcome is not None and trial.outcome.error_code == "HEALTH_CONSTRAINTS_INVALID":
                actions.append(
                    Blocked(group=key, code="HEALTH_CONSTRAINTS", reason=f"catch-up waits: {trial.outcome.message}")
                )
                return group_state
        targets = sorted(
            (h for h, s in hosts.items() if s.status is PENDING),
            key=lambda h: (facts[h].online and facts[h].healthy, facts[h].revision_rank, host_sort_key(h)),
        )
        actions.append(
            StartDeployment(
                group=key,
                deployment_id=deployment_id,
                creator="user" if creator == "user" else "outdated",
                revision_from=previous,
                revision_to=revision,
                commit=commit,
                hosts=targets,
                reason=reason,
                deployment=deployment,
                group_state=group_state,
            )
        )
        return self.drive(key, group_state, deployment, group, actions)


def group_key_of(group_state: GroupState) -> str:
    return f"{group_state.application}/{group_state.deployment_group}"

