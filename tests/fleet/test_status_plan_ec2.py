"""`reconcile status` and `reconcile plan` for a group whose targets name EC2 (issue 16), through the real CLI entry
point, against moto's server mode over HTTP: a missing host (an instance EC2 lists with no agent registered) shown
as such, an agent claiming an instance EC2 lists as terminated flagged, an AWS read that fails shown as a warning in
AWS's words (never a traceback, never a failed command), and the plan's MISSING_HOSTS and EC2_NOT_READ warnings in
text, Markdown and JSON."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog

from contract.keys import registration_key, status_key
from contract.models import HostRegistration, HostStatus
from contract.store import open_store
from reconciler.cli.main import main
from tests.conftest import S3Server
from tests.gitrepo import ConfigRepo

REGION = "us-east-1"
AMI = "ami-12c6146b"  # one of moto's default images

APPLICATION = """\
apiVersion: deploy/v1
kind: Application
metadata: {name: shop}
"""

GROUP = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: web}}
spec:
  application: shop
  revision: {{local: {{path: bundles/v{version}.zip, bundleType: zip}}}}
  targets:
{targets}
  deploymentConfig: CodeDeployDefault.OneAtATime
"""


class World:
    """Three instances tagged for the group in moto (two with an agent registered under their instance id, one
    missing), a terminated one an agent still claims, a file store, and a config repo at v1 on `main`."""

    def __init__(self, tmp_path: Path, endpoint: str) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.tag = f"app-{self.run}"
        self.ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION)
        answer = self.ec2.run_instances(
            ImageId=AMI, MinCount=4, MaxCount=4, InstanceType="t3.micro",
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": self.tag, "Value": "shop"}]}],
        )
        ids = sorted(i["InstanceId"] for i in answer["Instances"])
        self.agents, self.missing, self.terminated = ids[:2], ids[2], ids[3]
        self.ec2.terminate_instances(InstanceIds=[self.terminated])
        self.store_url = f"file://{tmp_path / 'store'}"
        store = open_store(self.store_url)
        now = datetime.now(UTC)
        for host, instance in [(i, i) for i in self.agents] + [("ghost", self.terminated)]:
            store.put(registration_key(host), HostRegistration(
                host_id=host, tags={self.tag: "shop"}, instance_id=instance, platform="linux", hostname=host,
                agent_version="test", registered_at=now - timedelta(hours=1)).to_json())
            store.put(status_key(host), HostStatus(host_id=host, heartbeat_at=now, agent_version="test").to_json())
        self.config = ConfigRepo(tmp_path / "config")
        self.config.write("manifests/application.yaml", APPLICATION)
        self.set_group(1)

    def targets(self, asg: str | None = None) -> str:
        if asg is not None:
            return f"    autoScalingGroups: [{asg}]\n    region: {REGION}"
        return f"    ec2TagFilters: [{{key: {self.tag}, value: shop}}]\n    region: {REGION}"

    def set_group(self, version: int, targets: str | None = None) -> str:
        self.config.write("manifests/web.yaml", GROUP.format(version=version, targets=targets or self.targets()))
        return self.config.commit(f"v{version}")

    def cli(self, *args: str) -> int:
        return main(["--repo", str(self.config.path), "--ref", "main", "--path", "manifests",
                     "--store", self.store_url, *args])


@pytest.fixture
def world(tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # `main` points structlog at the stderr of the moment, which pytest closes after each test.
    structlog.reset_defaults()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("FLEETSHIFT_LOGGING_FORMAT", "json")
    yield World(tmp_path, s3_server.endpoint_url)
    structlog.reset_defaults()


def test_status_shows_the_missing_host_and_flags_an_agent_claiming_a_terminated_instance(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.cli("status") == 0
    text = capsys.readouterr().out
    assert f"ec2          3 instances expected in {REGION}, 1 missing (no agent registered)" in text
    assert f"{world.missing:<20} missing: no agent registered (EC2: running since " in text
    assert f"in {REGION}" in text.split(world.missing, 1)[1].splitlines()[0]
    assert (f"WARNING: agent ghost registered as instance {world.terminated}, which EC2 lists as terminated"
            in text)
    host_lines = [line for line in text.splitlines() if line.startswith(f"    {world.missing} ")]
    assert any(" missing " in line for line in host_lines)
    assert "hosts        3 (2 online" in text  # the two agents and the missing host; not the flagged ghost

    assert world.cli("status", "web", "--format", "json") == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    ec2 = group["ec2"]
    assert (ec2["region"], ec2["error"], ec2["expected"]) == (REGION, None, 3)
    assert [m["instanceId"] for m in ec2["missing"]] == [world.missing]
    assert ec2["missing"][0]["state"] == "running" and ec2["missing"][0]["zone"].startswith(REGION)
    (flagged,) = ec2["flagged"]
    assert flagged["host"] == "ghost"
    assert flagged["reason"].startswith(f"registered as instance {world.terminated}, which EC2 lists as terminated")
    hosts = {h["host"]: h for h in group["hosts"]}
    assert set(hosts) == {*world.agents, world.missing}
    assert hosts[world.missing]["missing"].startswith("running since ")
    assert hosts[world.agents[0]]["missing"] is None


def test_status_shows_an_aws_read_error_as_a_warning_and_the_store_view(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.set_group(1, world.targets(asg=f"no-such-asg-{world.run}"))
    assert world.cli("status") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert (f"WARNING: EC2 membership unknown in {REGION} (autoscaling DescribeAutoScalingGroups: no Auto Scaling "
            f"group named no-such-asg-{world.run} in {REGION})") in captured.out
    assert "missing: no agent registered" not in captured.out
    assert "hosts        0" in captured.out  # no agent reports aws:autoscaling:groupName for it

    assert world.cli("status", "--format", "json") == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert "no Auto Scaling group named" in group["ec2"]["error"]
    assert group["ec2"]["missing"] == [] and group["ec2"]["flagged"] == []


def _plan(world: World, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = world.cli("plan", "--base", "main", "--head", "change", *args)
    return code, capsys.readouterr().out


def test_plan_lists_the_missing_host_with_a_warning_in_every_format(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.config.repo.git.checkout("-b", "change")
    world.set_group(2)

    code, text = _plan(world, capsys)
    assert code == 2
    assert f"ec2: 3 instances expected in {REGION}, 1 missing" in text
    assert f"missing: {world.missing}: no agent registered (EC2: running since " in text
    assert (f"web: 1 EC2 instance the group selects has no agent registered (missing): {world.missing} (running "
            in " ".join(text.split()))
    assert f"selector: EC2 tags {world.tag}=shop in {REGION}" in text

    code, markdown = _plan(world, capsys, "--format", "markdown")
    assert code == 2 and "no agent registered (missing)" in markdown and world.missing in markdown

    code, raw = _plan(world, capsys, "--format", "json")
    plan: dict[str, Any] = json.loads(raw)
    (rollout,) = plan["rollouts"]
    assert rollout["ec2"]["read"] is True and rollout["ec2"]["expected"] == 3
    assert [m["instanceId"] for m in rollout["ec2"]["missing"]] == [world.missing]
    assert world.missing in rollout["targetHosts"] and world.missing in rollout["offlineHosts"]
    codes = [w["code"] for w in plan["warnings"]]
    assert "MISSING_HOSTS" in codes and "EC2_NOT_READ" not in codes


def test_plan_offline_or_without_aws_says_ec2_membership_not_read(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.config.repo.git.checkout("-b", "change")
    world.set_group(2)

    code, text = _plan(world, capsys, "--offline")
    assert code == 2
    assert "EC2 membership not read (offline: without the store, instances cannot be matched with agents)" in text
    assert "hosts: unknown offline" in text

    # No credentials anywhere in the chain: a warning in AWS's words, the plan still made.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(world.config.path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(world.config.path / "no-config"))
    code, raw = _plan(world, capsys, "--format", "json")
    assert code == 2
    plan = json.loads(raw)
    (warning,) = [w for w in plan["warnings"] if w["code"] == "EC2_NOT_READ"]
    assert warning["message"].startswith("EC2 membership not read (ec2 DescribeInstances: ")
    assert "credentials" in warning["message"].lower()
    assert plan["rollouts"][0]["ec2"] == {"read": False, "region": REGION, "error": warning["message"].split(
        "EC2 membership not read (", 1)[1].split("): missing hosts", 1)[0], "expected": None, "missing": []}
