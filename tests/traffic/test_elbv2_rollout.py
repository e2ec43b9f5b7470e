"""Rollouts behind an ELBv2 target group, end to end: four real `deploy-agent run` processes with EC2 instance
ids, `reconcile --once` as a subprocess, and moto's ELBv2 over HTTP (tests/traffic/conftest.py).

The unit tests of the provider (test_elbv2.py) show that one call does the right thing; these show the calls
come in the right order for a whole rollout, as someone looking at the target group would see it. The target
group is watched from outside, through a boto3 client of the test's own polling `describe_target_health`
every few tens of milliseconds, never through fleetshift's balancer: what counts is what the load balancer
saw, not what the reconciler believes it did.

moto deregisters at once and registers `healthy` at once (reconciler/traffic/elbv2.py, "Against moto"), so a
target's presence in `describe_target_health` is its whole state: absent is out of rotation, present is in.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from contract.exitcodes import ExitCode
from fleetlab.fleet import TrafficFleet
from tests.conftest import require_tool
from tests.traffic.conftest import Elbv2World

pytestmark = pytest.mark.slow

ONE = "CodeDeployDefault.OneAtATime"
HALF = "CodeDeployDefault.HalfAtATime"
HOSTS = 4
#: How often the watcher asks the target group; far shorter than a host's time out of rotation (seconds).
POLL = 0.025


# -- watching the target group from outside --------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One describe_target_health answer: when it was asked, when it came back, and who was registered."""

    sent: float
    received: float
    health: dict[str, str]

    @property
    def registered(self) -> frozenset[str]:
        return frozenset(self.health)


@dataclass
class TargetWatch:
    """Polls a target group in a thread of its own and keeps every answer, so a test can replay the rollout."""

    world: Elbv2World
    arn: str
    instances: list[str]
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> TargetWatch:
        import boto3

        # Its own client: the fixture's is used by the test's thread at the same time.
        self._client = boto3.client("elbv2", endpoint_url=self.world.endpoint_url, region_name="us-east-1",
                                    aws_access_key_id="testing", aws_secret_access_key="testing")
        self._sample()
        self._thread = threading.Thread(target=self._run, name="target-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sample()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self._sample()
            except Exception as exc:  # recorded, and failed on by the test: a gap would hide transitions
                self.errors.append(repr(exc))

    def _sample(self) -> None:
        sent = time.time()
        answer = self._client.describe_target_health(TargetGroupArn=self.arn)
        received = time.time()
        health: dict[str, str] = {
            d["Target"]["Id"]: str(d["TargetHealth"]["State"]) for d in answer["TargetHealthDescriptions"]
        }
        self.samples.append(Sample(sent, received, health))

    def wait_for(self, predicate: Callable[[Sample], bool], timeout: float = 60.0) -> Sample:
        """The first new sample for which `predicate(sample)` holds."""
        start = len(self.samples)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sample in self.samples[start:]:
                if predicate(sample):
                    return sample
            time.sleep(POLL / 2)
        raise AssertionError(f"no sample of the target group matched within {timeout}s")

    # -- what the samples show -------------------------------------------------------------------------------

    def transitions(self, instance: str) -> list[tuple[str, Sample, Sample]]:
        """("deregistered" | "registered", last sample before the change, first sample after it)."""
        found: list[tuple[str, Sample, Sample]] = []
        for before, after in zip(self.samples, self.samples[1:], strict=False):
            was, now = instance in before.registered, instance in after.registered
            if was and not now:
                found.append(("deregistered", before, after))
            elif now and not was:
                found.append(("registered", before, after))
        return found

    def most_out_at_once(self) -> int:
        return max(len(set(self.instances) - sample.registered) for sample in self.samples)

    def out_together(self) -> list[frozenset[str]]:
        """Instances whose times out of rotation overlap, grouped: what a batch looks like from the outside."""
        groups: list[set[str]] = []
        current: set[str] = set()
        for sample in self.samples:
            out = set(self.instances) - sample.registered
            if out:
                current |= out
            elif current:
                groups.append(current)
                current = set()
        if current:
            groups.append(current)
        return [frozenset(group) for group in groups]


# -- the fleet -------------------------------------------------------------------------------------------------


@dataclass
class ElbFleet:
    """The local fleet and the target group its hosts' instances are registered in, with the reads the tests
    judge by: the store's documents as the agents and the reconciler wrote them, and the target group."""

    fleet: TrafficFleet
    world: Elbv2World
    name: str
    arn: str
    #: host id -> the EC2 instance id its agent was given (`--instance-id`).
    instance_of: dict[str, str]

    def traffic(self, name: str | None = None, *, region: str = "us-east-1") -> str:
        """The group's trafficControl block. drainTimeout is short because moto never drains anyway."""
        return (
            "  trafficControl:\n"
            "    drainTimeout: 2s\n"
            "    healthyTimeout: 30s\n"
            "    loadBalancers:\n"
            "      - targetGroup:\n"
            f"          name: {name or self.name}\n"
            f"          region: {region}\n"
        )

    def watch(self) -> TargetWatch:
        return TargetWatch(self.world, self.arn, list(self.instance_of.values()))

    def status(self, host: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.fleet.workdir / "store" / "hosts" / host / "status.json").read_text())
        return loaded

    def events(self, host: str) -> dict[str, dict[str, Any]]:
        return {event["name"]: event for event in self.status(host)["command"]["events"]}

    def deployments(self) -> list[dict[str, Any]]:
        found = [json.loads(p.read_text()) for p in (self.fleet.workdir / "store" / "deployments").glob("*.json")]
        return sorted(found, key=lambda d: str(d["createdAt"]))

    def registered(self) -> dict[str, dict[str, Any]]:
        """Target id -> TargetHealth, read now through the test's own client."""
        return self.world.health(self.arn)


@pytest.fixture
def elb_fleet(elbv2_world: Elbv2World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ElbFleet]:
    require_tool("haproxy", "haproxy")
    # `reconcile --once` runs as a subprocess with this environment: moto's endpoint for ELBv2 only (the store is
    # a folder), a region, and credentials that moto accepts and nothing else would.
    monkeypatch.setenv("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", elbv2_world.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    instances = elbv2_world.instances(HOSTS)
    name, arn = elbv2_world.target_group()
    elbv2_world.elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": i, "Port": 80} for i in instances])
    instance_of = {f"host-{n}": instance for n, instance in enumerate(instances, start=1)}
    fleet = TrafficFleet(tmp_path / "fleet", count=HOSTS, instance_ids=instance_of)
    try:
        fleet.start()
        yield ElbFleet(fleet, elbv2_world, name, arn, instance_of)
    finally:
        fleet.stop()


def _served_version(fleet: TrafficFleet, host_id: str) -> str:
    """The version the host's hello app answers with, asked directly (not through any load balancer)."""
    [host] = [h for h in fleet.hosts if h.host_id == host_id]
    with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/", timeout=5) as response:
        return str(json.loads(response.read())["version"])


def _iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _assert_rollout(elb: ElbFleet, watch: TargetWatch) -> None:
    """What every successful rollout must look like from the target group and from the agents."""
    assert not watch.errors, watch.errors
    for host, instance in elb.instance_of.items():
        seen = watch.transitions(instance)
        assert [kind for kind, _, _ in seen] == ["deregistered", "registered"], (host, seen)
        (_, last_in, _), (_, _, first_back) = seen
        events = elb.events(host)
        # Out before anything on the host stopped, back only after the new revision passed ValidateService: the
        # last sample that still showed it registered was asked before ApplicationStop began, and the first
        # one that showed it back came after ValidateService ended.
        assert last_in.sent < _iso(events["ApplicationStop"]["startedAt"]), (host, events["ApplicationStop"])
        assert first_back.received > _iso(events["ValidateService"]["endedAt"]), (host, events["ValidateService"])
        for step in ("BlockTraffic", "AllowTraffic"):
            assert events[step]["status"] == "Succeeded", events[step]
            assert f"{instance}:80" in events[step]["message"], events[step]
        assert "out of rotation" in events["BlockTraffic"]["message"]
        assert "in service" in events["AllowTraffic"]["message"]
        assert f"target group {elb.name}" in events["AllowTraffic"]["message"]
    assert elb.registered() == {instance: {"State": "healthy"} for instance in elb.instance_of.values()}


def _rollout(elb: ElbFleet, version: str, config: str) -> TargetWatch:
    """Deploy `version` with `config`, watching the target group all along; check what every rollout must show."""
    elb.fleet.commit(version, config=config, traffic=elb.traffic())
    with elb.watch() as watch:
        done = elb.fleet.reconcile("--once")
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    _assert_rollout(elb, watch)
    deployment = elb.deployments()[-1]
    assert (deployment["deploymentConfig"], deployment["status"]) == (config, "Succeeded")
    _assert_batches(elb, watch, deployment)
    return watch


def _assert_batches(elb: ElbFleet, watch: TargetWatch, deployment: dict[str, Any]) -> None:
    """The hosts out of rotation together are whole batches of the deployment, never part of one, and no host
    left the target group before its batch was dispatched.

    Not "exactly one batch at a time": a deployment starts a new batch on any pass where its budget (healthy
    hosts not in flight minus the minimum, docs/rollout.md) allows, so with HalfAtATime a one-host batch may
    start while the previous one still has a host out. The budget is what bounds the hosts out at once, which
    each test checks for its configuration."""
    batches = [frozenset(elb.instance_of[h] for h in batch) for batch in deployment["batches"]]
    seen = watch.out_together()
    for group in seen:
        inside = [batch for batch in batches if batch <= group]
        assert inside and frozenset().union(*inside) == group, (group, deployment["batches"])
    assert frozenset().union(*seen) == frozenset(elb.instance_of.values())
    for host, instance in elb.instance_of.items():
        (_, _, first_out), _ = watch.transitions(instance)
        dispatched = _iso(deployment["hosts"][host]["dispatchedAt"])
        assert first_out.received > dispatched, (host, deployment["hosts"][host])


# -- the tests -------------------------------------------------------------------------------------------------


def test_rollouts_as_the_target_group_sees_them(elb_fleet: ElbFleet) -> None:
    elb = elb_fleet
    # The first deployment: no host was ever deployed to by the group, but the target group has them all healthy
    # (serving customers), so they count as healthy and OneAtATime adopts the fleet one host at a time
    # (docs/traffic.md, "Adopting a fleet that already serves").
    first = _rollout(elb, "v1", ONE)
    assert first.most_out_at_once() == 1

    # Every host healthy now: OneAtATime keeps all but one in service, so each batch is one host, alone.
    one = _rollout(elb, "v2", ONE)
    assert one.most_out_at_once() == 1
    assert one.out_together() == [frozenset([elb.instance_of[h]]) for [h] in elb.deployments()[-1]["batches"]]

    # HalfAtATime keeps half in service: never more than two out, and the first batch is two hosts. Whether the
    # two are out of the target group at the same moment depends on when each agent picks its command up (on a
    # loaded machine one has finished before the other starts, seen twice in CI), so only the bound is asserted.
    half = _rollout(elb, "v1", HALF)
    assert 1 <= half.most_out_at_once() <= HOSTS // 2
    assert len(elb.deployments()[-1]["batches"][0]) == HOSTS // 2


def test_kill_9_of_the_reconciler_after_a_deregistration_is_put_right_by_the_next_one(elb_fleet: ElbFleet) -> None:
    elb = elb_fleet
    instances = set(elb.instance_of.values())
    first = elb.fleet.deploy("v1", config=ONE, traffic=elb.traffic())
    assert first.returncode == ExitCode.OK, first.stderr[-3000:]
    # v2 goes one host at a time: the reconciler is killed with exactly one host out of the target group.
    elb.fleet.commit("v2", config=ONE, traffic=elb.traffic())
    command, env = elb.fleet.reconcile_command("--once", lease_duration="3s")
    with elb.watch() as watch:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = watch.wait_for(lambda sample: sample.registered != instances)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
        assert process.returncode == -signal.SIGKILL
        [victim] = instances - out.registered
        assert elb.registered().keys() == instances - {victim}  # still out: nobody is left to put it back
        again = elb.fleet.reconcile("--once")
    assert again.returncode == ExitCode.OK, again.stderr[-3000:]
    # Across both reconcilers, the rollout looks like any other: every host out once and back once, in batches.
    _assert_rollout(elb, watch)
    _assert_batches(elb, watch, elb.deployments()[-1])
    assert watch.most_out_at_once() == 1
    assert [kind for kind, _, _ in watch.transitions(victim)] == ["deregistered", "registered"]
    assert elb.registered() == {instance: {"State": "healthy"} for instance in instances}
    for host in elb.instance_of:
        assert elb.events(host)["AllowTraffic"]["status"] == "Succeeded"
    assert elb.deployments()[-1]["status"] == "Succeeded"


@pytest.mark.parametrize("alongside_a_real_one", [False, True], ids=["alone", "after-a-real-group"])
def test_a_target_group_that_does_not_exist_fails_the_first_host_and_takes_nobody_out(
    elb_fleet: ElbFleet, alongside_a_real_one: bool
) -> None:
    elb = elb_fleet
    instances = frozenset(elb.instance_of.values())
    first = elb.fleet.deploy("v1", config=ONE, traffic=elb.traffic())
    assert first.returncode == ExitCode.OK, first.stderr[-3000:]

    missing = "tg-no-such-group"
    traffic = elb.traffic(missing)
    if alongside_a_real_one:
        # The real group first, the missing one second: nothing may be called on the real one before every
        # load balancer of the host could be read, or the host would be left out of it.
        traffic = elb.traffic() + f"      - targetGroup:\n          name: {missing}\n          region: us-east-1\n"
    elb.fleet.commit("v2", config=ONE, traffic=traffic)
    with elb.watch() as watch:
        failed = elb.fleet.reconcile("--once")

    # The rollback redeploys v1 with the group's trafficControl as it is now, so it meets the same missing group
    # at host-1's BlockTraffic and fails too: "failed, not rolled back" (4), not "failed and rolled back" (3).
    assert failed.returncode == ExitCode.FAILED, failed.stderr[-3000:]
    assert not watch.errors, watch.errors
    assert {sample.registered for sample in watch.samples} == {instances}, "a host was taken out"
    user, rollback = elb.deployments()[-2:]
    assert (user["status"], rollback["status"]) == ("Failed", "Failed")
    assert user["revision"]["git"]["commit"] == elb.fleet.commits["v2"]
    assert rollback["revision"]["git"]["commit"] == elb.fleet.commits["v1"]
    # Only host-1 was tried, by both: the first failure stops a OneAtATime rollout, and the rollback goes only
    # where the failed deployment went.
    for deployment in (user, rollback):
        assert deployment["hosts"]["host-1"]["status"] == "Failed", deployment["hosts"]
        assert {deployment["hosts"][h]["status"] for h in ("host-2", "host-3", "host-4")} <= {"Pending", "Skipped"}
    block = elb.events("host-1")["BlockTraffic"]
    assert block["status"] == "Failed", block
    assert f"elbv2 describe_target_groups {missing}" in block["message"], block
    assert "TargetGroupNotFound: One or more target groups not found" in block["message"], block
    # Nothing after it ran: host-1 still serves v1, untouched.
    after = list(elb.events("host-1"))[list(elb.events("host-1")).index("BlockTraffic") + 1 :]
    assert {elb.events("host-1")[name]["status"] for name in after} == {"Skipped"}
    assert _served_version(elb.fleet, "host-1") == "1"
    for host in ("host-2", "host-3", "host-4"):  # untouched: their last command is still v1's
        assert elb.events(host)["AllowTraffic"]["status"] == "Succeeded"
    assert elb.registered() == {instance: {"State": "healthy"} for instance in instances}

