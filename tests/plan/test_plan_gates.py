"""`reconcile plan` with monitoring gates (issue 14, docs/gates.md): the engine's dry run gets past analysis
checkpoints by assuming every measurement passes, the plan lists the health check, the alarms and each gate with
the checkpoints it runs at, and the estimate grows by the gates' time and the health check's minHealthyTime.

Real config repos and a real file store (the shop fleet of `scenarios.py`); the plan is computed by the CLI's
`make_plan`, exactly as `reconcile plan` does.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from reconciler.cli.plan import make_plan
from reconciler.core.simulate import preview_rollout
from reconciler.plan.model import GroupRollout, Plan
from reconciler.plan.render import render_json, render_markdown, render_text
from tests.core.test_gates import T0
from tests.core.test_gates import desired as gated_desired
from tests.core.test_gates import fleet as gated_fleet
from tests.plan.scenarios import GATES, NOW, SCENARIOS, WEB, WEB_A, WEB_B, WORKER, Scenario, build, fleet_of_shop


def _plan(tmp_path: Path, name: str = "gates") -> Plan:
    return make_plan(build(tmp_path, name).request, now=NOW).plan


def _plan_of(tmp_path: Path, changes: dict[str, str | None], *, store: bool) -> Plan:
    """A plan for a change of this test's own (the base is every scenario's)."""
    SCENARIOS["gates-test"] = Scenario(changes, fleet=fleet_of_shop if store else None)
    try:
        built = build(tmp_path, "gates-test")
    finally:
        del SCENARIOS["gates-test"]
    return make_plan(built.request, now=NOW).plan


def _rollout(plan: Plan, group: str) -> GroupRollout:
    return next(r for r in plan.rollouts if r.group == group)


def test_the_plan_lists_the_health_check_alarms_and_gates_with_their_checkpoints(tmp_path: Path) -> None:
    rollout = _rollout(_plan(tmp_path), "shop/worker")
    assert rollout.action == "deploy" and rollout.simulated_status == "Succeeded"
    assert [len(b.hosts) for b in rollout.batches or []] == [1, 1, 1]

    assert rollout.health_check is not None
    assert (rollout.health_check.url, rollout.health_check.min_healthy_seconds,
            rollout.health_check.healthy_deadline_seconds) == ("http://{address}:8080/healthz", 15.0, 120.0)
    assert rollout.alarms is not None
    assert rollout.alarms.alarms == ["worker-5xx", "worker-queue-age"]
    assert rollout.alarms.rolls_back and not rollout.alarms.ignore_poll_alarm_failure

    gates = {gate.name: gate for gate in rollout.analysis or []}
    assert list(gates) == ["error-rate", "latency"]
    assert gates["error-rate"].checkpoints == ["after batch 1", "after batch 2", "after the last batch (batch 3)"]
    assert gates["error-rate"].run_seconds == 20.0
    assert gates["latency"].checkpoints == ["after the last batch (batch 3)"]
    assert gates["latency"].run_seconds == 30.0
    # The engine waits for the slower gate at the last checkpoint: both run at once.
    assert [(p.batch, p.gates, p.wait_seconds) for p in rollout.gate_checkpoints or []] == [
        (1, ["error-rate"], 20.0), (2, ["error-rate"], 20.0), (3, ["error-rate", "latency"], 30.0)]


def test_the_estimate_adds_gate_time_per_checkpoint_and_min_healthy_time_per_batch(tmp_path: Path) -> None:
    with_gates = _rollout(_plan(tmp_path / "gated"), "shop/worker")
    assert with_gates.estimate is not None
    # No finished worker deployment to time batches from: 3 batches x 15s + 20s + 20s + 30s of gates.
    assert with_gates.estimate.lower_bound
    assert with_gates.estimate.seconds == 3 * 15 + 20 + 20 + 30
    assert "3 batches x 15s of health check" in with_gates.estimate.basis
    assert "1m10s of analysis gates at 3 checkpoints" in with_gates.estimate.basis


def test_with_history_gates_add_their_wait_and_a_canary_bake_hides_a_shorter_gate(tmp_path: Path) -> None:
    """The web group has two finished deployments to time batches from, and a canary that bakes 2m: the gates at
    the canary checkpoint run during the bake and add nothing; every later checkpoint adds its wait."""
    plain = _rollout(_plan(tmp_path / "plain", "revision-bump-store"), "shop/web")
    gated_web = WEB.replace(WEB_A, WEB_B).replace("  autoRollback:\n    enabled: true\n", GATES)
    gated_plan = _plan_of(tmp_path / "gated", {"manifests/web.yaml": gated_web}, store=True)
    gated = _rollout(gated_plan, "shop/web")

    assert plain.estimate is not None and gated.estimate is not None
    assert [b.hosts for b in gated.batches or []] == [b.hosts for b in plain.batches or []]
    assert [b.bake_after_seconds for b in gated.batches or []] == [b.bake_after_seconds for b in plain.batches or []]
    waits = [p.wait_seconds for p in gated.gate_checkpoints or []]
    batches = len(gated.batches or [])
    assert waits == [0.0] + [20.0] * (batches - 2) + [30.0]
    assert gated.estimate.seconds - plain.estimate.seconds == sum(waits)
    assert "analysis gates" in gated.estimate.basis and "minHealthyTime" in gated.estimate.basis
    text = render_text(gated_plan, width=200)
    assert "then bake 2m, gates error-rate (within the bake)" in text


def test_every_format_shows_the_gates(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    text = render_text(plan, width=200)
    assert "health check: GET http://{address}:8080/healthz on each host after ValidateService" in text
    assert "a host counts once healthy for 15s, failed if not within 2m (healthyDeadline)" in text
    assert ("alarms: worker-5xx, worker-queue-age: one in ALARM stops the deployment and rolls it back "
            "(DEPLOYMENT_STOP_ON_ALARM)") in text
    assert ("gate: error-rate: result < 0.01, 3 measurements 10s apart (20s a run), after batch 1, after batch 2, "
            "after the last batch (batch 3)") in text
    assert "batch 3: worker-3  then gates error-rate, latency 30s" in text
    markdown = render_markdown(plan, mermaid=True)
    assert "**gate**: error-rate: result \\< 0.01" in markdown
    assert "| 3 | worker-3 | gates error-rate, latency 30s |" in markdown
    data = json.loads(render_json(plan))
    worker = next(r for r in data["rollouts"] if r["group"] == "shop/worker")
    assert worker["alarms"]["rollsBack"] is True
    assert [g["checkpoints"] for g in worker["analysis"]][1] == ["after the last batch (batch 3)"]
    # Groups without gates say so with nulls, like `traffic`.
    web = [r for r in data["rollouts"] if r["group"] != "shop/worker"]
    assert all(r["healthCheck"] is None and r["analysis"] is None for r in web)


def test_alarms_without_stop_on_alarm_say_there_is_no_rollback(tmp_path: Path) -> None:
    worker = (WORKER.replace("v2-5f1c0b", "v3-77aa01")
              + GATES.replace("DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM", "DEPLOYMENT_FAILURE")
              .replace("    alarms: [worker-5xx, worker-queue-age]\n",
                       "    alarms: [worker-5xx]\n    ignorePollAlarmFailure: true\n"))
    text = render_text(_plan_of(tmp_path, {"manifests/worker.yaml": worker}, store=True), width=200)
    assert ("alarms: worker-5xx: one in ALARM stops the deployment, no rollback (autoRollback lacks "
            "DEPLOYMENT_STOP_ON_ALARM); alarms that cannot be read are ignored (ignorePollAlarmFailure: true)") in text


def test_a_change_to_the_gates_alone_is_a_settings_change(tmp_path: Path) -> None:
    plan = _plan_of(tmp_path, {"manifests/web.yaml": WEB.replace("  autoRollback:\n    enabled: true\n", GATES)},
                    store=False)
    rollout = _rollout(plan, "shop/web")
    assert rollout.action == "settings"
    assert "monitoring gates changed" in rollout.reason


def test_a_change_to_traffic_control_alone_is_a_settings_change(tmp_path: Path) -> None:
    traffic = ("  trafficControl:\n    loadBalancers:\n"
               "      - haproxy: {runtimeApi: \"unix:/run/haproxy/admin.sock\", backend: web}\n")
    plan = _plan_of(tmp_path, {"manifests/web.yaml": WEB + traffic}, store=False)
    rollout = _rollout(plan, "shop/web")
    assert rollout.action == "settings"
    assert "traffic control changed" in rollout.reason


def test_the_simulation_gets_past_checkpoints_in_the_gates_run_time() -> None:
    """The core's dry run on its own: every checkpoint measured on time and Successful, no alarm firing, so the
    rollout ends and each checkpoint holds the next batch for the gate's run time exactly."""
    desired = gated_desired(count=3, alarms=False)  # 3 measurements 10s apart: 20s a checkpoint
    observed, state = gated_fleet()
    preview = preview_rollout(desired, observed, state, now=T0, tick=timedelta(milliseconds=1))["shop/web"]
    assert preview.complete
    (entry,) = preview.deployments
    assert str(entry.status) == "Succeeded"
    assert [p.where for p in entry.checkpoints] == [
        "after the canary batch", "after batch 2", "after batch 3", "after the last batch (batch 4)"]
    assert all(abs(p.waited.total_seconds() - 20) < 0.01 for p in entry.checkpoints)
    gaps = [(b.after - a.after).total_seconds() for a, b in zip(entry.batches, entry.batches[1:], strict=False)]
    assert all(20 <= gap < 20.01 for gap in gaps)
