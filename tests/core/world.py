"""A randomised fleet for property tests: manifests that change, agents that answer late, fail, go offline
and come back, operators who stop and retry, and a reconciler that sometimes crashes mid-write.

It drives the real `reconcile()` pass after pass and keeps its own ground truth (which host reported what
for which group) so the properties are checked against what the agents did, not against the core's books.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from contract.models import (
    CommandProgress,
    CommandStatus,
    Deployment,
    DeploymentStatus,
    EventType,
    HostCommand,
    HostDeploymentStatus,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
    StopRequest,
)
from reconciler.core import Action, Blocked, CoreSettings, Observed, State, apply_actions, is_online, reconcile
from reconciler.core.actions import DispatchBatch, FinishDeployment, StartDeployment
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

CONFIGS = [
    "CodeDeployDefault.OneAtATime",
    "CodeDeployDefault.HalfAtATime",
    "CodeDeployDefault.AllAtOnce",
    "custom",
]


def bundle(version: int) -> Revision:
    return Revision.model_validate({"local": {"path": f"bundles/v{version}.zip", "bundleType": "zip"}})


@dataclass(frozen=True)
class GroupSpec:
    name: str
    targets: str  # YAML flow mapping for spec.targets
    config: str
    auto_rollback: bool
    outdated_only: bool


@dataclass(frozen=True)
class CustomConfig:
    minimum: str  # YAML flow mapping
    canary: int
    canary_bake: int
    zonal: bool
    zone_bake: int
    first_zone_bake: int | None
    host_timeout: int | None


@dataclass
class World:
    rng: random.Random
    hosts: list[str]
    groups: list[GroupSpec]
    custom: CustomConfig
    p_success: float
    p_offline: float
    crash_rate: float
    settings: CoreSettings = field(default_factory=CoreSettings)
    now: datetime = T0
    commit_counter: int = 1
    versions: dict[str, int] = field(default_factory=dict)
    observed: Observed = field(default_factory=Observed)
    state: State = field(default_factory=State)
    desired: Desired | None = None
    offline_until: dict[str, datetime] = field(default_factory=dict)
    answer_at: dict[str, tuple[int, datetime, bool]] = field(default_factory=dict)
    #: Ground truth per (group, host): did the last command the agent finished for that group succeed?
    truth: dict[tuple[str, str], bool] = field(default_factory=dict)
    generations: dict[tuple[str, int], str] = field(default_factory=dict)
    quarantined: set[tuple[str, str, str | None]] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    passes: int = 0
    last_input: State = field(default_factory=State)
    last_now: datetime = T0
    ended: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------
    # Set-up

    def manifests(self) -> str:
        docs = ["apiVersion: deploy/v1\nkind: Application\nmetadata: {name: shop}"]
        c = self.custom
        spec = [f"  minimumHealthyHosts: {c.minimum}"]
        if c.canary:
            spec.append(f"  canary: {{hosts: {c.canary}, bakeTime: {c.canary_bake}s}}")
        if c.zonal:
            first = f", firstZoneBakeTime: {c.first_zone_bake}s" if c.first_zone_bake is not None else ""
            spec.append(f"  zonal: {{tagKey: az, bakeTime: {c.zone_bake}s{first}}}")
        if c.host_timeout:
            spec.append(f"  hostTimeout: {c.host_timeout}s")
        header = "apiVersion: deploy/v1\nkind: DeploymentConfig\nmetadata: {name: custom}\nspec:\n"
        docs.append(header + "\n".join(spec))
        for g in self.groups:
            version = self.versions[g.name]
            docs.append(
                "apiVersion: deploy/v1\nkind: DeploymentGroup\n"
                f"metadata: {{name: {g.name}}}\nspec:\n  application: shop\n"
                f"  revision: {{local: {{path: bundles/v{version}.zip, bundleType: zip}}}}\n"
                f"  targets: {g.targets}\n  deploymentConfig: {g.config}\n"
                f"  autoRollback: {{enabled: {str(g.auto_rollback).lower()}}}\n"
                f"  options: {{updateOutdatedInstancesOnly: {str(g.outdated_only).lower()}}}"
            )
        return "\n---\n".join(docs) + "\n"

    def load(self) -> None:
        self.desired = load_files(
            [ManifestFile("world.yaml", self.manifests().encode())], commit=f"c{self.commit_counter}"
        )

    def setup(self, installed_fraction: float) -> None:
        registrations = {}
        statuses = {}
        for i, host in enumerate(self.hosts):
            role = "web" if i % 2 == 0 else "api"
            tags = {"role": role, "az": "abc"[i % 3]}
            registrations[host] = HostRegistration(
                host_id=host, tags=tags, platform="linux", hostname=host, agent_version="t", registered_at=T0
            )
            installed = {}
            for g in self.groups:
                if self.rng.random() < installed_fraction:
                    installed[f"shop/{g.name}"] = InstalledRevision(
                        application="shop", deployment_group=g.name, revision=bundle(1),
                        deployment_id="d-initial", installed_at=T0,
                    )
                    self.truth[(f"shop/{g.name}", host)] = True
            statuses[host] = HostStatus(host_id=host, heartbeat_at=T0, agent_version="t", installed=installed)
        self.observed = Observed(registrations=registrations, statuses=statuses)
        for g in self.groups:
            self.versions[g.name] = 2
        self.load()

    # ------------------------------------------------------------------------------------------
    # The environment moving

    def online(self, host: str) -> bool:
        return self.now >= self.offline_until.get(host, T0) and host in self.observed.statuses

    def agents(self) -> None:
        statuses = dict(self.observed.statuses)
        for host in self.hosts:
            if self.rng.random() < self.p_offline:
                self.offline_until[host] = self.now + timedelta(seconds=self.rng.choice([30, 120, 600]))
            if not self.online(host):
                continue
            status = statuses[host]
            update: dict[str, object] = {"heartbeat_at": self.now}
            command = self.state.commands.get(host)
            last = status.command
            running = last is not None and last.status is CommandStatus.IN_PROGRESS
            new = last is None or (command is not None and last.generation < command.generation)
            unfinished = running and command is not None and last is not None and last.generation == command.generation
            if command is not None and (new or unfinished):
                plan = self.answer_at.get(host)
                if plan is None or plan[0] != command.generation:
                    delay = timedelta(seconds=self.rng.choice([0, 5, 30, 90, 400]))
                    plan = (command.generation, self.now + delay, self.rng.random() < self.p_success)
                    self.answer_at[host] = plan
                _, at, ok = plan
                # The agent's own backstop: past timeoutSeconds it fails the command itself.
                if command.timeout_seconds is not None and at - command.created_at > timedelta(
                    seconds=command.timeout_seconds
                ):
                    at = command.created_at + timedelta(seconds=command.timeout_seconds)
                    ok = False
                key = f"{command.application}/{command.deployment_group}"
                if self.now >= at:
                    update["command"] = CommandProgress(
                        deployment_id=command.deployment_id, generation=command.generation,
                        application=command.application, deployment_group=command.deployment_group,
                        status=CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED,
                        started_at=command.created_at, ended_at=self.now,
                    )
                    self.truth[(key, host)] = ok
                    if ok:
                        update["installed"] = {
                            **status.installed,
                            key: InstalledRevision(
                                application=command.application, deployment_group=command.deployment_group,
                                revision=command.revision, deployment_id=command.deployment_id,
                                installed_at=self.now,
                            ),
                        }
                elif last is None or last.generation < command.generation:
                    update["command"] = CommandProgress(
                        deployment_id=command.deployment_id, generation=command.generation,
                        application=command.application, deployment_group=command.deployment_group,
                        status=CommandStatus.IN_PROGRESS, started_at=self.now,
                    )
            statuses[host] = status.model_copy(update=update)
        self.observed = Observed(registrations=self.observed.registrations, statuses=statuses)

    def operator(self) -> None:
        """Manifest changes, stop requests, retries: what people do while rollouts run."""
        roll = self.rng.random()
        if roll < 0.06:
            group = self.rng.choice(self.groups)
            self.versions[group.name] += 1
            self.commit_counter += 1
            self.load()
        elif roll < 0.10:
            key = f"shop/{self.rng.choice(self.groups).name}"
            group_state = self.state.groups.get(key)
            if group_state is not None and group_state.deployment_in_flight:
                request = StopRequest(rollback=self.rng.random() < 0.5, requested_at=self.now)
                self.state = State(
                    groups={**self.state.groups, key: group_state.model_copy(update={"stop_request": request})},
                    deployments=self.state.deployments,
                    commands=self.state.commands,
                )
        elif roll < 0.13:
            key = f"shop/{self.rng.choice(self.groups).name}"
            group_state = self.state.groups.get(key)
            if group_state is not None and group_state.quarantined:
                self.quarantined = {q for q in self.quarantined if q[0] != key}
                self.state = State(
                    groups={**self.state.groups, key: group_state.model_copy(update={"quarantined": []})},
                    deployments=self.state.deployments,
                    commands=self.state.commands,
                )

    # ------------------------------------------------------------------------------------------
    # One pass, with the properties checked around it

    def step(self, *, calm: bool = False) -> list[Action]:
        assert self.desired is not None
        if not calm:
            self.operator()
        self.agents()
        before = self.last_input = self.state
        self.last_now = self.now
        actions = reconcile(self.desired, self.observed, before, now=self.now, settings=self.settings)
        self.passes += 1
        self.check_actions(before, actions)
        crash = not calm and self.rng.random() < self.crash_rate
        writes = [w for a in actions for w in a.writes()]
        if crash:
            writes = writes[: self.rng.randrange(len(writes) + 1)] if writes else []
        for write in writes:
            document = write.document
            if isinstance(document, HostCommand):
                slot = (document.host_id, document.generation)
                owner = self.generations.setdefault(slot, document.deployment_id)
                if owner != document.deployment_id:
                    self.violations.append(f"generation {slot} sent for {owner} and {document.deployment_id}")
        if crash:
            self.state = _apply_writes(before, writes)
        else:
            self.state = apply_actions(before, actions)
            again = reconcile(self.desired, self.observed, self.state, now=self.now, settings=self.settings)
            extra = [a for a in again if not isinstance(a, Blocked)]
            if extra:
                self.violations.append(
                    f"pass {self.passes}: not idempotent, second pass wants {[a.describe() for a in extra]}"
                )
        self.check_state()
        self.check_events(before)
        for key, group_state in self.state.groups.items():
            # Only what was written counts: a crash may have lost a quarantine decision (and the next pass
            # then re-decides it), which is not a redeploy of a quarantined revision.
            self.quarantined.update((key, q.revision.identity(), q.source_commit) for q in group_state.quarantined)
        waits = [a.until for a in actions if isinstance(a, Blocked) and a.until is not None]
        tick = timedelta(seconds=self.rng.choice([5, 20, 60]))
        self.now = max(self.now + tick, min(waits)) if waits and calm else self.now + tick
        return actions

    def health(self, group: str, host: str) -> bool:
        """Healthy = heartbeating within the timeout (all anyone can observe) and the agent's last finished
        command for this group succeeded (or it had the group's revision installed from the start)."""
        alive = is_online(self.observed, host, now=self.now, heartbeat_timeout=self.settings.heartbeat_timeout)
        return alive and self.truth.get((group, host), False)

    def check_actions(self, before: State, actions: list[Action]) -> None:
        assert self.desired is not None
        deployments = dict(before.deployments)
        for action in actions:
            if isinstance(action, DispatchBatch):
                previous = deployments.get(action.deployment_id)
                if previous is not None:
                    self.check_dispatch(action, previous)
                for command in action.commands:
                    last = self.observed.last_command(command.host_id)
                    written = before.commands.get(command.host_id)
                    if written is not None and not (
                        last is not None
                        and last.generation >= written.generation
                        and last.status is not CommandStatus.IN_PROGRESS
                    ):
                        self.violations.append(f"{command.host_id} dispatched while busy with {written.generation}")
            if isinstance(action, StartDeployment) and action.creator == "user":
                key = (action.group, action.revision_to.identity(), action.commit)
                if key in self.quarantined:
                    self.violations.append(f"quarantined revision redeployed: {key}")
            if isinstance(action, FinishDeployment):
                self.ended.append(action.status.value)
            for write in action.writes():
                if isinstance(write.document, Deployment):
                    deployments[write.document.deployment_id] = write.document

    def check_dispatch(self, action: DispatchBatch, deployment_before: Deployment) -> None:
        """Healthy hosts never drop below the minimum because of a dispatch (ground-truth health)."""
        assert self.desired is not None
        config = self.desired.effective_config(deployment_before.deployment_config)
        hosts = deployment_before.hosts
        minimum = config.minimum_for(len(hosts))
        healthy_idle = sum(
            1
            for h, s in hosts.items()
            if s.status is not HostDeploymentStatus.IN_PROGRESS and self.health(action.group, h)
        )
        taken = sum(1 for h in action.hosts if self.health(action.group, h))
        if taken and healthy_idle - taken < minimum:
            self.violations.append(
                f"{action.deployment_id}: dispatch of {action.hosts} leaves {healthy_idle - taken} healthy, "
                f"minimum {minimum}"
            )

    def check_state(self) -> None:
        """At most one deployment in flight per group: every unfinished deployment a group references is
        the one it names as in flight (an unreferenced one is the leftover of a crash and never runs)."""
        for key, group_state in self.state.groups.items():
            for deployment_id in group_state.history:
                deployment = self.state.deployments.get(deployment_id)
                if (
                    deployment is not None
                    and not deployment.status.finished
                    and deployment_id != group_state.deployment_in_flight
                ):
                    self.violations.append(
                        f"{key}: {deployment_id} is {deployment.status} but {group_state.deployment_in_flight} "
                        "is in flight"
                    )

    def check_events(self, before: State) -> None:
        """The event stream is exactly once, whatever prefix of a pass's writes a crash kept: a deployment's
        recorded events are only ever appended to (never rewritten, renumbered or dropped), and at every moment
        they say exactly what its record says: one start, one result per finished host, one end once it ended,
        matching its status."""
        ends = {
            EventType.DEPLOYMENT_SUCCEEDED: DeploymentStatus.SUCCEEDED,
            EventType.ROLLBACK_SUCCEEDED: DeploymentStatus.SUCCEEDED,
            EventType.DEPLOYMENT_FAILED: DeploymentStatus.FAILED, EventType.ROLLBACK_FAILED: DeploymentStatus.FAILED,
            EventType.DEPLOYMENT_STOPPED: DeploymentStatus.STOPPED,
            EventType.DEPLOYMENT_SUPERSEDED: DeploymentStatus.SUPERSEDED,
        }
        for deployment_id, deployment in self.state.deployments.items():
            events = deployment.events
            old = before.deployments.get(deployment_id)
            if old is not None and events[: len(old.events)] != old.events:
                self.violations.append(f"{deployment_id}: recorded events were rewritten")
            if [e.seq for e in events] != list(range(1, len(events) + 1)):
                self.violations.append(f"{deployment_id}: event numbers {[e.seq for e in events]}")
            starts = [e for e in events if e.type in (EventType.DEPLOYMENT_STARTED, EventType.ROLLBACK_STARTED)]
            if len(starts) != 1 or events[0] is not starts[0]:
                self.violations.append(f"{deployment_id}: {len(starts)} start events, first {events[:1]}")
            results = [(e.host, e.type) for e in events if e.type in (EventType.HOST_SUCCEEDED, EventType.HOST_FAILED)]
            outcome = {
                HostDeploymentStatus.SUCCEEDED: EventType.HOST_SUCCEEDED,
                HostDeploymentStatus.FAILED: EventType.HOST_FAILED,
            }
            finished = sorted(
                (host, outcome[state.status]) for host, state in deployment.hosts.items() if state.status in outcome
            )
            if sorted(results) != finished:
                self.violations.append(f"{deployment_id}: host result events {sorted(results)} but hosts {finished}")
            quarantined = [e for e in events if e.type is EventType.REVISION_QUARANTINED]
            if len(quarantined) > 1:
                self.violations.append(f"{deployment_id}: {len(quarantined)} revision.quarantined events")
            ended = [ends[e.type] for e in events if e.type in ends]
            expected = [deployment.status] if deployment.status.finished else []
            if ended != expected:
                self.violations.append(f"{deployment_id}: end events {ended} but status {deployment.status}")

    def in_flight(self) -> list[str]:
        return [k for k, g in self.state.groups.items() if g.deployment_in_flight]

    def settle(self, max_passes: int) -> bool:
        """Everyone online and answering: every deployment must end."""
        self.offline_until.clear()
        self.p_offline = 0.0
        for _ in range(max_passes):
            self.step(calm=True)
            if not self.in_flight():
                # One more pass: a catch-up may start after the last deployment ended.
                self.step(calm=True)
                if not self.in_flight():
                    return True
        return False


def _apply_writes(state: State, writes: list[object]) -> State:
    from reconciler.core.actions import StoreWrite

    class _Writes:
        def __init__(self, items: list[object]) -> None:
            self.items = items

        def writes(self) -> list[StoreWrite]:
            return [w for w in self.items if isinstance(w, StoreWrite)]

    return apply_actions(state, [_Writes(writes)])  # type: ignore[list-item]
