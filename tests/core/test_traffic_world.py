"""Traffic control as a randomised world: the real `reconcile()` pass after pass, a simulated load balancer that
drains, checks health and obeys calls, agents that walk CodeDeploy's events and wait at the traffic steps, hosts
that fail ValidateService, and a reconciler that is killed (kill -9) at random points of applying a pass,
including between a load balancer call and the record of it.

Checked at every tick, whatever happened:
- the promise: a host's application is never stopped while its load balancer still sends it requests (it is
  out of service, or drained to 0 connections, before ApplicationStop runs);
- a host on a revision that failed on it is never put back in service.
And at the end (no more crashes, agents keep answering): the deployment ended, every host that is healthy by the
rollout rules is in service, and no traffic step is left waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.models import (
    ALLOW_TRAFFIC,
    BLOCK_TRAFFIC,
    CommandProgress,
    CommandStatus,
    EventReport,
    EventStatus,
    GroupState,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
    TrafficStepState,
)
from reconciler.core import Observed, State, TrafficStep, reconcile
from reconciler.core.observed import TargetObservation, TargetState
from reconciler.core.traffic import hosts_needing_traffic
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
KEY = "shop/web"

MANIFESTS = """
apiVersion: deploy/v1
kind: Application
metadata: {{name: shop}}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: web}}
spec:
  application: shop
  revision: {{local: {{path: bundles/{version}.zip, bundleType: zip}}}}
  targets: {{tagSets: [[{{key: app, value: shop}}]]}}
  deploymentConfig: {config}
  autoRollback: {{enabled: {rollback}}}
  trafficControl:
    drainTimeout: 20s
    healthyTimeout: 2m
    loadBalancers:
      - command: {{run: [lb]}}
"""


def desired(version: str, config: str, rollback: bool) -> Desired:
    text = MANIFESTS.format(version=version, config=config, rollback="true" if rollback else "false")
    return load_files([ManifestFile("web.yaml", text.encode())], commit=f"c-{version}")


def bundle(version: str) -> Revision:
    return Revision.model_validate({"local": {"path": f"bundles/{version}.zip", "bundleType": "zip"}})


@dataclass
class Target:
    """The simulated load balancer's view of one host."""

    state: TargetState = TargetState.IN_SERVICE
    sessions: int = 0


@dataclass
class Agent:
    """One host: its application, its current command's events, and what it installed."""

    host: str
    running: bool = True
    installed: str = "v1"
    installed_by: str = "d-initial"
    command: CommandProgress | None = None
    index: int = 0
    last_generation: int = 0
    #: The revision the app runs now (what the load balancer would serve).
    serving: str = "v1"


@dataclass
class World:
    rng: random.Random
    hosts: list[str]
    bad: set[str]
    desired: Desired
    now: datetime = T0
    state: State = field(default_factory=State)
    lb: dict[str, Target] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for host in self.hosts:
            self.lb[host] = Target()
            self.agents[host] = Agent(host)

    # -- the load balancer ----------------------------------------------------------------------------

    def lb_tick(self) -> None:
        for host, target in self.lb.items():
            if target.state is TargetState.DRAINING and target.sessions and self.rng.random() < 0.6:
                target.sessions -= 1
            if target.state is TargetState.STARTING and self.agents[host].running and self.rng.random() < 0.7:
                target.state = TargetState.IN_SERVICE
            if target.state is TargetState.IN_SERVICE and not self.agents[host].running:
                target.state = TargetState.STARTING  # its health checks notice (too late for requests in flight)

    def lb_call(self, host: str, call: str) -> None:
        target = self.lb[host]
        if call == "block" and target.state in (TargetState.IN_SERVICE, TargetState.STARTING):
            target.state = TargetState.DRAINING
            target.sessions = self.rng.randint(0, 3)
        elif call == "finish":
            target.state = TargetState.OUT_OF_SERVICE
            target.sessions = 0
        elif call == "allow" and target.state in (TargetState.OUT_OF_SERVICE, TargetState.DRAINING):
            target.state = TargetState.STARTING

    def observations(self, observed: Observed) -> Observed:
        wanted = hosts_needing_traffic(observed.statuses, self.state.traffic)
        seen = {
            host: (TargetObservation(self.lb[host].state, f"lb {host}: {self.lb[host].state.value}",
                                     sessions=self.lb[host].sessions
                                     if self.lb[host].state is TargetState.DRAINING else None),)
            for host in wanted
        }
        return Observed(registrations=observed.registrations, statuses=observed.statuses, traffic={KEY: seen})

    # -- agents ---------------------------------------------------------------------------------------

    def observed(self) -> Observed:
        registrations = {h: HostRegistration(host_id=h, tags={"app": "shop"}, platform="linux", hostname=h,
                                             agent_version="t", registered_at=T0) for h in self.hosts}
        statuses = {}
        for host, agent in self.agents.items():
            installed = {KEY: InstalledRevision(application="shop", deployment_group="web",
                                                revision=bundle(agent.installed), deployment_id=agent.installed_by,
                                                installed_at=T0)}
            statuses[host] = HostStatus(host_id=host, heartbeat_at=self.now, agent_version="t", installed=installed,
                                        command=agent.command, heartbeat_interval_seconds=5)
        return Observed(registrations=registrations, statuses=statuses)

    def agent_tick(self, agent: Agent) -> None:
        written = self.state.commands.get(agent.host)
        if written is not None and written.generation > agent.last_generation and (
            agent.command is None or agent.command.status is not CommandStatus.IN_PROGRESS
        ):
            agent.last_generation = written.generation
            agent.index = 0
            agent.command = CommandProgress(
                deployment_id=written.deployment_id, generation=written.generation, application="shop",
                deployment_group="web", status=CommandStatus.IN_PROGRESS,
                events=[EventReport(name=e) for e in written.events], started_at=self.now)
            return
        command = agent.command
        if command is None or command.status is not CommandStatus.IN_PROGRESS or self.rng.random() < 0.3:
            return
        event = command.events[agent.index].name
        written = self.state.commands[agent.host]
        if event in (BLOCK_TRAFFIC, ALLOW_TRAFFIC):
            self._set(agent, EventStatus.IN_PROGRESS)
            record = self.state.traffic.get(agent.host)
            if (record is None or record.generation != command.generation or record.step != event
                    or record.repair or record.state is TrafficStepState.IN_PROGRESS):
                return
            if record.state is TrafficStepState.FAILED:
                self._finish(agent, ok=False)
                return
        elif event == "ApplicationStop":
            target = self.lb[agent.host]
            if target.state is TargetState.IN_SERVICE or (
                target.state is TargetState.DRAINING and target.sessions > 0
                and not self._drain_timed_out(agent.host)
            ) or target.state is TargetState.STARTING:
                self.violations.append(f"{self.now}: {agent.host} stopped while its load balancer had it "
                                       f"{target.state.value} ({target.sessions} sessions)")
            agent.running = False
        elif event == "Install":
            agent.serving = written.revision.local.path.split("/")[-1][:-4] if written.revision.local else "?"
        elif event == "ApplicationStart":
            agent.running = True
        elif event == "ValidateService" and agent.host in self.bad and agent.serving == "v2":
            # The bad revision fails its validation here: crashed, or up but wrong (health checks would pass).
            agent.running = self.rng.random() < 0.5
            self._finish(agent, ok=False)
            return
        self._set(agent, EventStatus.SUCCEEDED)
        agent.index += 1
        if agent.index == len(command.events):
            self._finish(agent, ok=True)

    def _drain_timed_out(self, host: str) -> bool:
        record = self.state.traffic.get(host)
        return record is not None and "drain timeout" in (record.message or "")

    def _set(self, agent: Agent, status: EventStatus) -> None:
        assert agent.command is not None
        events = list(agent.command.events)
        events[agent.index] = events[agent.index].model_copy(update={"status": status})
        agent.command = agent.command.model_copy(update={"events": events})

    def _finish(self, agent: Agent, *, ok: bool) -> None:
        assert agent.command is not None
        events = list(agent.command.events)
        if not ok:
            events[agent.index] = events[agent.index].model_copy(update={"status": EventStatus.FAILED})
        for later in range(agent.index + 1, len(events)):
            if events[later].status is EventStatus.PENDING:
                events[later] = events[later].model_copy(update={"status": EventStatus.SKIPPED})
        agent.command = agent.command.model_copy(update={
            "status": CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED, "events": events,
            "ended_at": self.now})
        if ok:
            agent.installed = agent.serving
            agent.installed_by = agent.command.deployment_id

    # -- the reconciler -------------------------------------------------------------------------------

    def reconcile_pass(self, *, crash: bool) -> None:
        observed = self.observations(self.observed())
        actions = reconcile(self.desired, observed, self.state, now=self.now)
        stop_at = self.rng.randrange(len(actions) + 1) if crash and actions else len(actions)
        for index, action in enumerate(actions):
            if index == stop_at:
                return  # kill -9: the rest of the pass is never applied
            if isinstance(action, TrafficStep) and action.call is not None:
                self.lb_call(action.host, action.call)
                if crash and self.rng.random() < 0.3:
                    return  # kill -9 between the load balancer call and its record
            self.state = self.state.with_documents(write.document for write in action.writes())

    # -- invariants -----------------------------------------------------------------------------------

    def check(self) -> None:
        for host, agent in self.agents.items():
            if self.lb[host].state is TargetState.IN_SERVICE and not agent.running:
                self.violations.append(f"{self.now}: {host} in service with its application stopped")
            if self.lb[host].state is TargetState.IN_SERVICE and host in self.bad and agent.serving == "v2":
                self.violations.append(f"{self.now}: {host} in service on the revision that failed on it")

    def tick(self, *, crashes: bool) -> None:
        self.now += timedelta(seconds=1)
        self.lb_tick()
        for host in self.hosts:
            self.agent_tick(self.agents[host])
        if self.rng.random() < 0.8:
            self.reconcile_pass(crash=crashes and self.rng.random() < 0.15)
        self.check()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    hosts=st.integers(2, 5),
    config=st.sampled_from(["CodeDeployDefault.OneAtATime", "CodeDeployDefault.HalfAtATime"]),
    bad=st.integers(0, 2),
    rollback=st.booleans(),
)
def test_no_request_reaches_a_stopping_host_whatever_crashes(
    seed: int, hosts: int, config: str, bad: int, rollback: bool
) -> None:
    rng = random.Random(seed)
    names = [f"h{i}" for i in range(1, hosts + 1)]
    world = World(rng, names, set(rng.sample(names, min(bad, hosts))), desired("v2", config, rollback))
    # The fleet runs v1, the group's last good revision; the manifest now asks for v2.
    world.state = State(groups={KEY: GroupState(
        application="shop", deployment_group="web", desired_revision=bundle("v1"), desired_commit="c-v1",
        effective_revision=bundle("v1"), effective_commit="c-v1", updated_at=T0)})
    for _ in range(400):
        world.tick(crashes=True)
    for _ in range(400):
        world.tick(crashes=False)
    assert world.violations == [], world.violations[:5]

    group = world.state.groups[KEY]
    assert group.deployment_in_flight is None, "the deployment never ended"
    assert group.history, "no deployment ran"
    for host, agent in world.agents.items():
        command = agent.command
        assert command is None or command.status is not CommandStatus.IN_PROGRESS, f"{host} still waiting"
        healthy = agent.installed_by != "d-initial" or agent.installed == "v1"
        if healthy and agent.running and not (host in world.bad and agent.serving == "v2"):
            assert world.lb[host].state is TargetState.IN_SERVICE, (host, world.lb[host], agent)
