"""The shell's Auto Scaling lifecycle calls (issue 16, reconciler/shell/lifecycle.py).

moto (5.x) never holds an instance in Pending:Wait, answers `complete_lifecycle_action` with a 500 and has no
`record_lifecycle_action_heartbeat`, so the calls' answers are tested against `AutoScalingStandIn`, a small recording
stand-in for the boto3 client that answers as AWS documents (an active lifecycle action per held instance; completing
or heartbeating one that is not active is `ValidationError: No active Lifecycle Action found with instance ID ...`).
What moto does support is used over HTTP (its server mode, `s3_server`): the hook set up with `put_lifecycle_hook` and
read back with `describe_lifecycle_hooks`, instances read with `describe_auto_scaling_instances` and by the fleet
reader, the hold put in place inside moto's own backend, and the shell's real boto3 calls sent to moto, whose wire
form is checked and whose failure (500) must not end a pass."""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from contract.store import open_store
from reconciler.core import (
    CompleteLifecycleAction,
    Ec2Instance,
    Ec2Membership,
    Observed,
    RecordLifecycleHeartbeat,
    State,
    reconcile,
)
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired, TargetsSpec
from reconciler.desired.sources import ManifestFile
from reconciler.fleet.ec2 import Ec2FleetReader
from reconciler.settings import ReconcileSettings
from reconciler.shell.fleet import FleetShell
from reconciler.shell.lease import WriteLease
from reconciler.shell.lifecycle import LaunchShell, autoscaling_client
from reconciler.shell.passes import PassRunner
from tests.conftest import S3Server
from tests.reconciler.fleet import ScriptedAgents, settings_overrides

HOOK = "fleetshift-launch"
ASG = "web-asg"
KEY = "shop/web"
REGION = "us-east-1"
AMI = "ami-12c6146b"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def desired(asg: str = ASG, region: str | None = None) -> Desired:
    where = f", region: {region}" if region else ""
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
  targets: {{autoScalingGroups: [{asg}]{where}}}
  autoScaling: {{lifecycleHook: {HOOK}, timeout: 10m, heartbeat: 1m}}
"""
    return load_files([ManifestFile("m.yaml", text.encode())], commit="c1")


def _error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                       operation)


@dataclass
class AutoScalingStandIn:
    """The two lifecycle calls of a boto3 Auto Scaling client, answering as AWS does, recording every call."""

    #: (group, instance, hook) -> the lifecycle action is active (the instance is in Pending:Wait for the hook).
    active: set[tuple[str, str, str]] = field(default_factory=set)
    #: Instance -> its lifecycle state, as a `describe_auto_scaling_groups` would show it.
    states: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Errors to raise, in order, before answering anything else.
    failures: list[Exception] = field(default_factory=list)

    def hold(self, instance_id: str) -> None:
        self.active.add((ASG, instance_id, HOOK))
        self.states[instance_id] = "Pending:Wait"

    def _check(self, operation: str, kwargs: dict[str, Any]) -> tuple[str, str, str]:
        self.calls.append((operation, kwargs))
        if self.failures:
            raise self.failures.pop(0)
        key = (kwargs["AutoScalingGroupName"], kwargs["InstanceId"], kwargs["LifecycleHookName"])
        if key not in self.active:
            raise _error("ValidationError", f"No active Lifecycle Action found with instance ID {kwargs['InstanceId']}",
                         operation)
        return key

    def complete_lifecycle_action(self, **kwargs: Any) -> dict[str, Any]:
        key = self._check("CompleteLifecycleAction", kwargs)
        self.active.discard(key)
        self.states[key[1]] = "InService" if kwargs["LifecycleActionResult"] == "CONTINUE" else "Terminating"
        return {}

    def record_lifecycle_action_heartbeat(self, **kwargs: Any) -> dict[str, Any]:
        self._check("RecordLifecycleActionHeartbeat", kwargs)
        return {}


def _held_read(*instance_ids: str, now: datetime = T0) -> Observed:
    instances = tuple(
        Ec2Instance(i, "running", auto_scaling_group=ASG, lifecycle_state="Pending:Wait",
                    launched_at=now - timedelta(minutes=3))
        for i in instance_ids
    )
    return Observed(ec2={KEY: Ec2Membership(read_at=now, instances=instances)})


def _continue(instance_id: str = "i-3") -> CompleteLifecycleAction:
    return CompleteLifecycleAction(group=KEY, instance_id=instance_id, host=instance_id, auto_scaling_group=ASG,
                                   lifecycle_hook=HOOK, result="CONTINUE", reason="test")


# --------------------------------------------------------------------------------------------------
# Against the recording stand-in


def test_completing_twice_after_a_crash_is_answered_no_active_action_and_counts_as_done() -> None:
    aws = AutoScalingStandIn()
    aws.hold("i-3")
    first = LaunchShell(clock=lambda: T0, client=lambda region: aws)
    [outcome] = first.perform([_continue()])
    assert outcome.done and not outcome.already
    # kill -9 now: the next process remembers nothing, and its read (or the cached one) still says Pending:Wait.
    second = LaunchShell(clock=lambda: T0, client=lambda region: aws)
    observed = second.observe(desired(), _held_read("i-3"))
    actions = reconcile(desired(), observed, State(), now=T0)  # no effective revision: CONTINUE at once
    assert [(a.kind, getattr(a, "result", None)) for a in actions if isinstance(a, CompleteLifecycleAction)] == [
        ("CompleteLifecycleAction", "CONTINUE")
    ]
    with capture_logs() as logs:
        [again] = second.perform(actions)
    assert again.done and again.already
    assert [c[0] for c in aws.calls] == ["CompleteLifecycleAction", "CompleteLifecycleAction"]
    assert any(entry["event"] == "lifecycle.no_active_action" for entry in logs)
    # Done: the next pass, on the same stale read, holds nothing and calls nothing.
    assert second.observe(desired(), _held_read("i-3")).launches == {}


def test_a_crash_before_the_call_or_before_it_is_remembered_repeats_it_at_most_once() -> None:
    """kill -9 after deciding, before the call: the next process decides the same and calls once. kill -9 after the
    call reached AWS, before the shell remembered it: the next process calls once more, answered "No active"."""
    aws = AutoScalingStandIn()
    aws.hold("i-3")
    aws.hold("i-4")
    # Process 1 decided CONTINUE for both, called for i-3 only, and died.
    LaunchShell(clock=lambda: T0, client=lambda region: aws).perform([_continue("i-3")])
    process_2 = LaunchShell(clock=lambda: T0, client=lambda region: aws)
    observed = process_2.observe(desired(), _held_read("i-3", "i-4"))
    outcomes = process_2.perform(reconcile(desired(), observed, State(), now=T0))
    assert [(o.action.instance_id, o.done, o.already) for o in outcomes] == [("i-3", True, True), ("i-4", True, False)]
    assert aws.active == set() and aws.states == {"i-3": "InService", "i-4": "InService"}
    completions = [c[1]["InstanceId"] for c in aws.calls if c[0] == "CompleteLifecycleAction"]
    assert completions == ["i-3", "i-3", "i-4"]


def test_aws_errors_are_logged_and_retried_next_pass_never_raised() -> None:
    aws = AutoScalingStandIn()
    aws.hold("i-3")
    aws.failures = [
        _error("Throttling", "Rate exceeded", "CompleteLifecycleAction"),
        _error("AccessDenied", "not authorized to perform: autoscaling:CompleteLifecycleAction", "x"),
    ]
    shell = LaunchShell(clock=lambda: T0, client=lambda region: aws)
    for _ in range(2):
        observed = shell.observe(desired(), _held_read("i-3"))
        with capture_logs() as logs:
            [outcome] = shell.perform(reconcile(desired(), observed, State(), now=T0))
        assert not outcome.done and outcome.error is not None
        assert outcome.error.startswith("autoscaling CompleteLifecycleAction: ")
        assert any(entry["event"] == "lifecycle.call_failed" for entry in logs)
    observed = shell.observe(desired(), _held_read("i-3"))
    [outcome] = shell.perform(reconcile(desired(), observed, State(), now=T0))
    assert outcome.done and aws.states["i-3"] == "InService"
    # A client that cannot even be built (no region) is a failed call too.
    broken = LaunchShell(clock=lambda: T0, client=lambda region: autoscaling_client(None))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_DEFAULT_REGION", raising=False)
        patch.delenv("AWS_REGION", raising=False)
        patch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        [outcome] = broken.perform([_continue()])
    assert not outcome.done and outcome.error is not None and "region" in outcome.error.lower()


def test_heartbeats_are_remembered_lost_ones_are_sent_again_and_a_gone_action_stops_them() -> None:
    aws = AutoScalingStandIn()
    aws.hold("i-3")
    heartbeat = RecordLifecycleHeartbeat(group=KEY, instance_id="i-3", host="i-3", auto_scaling_group=ASG,
                                         lifecycle_hook=HOOK, reason="test")
    clock = [T0]
    shell = LaunchShell(clock=lambda: clock[0], client=lambda region: aws)
    aws.failures = [_error("Throttling", "Rate exceeded", "RecordLifecycleActionHeartbeat")]
    shell.observe(desired(), _held_read("i-3"))
    [lost] = shell.perform([heartbeat])
    assert not lost.done
    assert shell.observe(desired(), _held_read("i-3")).launches[KEY][0].last_heartbeat is None
    [sent] = shell.perform([heartbeat])
    assert sent.done
    assert shell.observe(desired(), _held_read("i-3")).launches[KEY][0].last_heartbeat == T0
    # The hook's own timeout ended the action meanwhile: AWS says it is gone; nothing more is sent for it.
    aws.active.clear()
    [gone] = shell.perform([heartbeat])
    assert gone.done and gone.already
    assert shell.observe(desired(), _held_read("i-3")).launches == {}


@dataclass
class StubReader:
    """The fleet reader for `FleetShell`: the Auto Scaling group as the stand-in has it."""

    aws: AutoScalingStandIn
    launched: dict[str, datetime]

    def read(self, targets: TargetsSpec, now: datetime) -> Ec2Membership:
        instances = tuple(
            Ec2Instance(i, "running" if state != "Terminating" else "shutting-down", auto_scaling_group=ASG,
                        lifecycle_state=state, launched_at=self.launched[i])
            for i, state in sorted(self.aws.states.items())
        )
        return Ec2Membership(read_at=now, instances=instances)

    def look_up(self, read: Ec2Membership, instance_ids: Any) -> Ec2Membership:
        return read

    def close(self) -> None:
        pass


def test_passes_hold_a_new_instance_until_its_catch_up_then_continue_and_abandon_a_failing_one(
    tmp_path: Path,
) -> None:
    """The wiring in `PassRunner`: a converged group on web-asg scales out; i-3 is continued once its agent ran the
    catch-up, i-4 (whose agent fails it) is abandoned. Real store, real passes, the stand-in for Auto Scaling."""
    store = open_store(f"file://{tmp_path / 'store'}")
    settings = ReconcileSettings.model_validate(settings_overrides())
    lease = WriteLease(store, duration=settings.lease_duration)
    assert lease.try_acquire()
    aws = AutoScalingStandIn(states={"i-1": "InService", "i-2": "InService"})
    now = datetime.now(UTC)
    reader = StubReader(aws, {"i-1": now, "i-2": now})
    fleet = FleetShell(clock=lambda: datetime.now(UTC), reader=lambda region: reader,  # type: ignore[arg-type,return-value]
                       max_age=timedelta(0))
    runner = PassRunner(store, lease, settings, fleet=fleet,
                        launches=LaunchShell(clock=lambda: datetime.now(UTC), client=lambda region: aws))
    agents = [ScriptedAgents(store, ["i-1", "i-2"])]
    agents[0].register()
    wanted = desired()

    def settle() -> None:
        for _ in range(20):
            outcome = runner.run_pass(wanted)
            for fleet_agents in agents:
                fleet_agents.answer()
            if outcome.settled:
                return
        raise AssertionError("not settled")

    settle()
    assert not aws.calls
    # Scale-out: two instances held, launched three minutes ago; a heartbeat is due for each at once.
    for instance_id in ("i-3", "i-4"):
        aws.hold(instance_id)
        reader.launched[instance_id] = datetime.now(UTC) - timedelta(minutes=3)
    outcome = runner.run_pass(wanted)
    assert [b.code for b in outcome.waiting] == ["HOLDING_LAUNCH"]
    assert [(c[0], c[1]["InstanceId"]) for c in aws.calls] == [
        ("RecordLifecycleActionHeartbeat", "i-3"), ("RecordLifecycleActionHeartbeat", "i-4")
    ]
    # Their agents start; the catch-up deploys v1 to them; i-4's fails.
    agents.append(ScriptedAgents(store, ["i-3", "i-4"], failing={"i-4": "v1"}))
    agents[1].register()
    settle()
    completions = {c[1]["InstanceId"]: c[1]["LifecycleActionResult"] for c in aws.calls
                   if c[0] == "CompleteLifecycleAction"}
    assert completions == {"i-3": "CONTINUE", "i-4": "ABANDON"}
    assert aws.states["i-3"] == "InService" and aws.states["i-4"] == "Terminating"
    assert len(agents[1].runs["i-3"]) == 1 and not agents[1].dispatched_twice()
    assert agents[0].runs == {"i-1": [(agents[0].runs["i-1"][0][0], 1, agents[0].runs["i-1"][0][2])],
                              "i-2": [(agents[0].runs["i-2"][0][0], 1, agents[0].runs["i-2"][0][2])]}


# --------------------------------------------------------------------------------------------------
# Over HTTP against moto's server mode


@pytest.fixture
def moto_asg(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str, str]]:
    """An Auto Scaling group in moto with a launch hook set up as docs/aws-fleet.md says, one instance, and that
    instance put in Pending:Wait inside moto (which never holds one itself)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    client = boto3.client("autoscaling", endpoint_url=s3_server.endpoint_url, region_name=REGION)
    name = f"asg-{uuid.uuid4().hex[:8]}"
    client.create_launch_configuration(LaunchConfigurationName=name, ImageId=AMI, InstanceType="t3.micro")
    client.create_auto_scaling_group(AutoScalingGroupName=name, LaunchConfigurationName=name, MinSize=0, MaxSize=2,
                                     DesiredCapacity=0, AvailabilityZones=[f"{REGION}a"])
    client.put_lifecycle_hook(LifecycleHookName=HOOK, AutoScalingGroupName=name,
                              LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING", HeartbeatTimeout=600,
                              DefaultResult="ABANDON")
    [hook] = client.describe_lifecycle_hooks(AutoScalingGroupName=name)["LifecycleHooks"]
    assert (hook["LifecycleTransition"], hook["HeartbeatTimeout"], hook["DefaultResult"]) == (
        "autoscaling:EC2_INSTANCE_LAUNCHING", 600, "ABANDON")
    client.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=1)
    [instance] = [i for i in client.describe_auto_scaling_instances()["AutoScalingInstances"]
                  if i["AutoScalingGroupName"] == name]
    assert instance["LifecycleState"] == "InService"  # moto: no hold, straight in
    from moto.autoscaling.models import autoscaling_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    group = autoscaling_backends[DEFAULT_ACCOUNT_ID][REGION].autoscaling_groups[name]
    for state in group.instance_states:
        state.lifecycle_state = "Pending:Wait"
    held = client.describe_auto_scaling_instances(InstanceIds=[instance["InstanceId"]])["AutoScalingInstances"]
    assert held[0]["LifecycleState"] == "Pending:Wait"
    yield client, name, instance["InstanceId"]


def test_the_shell_reads_the_hold_and_sends_its_calls_over_http_and_survives_moto_failing_them(
    moto_asg: tuple[Any, str, str], s3_server: S3Server
) -> None:
    _, name, instance_id = moto_asg
    wanted = desired(name, region=REGION)
    read = Ec2FleetReader(REGION).read(wanted.desired_groups()[KEY].targets, T0)
    assert read.error is None
    assert [(i.instance_id, i.lifecycle_state) for i in read.instances] == [(instance_id, "Pending:Wait")]
    now = datetime.now(UTC)
    sent: list[tuple[str, bytes]] = []
    made: set[str] = set()

    def boto(region: str | None) -> Any:
        real = autoscaling_client(region)
        real.meta.events.register("before-send.auto-scaling.*",
                                  lambda request, **_: sent.append((request.url, request.body)))
        real.meta.events.register("before-call.*.*", lambda model, **_: made.add(f"autoscaling:{model.name}"))
        return real

    shell = LaunchShell(clock=lambda: now, client=boto)
    observed = shell.observe(wanted, Observed(ec2={KEY: read}))
    [held] = observed.launches[KEY]
    assert (held.instance_id, held.auto_scaling_group, held.hook) == (instance_id, name, HOOK)
    actions = reconcile(wanted, observed, State(), now=now)
    heartbeat = RecordLifecycleHeartbeat(group=KEY, instance_id=instance_id, host=instance_id,
                                         auto_scaling_group=name, lifecycle_hook=HOOK, region=REGION, reason="test")
    with capture_logs() as logs:
        outcomes = shell.perform([*actions, heartbeat])
    # moto answers both with a 500 (an internal error; the heartbeat is not implemented): logged, not raised.
    assert [(o.done, o.error is not None) for o in outcomes] == [(False, True), (False, True)]
    assert [e["call"] for e in logs if e["event"] == "lifecycle.call_failed"] == [
        "CompleteLifecycleAction", "RecordLifecycleActionHeartbeat"]
    bodies = [body.decode() if isinstance(body, bytes) else str(body) for _, body in sent]
    complete = next(b for b in bodies if "Action=CompleteLifecycleAction" in b)
    for part in ("LifecycleActionResult=CONTINUE", f"InstanceId={instance_id}", f"LifecycleHookName={HOOK}",
                 f"AutoScalingGroupName={name}"):
        assert part in complete
    assert any("Action=RecordLifecycleActionHeartbeat" in b for b in bodies)
    assert all(url.startswith(s3_server.endpoint_url) for url, _ in sent)
    assert made == {"autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"}
    # examples/iam: the reconciler may make exactly these Auto Scaling writes, on its groups only; plan none.
    root = Path(__file__).resolve().parents[2] / "examples" / "iam"
    statements = json.loads((root / "reconciler-policy.json").read_text())["Statement"]
    writes = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
              if a.startswith(("ec2:", "autoscaling:")) and ":Describe" not in a}
    assert writes == made
    [statement] = [s for s in statements if "autoscaling:CompleteLifecycleAction" in s["Action"]]
    arn = f"arn:aws:autoscaling:{REGION}:123456789012:autoScalingGroup:{uuid.uuid4()}:autoScalingGroupName/"
    assert fnmatch.fnmatchcase(arn + "ASG_PREFIX-web", statement["Resource"])
    assert not fnmatch.fnmatchcase(arn + "someone-else", statement["Resource"])
    plan = json.loads((root / "plan-policy.json").read_text())["Statement"]
    assert not any(":Describe" not in a and a.startswith("autoscaling:")
                   for s in plan for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))
