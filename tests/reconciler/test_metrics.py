"""The reconciler's metrics (reconciler/shell/metrics.py, docs/metrics.md), in process.

- The gauges over a constructed fleet, exact: every group state, every host-state count, per-host series, the
  info series' revisions and commits; groups and hosts that leave the manifests leave the export.
- The counters and histograms over real passes against a real file store with scripted agents: one deployment
  ended is counted once with its creator and outcome, a failed one and its rollback, batch durations equal to the
  deployment documents' own times, commit-to-dispatch from the commit time given, passes by result (ok, a real
  compare-and-swap conflict, an error from a store whose folder vanished), store operations and errors.
- The store wrapper: one count per operation, a lost compare-and-swap is not an error, the backend's attributes
  stay reachable.
- Settings: the `metrics:` block, its variables and flags, and errors that name the file line or the flag.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract.keys import group_state_key
from contract.models import (
    Deployment,
    DeploymentStatus,
    GroupState,
    HostDeploymentState,
    HostDeploymentStatus,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    QuarantinedRevision,
    Revision,
)
from contract.store import MemoryStore, PreconditionFailed, StoreUnavailable, open_store
from contract.store.instrumented import InstrumentedStore
from reconciler.core import Observed, State
from reconciler.core.observed import Ec2Instance, Ec2Membership
from reconciler.core.phase import GROUP_PHASES
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile
from reconciler.errors import ManifestErrors, SettingsError
from reconciler.settings import ReconcileSettings, load_settings, parse_listen_address
from reconciler.shell.executor import Applied
from reconciler.shell.lease import WriteLease
from reconciler.shell.metrics import HOST_STATES, MeteredPassRunner, ReconcilerMetrics
from reconciler.shell.observe import Snapshot, StoreReader
from reconciler.shell.passes import PassOutcome
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, local_revision, settings_overrides

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=10)
COMMIT = "c" * 40
WEB_COMMIT = "a" * 40
OLD_COMMIT = "b" * 40

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def bundle(version: int) -> Revision:
    return Revision.model_validate({"local": {"path": f"bundles/v{version}.zip", "bundleType": "zip"}})


def samples(metrics: ReconcilerMetrics) -> Samples:
    """Every sample of the text exposition, parsed by prometheus_client's own parser (what a scraper reads)."""
    found: Samples = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def series(found: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in found if sample_name == name]


# --------------------------------------------------------------------------------------------------
# The gauges, over a fleet built by hand

MANIFESTS = """\
apiVersion: deploy/v1
kind: Application
metadata: {name: shop}
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {name: web}
spec:
  application: shop
  revision: {local: {path: bundles/v3.zip, bundleType: zip}}
  targets:
    tagSets: [[{key: role, value: web}]]
    hosts: [ghost]
    ec2TagFilters: [{key: role, value: web}]
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {name: api}
spec:
  application: shop
  revision: {local: {path: bundles/v2.zip, bundleType: zip}}
  targets: {tagSets: [[{key: role, value: api}]]}
"""
CRON = """\
---
apiVersion: deploy/v1
kind: DeploymentGroup
metadata: {name: cron}
spec:
  application: shop
  revision: {local: {path: bundles/v1.zip, bundleType: zip}}
  targets: {tagSets: [[{key: role, value: cron}]]}
"""


def desired(text: str) -> Desired:
    return load_files([ManifestFile("shop.yaml", text.encode())], commit=COMMIT)


def host(host_id: str, role: str, *, heartbeat: datetime, installed: dict[str, tuple[int, str]]
         ) -> tuple[HostRegistration, HostStatus]:
    registration = HostRegistration(host_id=host_id, tags={"role": role}, platform="linux", hostname=host_id,
                                    agent_version="t", registered_at=T0)
    status = HostStatus(host_id=host_id, heartbeat_at=heartbeat, agent_version="t", installed={
        f"shop/{group}": InstalledRevision(application="shop", deployment_group=group, revision=bundle(version),
                                           deployment_id=f"d-{group}-{version}", installed_at=T0)
        for group, (version, _) in installed.items()})
    return registration, status


def deployment(deployment_id: str, group: str, version: int, hosts: dict[str, HostDeploymentStatus], *,
               status: DeploymentStatus = DeploymentStatus.IN_PROGRESS) -> Deployment:
    return Deployment(
        deployment_id=deployment_id, application="shop", deployment_group=group, revision=bundle(version),
        deployment_config="CodeDeployDefault.OneAtATime", status=status, creator="user", created_at=T0,
        updated_at=T0, batches=[[h] for h in hosts],
        hosts={h: HostDeploymentState(status=s, batch=i, generation=None if s is HostDeploymentStatus.SKIPPED else 2,
                                      dispatched_at=T0, finished_at=T0 + timedelta(seconds=5))
               for i, (h, s) in enumerate(hosts.items())},
    )


def record(group: str, **fields: object) -> GroupState:
    return GroupState.model_validate({"application": "shop", "deployment_group": group, "updated_at": T0, **fields})


def fleet() -> tuple[Observed, State]:
    """web is deploying v3 over v2: w1 has it, w2 failed it, w3 runs it but went silent, ghost (an explicit host)
    never registered, i-0miss is an EC2 instance of the group with no agent. api's v2 failed on a1 and is
    quarantined; both hosts still run v1. `old` has a record but left the manifests; `gone` was marked removed."""
    online = NOW - timedelta(seconds=10)
    hosts = {
        "w1": host("w1", "web", heartbeat=online, installed={"web": (3, "d-web-3")}),
        "w2": host("w2", "web", heartbeat=online, installed={"web": (2, "d-web-2")}),
        "w3": host("w3", "web", heartbeat=T0, installed={"web": (2, "d-web-2")}),
        "a1": host("a1", "api", heartbeat=online, installed={"api": (1, "d-api-1")}),
        "a2": host("a2", "api", heartbeat=online, installed={"api": (1, "d-api-1")}),
    }
    observed = Observed(
        registrations={h: registration for h, (registration, _) in hosts.items()},
        statuses={h: status for h, (_, status) in hosts.items()},
        ec2={"shop/web": Ec2Membership(read_at=NOW, instances=(Ec2Instance("i-0miss", "running"),))},
    )
    web_2 = deployment("d-web-2", "web", 2,
                       {"w1": HostDeploymentStatus.SUCCEEDED, "w2": HostDeploymentStatus.SUCCEEDED},
                       status=DeploymentStatus.SUCCEEDED)
    web_3 = deployment("d-web-3", "web", 3, {"w1": HostDeploymentStatus.SUCCEEDED, "w2": HostDeploymentStatus.FAILED,
                                             "w3": HostDeploymentStatus.IN_PROGRESS})
    api_2 = deployment("d-api-2", "api", 2, {"a1": HostDeploymentStatus.FAILED, "a2": HostDeploymentStatus.SKIPPED},
                       status=DeploymentStatus.FAILED)
    groups = {
        "shop/web": record("web", desired_revision=bundle(3), desired_commit=WEB_COMMIT, effective_revision=bundle(2),
                           effective_commit=OLD_COMMIT, deployment_in_flight="d-web-3",
                           history=["d-web-2", "d-web-3"]),
        "shop/api": record("api", desired_revision=bundle(2), desired_commit=OLD_COMMIT, effective_revision=bundle(1),
                           effective_commit=OLD_COMMIT, history=["d-api-2"],
                           quarantined=[QuarantinedRevision(revision=bundle(2), source_commit=OLD_COMMIT,
                                                            deployment_id="d-api-2", reason="failed", since=T0)]),
        "shop/old": record("old", desired_revision=bundle(1), effective_revision=bundle(1)),
        "shop/gone": record("gone", desired_revision=bundle(1), removed=True),
    }
    state = State(groups=groups, deployments={d.deployment_id: d for d in (web_2, web_3, api_2)})
    return observed, state


def outcome_of(manifests: Desired, observed: Observed, state: State, number: int = 1) -> PassOutcome:
    return PassOutcome(number=number, commit=manifests.commit, started_at=NOW, now=NOW,
                       duration=timedelta(milliseconds=40), snapshot=Snapshot(observed, state), actions=[],
                       applied=Applied(), state_after=state, desired=manifests)


def test_gauges_describe_every_group_and_host_exactly() -> None:
    metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3))
    observed, state = fleet()
    metrics.on_pass(outcome_of(desired(MANIFESTS + CRON), observed, state))
    found = samples(metrics)

    def hosts(group: str) -> dict[str, float]:
        return {s: value(found, "fleetshift_group_hosts", application="shop", group=group, state=s)
                for s in HOST_STATES}

    assert hosts("web") == {"online": 2, "offline": 3, "missing": 1, "on_desired_revision": 1,
                            "on_effective_revision": 2, "in_progress": 1, "failed": 1}
    assert hosts("api") == {"online": 2, "offline": 0, "missing": 0, "on_desired_revision": 0,
                            "on_effective_revision": 2, "in_progress": 0, "failed": 1}
    assert hosts("cron") == dict.fromkeys(HOST_STATES, 0)

    states = {group: {s for s in GROUP_PHASES
                      if value(found, "fleetshift_group_state", application="shop", group=group, state=s) == 1}
              for group in ("web", "api", "cron", "old")}
    assert states == {"web": {"deploying"}, "api": {"quarantined"}, "cron": {"new"}, "old": {"removed"}}
    # One series per state word for each group, the others at 0.
    assert len(series(found, "fleetshift_group_state")) == 4 * len(GROUP_PHASES)

    info = {labels["group"]: labels for labels in series(found, "fleetshift_group_info")}
    assert sorted(info) == ["api", "cron", "old", "web"]  # `gone` was marked removed: no series at all
    assert info["web"] == {"application": "shop", "group": "web", "desired_revision": "bundles/v3.zip",
                           "effective_revision": "bundles/v2.zip", "desired_commit": WEB_COMMIT,
                           "effective_commit": OLD_COMMIT}
    assert (info["cron"]["desired_commit"], info["cron"]["effective_revision"]) == (COMMIT, "")
    assert value(found, "fleetshift_group_quarantined_revisions", application="shop", group="api") == 1
    assert value(found, "fleetshift_group_quarantined_revisions", application="shop", group="web") == 0
    assert value(found, "fleetshift_group_deployment_in_flight", application="shop", group="web") == 1
    assert value(found, "fleetshift_group_deployment_in_flight", application="shop", group="api") == 0

    up = {labels["host"]: value(found, "fleetshift_host_up", **labels)
          for labels in series(found, "fleetshift_host_up")}
    assert up == {"w1": 1, "w2": 1, "w3": 0, "ghost": 0, "i-0miss": 0, "a1": 1, "a2": 1}
    on_desired = {labels["host"]: value(found, "fleetshift_host_on_desired_revision", **labels)
                  for labels in series(found, "fleetshift_host_on_desired_revision")}
    assert on_desired == {"w1": 1, "w2": 0, "w3": 0, "ghost": 0, "i-0miss": 0, "a1": 0, "a2": 0}
    assert value(found, "fleetshift_last_pass_timestamp_seconds") == NOW.timestamp()
    assert value(found, "fleetshift_lease_held") == 0  # no lease given: a standby's view


def test_series_of_groups_and_hosts_that_leave_disappear_and_per_host_series_can_be_off() -> None:
    metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3))
    observed, state = fleet()
    metrics.on_pass(outcome_of(desired(MANIFESTS + CRON), observed, state))
    assert {labels["group"] for labels in series(samples(metrics), "fleetshift_group_info")} >= {"cron"}

    # cron leaves the manifests (it had no record), w3 leaves the fleet: the next scrape has neither.
    observed = dataclasses.replace(
        observed, registrations={h: r for h, r in observed.registrations.items() if h != "w3"},
        statuses={h: s for h, s in observed.statuses.items() if h != "w3"})
    metrics.on_pass(outcome_of(desired(MANIFESTS), observed, state, number=2))
    found = samples(metrics)
    assert "cron" not in {labels["group"] for labels in series(found, "fleetshift_group_info")}
    assert "cron" not in {labels["group"] for labels in series(found, "fleetshift_group_hosts")}
    assert "w3" not in {labels["host"] for labels in series(found, "fleetshift_host_up")}

    quiet = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3), host_series=False)
    quiet.on_pass(outcome_of(desired(MANIFESTS), observed, state))
    found = samples(quiet)
    assert series(found, "fleetshift_host_up") == [] and series(found, "fleetshift_host_on_desired_revision") == []
    assert value(found, "fleetshift_group_hosts", application="shop", group="web", state="online") == 2


def test_before_the_first_pass_only_the_lease_and_the_zeroed_counters_are_exported() -> None:
    metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3))
    found = samples(metrics)
    assert value(found, "fleetshift_lease_held") == 0
    assert series(found, "fleetshift_last_pass_timestamp_seconds") == []  # absent, never a misleading 0
    assert series(found, "fleetshift_group_info") == []
    assert {labels["result"] for labels in series(found, "fleetshift_passes_total")} == {"ok", "conflict", "error"}
    assert all(value(found, "fleetshift_passes_total", result=r) == 0 for r in ("ok", "conflict", "error"))


def test_event_and_notification_counters_for_the_lead() -> None:
    metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3))
    metrics.count_event("deployment.failed", "error")
    metrics.count_event("deployment.failed", "error")
    metrics.count_notification("on-call", "slack", "sent")
    found = samples(metrics)
    assert value(found, "fleetshift_events_total", type="deployment.failed", severity="error") == 2
    assert value(found, "fleetshift_notifications_total", notification="on-call", provider="slack", result="sent") == 1


# --------------------------------------------------------------------------------------------------
# Counters and histograms, over real passes


class Rollout:
    """Real passes against a real file store, agents played by `ScriptedAgents`, metrics fed as `watch` feeds them."""

    def __init__(self, tmp_path: Path, *, commit_time: datetime | None = None, hosts: int = 3) -> None:
        self.metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(seconds=30),
                                         commit_time=(lambda _commit: commit_time) if commit_time else None)
        self.raw = open_store(f"file://{tmp_path / 'store'}")
        self.store = self.metrics.instrument(self.raw)
        self.config = Config(tmp_path / "config")
        self.agents = ScriptedAgents(self.store, [f"h{i}" for i in range(1, hosts + 1)])
        self.agents.register()
        settings = ReconcileSettings.model_validate(settings_overrides())
        self.lease = WriteLease(self.store, duration=settings.lease_duration)
        assert self.lease.try_acquire()
        self.metrics.watch_lease(self.lease)
        self.runner = MeteredPassRunner(self.store, self.lease, settings, metrics=self.metrics)

    def deploy(self, version: int, *, passes: int = 20) -> int:
        """Commit `version` and run passes until settled; the number of passes."""
        self.config.set_group(group_manifest(revision=local_revision(version)), message=f"v{version}")
        for number in range(1, passes + 1):
            outcome = self.runner.run_pass(self.config.desired())
            self.metrics.on_pass(outcome)
            if outcome.settled:
                return number
            self.agents.answer()
        raise AssertionError(f"v{version} did not settle in {passes} passes")

    def group(self) -> GroupState:
        stored = self.raw.get(group_state_key("hello", "web"))
        assert stored is not None
        return GroupState.model_validate_json(stored.data)

    def deployment(self, deployment_id: str) -> Deployment:
        stored = self.raw.get(f"deployments/{deployment_id}.json")
        assert stored is not None
        return Deployment.model_validate_json(stored.data)


def batch_seconds(deployment: Deployment) -> list[float]:
    spans = []
    for batch in deployment.batches:
        states = [deployment.hosts[h] for h in batch]
        start = min(s.dispatched_at for s in states if s.dispatched_at)
        end = max(s.finished_at for s in states if s.finished_at)
        spans.append((end - start).total_seconds())
    return spans


def test_a_rollout_is_counted_once_with_its_batches_and_commit_to_dispatch(tmp_path: Path) -> None:
    committed = datetime.now(UTC) - timedelta(minutes=5)
    rollout = Rollout(tmp_path, commit_time=committed)
    passes = rollout.deploy(1)  # the first deployment goes to every host at once (none is healthy yet)
    passes += rollout.deploy(2)  # the second one host at a time: three batches
    found = samples(rollout.metrics)
    web = {"application": "hello", "group": "web"}
    assert value(found, "fleetshift_deployments_total", **web, creator="user", outcome="Succeeded") == 2
    # Every other outcome of the group starts at 0, so the first failure is an increase an alert can see.
    assert value(found, "fleetshift_deployments_total", **web, creator="user", outcome="Failed") == 0
    assert value(found, "fleetshift_deployments_total", **web, creator="rollback", outcome="Succeeded") == 0
    assert value(found, "fleetshift_passes_total", result="ok") == passes
    assert value(found, "fleetshift_pass_duration_seconds_count") == passes
    deployments = [rollout.deployment(d) for d in rollout.group().history]
    assert [len(d.batches) for d in deployments] == [1, 3]
    assert value(found, "fleetshift_deployment_duration_seconds_count", **web, outcome="Succeeded") == 2
    assert value(found, "fleetshift_deployment_duration_seconds_sum", **web, outcome="Succeeded") == pytest.approx(
        sum((d.ended_at - d.created_at).total_seconds() for d in deployments if d.ended_at))
    assert value(found, "fleetshift_batch_duration_seconds_count", **web) == 4
    assert value(found, "fleetshift_batch_duration_seconds_sum", **web) == pytest.approx(
        sum(sum(batch_seconds(d)) for d in deployments))
    firsts = [min(s.dispatched_at for s in d.hosts.values() if s.dispatched_at) for d in deployments]
    assert value(found, "fleetshift_commit_to_dispatch_seconds_count", **web) == 2
    assert value(found, "fleetshift_commit_to_dispatch_seconds_sum", **web) == pytest.approx(
        sum((first - committed).total_seconds() for first in firsts))
    assert value(found, "fleetshift_group_state", **web, state="converged") == 1
    assert value(found, "fleetshift_lease_held") == 1
    # Every store operation went through the wrapper; none failed.
    assert value(found, "fleetshift_store_operations_total", operation="list") > 0
    assert value(found, "fleetshift_store_operations_total", operation="put_if_absent") > 0
    assert sum(value(found, "fleetshift_store_errors_total", operation=op) for op in
               ("get", "put", "put_if_absent", "put_if_version", "delete", "list")) == 0

    rollout.deploy(2)  # nothing new: no deployment counted twice, no batch observed twice
    found = samples(rollout.metrics)
    assert value(found, "fleetshift_deployments_total", **web, creator="user", outcome="Succeeded") == 2
    assert value(found, "fleetshift_batch_duration_seconds_count", **web) == 4


def test_a_failed_deployment_its_rollback_and_the_quarantine(tmp_path: Path) -> None:
    rollout = Rollout(tmp_path)
    rollout.deploy(1)
    rollout.agents.failing["h2"] = "v2.zip"
    rollout.deploy(2)
    found = samples(rollout.metrics)
    web = {"application": "hello", "group": "web"}
    assert value(found, "fleetshift_deployments_total", **web, creator="user", outcome="Succeeded") == 1
    assert value(found, "fleetshift_deployments_total", **web, creator="user", outcome="Failed") == 1
    assert value(found, "fleetshift_deployments_total", **web, creator="rollback", outcome="Succeeded") == 1
    assert value(found, "fleetshift_deployment_duration_seconds_count", **web, outcome="Failed") == 1
    assert value(found, "fleetshift_deployment_duration_seconds_count", **web, outcome="Succeeded") == 2
    assert value(found, "fleetshift_group_state", **web, state="quarantined") == 1
    assert value(found, "fleetshift_group_quarantined_revisions", **web) == 1
    assert value(found, "fleetshift_group_hosts", **web, state="on_effective_revision") == 3
    assert value(found, "fleetshift_group_hosts", **web, state="on_desired_revision") == 0
    info = series(found, "fleetshift_group_info")
    assert [(i["desired_revision"], i["effective_revision"]) for i in info] == [("bundles/v2.zip", "bundles/v1.zip")]
    # Every event the passes recorded is counted once: the counter equals the events in the records.
    recorded: dict[tuple[str, str], float] = {}
    for deployment in StoreReader(rollout.raw).records().deployments.values():
        for event in deployment.events:
            key = (event.type.value, event.severity.value)
            recorded[key] = recorded.get(key, 0) + 1
    counted = {
        (dict(labels)["type"], dict(labels)["severity"]): count
        for (name, labels), count in found.items()
        if name == "fleetshift_events_total" and count
    }
    assert counted == recorded
    assert counted[("deployment.failed", "error")] == 1 and counted[("rollback.succeeded", "warning")] == 1


def test_a_pass_that_loses_a_compare_and_swap_counts_as_a_conflict(tmp_path: Path) -> None:
    rollout = Rollout(tmp_path)
    rollout.deploy(1)
    rollout.config.set_group(group_manifest(revision=local_revision(2)), message="v2")

    def operator_writes_meanwhile(_snapshot: Snapshot) -> None:
        # Another writer (an operator's `stop`, say) rewrites the group record after this pass read it.
        key = group_state_key("hello", "web")
        stored = rollout.raw.get(key)
        assert stored is not None
        rollout.raw.put(key, stored.data)

    outcome = rollout.runner.run_pass(rollout.config.desired(), before_decide=operator_writes_meanwhile)
    rollout.metrics.on_pass(outcome)
    assert outcome.conflict == group_state_key("hello", "web")
    found = samples(rollout.metrics)
    assert value(found, "fleetshift_passes_total", result="conflict") == 1
    # The lost compare-and-swap is an answer from the store, not a store error.
    assert value(found, "fleetshift_store_errors_total", operation="put_if_version") == 0


def test_a_pass_that_raises_counts_as_an_error_and_so_does_the_failed_store_operation(tmp_path: Path) -> None:
    rollout = Rollout(tmp_path)
    rollout.deploy(1)
    (tmp_path / "store").rename(tmp_path / "store-unmounted")  # the store's folder vanishes under a running pass
    with pytest.raises(StoreUnavailable):
        rollout.runner.run_pass(rollout.config.desired())
    found = samples(rollout.metrics)
    assert value(found, "fleetshift_passes_total", result="error") == 1
    errors = {op: value(found, "fleetshift_store_errors_total", operation=op)
              for op in ("get", "put", "put_if_absent", "put_if_version", "delete", "list")}
    assert sum(errors.values()) >= 1, errors


# --------------------------------------------------------------------------------------------------
# The store wrapper


def test_the_store_wrapper_counts_operations_and_failures_but_not_lost_compare_and_swaps() -> None:
    calls: list[tuple[str, bool]] = []
    store = InstrumentedStore(MemoryStore(), lambda operation, failed: calls.append((operation, failed)))
    version = store.put_if_absent("groups/a.json", b"{}")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("groups/a.json", b"{}")
    with pytest.raises(PreconditionFailed):
        store.put_if_version("groups/a.json", b"{}", "not-" + version)
    assert store.get("groups/a.json") is not None
    assert [o.key for o in store.list("groups/")] == ["groups/a.json"]
    store.delete("groups/a.json")
    with pytest.raises(Exception, match="invalid store key"):
        store.get("../escape")
    assert calls == [("put_if_absent", False), ("put_if_absent", False), ("put_if_version", False), ("get", False),
                     ("list", False), ("delete", False), ("get", True)]
    assert store.local is True  # the backend's attributes stay reachable through the wrapper


# --------------------------------------------------------------------------------------------------
# Settings


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_the_metrics_block_variables_and_flags_layer_like_every_setting(workdir: Path) -> None:
    config = workdir / "deploy.yaml"
    config.write_text("metrics:\n  address: 127.0.0.1:9464\n  textfile: /var/lib/node/fleetshift.prom\n"
                      "  hostSeries: false\n")
    settings = load_settings(config, environ={})
    assert (settings.metrics.address, settings.metrics.host_series) == ("127.0.0.1:9464", False)
    assert settings.metrics.textfile == Path("/var/lib/node/fleetshift.prom")
    settings = load_settings(config, environ={"FLEETSHIFT_METRICS_PUSH_URL": "http://push:9091"},
                             flags={"metrics": {"address": ":9100"}})
    assert (settings.metrics.address, settings.metrics.push_url) == (":9100", "http://push:9091")


def test_a_bad_address_or_push_url_names_the_line_or_the_flag(workdir: Path) -> None:
    config = workdir / "deploy.yaml"
    config.write_text("logging:\n  level: info\nmetrics:\n  address: localhost\n")
    with pytest.raises(ManifestErrors) as errors:
        load_settings(config, environ={})
    (error,) = errors.value.errors
    assert (error.line, error.field) == (4, "metrics.address")
    assert "is not HOST:PORT" in str(error)
    with pytest.raises(SettingsError, match=r"--metrics-push-url: .*'push:9091' is not an http:// or https:// URL"):
        load_settings(None, environ={}, flags={"metrics": {"pushUrl": "push:9091"}})


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("0.0.0.0", 9464)), ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)),
])
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("9464", "is not HOST:PORT"), ("host:http", "is not HOST:PORT"), ("host:70000", "out of range"),
    ("::1:9464", "IPv6 address in brackets"),
])
def test_bad_listen_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_listen_address(text)


def test_deploy_yaml_example_documents_every_metrics_key() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy.yaml.example"
    settings = load_settings(example, environ={})
    assert settings.metrics == type(settings.metrics)()  # every default, as written there
    text = example.read_text()
    for name, info in type(settings.metrics).model_fields.items():
        assert f"  {info.alias or name}:" in text, f"metrics.{info.alias or name} is not documented"


def test_served_over_http_without_created_series_and_a_name_filter_works() -> None:
    metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3))
    metrics.count_event("deployment.started", "info")
    server = metrics.serve("127.0.0.1:0")
    try:
        assert server.address.startswith("127.0.0.1:") and not server.address.endswith(":0")
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'fleetshift_events_total{severity="info",type="deployment.started"} 1.0' in body
        assert "_created" not in body  # prometheus_client's creation-time series are not exported
        assert "fleetshift_lease_held 0.0" in body
        query = urllib.parse.urlencode({"name[]": "fleetshift_passes_total"})
        with urllib.request.urlopen(f"http://{server.address}/metrics?{query}", timeout=5) as response:
            names = {f.name for f in text_string_to_metric_families(response.read().decode())}
        assert names == {"fleetshift_passes"}
    finally:
        server.close()


def test_a_reconciler_that_lost_the_lease_stops_describing_the_fleet_but_keeps_its_counters() -> None:
    metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3))
    observed, state = fleet()
    metrics.on_pass(outcome_of(desired(MANIFESTS), observed, state))
    assert series(samples(metrics), "fleetshift_group_info") != []
    metrics.forget_view()  # what `watch` does on LeaseLost: the new leader describes the fleet now
    found = samples(metrics)
    assert series(found, "fleetshift_group_info") == [] and series(found, "fleetshift_host_up") == []
    assert series(found, "fleetshift_last_pass_timestamp_seconds") == []
    assert value(found, "fleetshift_passes_total", result="ok") == 1
