"""The example Grafana dashboard (examples/grafana/fleetshift.json) and the alerts in docs/metrics.md are built on
metrics that exist: every `fleetshift_*` name in their PromQL is a series the reconciler's registry exports or one
of the agent's documented names, and promtool (Prometheus' own checker) accepts the alert rules and, as recording
rules, every query of the dashboard. The dashboard is importable anywhere: its data source is a variable, and
every panel and query uses it. That the queries return data from a real reconciler is the end-to-end test's job
(tests/reconciler/test_metrics_e2e.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.shell.metrics import ReconcilerMetrics, metric_names
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "fleetshift.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

#: The agent's metrics (agent/metrics.py, docs/agent.md "Metrics"): names fixed for dashboards and alerts.
AGENT_METRICS = {
    "fleetshift_agent_info": "gauge",
    "fleetshift_agent_lifecycle_events_total": "counter",
    "fleetshift_agent_hook_duration_seconds": "histogram",
    "fleetshift_agent_commands_total": "counter",
    "fleetshift_agent_command_in_progress": "gauge",
    "fleetshift_agent_polls_total": "counter",
    "fleetshift_agent_poll_errors_total": "counter",
    "fleetshift_agent_last_successful_poll_timestamp_seconds": "gauge",
    "fleetshift_agent_command_refusals_total": "counter",
    "fleetshift_agent_store_write_errors_total": "counter",
}

NAME = re.compile(r"\bfleetshift_[a-z0-9_]+\b")


def known_names() -> set[str]:
    names = metric_names(ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3)))
    for name, kind in AGENT_METRICS.items():
        names.update({name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name})
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and annotation."""
    queries = [(f"panel {p['title']!r}", t["expr"]) for p in panels(board) for t in p.get("targets", [])]
    queries += [(f"annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"] if "expr" in a]
    return queries


def variable_queries(board: dict[str, Any]) -> list[str]:
    return [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]


def alert_rules() -> dict[str, Any]:
    """The rules file shown in docs/metrics.md, "Alerts"."""
    text = METRICS_DOC.read_text()
    section = text[text.index("## Alerts"):]
    block = re.search(r"```yaml\n(groups:.*?)```", section, re.S)
    assert block is not None, "docs/metrics.md has no rules file under ## Alerts"
    return yaml.safe_load(block.group(1))  # type: ignore[no-any-return]


def test_every_metric_name_the_dashboard_and_the_alerts_use_exists() -> None:
    known = known_names()
    board = dashboard()
    used: dict[str, set[str]] = {}
    texts = [(where, expr) for where, expr in dashboard_queries(board)]
    texts += [("variable", query) for query in variable_queries(board)]
    texts += [(f"alert {rule['alert']}", rule["expr"]) for group in alert_rules()["groups"] for rule in group["rules"]]
    for where, text in texts:
        for name in NAME.findall(text):
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert unknown == {}
    # What the issue asks the dashboard to show, by the metrics that show it.
    shown = {name for where, expr in dashboard_queries(board) for name in NAME.findall(expr)}
    for needed in ("fleetshift_group_state", "fleetshift_group_hosts", "fleetshift_deployments_total",
                   "fleetshift_pass_duration_seconds_bucket", "fleetshift_deployment_duration_seconds_bucket",
                   "fleetshift_commit_to_dispatch_seconds_bucket", "fleetshift_agent_hook_duration_seconds_bucket",
                   "fleetshift_agent_poll_errors_total"):
        assert needed in shown, f"the dashboard shows nothing from {needed}"


def test_every_metric_documented_in_the_table_exists_and_every_exported_one_is_documented() -> None:
    text = METRICS_DOC.read_text()
    documented = set(re.findall(r"^\| `(fleetshift_[a-z0-9_]+)` \|", text, re.M))
    metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3))
    exported = {family.name + ("_total" if family.type == "counter" else "") for family in metrics.exported.collect()}
    assert documented - set(AGENT_METRICS) == exported
    assert set(AGENT_METRICS) <= documented


def test_the_dashboard_is_importable_anywhere_its_data_source_is_a_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"application", "group", "instance"} <= set(variables)
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    assert "uid" in board and board["schemaVersion"] >= 36
    # No data source is pinned anywhere (an import on another Grafana would point at nothing).
    assert '"uid": "prometheus"' not in DASHBOARD.read_text()


def as_sent_by_grafana(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "15s")
    return re.sub(r"\$\{?(application|group|instance)(?::\w+)?\}?", ".*", expr)


def promtool(tmp_path: Path, rules: dict[str, Any], name: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_promtool_accepts_the_alerts_and_every_dashboard_query(tmp_path: Path) -> None:
    require_tool("promtool", "prometheus")
    checked = promtool(tmp_path, alert_rules(), "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": as_sent_by_grafana(expr)}
        for index, (_, expr) in enumerate(dashboard_queries(dashboard()))]}]}
    checked = promtool(tmp_path, recording, "dashboard.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("expr", ["fleetshift_no_such_metric", "sum(rate(fleetshift_passes[5m]))"])
def test_the_name_check_catches_a_name_that_does_not_exist(expr: str) -> None:
    assert not set(NAME.findall(expr)) <= known_names()
