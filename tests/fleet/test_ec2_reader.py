"""The EC2 and Auto Scaling reader against moto's server mode over HTTP (issue 16): CodeDeploy's tag filter
semantics, Auto Scaling members with their lifecycle states, terminated instances listed as gone, pagination, and
failures that become an unknown membership in AWS's words instead of an exception."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config

from reconciler.desired.manifests import TargetsSpec
from reconciler.fleet.ec2 import Ec2FleetReader
from tests.conftest import S3Server

NOW = datetime(2025, 1, 1, tzinfo=UTC)
REGION = "us-east-1"
AMI = "ami-12c6146b"  # one of moto's default images


@pytest.fixture
def aws(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    clients = {
        name: boto3.client(name, endpoint_url=s3_server.endpoint_url, region_name=REGION)
        for name in ("ec2", "autoscaling")
    }
    yield clients


def _launch(ec2: Any, count: int, tags: dict[str, str]) -> list[str]:
    answer = ec2.run_instances(
        ImageId=AMI, MinCount=count, MaxCount=count, InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )
    return sorted(i["InstanceId"] for i in answer["Instances"])


def _targets(**fields: Any) -> TargetsSpec:
    return TargetsSpec.model_validate(fields)


def test_ec2_tag_filters_match_any_filter_with_codedeploy_types(aws: dict[str, Any]) -> None:
    run = uuid.uuid4().hex[:8]
    ec2 = aws["ec2"]
    by_pair = _launch(ec2, 2, {f"app-{run}": "shop"})
    by_key = _launch(ec2, 1, {f"canary-{run}": "yes"})
    by_value = _launch(ec2, 1, {"owner": f"team-{run}"})
    _launch(ec2, 1, {f"app-{run}": "other"})
    targets = _targets(ec2TagFilters=[
        {"key": f"app-{run}", "value": "shop"},
        {"key": f"canary-{run}", "type": "KEY_ONLY"},
        {"value": f"team-{run}", "type": "VALUE_ONLY"},
    ])
    read = Ec2FleetReader(REGION).read(targets, NOW)
    assert read.error is None and read.region == REGION
    assert sorted(i.instance_id for i in read.instances) == sorted(by_pair + by_key + by_value)
    first = read.instance(by_pair[0])
    assert first is not None and first.expected and first.state == "running"
    assert first.zone and first.zone.startswith(REGION) and first.private_ip and first.launched_at is not None


def test_ec2_tag_set_needs_every_group_and_one_filter_within_each(aws: dict[str, Any]) -> None:
    run = uuid.uuid4().hex[:8]
    ec2 = aws["ec2"]
    prod = _launch(ec2, 1, {f"app-{run}": "shop", "env": "prod"})
    staging = _launch(ec2, 1, {f"app-{run}": "shop", "env": "staging"})
    _launch(ec2, 1, {f"app-{run}": "shop", "env": "dev"})
    _launch(ec2, 1, {"env": "prod"})
    targets = _targets(ec2TagSet=[
        [{"key": f"app-{run}", "value": "shop"}],
        [{"key": "env", "value": "prod"}, {"key": "env", "value": "staging"}],
    ])
    read = Ec2FleetReader(REGION).read(targets, NOW)
    assert sorted(i.instance_id for i in read.instances) == sorted(prod + staging)


def test_wildcards_in_values_are_literal(aws: dict[str, Any]) -> None:
    run = uuid.uuid4().hex[:8]
    literal = _launch(aws["ec2"], 1, {f"app-{run}": "a*"})
    _launch(aws["ec2"], 1, {f"app-{run}": "abc"})
    read = Ec2FleetReader(REGION).read(_targets(ec2TagFilters=[{"key": f"app-{run}", "value": "a*"}]), NOW)
    assert [i.instance_id for i in read.instances] == literal


def test_terminated_and_stopped_instances(aws: dict[str, Any]) -> None:
    run = uuid.uuid4().hex[:8]
    ec2 = aws["ec2"]
    ids = _launch(ec2, 3, {f"app-{run}": "shop"})
    ec2.terminate_instances(InstanceIds=[ids[0]])
    ec2.stop_instances(InstanceIds=[ids[1]])
    read = Ec2FleetReader(REGION).read(_targets(ec2TagFilters=[{"key": f"app-{run}", "value": "shop"}]), NOW)
    states = {i.instance_id: (i.state, i.expected, i.gone) for i in read.instances}
    # Terminated: listed, gone. Stopped: not asked for (not expected, nothing depends on it). Running: expected.
    assert states == {ids[0]: ("terminated", False, True), ids[2]: ("running", True, False)}


def test_auto_scaling_members_with_lifecycle_states(aws: dict[str, Any]) -> None:
    run = uuid.uuid4().hex[:8]
    autoscaling = aws["autoscaling"]
    name = f"web-asg-{run}"
    autoscaling.create_launch_configuration(LaunchConfigurationName=name, ImageId=AMI, InstanceType="t3.micro")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchConfigurationName=name, MinSize=0, MaxSize=5, DesiredCapacity=3,
        AvailabilityZones=[f"{REGION}a", f"{REGION}b"],
    )
    read = Ec2FleetReader(REGION).read(_targets(autoScalingGroups=[name]), NOW)
    assert read.error is None
    assert len(read.instances) == 3
    assert {(i.auto_scaling_group, i.lifecycle_state, i.expected) for i in read.instances} == {
        (name, "InService", True)
    }
    # Scale-in: moto (like Auto Scaling once termination completes) drops the instance from the group at once, and
    # moto drops its tags too; a look-up by id (for hosts of a deployment in flight) finds it terminated.
    leaving = read.instances[0].instance_id
    autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=leaving, ShouldDecrementDesiredCapacity=True)
    reader = Ec2FleetReader(REGION)
    after = reader.read(_targets(autoScalingGroups=[name]), NOW)
    assert after.instance(leaving) is None
    assert sum(1 for i in after.instances if i.expected) == 2
    looked_up = reader.look_up(after, [leaving, after.instances[0].instance_id])
    gone = looked_up.instance(leaving)
    assert gone is not None and gone.gone and not gone.expected and not gone.selected
    assert len(looked_up.instances) == 3


def test_pagination_of_many_instances(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    run = uuid.uuid4().hex[:8]
    ids = _launch(aws["ec2"], 7, {f"app-{run}": "shop"})
    monkeypatch.setattr("reconciler.fleet.ec2.PAGE_SIZE", 5)
    read = Ec2FleetReader(REGION).read(_targets(ec2TagFilters=[{"key": f"app-{run}", "value": "shop"}]), NOW)
    assert sorted(i.instance_id for i in read.instances) == ids


def test_an_unknown_auto_scaling_group_is_an_unknown_membership(aws: dict[str, Any]) -> None:
    read = Ec2FleetReader(REGION).read(_targets(autoScalingGroups=["no-such-asg"]), NOW)
    assert read.instances == () and read.error is not None
    assert read.error.startswith("autoscaling DescribeAutoScalingGroups: no Auto Scaling group named no-such-asg")


def test_aws_refusals_become_an_unknown_membership_in_aws_words(s3_server: S3Server) -> None:
    """Access denied, throttled, unreachable: never an exception out of the reader."""

    class Refusing:
        def get_paginator(self, name: str) -> Any:
            from botocore.exceptions import ClientError

            class Pages:
                def paginate(self, **_: Any) -> Any:
                    raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized"},
                                       "ResponseMetadata": {"HTTPStatusCode": 403}}, "DescribeInstances")

            return Pages()

    read = Ec2FleetReader(REGION, ec2=Refusing()).read(_targets(ec2TagFilters=[{"key": "a", "value": "b"}]), NOW)
    assert read.error == "ec2 DescribeInstances: UnauthorizedOperation: You are not authorized"
    unreachable = boto3.client("ec2", endpoint_url="http://127.0.0.1:9", region_name=REGION,
                               config=Config(retries={"total_max_attempts": 1}, connect_timeout=0.5))
    read = Ec2FleetReader(REGION, ec2=unreachable).read(_targets(ec2TagFilters=[{"key": "a", "value": "b"}]), NOW)
    assert read.error is not None and read.error.startswith("ec2 DescribeInstances: unreachable: ")


def test_no_credentials_is_an_unknown_membership(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    read = Ec2FleetReader(REGION).read(_targets(ec2TagFilters=[{"key": "a", "value": "b"}]), NOW)
    assert read.error is not None and "credentials" in read.error.lower()


def test_the_iam_policies_grant_exactly_the_calls_the_reader_makes(aws: dict[str, Any], s3_server: S3Server) -> None:
    """examples/iam: the EC2 and Auto Scaling actions of the reconciler's and plan's policies are the calls made."""
    import json
    from pathlib import Path

    made: set[str] = set()
    clients = {}
    for service, prefix in (("ec2", "ec2"), ("autoscaling", "autoscaling")):
        client = boto3.client(service, endpoint_url=s3_server.endpoint_url, region_name=REGION)
        client.meta.events.register(
            "before-call.*.*", lambda model, _prefix=prefix, **_: made.add(f"{_prefix}:{model.name}")
        )
        clients[service] = client
    run = uuid.uuid4().hex[:8]
    name = f"iam-asg-{run}"
    aws["autoscaling"].create_launch_configuration(LaunchConfigurationName=name, ImageId=AMI, InstanceType="t3.micro")
    aws["autoscaling"].create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName=name, MinSize=0,
                                                 MaxSize=2, DesiredCapacity=1, AvailabilityZones=[f"{REGION}a"])
    reader = Ec2FleetReader(REGION, ec2=clients["ec2"], autoscaling=clients["autoscaling"])
    targets = _targets(ec2TagFilters=[{"key": f"app-{run}", "value": "x"}], autoScalingGroups=[name])
    reader.look_up(reader.read(targets, NOW), ["i-00000000000000000"])
    root = Path(__file__).resolve().parents[2] / "examples" / "iam"
    for policy in ("reconciler-policy.json", "plan-policy.json"):
        statements = json.loads((root / policy).read_text())["Statement"]
        # The read calls; the reconciler's two lifecycle writes are checked in test_lifecycle_shell.py.
        granted = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
                   if a.startswith(("ec2:", "autoscaling:")) and ":Describe" in a}
        assert granted == made, policy
