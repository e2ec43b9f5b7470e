"""The core's traffic steps (reconciler/core/traffic.py): decisions from agents' reports, the last record
and load balancer observations, checked case by case and as properties over random inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.models import (
    TRAFFIC_CONTROL_EVENTS,
    CommandProgress,
    CommandStatus,
    Deployment,
    DeploymentStatus,
    EventReport,
    EventStatus,
    GroupState,
    HostCommand,
    HostDeploymentState,
    HostDeploymentStatus,
    HostRegistration,
    HostStatus,
    HostTraffic,
    InstalledRevision,
    Revision,
    TrafficStepState,
)
from reconciler.core import Blocked, Observed, State, TrafficStep, reconcile
from reconciler.core.observed import TargetObservation, TargetState
from reconciler.core.traffic import hosts_needing_traffic
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
KEY = "shop/web"
REV = Revision.model_validate({"local": {"path": "bundles/v2.zip", "bundleType": "zip"}})
OLD = Revision.model_validate({"local": {"path": "bundles/v1.zip", "bundleType": "zip"}})
DEPLOYMENT = "d-traffic"

MANIFESTS = """
apiVersion: deploy/v1
kind: Application
metadata: {name: shop}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {name: web}
spec:
  application: shop
  revision: {local: {path: bundles/v2.zip, bundleType: zip}}
  targets: {hosts: [h1, h2]}
  trafficControl:
    drainTimeout: 30s
    healthyTimeout: 2m
    loadBalancers:
      - haproxy: {runtimeApi: "unix:/run/haproxy.sock", backend: web}
%s
"""
SECOND_LB = '      - command: {run: ["/usr/local/bin/lb"]}'


def desired(load_balancers: int = 1) -> Desired:
    text = MANIFESTS % (SECOND_LB if load_balancers == 2 else "")
    return load_files([ManifestFile("web.yaml", text.encode())], commit="c1")


def obs(state: TargetState, sessions: int | None = None, error: str | None = None) -> TargetObservation:
    return TargetObservation(state, f"lb: {state.value}" + (f", {sessions} sessions" if sessions is not None else ""),
                             sessions=sessions, error=error)


def progress(step: str | None, *, status: CommandStatus = CommandStatus.IN_PROGRESS, generation: int = 1,
             failed_at: str = "ValidateService") -> CommandProgress:
    """A command at `step` (in progress), or finished: Succeeded, or Failed at `failed_at` (the rest Skipped)."""
    events = []
    if step is None and status is CommandStatus.FAILED:
        step_status, later, reached = EventStatus.FAILED, EventStatus.SKIPPED, False
        step = failed_at
    else:
        step_status, later, reached = EventStatus.IN_PROGRESS, EventStatus.PENDING, step is None
    for name in TRAFFIC_CONTROL_EVENTS:
        if name == step:
            events.append(EventReport(name=name, status=step_status))
            reached = True
        else:
            events.append(EventReport(name=name, status=later if reached else EventStatus.SUCCEEDED))
    return CommandProgress(deployment_id=DEPLOYMENT, generation=generation, application="shop", deployment_group="web",
                           status=status, events=events, started_at=NOW - timedelta(seconds=30))


def world(
    *,
    step: str | None,
    host_status: HostDeploymentStatus = HostDeploymentStatus.IN_PROGRESS,
    record: HostTraffic | None = None,
    seen: tuple[TargetObservation, ...] | None = None,
    command_status: CommandStatus = CommandStatus.IN_PROGRESS,
    healthy: bool = False,
) -> tuple[Observed, State]:
    """Host h1 in a deployment of v2 in flight (h2 idle on v1), h1's agent at `step`."""
    installed = {KEY: InstalledRevision(application="shop", deployment_group="web", revision=REV if healthy else OLD,
                                        deployment_id=DEPLOYMENT if healthy else "d-old", installed_at=NOW)}
    statuses = {
        "h1": HostStatus(host_id="h1", heartbeat_at=NOW, agent_version="t", installed=installed,
                         command=progress(step, status=command_status)),
    }
    registrations = {
        h: HostRegistration(host_id=h, platform="linux", hostname=h, agent_version="t", registered_at=NOW)
        for h in ("h1", "h2")
    }
    hosts = {
        "h1": HostDeploymentState(status=host_status, batch=0, generation=1, dispatched_at=NOW - timedelta(seconds=30),
                                  message="timed out" if host_status is HostDeploymentStatus.FAILED else None),
        "h2": HostDeploymentState(status=HostDeploymentStatus.PENDING),
    }
    deployment = Deployment(deployment_id=DEPLOYMENT, application="shop", deployment_group="web", revision=REV,
                            deployment_config="CodeDeployDefault.OneAtATime", status=DeploymentStatus.IN_PROGRESS,
                            hosts=hosts, batches=[["h1"]], created_at=NOW - timedelta(minutes=1),
                            updated_at=NOW - timedelta(minutes=1))
    group = GroupState(application="shop", deployment_group="web", desired_revision=REV, desired_commit="c1",
                       effective_revision=OLD, deployment_in_flight=DEPLOYMENT, history=[DEPLOYMENT],
                       updated_at=NOW - timedelta(minutes=1))
    command = HostCommand(host_id="h1", generation=1, deployment_id=DEPLOYMENT, application="shop",
                          deployment_group="web", deployment_group_id="g", revision=REV,
                          events=list(TRAFFIC_CONTROL_EVENTS), created_at=NOW - timedelta(seconds=30))
    observed = Observed(registrations=registrations, statuses=statuses,
                        traffic={KEY: {"h1": seen}} if seen is not None else {})
    state = State(groups={KEY: group}, deployments={DEPLOYMENT: deployment}, commands={"h1": command},
                  traffic={"h1": record} if record is not None else {})
    return observed, state


def record(step: str, state: TrafficStepState, *, started: datetime = NOW - timedelta(seconds=5),
           repair: bool = False, generation: int = 1) -> HostTraffic:
    return HostTraffic(host_id="h1", generation=generation, deployment_id=DEPLOYMENT, group=KEY,
                       step=step, state=state, started_at=started, repair=repair)  # type: ignore[arg-type]


def steps(observed: Observed, state: State, load_balancers: int = 1) -> list[TrafficStep]:
    actions = reconcile(desired(load_balancers), observed, state, now=NOW)
    return [a for a in actions if isinstance(a, TrafficStep)]


# -- BlockTraffic --------------------------------------------------------------------------------------


def test_a_host_in_service_at_block_traffic_is_drained_and_the_start_recorded() -> None:
    observed, state = world(step="BlockTraffic", seen=(obs(TargetState.IN_SERVICE),))
    [step] = steps(observed, state)
    assert step.call == "block"
    assert step.traffic.state is TrafficStepState.IN_PROGRESS
    assert step.traffic.started_at == NOW and step.traffic.generation == 1


def test_draining_with_open_sessions_waits_and_asks_to_look_again_soon() -> None:
    observed, state = world(step="BlockTraffic", record=record("BlockTraffic", TrafficStepState.IN_PROGRESS),
                            seen=(obs(TargetState.DRAINING, sessions=3),))
    actions = reconcile(desired(), observed, state, now=NOW)
    assert not [a for a in actions if isinstance(a, TrafficStep)]
    waits = [a for a in actions if isinstance(a, Blocked) and a.code == "WAITING_FOR_TRAFFIC"]
    assert waits and waits[0].until is not None and waits[0].until <= NOW + timedelta(seconds=1)


def test_drained_to_zero_sessions_finishes_the_block_and_records_success() -> None:
    observed, state = world(step="BlockTraffic", record=record("BlockTraffic", TrafficStepState.IN_PROGRESS),
                            seen=(obs(TargetState.DRAINING, sessions=0),))
    [step] = steps(observed, state)
    assert step.call == "finish"
    assert step.traffic.state is TrafficStepState.SUCCEEDED
    assert "drained in 5s" in (step.traffic.message or "")


def test_the_drain_timeout_takes_the_host_out_with_connections_still_open() -> None:
    started = NOW - timedelta(seconds=31)
    observed, state = world(step="BlockTraffic",
                            record=record("BlockTraffic", TrafficStepState.IN_PROGRESS, started=started),
                            seen=(obs(TargetState.DRAINING, sessions=2),))
    [step] = steps(observed, state)
    assert step.call == "finish" and step.traffic.state is TrafficStepState.SUCCEEDED
    assert "drain timeout of 30s" in (step.traffic.message or "")


def test_block_is_done_only_when_every_load_balancer_stopped_sending() -> None:
    seen = (obs(TargetState.OUT_OF_SERVICE), obs(TargetState.IN_SERVICE))
    observed, state = world(step="BlockTraffic", record=record("BlockTraffic", TrafficStepState.IN_PROGRESS), seen=seen)
    [step] = steps(observed, state, load_balancers=2)
    assert step.call == "block" and step.traffic.state is TrafficStepState.IN_PROGRESS


def test_a_load_balancer_that_cannot_be_read_fails_the_step_with_its_answer() -> None:
    seen = (obs(TargetState.UNKNOWN, error="haproxy runtime API unix:/run/haproxy.sock: connection refused"),)
    observed, state = world(step="BlockTraffic", seen=seen)
    [step] = steps(observed, state)
    assert step.call is None and step.traffic.state is TrafficStepState.FAILED
    assert "connection refused" in (step.traffic.message or "")


def test_a_decided_step_is_left_for_the_agent_to_read() -> None:
    observed, state = world(step="BlockTraffic", record=record("BlockTraffic", TrafficStepState.SUCCEEDED),
                            seen=(obs(TargetState.OUT_OF_SERVICE),))
    assert steps(observed, state) == []


def test_a_record_of_an_older_generation_is_not_taken_for_this_command() -> None:
    old = record("BlockTraffic", TrafficStepState.SUCCEEDED, generation=0)
    observed, state = world(step="BlockTraffic", record=old, seen=(obs(TargetState.IN_SERVICE),))
    [step] = steps(observed, state)
    assert step.call == "block" and step.traffic.generation == 1


def test_a_host_the_deployment_no_longer_waits_for_gets_its_step_failed() -> None:
    observed, state = world(step="BlockTraffic", host_status=HostDeploymentStatus.FAILED,
                            seen=(obs(TargetState.IN_SERVICE),))
    [step] = steps(observed, state)
    assert step.call is None and step.traffic.state is TrafficStepState.FAILED
    assert "already counted this host Failed: timed out" in (step.traffic.message or "")


# -- AllowTraffic --------------------------------------------------------------------------------------


def test_allow_puts_the_host_back_then_waits_for_health_checks() -> None:
    observed, state = world(step="AllowTraffic", record=record("BlockTraffic", TrafficStepState.SUCCEEDED),
                            seen=(obs(TargetState.OUT_OF_SERVICE),))
    [step] = steps(observed, state)
    assert step.call == "allow" and step.traffic.step == "AllowTraffic"
    assert step.traffic.state is TrafficStepState.IN_PROGRESS

    observed, state = world(step="AllowTraffic", record=record("AllowTraffic", TrafficStepState.IN_PROGRESS),
                            seen=(obs(TargetState.STARTING),))
    assert steps(observed, state) == []

    observed, state = world(step="AllowTraffic", record=record("AllowTraffic", TrafficStepState.IN_PROGRESS),
                            seen=(obs(TargetState.IN_SERVICE),))
    [step] = steps(observed, state)
    assert step.call is None and step.traffic.state is TrafficStepState.SUCCEEDED


def test_a_host_not_healthy_by_the_healthy_timeout_fails_allow_traffic() -> None:
    started = NOW - timedelta(minutes=2)
    observed, state = world(step="AllowTraffic",
                            record=record("AllowTraffic", TrafficStepState.IN_PROGRESS, started=started),
                            seen=(obs(TargetState.STARTING),))
    [step] = steps(observed, state)
    assert step.traffic.state is TrafficStepState.FAILED
    assert "not healthy 2m after it was put back" in (step.traffic.message or "")


# -- the safety net ------------------------------------------------------------------------------------


def test_a_healthy_idle_host_left_out_by_a_block_is_put_back() -> None:
    observed, state = world(step=None, command_status=CommandStatus.SUCCEEDED, healthy=True,
                            host_status=HostDeploymentStatus.SUCCEEDED,
                            record=record("BlockTraffic", TrafficStepState.SUCCEEDED),
                            seen=(obs(TargetState.OUT_OF_SERVICE),))
    [step] = steps(observed, state)
    assert step.call == "allow" and step.traffic.repair and step.traffic.step == "AllowTraffic"


def test_a_failed_host_stays_out_of_rotation() -> None:
    observed, state = world(step=None, command_status=CommandStatus.FAILED, host_status=HostDeploymentStatus.FAILED,
                            record=record("BlockTraffic", TrafficStepState.SUCCEEDED),
                            seen=(obs(TargetState.OUT_OF_SERVICE),))
    assert steps(observed, state) == []


def test_a_host_whose_command_failed_before_its_application_was_touched_is_put_back() -> None:
    """Failed at BlockTraffic (the load balancer refused, the agent restarted while waiting): ApplicationStop
    never ran, so the host is as healthy as before and goes back into rotation."""
    observed, state = world(step=None, command_status=CommandStatus.FAILED, host_status=HostDeploymentStatus.FAILED,
                            record=record("BlockTraffic", TrafficStepState.IN_PROGRESS),
                            seen=(obs(TargetState.DRAINING, sessions=0),))
    statuses = dict(observed.statuses)
    statuses["h1"] = statuses["h1"].model_copy(
        update={"command": progress(None, status=CommandStatus.FAILED, failed_at="BlockTraffic")})
    observed = Observed(registrations=observed.registrations, statuses=statuses, traffic=observed.traffic)
    [step] = steps(observed, state)
    assert step.call == "allow" and step.traffic.repair


def test_a_host_a_load_balancer_had_back_while_it_deployed_is_taken_out_again() -> None:
    observed, state = world(step=None, record=record("BlockTraffic", TrafficStepState.SUCCEEDED),
                            seen=(obs(TargetState.IN_SERVICE),))
    statuses = dict(observed.statuses)
    running = progress("ApplicationStart")
    running = running.model_copy(update={"events": [e.model_copy(update={"status": EventStatus.IN_PROGRESS})
                                                    if e.name == "ApplicationStart" else e for e in running.events]})
    statuses["h1"] = statuses["h1"].model_copy(update={"command": running})
    observed = Observed(registrations=observed.registrations, statuses=statuses, traffic=observed.traffic)
    [step] = steps(observed, state)
    assert step.call == "block" and "taken out again" in (step.traffic.message or "")


def test_a_removed_traffic_control_fails_the_step_instead_of_stopping_a_host_in_rotation() -> None:
    observed, state = world(step="BlockTraffic", seen=(obs(TargetState.IN_SERVICE),))
    plain = MANIFESTS.split("  trafficControl:", maxsplit=1)[0]
    without = load_files([ManifestFile("web.yaml", plain.encode())], commit="c1")
    [step] = [a for a in reconcile(without, observed, state, now=NOW) if isinstance(a, TrafficStep)]
    assert step.call is None and step.traffic.state is TrafficStepState.FAILED
    assert "trafficControl was removed" in (step.traffic.message or "")
    assert "not stopped" in (step.traffic.message or "")


def test_only_hosts_at_a_step_or_left_out_are_read() -> None:
    observed, state = world(step="BlockTraffic")
    assert hosts_needing_traffic(observed.statuses, state.traffic) == {"h1": KEY}
    observed, state = world(step=None, command_status=CommandStatus.SUCCEEDED,
                            record=record("AllowTraffic", TrafficStepState.SUCCEEDED))
    assert hosts_needing_traffic(observed.statuses, state.traffic) == {}


# -- properties ----------------------------------------------------------------------------------------

target_states = st.sampled_from(list(TargetState))
observations = st.builds(
    lambda s, n: obs(s, sessions=n if s is TargetState.DRAINING else None,
                     error="down" if s is TargetState.UNKNOWN else None),
    target_states,
    st.one_of(st.none(), st.integers(0, 3)),
)


@settings(max_examples=300, deadline=None)
@given(
    step=st.sampled_from(["BlockTraffic", "AllowTraffic", None]),
    command_status=st.sampled_from(list(CommandStatus)),
    host_status=st.sampled_from([HostDeploymentStatus.IN_PROGRESS, HostDeploymentStatus.FAILED,
                                 HostDeploymentStatus.SUCCEEDED]),
    record_step=st.sampled_from(["BlockTraffic", "AllowTraffic", None]),
    record_state=st.sampled_from(list(TrafficStepState)),
    repair=st.booleans(),
    started_ago=st.integers(0, 400),
    seen=st.lists(observations, min_size=2, max_size=2),
    healthy=st.booleans(),
)
def test_traffic_steps_never_break_the_rules(
    step: str | None,
    command_status: CommandStatus,
    host_status: HostDeploymentStatus,
    record_step: str | None,
    record_state: TrafficStepState,
    repair: bool,
    started_ago: int,
    seen: list[TargetObservation],
    healthy: bool,
) -> None:
    """Whatever the inputs: a host is drained only while its agent waits at BlockTraffic for a deployment that
    still waits for it (or when its AllowTraffic failed); put back only while it waits at AllowTraffic or when
    it is idle and healthy; a block is recorded done only when no load balancer sends it traffic, an allow only
    when all call it healthy; and the same inputs give the same decisions."""
    if step is None and command_status is CommandStatus.IN_PROGRESS:
        command_status = CommandStatus.SUCCEEDED
    kept = None
    if record_step is not None:
        kept = record(record_step, record_state, started=NOW - timedelta(seconds=started_ago), repair=repair)
    observed, state = world(step=step, host_status=host_status, record=kept, seen=tuple(seen),
                            command_status=command_status if step is None else CommandStatus.IN_PROGRESS,
                            healthy=healthy)
    first = steps(observed, state, load_balancers=2)
    assert first == steps(observed, state, load_balancers=2)
    waiting_for = step if host_status is HostDeploymentStatus.IN_PROGRESS else None
    for action in first:
        if action.call in ("block", "finish"):
            # Taking out is for a host about to deploy, or for one whose AllowTraffic failed (never back on it).
            failed_allow = step == "AllowTraffic" and action.traffic.state is TrafficStepState.FAILED
            assert waiting_for == "BlockTraffic" or (failed_allow and action.call == "block")
        if action.call == "allow":
            assert waiting_for == "AllowTraffic" or (step is None and action.traffic.repair)
            # The repair never puts back a host whose last attempt failed (and that did not install it after).
            assert waiting_for == "AllowTraffic" or not (host_status is HostDeploymentStatus.FAILED and not healthy)
        if action.traffic.state is TrafficStepState.SUCCEEDED and action.traffic.step == "BlockTraffic":
            assert all(o.state in (TargetState.OUT_OF_SERVICE, TargetState.DRAINING) for o in seen)
        if action.traffic.state is TrafficStepState.SUCCEEDED and action.traffic.step == "AllowTraffic":
            assert all(o.state is TargetState.IN_SERVICE for o in seen)


def test_never_deployed_hosts_in_service_count_as_healthy_so_adoption_goes_one_at_a_time() -> None:
    """A fleet that already serves behind its load balancer, adopted by a group with traffic control: CodeDeploy's
    rule makes never-deployed hosts unhealthy (free to take all at once); in service, they count as healthy."""
    manifests = MANIFESTS.replace("targets: {hosts: [h1, h2]}", "targets: {hosts: [h1, h2, h3, h4]}") % ""
    first = load_files([ManifestFile("web.yaml", manifests.encode())], commit="c1")
    hosts = ["h1", "h2", "h3", "h4"]
    registrations = {h: HostRegistration(host_id=h, platform="linux", hostname=h, agent_version="t",
                                         registered_at=NOW) for h in hosts}
    statuses = {h: HostStatus(host_id=h, heartbeat_at=NOW, agent_version="t") for h in hosts}

    def dispatched(observations: dict[str, tuple[TargetObservation, ...]]) -> list[str]:
        observed = Observed(registrations=registrations, statuses=statuses, traffic={KEY: observations})
        actions = reconcile(first, observed, State(), now=NOW)
        return [h for a in actions if a.kind == "DispatchBatch" for h in a.hosts]  # type: ignore[attr-defined]

    serving = {h: (obs(TargetState.IN_SERVICE),) for h in hosts}
    assert dispatched(serving) == ["h1"]  # OneAtATime keeps the other three serving
    # Nothing serving (no load balancer answer, or all out): nothing to protect, all go in the first batch.
    assert dispatched({}) == hosts
    assert dispatched({h: (obs(TargetState.OUT_OF_SERVICE),) for h in hosts}) == hosts
