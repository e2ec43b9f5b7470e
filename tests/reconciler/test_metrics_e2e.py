"""End to end: `reconcile watch --metrics-address` as a real process, three real `deploy-agent run` processes, a real
Git config repo and app repo, and a real Prometheus (the system's binary) scraping the reconciler's `/metrics`.
Two commits roll out to completion (v1 to every host at once, v2 one host at a time); then the assertions are
PromQL over Prometheus' HTTP API, as an on-call engineer's dashboard and alerts would ask: deployments by outcome,
hosts online, group state, the pass, batch and commit-to-dispatch histograms, the lease. Every query of the
example Grafana dashboard is then run against the same Prometheus: each must be accepted (valid PromQL) and the
panels about the reconciler must have data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.local_fleet import LocalAgent, stop_all
from contract.keys import group_state_key
from contract.models import GroupState
from contract.store import Store, open_store
from fleetlab.prometheus import LocalPrometheus, PrometheusError
from tests.conftest import require_tool
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import Reconciler, wait_for
from tests.reconciler.test_metrics_dashboard import DASHBOARD, as_sent_by_grafana, dashboard_queries

pytestmark = pytest.mark.slow

HOSTS = ["m-1", "m-2", "m-3"]

MANIFESTS = """\
apiVersion: deploy/v1
kind: Application
metadata: {{name: hello}}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {{name: web}}
spec:
  application: hello
  revision:
    git: {{repository: {repository}, commit: {commit}}}
  targets:
    tagSets: [[{{key: app, value: metrics-e2e}}]]
  deploymentConfig: CodeDeployDefault.OneAtATime
"""

APPSPEC = """\
version: 0.0
os: linux
hooks:
  ValidateService:
    - location: scripts/validate.sh
"""


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    fleet = [LocalAgent(host, tmp_path / host, tags={"app": "metrics-e2e"},
                        env={"FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": "200ms"}) for host in HOSTS]
    try:
        for agent in fleet:
            agent.start(store_url)
        wait_for(lambda: len([o for o in store.list("hosts/") if o.key.endswith("/status.json")]) == len(HOSTS),
                 30, "the agents to report")
        yield store_url, store
    finally:
        stop_all(fleet)


def effective_commit(store: Store) -> str | None:
    stored = store.get(group_state_key("hello", "web"))
    if stored is None:
        return None
    group = GroupState.model_validate_json(stored.data)
    revision = group.effective_revision
    return revision.git.commit if revision is not None and revision.git is not None and not \
        group.deployment_in_flight else None


def scalar(prometheus: LocalPrometheus, promql: str) -> float | None:
    """The single value of an instant query, or None while it has no result yet."""
    values = prometheus.values(promql, by="__none__")
    return values.get("") if values else None


def eventually(prometheus: LocalPrometheus, promql: str, expected: float, timeout: float = 30.0) -> None:
    """Prometheus answers `promql` with `expected` within `timeout` (a scrape a second, so within a few)."""
    seen: list[float | None] = []

    def answered() -> bool:
        seen.append(scalar(prometheus, promql))
        return seen[-1] == expected

    try:
        wait_for(answered, timeout, f"{promql} == {expected}", every=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers: {seen[-5:]}") from None


def test_watch_metrics_scraped_by_a_real_prometheus_after_two_rollouts(
    tmp_path: Path, agents: tuple[str, Store]
) -> None:
    require_tool("prometheus", "prometheus")
    store_url, store = agents
    app = ConfigRepo(tmp_path / "app-repo")
    app.write("appspec.yml", APPSPEC)
    app.write("scripts/validate.sh", "#!/bin/bash\necho validated\n")
    (app.path / "scripts" / "validate.sh").chmod(0o755)
    v1 = app.commit("app v1")
    app.write("VERSION", "2\n")
    v2 = app.commit("app v2")
    config = ConfigRepo(tmp_path / "config-repo")
    config.write("manifests/hello.yaml", MANIFESTS.format(repository=app.path, commit=v1))
    config.commit("deploy v1")

    watch = Reconciler(
        ["--repo", str(config.path), "--ref", "main", "--path", "manifests", "--store", store_url, "watch",
         "--metrics-address", "127.0.0.1:0"],
        tmp_path / "watch.log",
        {"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "100ms", "FLEETSHIFT_RECONCILE_LEASE_DURATION": "5s",
         "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "30s", "FLEETSHIFT_RECONCILE_RESYNC_INTERVAL": "2s"},
    )
    prometheus: LocalPrometheus | None = None
    try:
        serving = watch.wait_event("metrics.serving")
        host, _, port = serving["address"].rpartition(":")
        prometheus = LocalPrometheus(tmp_path / "prometheus", [("reconciler", host, int(port))], job="fleetshift")
        prometheus.start()

        wait_for(lambda: effective_commit(store) == v1, 90, "v1 on every host")
        config.write("manifests/hello.yaml", MANIFESTS.format(repository=app.path, commit=v2))
        config.commit("deploy v2")
        wait_for(lambda: effective_commit(store) == v2, 90, "v2 on every host, one at a time")

        prometheus.wait_for_targets_up(timeout=30)
        eventually(prometheus, 'sum(fleetshift_deployments_total{outcome="Succeeded"})', 2)
        eventually(prometheus, 'sum(fleetshift_deployments_total{outcome="Failed"})', 0)
        eventually(prometheus, 'sum(fleetshift_group_hosts{state="online"})', len(HOSTS))
        eventually(prometheus, 'sum(fleetshift_group_hosts{state="on_desired_revision"})', len(HOSTS))
        eventually(prometheus, 'fleetshift_group_state{group="web",state="converged"}', 1)
        eventually(prometheus, "count(fleetshift_host_up == 1)", len(HOSTS))
        eventually(prometheus, "fleetshift_lease_held", 1)
        # v1 went to the three hosts in one batch (none was healthy yet), v2 one host at a time.
        eventually(prometheus, "sum(fleetshift_batch_duration_seconds_count)", 4)
        eventually(prometheus, "sum(fleetshift_commit_to_dispatch_seconds_count)", 2)
        eventually(prometheus, 'count(fleetshift_group_info{desired_revision=~"app-repo@.*",'
                               f'effective_commit="{config.repo.head.commit.hexsha}"}})', 1)
        passes = scalar(prometheus, "fleetshift_pass_duration_seconds_count")
        assert passes is not None and passes > 0
        assert scalar(prometheus, 'fleetshift_passes_total{result="ok"}') == passes
        waited = scalar(prometheus, "sum(fleetshift_commit_to_dispatch_seconds_sum)")
        assert waited is not None and 0 <= waited < 180, waited  # seconds from each commit to its first batch
        age = scalar(prometheus, "time() - fleetshift_last_pass_timestamp_seconds")
        assert age is not None and age < 60, age
        reads = scalar(prometheus, 'fleetshift_store_operations_total{operation="list"}')
        assert reads is not None and reads > 0

        # Every query of the example dashboard is valid PromQL for this Prometheus, and the reconciler's panels
        # have data (the agents' panels need the agents' own endpoints, not scraped here; a filter such as "hosts
        # down" is rightly empty). rate() needs two samples in its window: wait for a few scrapes.
        prometheus.wait_for_samples("fleetshift_passes_total", count=3, timeout=30)
        queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
        assert queries, "the dashboard has no queries"
        empty = []
        for where, expr in queries:
            try:
                result = prometheus.query(as_sent_by_grafana(expr))
            except PrometheusError as exc:
                raise AssertionError(f"{where}: {expr!r} is refused by Prometheus: {exc}") from None
            is_filter = re.search(r"(==|>) 0$", expr) is not None  # hosts down, failed deployments: rightly empty
            if "fleetshift_agent_" not in expr and not is_filter and not result["result"]:
                empty.append((where, expr))
        assert empty == [], f"reconciler panels without data: {empty}"
    finally:
        watch.stop()
        if prometheus is not None:
            prometheus.stop()
