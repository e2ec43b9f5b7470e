#!/usr/bin/env python3
"""Benchmark: what monitoring gates cost (docs/gates.md), and how fast a bad canary is caught.

1. **The decision.** One pure `reconcile()` pass over bench_reconcile_pass.py's synthetic fleet (10,000 hosts,
   1,000 groups, 50 in flight), first as it is, then with an analysis gate on every group and an analysis record
   of 30 measurements for every deployment in flight, at an open checkpoint. Best of `--rounds`.
2. **A measurement.** One gate measurement (`reconciler.gates.prometheus.measure`: the HTTP query, the JSON,
   the judgement) against a real Prometheus (Debian's package), median of 50.
3. **A bad canary, end to end** (`--skip-e2e` to leave out): fleetlab's fleet of 4 hosts behind HAProxy under
   80 req/s, a real Prometheus scraping them, and `reconcile --once` rolling out v5 (20 % of requests answer 500)
   with a canary gate (initialDelay 6s, count 2, interval 2s). Prints the time from the canary host's finish to
   the deployment's failure, the whole `--once` (failure and rollback), and the 500s the canary served.

Prints `name: value unit` lines on stdout; logs go to stderr.
    .venv/bin/python bench/bench_gates.py [--rounds 3] [--skip-e2e]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.clock import utc_now  # noqa: E402
from contract.logs import configure_logging  # noqa: E402
from contract.models import DeploymentAnalysis, GateMeasurement, GateResult  # noqa: E402
from reconciler.core import reconcile  # noqa: E402
from reconciler.core.gates import DueMeasurement  # noqa: E402
from reconciler.desired.gates_spec import AnalysisGateSpec  # noqa: E402
from reconciler.desired.manifests import DeploymentGroupManifest  # noqa: E402
from reconciler.gates.prometheus import measure  # noqa: E402

GATE = {
    "name": "error-rate",
    "prometheus": {"address": "http://prometheus:9090", "query": 'errors{host=~"{{ batchHosts }}"}'},
    "successCondition": "result < 0.01",
    "interval": "10s",
    "count": 40,
}


def _pass_bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_reconcile_pass", ROOT / "bench" / "bench_reconcile_pass.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decision(rounds: int) -> None:
    module = _pass_bench()
    desired, observed, state = module.build(1000, 10, 50)  # type: ignore[attr-defined]
    now = module.NOW  # type: ignore[attr-defined]

    def best_of(d: object, o: object) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            reconcile(d, o, state, now=now)  # type: ignore[arg-type]
            times.append(time.perf_counter() - started)
        return min(times)

    plain = best_of(desired, observed)
    groups = {
        name: DeploymentGroupManifest.model_validate(
            manifest.model_dump(by_alias=True, exclude_none=True)
            | {"spec": manifest.spec.model_dump(by_alias=True, exclude_none=True) | {"analysis": [GATE]}}
        )
        for name, manifest in desired.groups.items()
    }
    gated = dataclasses.replace(desired, groups=groups)
    records = {}
    for deployment in state.deployments.values():
        if deployment.status.finished or not deployment.batches:
            continue
        measured = [
            GateMeasurement(gate="error-rate", checkpoint=f"batch-{len(deployment.batches) - 1}", index=i,
                            due_at=now, measured_at=now - timedelta(seconds=10 * (30 - i)),
                            result=GateResult.SUCCESSFUL, value=0.001, message="ok")
            for i in range(30)
        ]
        records[deployment.deployment_id] = DeploymentAnalysis(
            deployment_id=deployment.deployment_id, application=deployment.application,
            deployment_group=deployment.deployment_group, measurements=measured, updated_at=now)
    with_gates = best_of(gated, dataclasses.replace(observed, analysis=records))
    print(f"pass_10k_hosts_without_gates: {plain:.3f} s")
    print(f"pass_10k_hosts_with_gates: {with_gates:.3f} s")
    print(f"gated_deployments_with_records: {len(records)} deployments")


def measurement(workdir: Path) -> None:
    from fleetlab.prometheus import LocalPrometheus

    with LocalPrometheus(workdir / "prometheus", [("nobody", "127.0.0.1", 9)]) as prometheus:
        gate = AnalysisGateSpec.model_validate(
            GATE | {"prometheus": {"address": prometheus.url, "query": "vector(0.001)"}})
        due = DueMeasurement(deployment_id="d", group="g", checkpoint="batch-0", gate=gate, index=0,
                             due_at=_now(), variables={})
        times = []
        for _ in range(50):
            started = time.perf_counter()
            taken = measure(due, now=_now())
            times.append(time.perf_counter() - started)
            assert taken.result is GateResult.SUCCESSFUL, taken.message
    print(f"prometheus_measurement_median: {statistics.median(times) * 1000:.1f} ms")


def _now() -> datetime:
    return utc_now()


def bad_canary(workdir: Path) -> None:
    from fleetlab.fleet import TrafficFleet
    from fleetlab.loadgen import LoadGenerator
    from fleetlab.prometheus import LocalPrometheus

    spec = importlib.util.spec_from_file_location("e2e", ROOT / "tests" / "gates" / "test_analysis_e2e.py")
    assert spec is not None and spec.loader is not None
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    fleet = TrafficFleet(workdir / "fleet", count=4, faulty="none", with_v5=True)
    prometheus = None
    try:
        fleet.start()
        prometheus = LocalPrometheus(workdir / "prometheus", [(h.host_id, "127.0.0.1", h.port) for h in fleet.hosts])
        prometheus.start()
        (fleet.config_repo / "manifests" / "canary.yaml").write_text(e2e.CANARY_CONFIG)
        extra = e2e.gated_manifest(fleet, prometheus)
        e2e.install(fleet, prometheus)
        with LoadGenerator(fleet.url, rate=80, timeout=5.0) as load:
            time.sleep(2)
            fleet.commit("v5", config="canary-then-half", traffic=extra)
            started = time.monotonic()
            done = fleet.reconcile("--once")
            took = time.monotonic() - started
            seen = load.snapshot()
        assert done.returncode == 3, done.stdout[-2000:]
        store = fleet.workdir / "store"
        group = json.loads((store / "groups" / "hello" / f"{fleet.group}.json").read_text())
        failed_id = group["quarantined"][0]["deploymentId"]
        failed = json.loads((store / "deployments" / f"{failed_id}.json").read_text())
        canary = failed["batches"][0][0]
        finished = datetime.fromisoformat(failed["hosts"][canary]["finishedAt"])
        ended = datetime.fromisoformat(failed["endedAt"])
        print(f"bad_canary_detected_after_canary_finished: {(ended - finished).total_seconds():.1f} s")
        print(f"bad_canary_once_total_with_rollback: {took:.1f} s")
        print(f"bad_canary_500s_served: {seen.by_reason.get('500', 0)} requests")
        print(f"bad_canary_other_failures: {seen.failed - seen.by_reason.get('500', 0)} requests")
    finally:
        if prometheus is not None:
            prometheus.stop()
        fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    configure_logging(level="warning")
    decision(args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench-gates-") as workdir:
        measurement(Path(workdir))
        if not args.skip_e2e:
            bad_canary(Path(workdir))


if __name__ == "__main__":
    main()
