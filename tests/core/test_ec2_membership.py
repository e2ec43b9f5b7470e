"""EC2 and Auto Scaling membership in the pure core (issue 16): expected instances become members, one with no
agent is a missing host that fails like any offline target, a scale-in never fails a deployment, an unknown read
changes nothing, and agents claiming instances EC2 does not list are flagged. The golden scenarios
(`scenarios/ec2-*`) show single passes; these drive `reconcile()` pass after pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.models import DeploymentStatus, HostDeploymentStatus, HostRegistration, HostStatus, InstalledRevision
from reconciler.core import (
    CoreSettings,
    Ec2Instance,
    Ec2Membership,
    Observed,
    State,
    apply_actions,
    flagged_agents,
    group_members,
    missing_hosts,
    reconcile,
    run_agents,
)
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired, TagFilter, TargetsSpec
from reconciler.desired.sources import ManifestFile
from tests.core.world import bundle

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
KEY = "shop/web"
SETTINGS = CoreSettings()


def desired(targets: str, *, version: int = 2, config: str = "CodeDeployDefault.OneAtATime") -> Desired:
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
  revision: {{local: {{path: bundles/v{version}.zip, bundleType: zip}}}}
  deploymentConfig: {config}
  targets: {targets}
"""
    return load_files([ManifestFile("m.yaml", text.encode())], commit=f"c{version}")


def registration(host: str, instance_id: str | None, tags: dict[str, str] | None = None) -> HostRegistration:
    return HostRegistration(host_id=host, tags=tags or {}, platform="linux", hostname=host, agent_version="t",
                            registered_at=T0 - timedelta(days=1), instance_id=instance_id)


def status(host: str, now: datetime, installed: int | None = 1) -> HostStatus:
    revisions = {}
    if installed is not None:
        revisions[KEY] = InstalledRevision(application="shop", deployment_group="web", revision=bundle(installed),
                                           deployment_id="d-earlier", installed_at=T0 - timedelta(hours=1))
    return HostStatus(host_id=host, heartbeat_at=now, agent_version="t", installed=revisions)


def read(*instances: Ec2Instance, error: str | None = None) -> dict[str, Ec2Membership]:
    return {KEY: Ec2Membership(read_at=T0, instances=instances, error=error, region="eu-west-1")}


def running(instance_id: str, **fields: object) -> Ec2Instance:
    return Ec2Instance(instance_id=instance_id, state="running", **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Membership


def test_expected_instances_map_to_registered_hosts_else_to_their_ids() -> None:
    group = desired("{ec2TagFilters: [{key: app, value: shop}], hosts: [onprem-1]}").desired_groups()[KEY]
    observed = Observed(
        registrations={"web-a": registration("web-a", "i-a"), "i-b": registration("i-b", "i-b")},
        ec2=read(running("i-a"), running("i-b"), running("i-c"), Ec2Instance("i-d", "stopped"),
                 Ec2Instance("i-e", "terminated"), running("i-f", lifecycle_state="Terminating:Wait"),
                 running("i-g", lifecycle_state="Warmed:Stopped"), running("i-h", lifecycle_state="Pending:Wait")),
    )
    assert group_members(group, observed) == ["i-b", "i-c", "i-h", "onprem-1", "web-a"]
    assert [i.instance_id for i in missing_hosts(group, observed)] == ["i-c", "i-h"]


def test_unknown_membership_keeps_the_agents_that_claim_an_instance_and_invents_no_one() -> None:
    group = desired("{autoScalingGroups: [web-asg], ec2TagSet: [[{key: app, value: shop}]]}").desired_groups()[KEY]
    observed = Observed(
        registrations={
            "i-1": registration("i-1", "i-1", {"aws:autoscaling:groupName": "web-asg"}),
            "i-2": registration("i-2", "i-2", {"app": "shop"}),
            "i-3": registration("i-3", "i-3", {"aws:autoscaling:groupName": "other"}),
            "web-4": registration("web-4", None, {"app": "shop"}),
        },
        ec2=read(error="ec2 DescribeInstances: Throttling: Rate exceeded"),
    )
    assert group_members(group, observed) == ["i-1", "i-2"]
    assert missing_hosts(group, observed) == []
    assert flagged_agents(group, observed) == {}


def test_agents_claiming_instances_ec2_does_not_list_are_flagged() -> None:
    group = desired("{ec2TagFilters: [{key: app, value: shop}]}").desired_groups()[KEY]
    observed = Observed(
        registrations={
            "i-1": registration("i-1", "i-1", {"app": "shop"}),
            "i-9": registration("i-9", "i-9", {"app": "shop"}),
            "old": registration("old", "i-0", {"app": "shop"}),
        },
        ec2=read(running("i-1"), Ec2Instance("i-0", "terminated")),
    )
    flagged = flagged_agents(group, observed)
    assert sorted(flagged) == ["i-9", "old"]
    assert "does not list" in flagged["i-9"] and "terminated" in flagged["old"]


def test_tag_filter_semantics_match_codedeploy() -> None:
    """ec2TagFilters: any filter; ec2TagSet: every group has a matching filter (KEY_ONLY/VALUE_ONLY too)."""
    tags = {"app": "shop", "env": "prod"}
    any_of = TargetsSpec.model_validate(
        {"ec2TagFilters": [{"key": "app", "value": "x"}, {"key": "env", "type": "KEY_ONLY"}]}
    )
    every = TargetsSpec.model_validate(
        {"ec2TagSet": [[{"value": "shop", "type": "VALUE_ONLY"}], [{"key": "env", "value": "dev"}]]}
    )
    assert all(any(f.matches(tags) for f in g) for g in any_of.ec2_tag_groups())
    assert not all(any(f.matches(tags) for f in g) for g in every.ec2_tag_groups())
    assert TagFilter(key="env", value="prod").matches(tags)


# --------------------------------------------------------------------------------------------------
# Pass after pass


def _fleet(count: int, missing: set[int], now: datetime) -> Observed:
    hosts = [f"i-{n}" for n in range(1, count + 1) if n not in missing]
    return Observed(
        registrations={h: registration(h, h) for h in hosts},
        statuses={h: status(h, now) for h in hosts},
        ec2=read(*(running(f"i-{n}", auto_scaling_group="web-asg", lifecycle_state="InService")
                   for n in range(1, count + 1))),
    )


def _effective_v1() -> State:
    from contract.models import GroupState

    group = GroupState(application="shop", deployment_group="web", desired_revision=bundle(1),
                       effective_revision=bundle(1), updated_at=T0)
    return State(groups={KEY: group})


def _run(manifests: Desired, observed: Observed, state: State, passes: int,
         terminate: dict[int, set[str]] | None = None) -> tuple[State, Observed]:
    now = T0
    for number in range(passes):
        gone = set().union(*(hosts for at, hosts in (terminate or {}).items() if at <= number))
        if gone:
            instances = tuple(
                Ec2Instance(i.instance_id, "shutting-down", auto_scaling_group="web-asg", lifecycle_state="Terminating")
                if i.instance_id in gone else i
                for i in observed.ec2[KEY].instances
            )
            observed = Observed(registrations=observed.registrations, statuses=observed.statuses,
                                ec2={KEY: Ec2Membership(read_at=now, instances=instances)})
        actions = reconcile(manifests, observed, state, now=now, settings=SETTINGS)
        state = apply_actions(state, actions)
        now += timedelta(minutes=5)  # past the heartbeat timeout: a silent host is offline
        alive = [h for h in observed.statuses if h not in gone]
        observed = run_agents(observed, state, now=now, alive=alive)
    return state, observed


def test_one_missing_host_fails_a_one_at_a_time_deployment_at_its_turn() -> None:
    state, _ = _run(desired("{autoScalingGroups: [web-asg]}"), _fleet(5, {5}, T0), _effective_v1(), passes=3)
    deployment = next(iter(state.deployments.values()))
    assert deployment.status is DeploymentStatus.FAILED
    assert deployment.error_code == "HEALTH_CONSTRAINTS_INVALID"
    assert deployment.hosts["i-5"].status is HostDeploymentStatus.FAILED
    assert deployment.hosts["i-5"].message == "host offline: never registered"
    assert all(deployment.hosts[f"i-{n}"].generation is None for n in range(1, 5))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(min_value=2, max_value=7),
    config=st.sampled_from(["CodeDeployDefault.OneAtATime", "CodeDeployDefault.HalfAtATime",
                            "CodeDeployDefault.AllAtOnce"]),
    data=st.data(),
)
def test_scale_in_never_fails_a_host_or_the_deployment(count: int, config: str, data: st.DataObject) -> None:
    """Instances terminated at any pass, pending or in flight, end Skipped with the reason, never Failed (one that
    had already succeeded keeps its success and leaves the count); with
    every agent succeeding, the deployment succeeds (or, if every host left, ends with nothing left to do)."""
    hosts = [f"i-{n}" for n in range(1, count + 1)]
    terminate: dict[int, set[str]] = {}
    for host in data.draw(st.lists(st.sampled_from(hosts), unique=True, max_size=count)):
        terminate.setdefault(data.draw(st.integers(min_value=1, max_value=count + 1)), set()).add(host)
    state, _ = _run(desired("{autoScalingGroups: [web-asg]}", config=config), _fleet(count, set(), T0),
                    _effective_v1(), passes=2 * count + 4, terminate=terminate)
    deployment = next(iter(state.deployments.values()))
    terminated = set().union(*terminate.values()) if terminate else set()
    for host, host_state in deployment.hosts.items():
        assert host_state.status is not HostDeploymentStatus.FAILED, (host, host_state)
        if host_state.left_group is not None:
            assert host in terminated
            assert host_state.status in (HostDeploymentStatus.SKIPPED, HostDeploymentStatus.SUCCEEDED)
    assert deployment.status is DeploymentStatus.SUCCEEDED, deployment.error_message
