"""Fixtures for the load balancer providers.

ELBv2 runs against the session's moto server (tests/conftest.py `s3_server`: moto serves every AWS service on
one port), reached over HTTP through boto3's own endpoint variable, as a user's reconciler would reach a
custom endpoint. Each test gets its own VPC, target groups and instances, so tests share the server, not state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import S3Server

#: Any AMI: moto does not boot it, but run_instances wants an id it knows.
AMI_ID = "ami-12c6146b"


@dataclass
class Elbv2World:
    endpoint_url: str
    ec2: Any
    elbv2: Any
    vpc_id: str
    subnet_id: str
    created_groups: list[str] = field(default_factory=list)
    created_instances: list[str] = field(default_factory=list)

    def target_group(self, *, target_type: str = "instance", port: int = 80) -> tuple[str, str]:
        """A fresh target group: (name, arn). Names are unique per test (at most 32 characters)."""
        name = f"tg-{target_type}-{uuid.uuid4().hex[:12]}"
        created = self.elbv2.create_target_group(
            Name=name, Protocol="HTTP", Port=port, VpcId=self.vpc_id, TargetType=target_type
        )
        arn = created["TargetGroups"][0]["TargetGroupArn"]
        self.created_groups.append(arn)
        return name, arn

    def instances(self, count: int) -> list[str]:
        """Running EC2 instances in the VPC: what instance targets stand for."""
        answer = self.ec2.run_instances(ImageId=AMI_ID, MinCount=count, MaxCount=count, SubnetId=self.subnet_id)
        ids = [instance["InstanceId"] for instance in answer["Instances"]]
        self.created_instances.extend(ids)
        return ids

    def health(self, arn: str, targets: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """describe_target_health through a client of the test's own: target id -> TargetHealth."""
        query: dict[str, Any] = {"TargetGroupArn": arn}
        if targets is not None:
            query["Targets"] = targets
        answer = self.elbv2.describe_target_health(**query)
        return {d["Target"]["Id"]: d["TargetHealth"] for d in answer["TargetHealthDescriptions"]}

    def registered(self, arn: str) -> set[str]:
        """Target ids currently registered (describe_target_health without Targets lists exactly those)."""
        return set(self.health(arn))


@pytest.fixture
def elbv2_world(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Elbv2World]:
    import boto3

    # The balancer builds its own client: boto3's service-specific endpoint variable points it at moto.
    monkeypatch.setenv("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    kwargs: dict[str, Any] = {
        "endpoint_url": s3_server.endpoint_url,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    ec2 = boto3.client("ec2", **kwargs)
    elbv2 = boto3.client("elbv2", **kwargs)
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24", AvailabilityZone="us-east-1a")["Subnet"][
        "SubnetId"
    ]
    world = Elbv2World(s3_server.endpoint_url, ec2, elbv2, vpc_id, subnet_id)
    try:
        yield world
    finally:
        for arn in world.created_groups:
            elbv2.delete_target_group(TargetGroupArn=arn)
        if world.created_instances:
            ec2.terminate_instances(InstanceIds=world.created_instances)
        ec2.close()
        elbv2.close()
