"""The proof of issue "Monitoring gates", CloudWatch side: real agents, `reconcile --once` as a process, and
CloudWatch alarms over HTTP in moto's server mode (`put_metric_alarm`, `set_alarm_state`, `describe_alarms`).

An alarm set to ALARM while a OneAtATime rollout is half-way stops it at once (CodeDeploy's ALARM_ACTIVE), rolls
back on DEPLOYMENT_STOP_ON_ALARM and quarantines the revision; alarms that cannot be read hold the rollout before
any host gets the revision.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlab.fleet import TrafficFleet, commit_all
from tests.conftest import S3Server, require_tool

ALARMS = """\
  alarmConfiguration:
    alarms: [{alarms}]
    ignorePollAlarmFailure: false
    region: us-east-1
"""


@pytest.fixture
def fleet(tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrafficFleet]:
    require_tool("haproxy", "haproxy")
    # `reconcile` reaches CloudWatch at moto through boto3's own endpoint variable, as a user would.
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", s3_server.endpoint_url)
    started = TrafficFleet(tmp_path / "fleet", count=4, faulty="none")
    try:
        started.start()
        yield started
    finally:
        started.stop()


def cloudwatch(s3_server: S3Server) -> Any:
    import boto3

    return boto3.client("cloudwatch", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def new_alarm(client: Any) -> str:
    name = f"hello-5xx-{uuid.uuid4().hex[:8]}"
    client.put_metric_alarm(
        AlarmName=name, MetricName="HTTPCode_Target_5XX_Count", Namespace="AWS/ApplicationELB", Statistic="Sum",
        Period=60, EvaluationPeriods=1, Threshold=10, ComparisonOperator="GreaterThanThreshold",
    )
    return name


def commit_with_alarms(fleet: TrafficFleet, version: str, alarms: list[str]) -> None:
    text = fleet.manifest(version, config="CodeDeployDefault.OneAtATime", traffic=False)
    text = text.replace("events: [DEPLOYMENT_FAILURE]", "events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]")
    text += ALARMS.format(alarms=", ".join(alarms))
    (fleet.config_repo / "manifests" / f"{fleet.group}.yaml").write_text(text)
    commit_all(fleet.config_repo, f"deploy hello {version}, watching {alarms}")


def store_doc(fleet: TrafficFleet, key: str) -> dict[str, Any]:
    return json.loads((fleet.workdir / "store" / key).read_text())  # type: ignore[no-any-return]


def in_flight(fleet: TrafficFleet) -> dict[str, Any] | None:
    group = store_doc(fleet, f"groups/hello/{fleet.group}.json")
    if not group.get("deploymentInFlight"):
        return None
    return store_doc(fleet, f"deployments/{group['deploymentInFlight']}.json")


@pytest.mark.slow
def test_an_alarm_in_alarm_mid_rollout_stops_it_rolls_back_and_quarantines(
    fleet: TrafficFleet, s3_server: S3Server
) -> None:
    client = cloudwatch(s3_server)
    alarm = new_alarm(client)
    installed = fleet.deploy("v1", config="CodeDeployDefault.AllAtOnce", traffic=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    commit_with_alarms(fleet, "v2", [alarm])
    command, env = fleet.reconcile_command("--once")
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 60
        deployment = None
        while time.monotonic() < deadline:
            deployment = in_flight(fleet)
            if deployment and deployment["creator"] == "user" and any(
                h["status"] == "Succeeded" for h in deployment["hosts"].values()
            ):
                break
            time.sleep(0.05)
        assert deployment is not None, "the rollout never got a host done"
        client.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="5xx above 10 for 1 minute")
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stdout + stderr
    group = store_doc(fleet, f"groups/hello/{fleet.group}.json")
    stopped = store_doc(fleet, f"deployments/{group['quarantined'][0]['deploymentId']}.json")
    assert stopped["status"] == "Stopped" and stopped["errorCode"] == "ALARM_ACTIVE"
    assert alarm in stopped["errorMessage"] and "5xx above 10 for 1 minute" in stopped["errorMessage"]
    touched = [h for h, s in stopped["hosts"].items() if s.get("generation") is not None]
    assert 1 <= len(touched) <= 2, stopped["hosts"]  # OneAtATime: the one done, maybe the next one in flight
    assert any(s["status"] == "Pending" for s in stopped["hosts"].values())
    rollback = store_doc(fleet, f"deployments/{group['history'][-1]}.json")
    assert rollback["creator"] == "rollback" and rollback["status"] == "Succeeded"
    assert sorted(h for h, s in rollback["hosts"].items() if s["status"] == "Succeeded") == sorted(touched)
    assert group["effectiveRevision"]["git"]["commit"] == fleet.commits["v1"]
    # The last alarm read is on record for `status`.
    analysis = store_doc(fleet, f"analysis/{stopped['deploymentId']}.json")
    assert analysis["alarms"]["state"] == "ALARM" and analysis["alarms"]["alarms"] == [alarm]
    assert "ALARM_ACTIVE" in stdout + stderr


@pytest.mark.slow
def test_alarms_that_cannot_be_read_hold_the_rollout_before_any_host(fleet: TrafficFleet, s3_server: S3Server) -> None:
    installed = fleet.deploy("v1", config="CodeDeployDefault.AllAtOnce", traffic=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    commit_with_alarms(fleet, "v2", ["no-such-alarm"])
    held = fleet.reconcile("--once", "--timeout", "4s")
    assert held.returncode == 5, held.stdout + held.stderr  # timed out, still in flight
    deployment = in_flight(fleet)
    assert deployment is not None and deployment["batches"] == []
    assert "no CloudWatch alarm named no-such-alarm" in held.stdout + held.stderr
    group = store_doc(fleet, f"groups/hello/{fleet.group}.json")
    assert group["quarantined"] == []
