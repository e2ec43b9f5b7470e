"""Auto Scaling launch lifecycle hooks in the pure core (issue 16, `reconciler/core/lifecycle.py`): pass after pass
over a world where Auto Scaling launches instances into a converged group and holds them in Pending:Wait. The golden
scenarios (`scenarios/asg-launch-*`) show single passes; these drive `reconcile()` until every instance is decided."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.models import GroupState, HostCommand, HostRegistration, HostStatus, InstalledRevision
from reconciler.core import (
    CompleteLifecycleAction,
    CoreSettings,
    Ec2Instance,
    Ec2Membership,
    Observed,
    RecordLifecycleHeartbeat,
    State,
    apply_actions,
    reconcile,
    run_agents,
)
from reconciler.core.lifecycle import held_launches
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile
from tests.core.world import bundle

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
KEY = "shop/web"
HOOK = "fleetshift-launch"
TICK = timedelta(seconds=30)
TIMEOUT = timedelta(minutes=10)
HEARTBEAT = timedelta(minutes=1)


def desired(config: str = "CodeDeployDefault.OneAtATime") -> Desired:
    text = f"""
apiVersion: deploy/v1
kind: Application
metadata: {{name: shop}}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: web}}
spec:
  application: shop
  revision: {{local: {{path: bundles/v1.zip, bundleType: zip}}}}
  deploymentConfig: {config}
  targets: {{autoScalingGroups: [web-asg]}}
  autoScaling: {{lifecycleHook: {HOOK}, timeout: 10m, heartbeat: 1m}}
"""
    return load_files([ManifestFile("m.yaml", text.encode())], commit="c1")


def _registration(host: str) -> HostRegistration:
    return HostRegistration(host_id=host, tags={}, platform="linux", hostname=host, agent_version="t",
                            registered_at=T0, instance_id=host)


def _status(host: str, now: datetime, installed: bool) -> HostStatus:
    revisions = {}
    if installed:
        revisions[KEY] = InstalledRevision(application="shop", deployment_group="web", revision=bundle(1),
                                           deployment_id="d-earlier", installed_at=T0 - timedelta(hours=1))
    return HostStatus(host_id=host, heartbeat_at=now, agent_version="t", installed=revisions)


@dataclass
class NewInstance:
    """How a launched instance behaves: its agent starts `agent_after` after launch (None: never), and its
    deployment succeeds or fails."""

    instance_id: str
    launched_at: datetime
    agent_after: timedelta | None
    succeeds: bool = True


@dataclass
class World:
    """Auto Scaling and the agents as the tests see them, plus the shell's memory of heartbeats."""

    instances: dict[str, NewInstance]
    lifecycle: dict[str, str] = field(default_factory=dict)
    heartbeats: dict[tuple[str, str, str], datetime] = field(default_factory=dict)
    heartbeat_times: dict[str, list[datetime]] = field(default_factory=dict)
    decided: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    #: What the agent reported when each CONTINUE was decided: (online, installed the effective revision).
    continued_with: dict[str, tuple[bool, bool]] = field(default_factory=dict)


def _converged_state() -> State:
    group = GroupState(application="shop", deployment_group="web", desired_revision=bundle(1), desired_commit="c1",
                       effective_revision=bundle(1), effective_commit="c1", updated_at=T0)
    return State(groups={KEY: group})


def _observe(world: World, observed: Observed, now: datetime) -> Observed:
    registrations = dict(observed.registrations)
    statuses = dict(observed.statuses)
    instances = [Ec2Instance("i-1", "running", auto_scaling_group="web-asg", lifecycle_state="InService",
                             launched_at=T0 - timedelta(days=1))]
    for new in world.instances.values():
        if new.launched_at > now:
            continue
        state = world.lifecycle.setdefault(new.instance_id, "Pending:Wait")
        if state == "Terminated":
            continue
        instances.append(Ec2Instance(new.instance_id, "running", auto_scaling_group="web-asg", lifecycle_state=state,
                                     launched_at=new.launched_at))
        if new.agent_after is not None and now >= new.launched_at + new.agent_after and new.instance_id not in statuses:
            registrations[new.instance_id] = _registration(new.instance_id)
            statuses[new.instance_id] = _status(new.instance_id, now, installed=False)
    read = Ec2Membership(read_at=now, instances=tuple(instances))
    group = desired().desired_groups()[KEY]
    launches = held_launches(group, read, first_seen={}, heartbeats=world.heartbeats, completed=())
    return dataclasses.replace(observed, registrations=registrations, statuses=statuses, ec2={KEY: read},
                               launches={KEY: launches})


def _outcome(world: World):  # type: ignore[no-untyped-def]
    def outcome(command: HostCommand) -> bool:
        new = world.instances.get(command.host_id)
        return new.succeeds if new is not None else True

    return outcome


def _installed(observed: Observed, host: str) -> bool:
    status = observed.statuses.get(host)
    return status is not None and KEY in status.installed


def _run(world: World, *, passes: int, config: str = "CodeDeployDefault.OneAtATime") -> World:
    wanted = desired(config)
    state = _converged_state()
    observed = Observed(registrations={"i-1": _registration("i-1")}, statuses={"i-1": _status("i-1", T0, True)})
    now = T0
    for _ in range(passes):
        observed = _observe(world, observed, now)
        actions = reconcile(wanted, observed, state, now=now, settings=CoreSettings())
        for action in actions:
            if isinstance(action, CompleteLifecycleAction):
                assert action.instance_id not in world.decided, "an instance is completed once"
                world.decided[action.instance_id] = (action.result, now)
                online = now - observed.statuses[action.host].heartbeat_at < timedelta(minutes=3) \
                    if action.host in observed.statuses else False
                world.continued_with[action.instance_id] = (online, _installed(observed, action.host))
                world.lifecycle[action.instance_id] = "InService" if action.result == "CONTINUE" else "Terminated"
            elif isinstance(action, RecordLifecycleHeartbeat):
                world.heartbeats[(action.auto_scaling_group, action.instance_id, action.lifecycle_hook)] = now
                world.heartbeat_times.setdefault(action.instance_id, []).append(now)
        state = apply_actions(state, actions)
        now += TICK
        alive = {h for h in observed.statuses if world.lifecycle.get(h) != "Terminated"}
        observed = run_agents(observed, state, now=now, alive=alive, outcome=_outcome(world))
    return world


def test_an_instance_whose_agent_installs_the_revision_is_continued() -> None:
    world = _run(World({"i-2": NewInstance("i-2", T0, agent_after=timedelta(minutes=2))}), passes=12)
    result, when = world.decided["i-2"]
    assert result == "CONTINUE"
    assert world.continued_with["i-2"] == (True, True)
    assert when < T0 + TIMEOUT
    # Heartbeats kept it waiting: the first a minute after launch, then every minute until it was let in.
    assert world.heartbeat_times["i-2"][0] == T0 + HEARTBEAT


def test_an_instance_whose_deployment_fails_is_abandoned() -> None:
    world = _run(World({"i-2": NewInstance("i-2", T0, agent_after=timedelta(minutes=1), succeeds=False)}), passes=12)
    assert world.decided["i-2"][0] == "ABANDON"
    assert world.decided["i-2"][1] < T0 + TIMEOUT


def test_an_instance_whose_agent_never_starts_is_abandoned_at_the_timeout() -> None:
    world = _run(World({"i-2": NewInstance("i-2", T0, agent_after=None)}), passes=30)
    assert world.decided["i-2"] == ("ABANDON", T0 + TIMEOUT)
    times = world.heartbeat_times["i-2"]
    assert times == [T0 + HEARTBEAT * n for n in range(1, 10)]


def test_a_restart_of_the_reconciler_loses_heartbeats_harmlessly() -> None:
    """With no heartbeat remembered, one is due at once when the launch is older than the interval."""
    group = desired().desired_groups()[KEY]
    read = Ec2Membership(read_at=T0, instances=(
        Ec2Instance("i-2", "running", auto_scaling_group="web-asg", lifecycle_state="Pending:Wait",
                    launched_at=T0 - timedelta(minutes=5)),
    ))
    held = held_launches(group, read, first_seen={}, heartbeats={}, completed=())
    observed = Observed(ec2={KEY: read}, launches={KEY: held})
    actions = reconcile(desired(), observed, _converged_state(), now=T0)
    assert [a.kind for a in actions] == ["RecordLifecycleHeartbeat", "Blocked"]
    # Completed by this shell already (the read is a few seconds old): not held any more.
    assert held_launches(group, read, first_seen={}, heartbeats={}, completed=[("web-asg", "i-2", HOOK)]) == ()


def test_groups_without_a_hook_and_other_lifecycle_states_hold_nothing() -> None:
    text = """
apiVersion: deploy/v1
kind: Application
metadata: {name: shop}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {name: web}
spec:
  application: shop
  revision: {local: {path: bundles/v1.zip, bundleType: zip}}
  targets: {autoScalingGroups: [web-asg]}
"""
    plain = load_files([ManifestFile("m.yaml", text.encode())]).desired_groups()[KEY]
    read = Ec2Membership(read_at=T0, instances=(
        Ec2Instance("i-2", "running", auto_scaling_group="web-asg", lifecycle_state="Pending:Wait"),
        Ec2Instance("i-3", "running", auto_scaling_group="other-asg", lifecycle_state="Pending:Wait"),
        Ec2Instance("i-4", "running", auto_scaling_group="web-asg", lifecycle_state="Warmed:Pending:Wait"),
    ))
    assert held_launches(plain, read, first_seen={}, heartbeats={}, completed=()) == ()
    hooked = desired().desired_groups()[KEY]
    assert [h.instance_id for h in held_launches(hooked, read, first_seen={}, heartbeats={}, completed=())] == ["i-2"]
    unknown = Ec2Membership(read_at=T0, error="autoscaling DescribeAutoScalingGroups: Throttling")
    assert held_launches(hooked, unknown, first_seen={}, heartbeats={}, completed=()) == ()
    # EC2 gave no launch time: the timeout counts from when this shell first saw it held.
    undated = held_launches(hooked, read, first_seen={"i-2": T0}, heartbeats={}, completed=())
    assert undated[0].since == T0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    launches=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=6),  # launched at pass n
            st.one_of(st.none(), st.integers(min_value=0, max_value=25)),  # agent starts n ticks after launch
            st.booleans(),  # its deployment succeeds
        ),
        min_size=1,
        max_size=4,
    ),
    config=st.sampled_from(["CodeDeployDefault.OneAtATime", "CodeDeployDefault.AllAtOnce"]),
)
def test_every_held_instance_is_decided_within_its_timeout_and_only_continued_with_the_revision(
    launches: list[tuple[int, int | None, bool]], config: str
) -> None:
    """Whatever the launches, agents and outcomes: no instance is let in (CONTINUE) unless its agent is online and
    reports the effective revision installed; every one is completed, CONTINUE or ABANDON, by its timeout (one pass
    late at most); one whose deployment failed is never let in; and while it waits, no two heartbeats (nor the
    launch and the first) are further apart than the interval plus a pass."""
    instances = {
        f"i-{n + 2}": NewInstance(
            f"i-{n + 2}", T0 + TICK * start, None if agent is None else TICK * agent, succeeds=ok
        )
        for n, (start, agent, ok) in enumerate(launches)
    }
    world = _run(World(instances), passes=6 + int(TIMEOUT / TICK) + 2, config=config)
    for instance_id, new in instances.items():
        assert instance_id in world.decided, f"{instance_id} was never decided"
        result, when = world.decided[instance_id]
        assert when <= new.launched_at + TIMEOUT
        if result == "CONTINUE":
            assert world.continued_with[instance_id] == (True, True)
            assert new.succeeds
        marks = [new.launched_at, *world.heartbeat_times.get(instance_id, [])]
        if when - new.launched_at > HEARTBEAT + TICK:
            marks.append(when)
            assert all(b - a <= HEARTBEAT + TICK for a, b in itertools.pairwise(marks))
