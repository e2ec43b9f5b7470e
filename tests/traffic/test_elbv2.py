"""TargetGroupBalancer against moto's ELBv2 over HTTP (tests/traffic/conftest.py), checked through a boto3 client
of the test's own: what the balancer says it did must be what the target group shows.

moto registers targets `healthy` at once and deregisters them at once (reconciler/traffic/elbv2.py, "Against
moto"), so the states it cannot produce (`initial`, `unhealthy`, `unavailable`, ...) are fed to a real elbv2
client through botocore's Stubber, which checks each answer against the service's own model.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from reconciler.core.observed import TargetState
from reconciler.desired.traffic_spec import TargetGroupSpec
from reconciler.traffic.base import HostEndpoint, LoadBalancer, TrafficError
from reconciler.traffic.elbv2 import TargetGroupBalancer
from tests.traffic.conftest import Elbv2World


def _host(host_id: str, *, instance_id: str | None = None, address: str | None = None) -> HostEndpoint:
    return HostEndpoint(host_id=host_id, instance_id=instance_id, address=address)


def test_it_is_a_load_balancer(elbv2_world: Elbv2World) -> None:
    name, _ = elbv2_world.target_group()
    balancer: LoadBalancer = TargetGroupBalancer(TargetGroupSpec(name=name))
    assert balancer.name == f"target group {name}"


def test_observe_maps_each_target_health_state_in_one_pass(elbv2_world: Elbv2World) -> None:
    name, arn = elbv2_world.target_group()
    serving, unregistered, terminated, stopped = elbv2_world.instances(4)
    elbv2_world.elbv2.register_targets(
        TargetGroupArn=arn, Targets=[{"Id": i, "Port": 80} for i in (serving, terminated, stopped)]
    )
    # moto's only draining target: an instance terminated while registered. A stopped one reads `unused`.
    elbv2_world.ec2.terminate_instances(InstanceIds=[terminated])
    elbv2_world.ec2.stop_instances(InstanceIds=[stopped])
    balancer = TargetGroupBalancer(TargetGroupSpec(name=name))
    hosts = [
        _host("web-1", instance_id=serving),
        _host("web-2", instance_id=unregistered),
        _host("web-3", instance_id=terminated),
        _host("web-4", instance_id=stopped),
    ]

    seen = balancer.observe(hosts)

    assert {host: obs.state for host, obs in seen.items()} == {
        "web-1": TargetState.IN_SERVICE,
        "web-2": TargetState.OUT_OF_SERVICE,
        "web-3": TargetState.DRAINING,
        "web-4": TargetState.OUT_OF_SERVICE,
    }
    assert seen["web-1"].detail == f"target group {name} {serving}:80: healthy"
    assert seen["web-2"].detail == (
        f"target group {name} {unregistered}:80: unused "
        "(Target.NotRegistered: Target is not registered to the target group)"
    )
    assert "draining (Target.DeregistrationInProgress" in seen["web-3"].detail
    assert "unused (Target.InvalidState" in seen["web-4"].detail
    assert all(obs.error is None and obs.sessions is None for obs in seen.values())
    assert balancer.observe([]) == {}
    balancer.close()


def test_block_deregisters_and_allow_registers_both_idempotent(elbv2_world: Elbv2World) -> None:
    name, arn = elbv2_world.target_group()
    (instance,) = elbv2_world.instances(1)
    host = _host("web-1", instance_id=instance)
    balancer = TargetGroupBalancer(TargetGroupSpec(name=name))

    assert "registered" in balancer.allow(host)
    assert elbv2_world.registered(arn) == {instance}
    balancer.allow(host)  # again: still one target, no error
    assert elbv2_world.registered(arn) == {instance}
    assert balancer.observe([host])["web-1"].state is TargetState.IN_SERVICE

    said = balancer.block(host)
    assert said.startswith(f"elbv2 deregister_targets target group {name} {instance}:80: deregistering")
    assert "300s" in said  # the group's deregistration delay
    assert elbv2_world.registered(arn) == set()
    # moto refuses to deregister what is not registered (InvalidTarget); the balancer sees the target is out.
    assert "not registered, nothing to do" in balancer.block(host)
    assert balancer.observe([host])["web-1"].state is TargetState.OUT_OF_SERVICE
    assert "nothing to do" in balancer.finish_block(host)

    balancer.allow(host)
    assert elbv2_world.health(arn)[instance] == {"State": "healthy"}


def test_ip_targets_use_the_address_and_the_manifest_port(elbv2_world: Elbv2World) -> None:
    name, arn = elbv2_world.target_group(target_type="ip", port=8080)
    on_group_port = TargetGroupBalancer(TargetGroupSpec(name=name))
    on_own_port = TargetGroupBalancer(TargetGroupSpec(name=name, port=9090))
    host = _host("web-1", address="10.0.1.5", instance_id="i-0123456789abcdef0")

    assert on_group_port.target_name(host) == "10.0.1.5:8080"
    assert on_own_port.target_name(host) == "10.0.1.5:9090"
    on_own_port.allow(host)
    answer = elbv2_world.elbv2.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    assert [d["Target"] for d in answer] == [{"Id": "10.0.1.5", "Port": 9090}]
    assert on_own_port.observe([host])["web-1"].state is TargetState.IN_SERVICE
    # Not registered: moto answers `unavailable` for an ip target (AWS: `unused`); the reason decides.
    other = _host("web-2", address="10.0.1.6")
    seen = on_own_port.observe([other])["web-2"]
    assert seen.state is TargetState.OUT_OF_SERVICE
    assert "Target.NotRegistered" in seen.detail


def test_a_host_without_the_needed_identity_is_refused_with_the_agent_yaml_field(elbv2_world: Elbv2World) -> None:
    instance_group, _ = elbv2_world.target_group()
    ip_group, _ = elbv2_world.target_group(target_type="ip")
    (instance,) = elbv2_world.instances(1)
    by_instance = TargetGroupBalancer(TargetGroupSpec(name=instance_group))
    by_ip = TargetGroupBalancer(TargetGroupSpec(name=ip_group))
    no_instance = _host("web-1", address="10.0.1.5")
    no_address = _host("web-2", instance_id=instance)

    for call in (by_instance.target_name, by_instance.block, by_instance.allow):
        with pytest.raises(TrafficError, match=r"host web-1 registered no instance id: set `instanceId` in its agent"):
            call(no_instance)
    for call in (by_ip.target_name, by_ip.block, by_ip.allow):
        with pytest.raises(TrafficError, match=r"host web-2 registered no address: set `address` in its agent\.yaml"):
            call(no_address)
    # observe: the unmappable host is Unknown, the others are still read.
    seen = by_instance.observe([no_instance, no_address])
    assert seen["web-1"].state is TargetState.UNKNOWN
    assert seen["web-1"].error is not None and "instanceId" in seen["web-1"].error
    assert seen["web-2"].state is TargetState.OUT_OF_SERVICE


def test_an_unknown_target_group_is_named_with_aws_answer(elbv2_world: Elbv2World) -> None:
    balancer = TargetGroupBalancer(TargetGroupSpec(name="no-such-tg"))
    host = _host("web-1", instance_id="i-0123456789abcdef0")

    seen = balancer.observe([host, _host("web-2", instance_id="i-0123456789abcdef1")])

    assert {obs.state for obs in seen.values()} == {TargetState.UNKNOWN}
    error = seen["web-1"].error
    assert error == (
        "elbv2 describe_target_groups no-such-tg for target group no-such-tg: "
        "TargetGroupNotFound: One or more target groups not found"
    )
    with pytest.raises(TrafficError, match=r"no-such-tg.*TargetGroupNotFound: One or more target groups not found"):
        balancer.block(host)
    with pytest.raises(TrafficError, match="TargetGroupNotFound"):
        balancer.allow(host)
    assert balancer.drain_hint_seconds() is None


def test_a_group_given_by_arn_is_named_by_its_name_region_and_account(elbv2_world: Elbv2World) -> None:
    name, arn = elbv2_world.target_group()
    (instance,) = elbv2_world.instances(1)
    balancer = TargetGroupBalancer(TargetGroupSpec(arn=arn))

    assert balancer.name == f"target group {name} (us-east-1, 123456789012)"
    balancer.allow(_host("web-1", instance_id=instance))
    assert elbv2_world.registered(arn) == {instance}


def test_aws_refusals_name_the_call_the_group_the_target_and_aws_words(elbv2_world: Elbv2World) -> None:
    name, _ = elbv2_world.target_group()
    (instance,) = elbv2_world.instances(1)
    elbv2_world.ec2.stop_instances(InstanceIds=[instance])
    balancer = TargetGroupBalancer(TargetGroupSpec(name=name))

    with pytest.raises(TrafficError) as refused:
        balancer.allow(_host("web-1", instance_id=instance))

    assert str(refused.value) == (
        f"elbv2 register_targets on target group {name}, target {instance}:80: InvalidTarget: "
        f"The following targets are not in a running state and cannot be registered: '{instance}'"
    )


def test_drain_hint_is_the_deregistration_delay(elbv2_world: Elbv2World) -> None:
    name, arn = elbv2_world.target_group()
    assert TargetGroupBalancer(TargetGroupSpec(name=name)).drain_hint_seconds() == 300.0
    elbv2_world.elbv2.modify_target_group_attributes(
        TargetGroupArn=arn, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "42"}]
    )
    assert TargetGroupBalancer(TargetGroupSpec(name=name)).drain_hint_seconds() == 42.0


def test_many_hosts_are_read_in_chunks_and_all_answered(elbv2_world: Elbv2World) -> None:
    name, arn = elbv2_world.target_group(target_type="ip", port=8080)
    addresses = [f"10.0.{n // 200}.{n % 200 + 1}" for n in range(250)]
    registered = addresses[::2]
    elbv2_world.elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": a, "Port": 8080} for a in registered])
    hosts = [_host(f"web-{n}", address=a) for n, a in enumerate(addresses)]

    seen = TargetGroupBalancer(TargetGroupSpec(name=name)).observe(hosts)

    assert len(seen) == 250
    assert [seen[f"web-{n}"].state for n in range(4)] == [
        TargetState.IN_SERVICE,
        TargetState.OUT_OF_SERVICE,
        TargetState.IN_SERVICE,
        TargetState.OUT_OF_SERVICE,
    ]
    assert sum(obs.state is TargetState.IN_SERVICE for obs in seen.values()) == 125


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_api_is_unknown_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    balancer = TargetGroupBalancer(TargetGroupSpec(name="web-tg", region="eu-west-1"))
    host = _host("web-1", instance_id="i-0123456789abcdef0")

    started = time.monotonic()
    seen = balancer.observe([host])
    took = time.monotonic() - started

    assert took < 10, f"observe took {took:.1f}s against a closed port"
    assert seen["web-1"].state is TargetState.UNKNOWN
    assert seen["web-1"].error == (
        "elbv2 describe_target_groups web-tg for target group web-tg (eu-west-1): "
        f'unreachable: Could not connect to the endpoint URL: "{endpoint}/"'
    )
    with pytest.raises(TrafficError, match="unreachable: Could not connect"):
        balancer.block(host)
    assert balancer.drain_hint_seconds() is None
    balancer.close()


# -- states moto never reports, through botocore's Stubber (answers checked against the elbv2 model) ----------


def _stubbed(health: list[dict[str, Any]]) -> tuple[TargetGroupBalancer, Any]:
    import boto3
    from botocore.stub import Stubber

    client = boto3.client(
        "elbv2", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    stubber = Stubber(client)
    arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-tg/6d0ecf831eec9f09"
    stubber.add_response(
        "describe_target_groups",
        {"TargetGroups": [{"TargetGroupArn": arn, "TargetGroupName": "web-tg", "Port": 80, "TargetType": "instance"}]},
        {"Names": ["web-tg"]},
    )
    stubber.add_response(
        "describe_target_group_attributes",
        {"Attributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "30"}]},
    )
    stubber.add_response("describe_target_health", {"TargetHealthDescriptions": health})
    stubber.activate()
    return TargetGroupBalancer(TargetGroupSpec(name="web-tg"), client=client), stubber


def test_states_moto_never_reports() -> None:
    answers = {
        "i-1": ("initial", "Elb.RegistrationInProgress", TargetState.STARTING),
        "i-2": ("unhealthy", "Target.ResponseCodeMismatch", TargetState.STARTING),
        "i-3": ("unavailable", "Target.HealthCheckDisabled", TargetState.IN_SERVICE),
        "i-4": ("unhealthy.draining", "Target.DeregistrationInProgress", TargetState.DRAINING),
        "i-5": ("unused", "Target.NotInUse", TargetState.OUT_OF_SERVICE),
    }
    health = [
        {"Target": {"Id": tid, "Port": 80}, "TargetHealth": {"State": state, "Reason": reason}}
        for tid, (state, reason, _) in answers.items()
    ]  # i-6 is left out of the answer: not a target at all.
    balancer, stubber = _stubbed(health)
    hosts = [_host(f"web-{n}", instance_id=f"i-{n}") for n in range(1, 7)]

    seen = balancer.observe(hosts)

    assert {host: obs.state for host, obs in seen.items()} == {
        **{f"web-{tid[2:]}": expected for tid, (_, _, expected) in answers.items()},
        "web-6": TargetState.OUT_OF_SERVICE,
    }
    assert seen["web-2"].detail == "target group web-tg i-2:80: unhealthy (Target.ResponseCodeMismatch)"
    assert "not in describe_target_health's answer" in seen["web-6"].detail
    assert balancer.drain_hint_seconds() == 30.0
    stubber.assert_no_pending_responses()


def test_a_group_made_again_under_the_same_name_is_found_again(elbv2_world: Elbv2World) -> None:
    name, arn = elbv2_world.target_group()
    (instance,) = elbv2_world.instances(1)
    host = _host("web-1", instance_id=instance)
    balancer = TargetGroupBalancer(TargetGroupSpec(name=name))
    balancer.allow(host)
    elbv2_world.elbv2.delete_target_group(TargetGroupArn=arn)
    elbv2_world.created_groups.remove(arn)
    again = elbv2_world.elbv2.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=elbv2_world.vpc_id)
    elbv2_world.created_groups.append(again["TargetGroups"][0]["TargetGroupArn"])

    gone = balancer.observe([host])["web-1"]
    assert gone.state is TargetState.UNKNOWN
    assert gone.error is not None and "TargetGroupNotFound" in gone.error
    # The next pass looks the name up again and reads the new group, where the host is not registered yet.
    assert balancer.observe([host])["web-1"].state is TargetState.OUT_OF_SERVICE
