"""The proof of issue 16, reconciler side, end to end: five EC2 instances tagged for a group in moto's server mode
(over HTTP), four real agents (`deploy-agent run --host-id <instance id> --instance-id <instance id>`), `reconcile`
as a subprocess reading EC2 with test credentials and AWS_ENDPOINT_URL.

- `reconcile status` shows the fifth instance as missing;
- the first deployment (OneAtATime, nothing installed anywhere) sends v1 to the four agents at once and fails the
  missing host offline, then succeeds: 4 of 5 healthy meets the minimum of N - 1 = 4
  (golden `ec2-missing-host-first-deployment`);
- a OneAtATime deployment of v2 over 4 healthy hosts and the missing one fails the missing host first and then
  itself, HEALTH_CONSTRAINTS_INVALID, before any host gets v2; v2 is quarantined, `--once` exits 4 (no rollback)
  (golden `ec2-missing-host-one-at-a-time-fails`);
- `reconcile plan` lists the missing host with a MISSING_HOSTS warning;
- scale-in: the missing instance is terminated (no longer missing), and one instance terminated during a deployment
  of v3, its agent gone with it, leaves the deployment Skipped with `leftGroup` instead of failing it.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from contract.keys import deployment_key, group_state_key, registration_key
from contract.models import Deployment, DeploymentStatus, GroupState, HostDeploymentStatus
from contract.store import Store, open_store
from tests.chaos.world import Host, make_bundle
from tests.conftest import S3Server
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import BIN, ROOT

pytestmark = pytest.mark.slow

REGION = "us-east-1"
AMI = "ami-12c6146b"  # one of moto's default images

MANIFESTS = """\
apiVersion: deploy/v1
kind: Application
metadata: {{name: shop}}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: web}}
spec:
  application: shop
  revision: {{local: {{path: {path}, bundleType: directory}}}}
  targets:
    ec2TagFilters: [{{key: {tag}, value: shop}}]
    region: {region}
  deploymentConfig: CodeDeployDefault.OneAtATime
  autoRollback: {{enabled: false}}
"""


@dataclass
class Ec2World:
    tmp: Path
    tag: str
    ec2: Any
    instances: list[str]
    hosts: dict[str, Host]
    store: Store
    store_url: str
    env: dict[str, str]
    config: ConfigRepo
    bundles: dict[str, Path]

    @property
    def missing(self) -> str:
        return self.instances[4]

    def reconcile(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), cwd=ROOT, capture_output=True, text=True, timeout=120,
                              check=False, env=self.reconcile_env())

    def command(self, *args: str) -> list[str]:
        return [str(BIN / "reconcile"), "--repo", str(self.config.path), "--ref", "main", "--path", "manifests",
                "--store", self.store_url, *args]

    def reconcile_env(self) -> dict[str, str]:
        """The test's environment (AWS_EC2_METADATA_DISABLED=true among it) with AWS_ENDPOINT_URL and test
        credentials for moto, and fast passes."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSHIFT_")}
        env.update(self.env, FLEETSHIFT_RECONCILE_POLL_INTERVAL="100ms", FLEETSHIFT_RECONCILE_TIMEOUT="60s",
                   FLEETSHIFT_LOGGING_FORMAT="json")
        return env

    def manifests(self, version: str) -> str:
        return MANIFESTS.format(path=self.bundles[version], tag=self.tag, region=REGION)

    def commit(self, version: str) -> None:
        self.config.write("manifests/shop.yaml", self.manifests(version))
        self.config.commit(f"deploy {version}")

    def group(self) -> GroupState:
        stored = self.store.get(group_state_key("shop", "web"))
        assert stored is not None
        return GroupState.model_validate_json(stored.data)

    def deployment(self, deployment_id: str) -> Deployment:
        stored = self.store.get(deployment_key(deployment_id))
        assert stored is not None
        return Deployment.model_validate_json(stored.data)

    def last_deployment(self) -> Deployment:
        return self.deployment(self.group().history[-1])

    def wait(self, condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                logs = {h: host.agent_log.read_text()[-2000:] for h, host in self.hosts.items()
                        if host.agent_log.exists()}
                raise AssertionError(f"timed out waiting for {what}; agent logs: {logs}")
            time.sleep(0.05)


@pytest.fixture
def world(tmp_path: Path, s3_server: S3Server) -> Iterator[Ec2World]:
    tag = f"app-{uuid.uuid4().hex[:8]}"
    ec2 = boto3.client("ec2", endpoint_url=s3_server.endpoint_url, region_name=REGION)
    answer = ec2.run_instances(
        ImageId=AMI, MinCount=5, MaxCount=5, InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": tag, "Value": "shop"}]}],
    )
    instances = sorted(i["InstanceId"] for i in answer["Instances"])
    store_url = f"file://{tmp_path / 'store'}"
    env = s3_server.env()  # AWS_ENDPOINT_URL and test credentials; AWS_EC2_METADATA_DISABLED=true is inherited
    bundles = {version: make_bundle(tmp_path / "bundles" / version, version) for version in ("v1", "v2", "v3")}
    # Four agents, one per instance but the last: their host id is the instance id, as `hostId: auto` makes it.
    hosts = {instance: Host(instance, tmp_path / instance, store_url, env=dict(env),
                            args=["--instance-id", instance]) for instance in instances[:4]}
    store = open_store(store_url)
    built = Ec2World(tmp_path, tag, ec2, instances, hosts, store, store_url, env, ConfigRepo(tmp_path / "config"),
                     bundles)
    try:
        for host in hosts.values():
            host.start()
        built.wait(lambda: all(store.get(registration_key(h)) is not None for h in hosts), "agents registered")
        yield built
    finally:
        for host in hosts.values():
            host.stop()


def test_five_instances_four_agents_missing_host_fails_its_turn_and_scale_in_leaves(world: Ec2World) -> None:
    missing = world.missing
    agents = world.instances[:4]
    world.commit("v1")

    # 1. status, before anything ran: the fifth instance is missing, by EC2's words.
    status = world.reconcile("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "ec2          5 instances expected in us-east-1, 1 missing (no agent registered)" in status.stdout
    assert f"{missing:<20} missing: no agent registered (EC2: running since " in status.stdout

    # 2. The first deployment: nothing installed, every host unhealthy and taking no budget; the four agents get
    # v1 at once, the missing host fails offline, and 4 of 5 healthy meets OneAtATime's minimum of 4.
    first = world.reconcile("--once")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"WARNING: 1 missing host(s): EC2 instance(s) with no agent registered ({missing})" in first.stdout
    deployment = world.last_deployment()
    assert deployment.status is DeploymentStatus.SUCCEEDED
    assert {h: s.status for h, s in deployment.hosts.items()} == {
        **{h: HostDeploymentStatus.SUCCEEDED for h in agents}, missing: HostDeploymentStatus.FAILED}
    assert deployment.hosts[missing].message == "host offline: never registered"
    assert deployment.hosts[missing].dispatched_at is None  # no command for it: nobody would run it

    # 3. OneAtATime to v2: the missing host (unhealthy) goes first and fails; then 4 of 5 healthy is the minimum,
    # no host can be taken out, and the deployment fails before any host gets v2.
    world.commit("v2")
    second = world.reconcile("--once")
    assert second.returncode == 4, second.stdout + second.stderr
    deployment = world.last_deployment()
    assert (deployment.status, deployment.error_code) == (DeploymentStatus.FAILED, "HEALTH_CONSTRAINTS_INVALID")
    assert deployment.error_message == (
        f"the deployment cannot start: 4 of 5 host(s) are healthy and the minimum is 4 (not healthy: {missing}), so "
        f"no healthy host can be updated without going below the minimum")
    assert deployment.hosts[missing].status is HostDeploymentStatus.FAILED
    assert all(deployment.hosts[h].status is HostDeploymentStatus.PENDING for h in agents)
    assert not any(run[1] == deployment.deployment_id for h in agents for run in world.hosts[h].hook_runs())
    assert f"deployment {deployment.deployment_id} of " in second.stdout
    assert "[HEALTH_CONSTRAINTS_INVALID]" in second.stdout
    assert "not rolled back" in second.stdout
    group = world.group()
    assert [q.deployment_id for q in group.quarantined] == [deployment.deployment_id]
    assert group.effective_revision is not None and group.effective_revision.short().endswith("v1")

    # 4. plan: a change to v3 lists the missing host with a warning.
    world.config.repo.git.checkout("-b", "change")
    world.commit("v3")
    plan = world.reconcile("plan", "--base", "main", "--head", "change")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    flat = " ".join(plan.stdout.split())
    warning = f"! shop/web: 1 EC2 instance the group selects has no agent registered (missing): {missing} (running"
    assert warning in flat, plan.stdout
    assert f"missing: {missing}: no agent registered" in flat
    world.config.repo.git.checkout("main")
    world.config.repo.git.merge("change")

    # 5. Scale-in. The missing instance terminates: no longer expected, so no longer missing.
    world.ec2.terminate_instances(InstanceIds=[missing])
    status = world.reconcile("status")
    assert "ec2          4 instances expected in us-east-1, none missing" in status.stdout, status.stdout
    assert "missing: no agent registered" not in status.stdout

    # Then one instance terminates while v3 rolls out one host at a time (its agent dies with it): it leaves the
    # deployment Skipped with leftGroup, and the deployment succeeds over the three that stay.
    # The read that sees it terminated comes at most 15 s later (reads are kept that long, reconciler/shell/fleet.py).
    run = subprocess.Popen(world.command("--once"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=world.reconcile_env())
    try:
        world.wait(lambda: world.group().deployment_in_flight is not None, "the v3 deployment to start")
        flight = world.deployment(world.group().deployment_in_flight or "")
        pending = [h for h in agents if flight.hosts[h].status is HostDeploymentStatus.PENDING]
        assert pending, "OneAtATime leaves hosts pending after its first pass"
        leaving = pending[-1]
        world.hosts[leaving].stop()
        world.ec2.terminate_instances(InstanceIds=[leaving])
        out, err = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, out + err
    deployment = world.deployment(flight.deployment_id)
    assert deployment.status is DeploymentStatus.SUCCEEDED
    left = deployment.hosts[leaving]
    assert left.status is HostDeploymentStatus.SKIPPED
    assert left.left_group is not None and f"instance {leaving} terminated" in left.left_group
    assert "left the group (scale-in), not a failure" in left.left_group
    stayed = [h for h in agents if h != leaving]
    assert all(deployment.hosts[h].status is HostDeploymentStatus.SUCCEEDED for h in stayed)
    assert missing not in deployment.hosts
