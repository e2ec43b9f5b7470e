"""The proof of issue "Monitoring gates", Prometheus side: real agents running the hello app behind a real HAProxy,
a steady load through it, a real Prometheus scraping every host's `/metrics`, and `reconcile --once`.

v5 passes every hook (ValidateService checks /healthz, which stays 200) but answers 20 % of `GET /` with 500. A
canary gate on the canary host's error rate catches it: the deployment fails with the measured value, rolls back,
quarantines v5, and no host outside the canary batch ever receives a command for it.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlab.fleet import TrafficFleet
from fleetlab.loadgen import LoadGenerator
from fleetlab.prometheus import LocalPrometheus
from tests.conftest import require_tool

CANARY_CONFIG = """\
apiVersion: deploy/v1
kind: DeploymentConfig
metadata:
  name: canary-then-half
spec:
  minimumHealthyHosts: {type: HOST_COUNT, value: 2}
  canary: {hosts: 1}
"""

ERROR_RATE = (
    'sum(rate(hello_http_requests_total{{code=~"5..", host=~"{{{{ batchHosts }}}}"}}[5s]))'
    ' / sum(rate(hello_http_requests_total{{host=~"{{{{ batchHosts }}}}"}}[5s]))'
)

GATES = """\
  analysis:
    - name: error-rate
      prometheus:
        address: {prometheus}
        query: '{query}'
      successCondition: result < 0.05
      initialDelay: 6s
      interval: 2s
      count: 2
      at: [canary]
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[TrafficFleet, LocalPrometheus]]:
    require_tool("haproxy", "haproxy")
    require_tool("prometheus", "prometheus")
    fleet = TrafficFleet(tmp_path / "fleet", count=4, faulty="none", with_v5=True)
    prometheus: LocalPrometheus | None = None
    try:
        fleet.start()
        targets = [(h.host_id, "127.0.0.1", h.port) for h in fleet.hosts]
        prometheus = LocalPrometheus(tmp_path / "prometheus", targets)
        prometheus.start()
        (fleet.config_repo / "manifests" / "canary.yaml").write_text(CANARY_CONFIG)
        yield fleet, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        fleet.stop()


def store_doc(fleet: TrafficFleet, key: str) -> dict[str, Any]:
    return json.loads((fleet.workdir / "store" / key).read_text())  # type: ignore[no-any-return]


def gated_manifest(fleet: TrafficFleet, prometheus: LocalPrometheus) -> str:
    assert fleet.haproxy is not None
    traffic = fleet.manifest("v1", config="x", traffic=True).split("  trafficControl:\n", 1)[1]
    return "  trafficControl:\n" + traffic + GATES.format(prometheus=prometheus.url, query=ERROR_RATE.format())


def install(fleet: TrafficFleet, prometheus: LocalPrometheus) -> None:
    """v1 on every host (the group's first deployment: no gate, nothing to roll back to), then wait until
    Prometheus scrapes every host, so the gates that follow have data from the first measurement on."""
    done = fleet.deploy("v1", config="CodeDeployDefault.AllAtOnce", traffic=True)
    assert done.returncode == 0, done.stdout + done.stderr
    prometheus.wait_for_targets_up(timeout=30)
    prometheus.wait_for_samples("hello_http_requests_total", timeout=30, hosts=[h.host_id for h in fleet.hosts])


def version_served(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        response.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    match = re.search(r'hello_info\{version="([^"]+)"\}', metrics)
    assert match is not None, metrics
    return match.group(1)


@pytest.mark.slow
def test_a_bad_canary_is_caught_by_its_error_rate_rolled_back_and_quarantined(
    lab: tuple[TrafficFleet, LocalPrometheus],
) -> None:
    fleet, prometheus = lab
    extra = gated_manifest(fleet, prometheus)
    install(fleet, prometheus)
    with LoadGenerator(fleet.url, rate=80, timeout=5.0) as load:
        # v4 over v1: the canary gate measures a good revision too, and lets it through.
        installed = fleet.deploy("v4", config="canary-then-half", traffic=extra)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        group = store_doc(fleet, "groups/hello/hello-lb.json")
        good = store_doc(fleet, f"deployments/{group['history'][-1]}.json")
        assert good["status"] == "Succeeded"
        measured = store_doc(fleet, f"analysis/{good['deploymentId']}.json")["measurements"]
        assert [m["result"] for m in measured] == ["Successful", "Successful"]
        assert all(m["value"] < 0.05 for m in measured)

        bad = fleet.deploy("v5", config="canary-then-half", traffic=extra)
        snapshot = load.snapshot()
    assert bad.returncode == 3, bad.stdout + bad.stderr  # failed, rolled back
    group = store_doc(fleet, "groups/hello/hello-lb.json")
    failed_id = group["quarantined"][0]["deploymentId"]
    failed = store_doc(fleet, f"deployments/{failed_id}.json")
    assert failed["errorCode"] == "ANALYSIS_FAILED"
    value = float(re.search(r"error-rate = ([0-9.]+)", failed["errorMessage"]).group(1))  # type: ignore[union-attr]
    assert 0.1 < value < 0.3, failed["errorMessage"]
    assert "after the canary batch" in failed["errorMessage"]

    # Only the canary ever got v5: every other host of the deployment has no command generation for it.
    canary = failed["batches"][0]
    assert failed["batches"] == [canary] and len(canary) == 1
    untouched = [h for h, s in failed["hosts"].items() if h not in canary]
    assert len(untouched) == 3
    assert all(failed["hosts"][h].get("generation") is None for h in untouched)
    # The rollback put v4 back on the canary; every host serves v4 now.
    rollback = store_doc(fleet, f"deployments/{group['history'][-1]}.json")
    assert rollback["creator"] == "rollback" and rollback["status"] == "Succeeded"
    assert {h.host_id: version_served(h.port) for h in fleet.hosts} == {h.host_id: "4" for h in fleet.hosts}
    assert group["effectiveRevision"] == good["revision"]
    # The measured value is in the --once summary, in the user's words, and `status` shows the gate that stopped
    # v5 although the rollback (never gated) came after it.
    assert "error-rate" in bad.stdout and "ANALYSIS_FAILED" in bad.stdout + bad.stderr
    status = fleet.reconcile("status")
    gate_line = next(line for line in status.stdout.splitlines() if line.strip().startswith("gate "))
    assert "error-rate after the canary batch: failed" in gate_line, status.stdout
    assert f"{value:.6g}"[:4] in gate_line, gate_line
    # What the load saw: only 500s from the canary while it served v5 (HAProxy has no retry-on 500), and nothing
    # else (no connection dropped: traffic control still drained every host).
    assert set(snapshot.by_reason) <= {"500"}, snapshot.by_reason
    assert snapshot.by_reason.get("500", 0) > 0


@pytest.mark.slow
def test_prometheus_down_is_inconclusive_and_the_message_says_so(
    lab: tuple[TrafficFleet, LocalPrometheus],
) -> None:
    fleet, prometheus = lab
    extra = gated_manifest(fleet, prometheus)
    install(fleet, prometheus)
    prometheus.stop()
    result = fleet.deploy("v2", config="canary-then-half", traffic=extra)
    assert result.returncode == 3, result.stdout + result.stderr
    group = store_doc(fleet, "groups/hello/hello-lb.json")
    failed = store_doc(fleet, f"deployments/{group['quarantined'][0]['deploymentId']}.json")
    message = failed["errorMessage"]
    assert "could not be evaluated" in message
    assert "the query could not be run" in message and "could not be reached" in message
    assert "says nothing about the service's health" in message
    assert "not result <" not in message
