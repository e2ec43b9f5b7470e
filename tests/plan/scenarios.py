"""The plan scenarios: a real config repo (base on `main`, the change on a branch) and, for some, a real
file store holding the host registrations, statuses and reconciler records a fleet would have.

Everything is fixed so the rendered plans are byte-for-byte stable: commit dates (so commit SHAs), the
clock handed to the planner, heartbeats relative to that clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contract.keys import command_key, deployment_key, group_state_key, registration_key, status_key
from contract.models import (
    CommandProgress,
    CommandStatus,
    Deployment,
    DeploymentStatus,
    Document,
    GroupState,
    HostCommand,
    HostDeploymentState,
    HostDeploymentStatus,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    QuarantinedRevision,
    Revision,
)
from contract.store import Store, open_store
from reconciler.cli.plan import PlanRequest
from tests.gitrepo import ConfigRepo

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
#: Fixed author/committer dates make commit SHAs the same on every run (GitPython reads these).
GIT_DATES = {"GIT_AUTHOR_DATE": "1740830400 +0000", "GIT_COMMITTER_DATE": "1740830400 +0000"}

WEB_A = "3f2c9e1b7d5a4c8e9f0a1b2c3d4e5f6a7b8c9d0e"
WEB_B = "8a01d2f4c3b2a1908f7e6d5c4b3a29180f7e6d5c"
WORKER_SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

APPLICATION = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: shop
spec:
  description: The shop front and its workers.
"""

CONFIGS = """\
apiVersion: deploy/v1
kind: DeploymentConfig
metadata:
  name: canary-half
spec:
  minimumHealthyHosts: {type: FLEET_PERCENT, value: 50}
  canary: {hosts: 1, bakeTime: 2m}
---
apiVersion: deploy/v1
kind: DeploymentConfig
metadata:
  name: keep-three
spec:
  minimumHealthyHosts: {type: HOST_COUNT, value: 3}
"""

WEB = f"""\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: web
  labels: {{team: storefront}}
spec:
  application: shop
  revision:
    git:
      repository: https://git.example.com/shop/web.git
      commit: {WEB_A}
  targets:
    tagSets:
      - - {{key: app, value: web}}
      - - {{key: env, value: prod}}
        - {{key: env, value: production}}
  deploymentConfig: canary-half
  autoRollback:
    enabled: true
"""

WORKER = f"""\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: worker
spec:
  application: shop
  revision:
    s3: {{bucket: shop-releases, key: worker/worker-2.0.0.tgz, bundleType: tgz, version: v2-5f1c0b}}
    sha256: {WORKER_SHA256}
  targets:
    hosts: [worker-1, worker-2, worker-3]
  deploymentConfig: CodeDeployDefault.HalfAtATime
"""

BASE_FILES = {
    "manifests/application.yaml": APPLICATION,
    "manifests/configs.yaml": CONFIGS,
    "manifests/web.yaml": WEB,
    "manifests/worker.yaml": WORKER,
    "README.md": "The shop's config repo.\n",
}

# Same meaning as WEB: keys and tag sets reordered, flow style, comments, explicit defaults.
WEB_REFORMATTED = f"""\
# The storefront group, rewritten by hand: nothing here changes what it means.
kind: DeploymentGroup
apiVersion: deploy/v1
metadata: {{labels: {{team: storefront}}, name: web}}
spec:
  autoRollback: {{events: [DEPLOYMENT_FAILURE], enabled: true}}  # the default events, now explicit
  options: {{ignoreApplicationStopFailures: false}}              # a default, now explicit
  deploymentConfig: canary-half
  targets:
    tagSets:
      - [{{key: env, value: production}}, {{value: prod, key: env}}]
      - [{{key: app, value: web}}]
  revision: {{git: {{commit: {WEB_A}, repository: "https://git.example.com/shop/web.git"}}}}
  application: shop
"""

API = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: api
spec:
  application: shop
  revision:
    s3: {bucket: shop-releases, key: api/latest.zip, bundleType: zip}
  targets:
    hosts: [api-1, api-2, api-3, api-4, api-5, api-6, api-7]
  deploymentConfig: canary-half
"""

SEARCH = f"""\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: search
spec:
  application: shop
  revision:
    git: {{repository: https://git.example.com/shop/search.git, commit: {WEB_B}}}
  targets:
    tagSets:
      - - {{key: app, value: search}}
  autoRollback: {{enabled: true}}
"""


#: Monitoring gates for a group (docs/gates.md): each host's health check, two CloudWatch alarms, two analysis
#: gates: error-rate after every batch (3 x 10s: 20s a run), latency after the last batch only (30s, then once).
GATES = """\
  autoRollback: {enabled: true, events: [DEPLOYMENT_FAILURE, DEPLOYMENT_STOP_ON_ALARM]}
  healthCheck:
    url: http://{address}:8080/healthz
    minHealthyTime: 15s
    healthyDeadline: 2m
  alarmConfiguration:
    alarms: [worker-5xx, worker-queue-age]
  analysis:
    - name: error-rate
      prometheus:
        address: http://prometheus:9090
        query: 'sum(rate(errors{host=~"{{ batchHosts }}"}[1m])) / sum(rate(requests{host=~"{{ batchHosts }}"}[1m]))'
      successCondition: result < 0.01
      interval: 10s
      count: 3
    - name: latency
      prometheus:
        address: http://prometheus:9090
        query: 'histogram_quantile(0.99, sum by (le) (rate(latency_bucket[5m])))'
      successCondition: result <= 0.25
      initialDelay: 30s
      at: [final]
"""


def _revision_web(commit: str) -> Revision:
    return Revision.model_validate({"git": {"repository": "https://git.example.com/shop/web.git", "commit": commit}})


def _revision_worker(version: str) -> Revision:
    return Revision.model_validate({
        "s3": {"bucket": "shop-releases", "key": "worker/worker-2.0.0.tgz", "bundleType": "tgz", "version": version},
        "sha256": WORKER_SHA256,
    })


WORKER_V2 = _revision_worker("v2-5f1c0b")


class FleetWriter:
    """Writes the documents agents and an earlier reconciler would have written, through the real store.
    Times are relative to `now`, the clock the plan is computed at."""

    def __init__(self, store: Store, now: datetime = NOW) -> None:
        self.store = store
        self.now = now

    def put(self, key: str, document: Document) -> None:
        self.store.put(key, document.to_json())

    def host(self, host_id: str, tags: dict[str, str], *, zone: str | None = None, silent_for: timedelta = timedelta(
            seconds=20), installed: dict[str, tuple[Revision, str]] | None = None,
             command: CommandProgress | None = None) -> None:
        self.put(registration_key(host_id), HostRegistration(
            host_id=host_id, tags=tags, zone=zone, platform="linux", hostname=f"{host_id}.example.internal",
            agent_version="0.1.0", registered_at=self.now - timedelta(days=30)))
        installs = {
            key: InstalledRevision(application=key.split("/")[0], deployment_group=key.split("/")[1],
                                   revision=revision, deployment_id=deployment_id,
                                   installed_at=self.now - timedelta(days=2))
            for key, (revision, deployment_id) in (installed or {}).items()
        }
        self.put(status_key(host_id), HostStatus(host_id=host_id, heartbeat_at=self.now - silent_for,
                                                 agent_version="0.1.0", installed=installs, command=command))
        if command is not None:
            self.put(command_key(host_id), HostCommand(
                host_id=host_id, generation=command.generation, deployment_id=command.deployment_id,
                application=command.application, deployment_group=command.deployment_group,
                deployment_group_id="dg-test", revision=_revision_web(WEB_A), created_at=command.started_at))


def _progress(deployment_id: str, group: str, generation: int, status: CommandStatus,
              at: datetime) -> CommandProgress:
    return CommandProgress(deployment_id=deployment_id, generation=generation, application="shop",
                           deployment_group=group, status=status, started_at=at, ended_at=at + timedelta(seconds=40))


def _history_deployment(deployment_id: str, revision: Revision, hosts: list[str], *, started: datetime,
                        batch_seconds: int, failed: tuple[str, ...] = (), generation: int = 1,
                        group: str = "web") -> Deployment:
    states = {}
    for index, host in enumerate(hosts):
        begin = started + timedelta(seconds=index * batch_seconds)
        states[host] = HostDeploymentState(
            status=HostDeploymentStatus.FAILED if host in failed else HostDeploymentStatus.SUCCEEDED,
            batch=index, generation=generation, dispatched_at=begin,
            finished_at=begin + timedelta(seconds=batch_seconds))
    return Deployment(
        deployment_id=deployment_id, application="shop", deployment_group=group, revision=revision,
        source_commit="1" * 40, deployment_config="CodeDeployDefault.OneAtATime", status=DeploymentStatus.SUCCEEDED,
        hosts=states, batches=[[h] for h in hosts], created_at=started, updated_at=started,
        ended_at=started + timedelta(seconds=len(hosts) * batch_seconds))


def fleet_of_shop(store: Store, now: datetime = NOW) -> None:
    """Six web hosts in two zones (one offline for two hours, one whose last deployment failed), three workers
    on their current revision, and the web group's records: two finished deployments to time batches from and
    a quarantined revision."""
    writer = FleetWriter(store, now)
    web_hosts = [f"web-{n}" for n in range(1, 7)]
    web_a = _revision_web(WEB_A)
    older = _history_deployment("d-web-0001", web_a, web_hosts, started=now - timedelta(days=3), batch_seconds=50)
    recent = _history_deployment("d-web-0002", web_a, web_hosts, started=now - timedelta(days=2), batch_seconds=40,
                                 failed=("web-3",), generation=2)
    for n, host in enumerate(web_hosts, start=1):
        result = CommandStatus.FAILED if host == "web-3" else CommandStatus.SUCCEEDED
        writer.host(host, {"app": "web", "env": "prod" if n % 3 else "production"}, zone="eu-1a" if n % 2 else "eu-1b",
                    silent_for=timedelta(hours=2) if host == "web-6" else timedelta(seconds=20),
                    installed={"shop/web": (web_a, "d-web-0001")},
                    command=_progress("d-web-0002", "web", 2, result, now - timedelta(days=2)))
    writer.put(deployment_key(older.deployment_id), older)
    writer.put(deployment_key(recent.deployment_id), recent)
    writer.put(group_state_key("shop", "web"), GroupState(
        application="shop", deployment_group="web", desired_revision=web_a, desired_commit="1" * 40,
        effective_revision=web_a, effective_commit="1" * 40, history=["d-web-0001", "d-web-0002"],
        quarantined=[QuarantinedRevision(revision=_revision_web("c" * 40), source_commit="2" * 40,
                                         deployment_id="d-web-0000", reason="HEALTH_CONSTRAINTS: 2 hosts failed",
                                         since=now - timedelta(days=4))],
        updated_at=now - timedelta(days=2)))
    for host in ("worker-1", "worker-2", "worker-3"):
        writer.host(host, {"app": "worker"}, installed={"shop/worker": (WORKER_V2, "d-worker-0001")})
    writer.put(group_state_key("shop", "worker"), GroupState(
        application="shop", deployment_group="worker", desired_revision=WORKER_V2, desired_commit="1" * 40,
        effective_revision=WORKER_V2, effective_commit="1" * 40, history=[], updated_at=now - timedelta(days=2)))


def fleet_with_worker_in_flight(store: Store, now: datetime = NOW) -> None:
    """The shop fleet, with a worker deployment in flight right now (worker-1 done, worker-2 running its
    command, worker-3 waiting)."""
    fleet_of_shop(store, now)
    writer = FleetWriter(store, now)
    revision = _revision_worker("v2-9e8d7c")
    in_flight = Deployment(
        deployment_id="d-worker-0009", application="shop", deployment_group="worker", revision=revision,
        source_commit="3" * 40, deployment_config="CodeDeployDefault.HalfAtATime",
        status=DeploymentStatus.IN_PROGRESS,
        hosts={"worker-1": HostDeploymentState(status=HostDeploymentStatus.SUCCEEDED, batch=0, generation=4,
                                               dispatched_at=now - timedelta(minutes=3),
                                               finished_at=now - timedelta(minutes=2)),
               "worker-2": HostDeploymentState(status=HostDeploymentStatus.IN_PROGRESS, batch=1, generation=4,
                                               dispatched_at=now - timedelta(minutes=1)),
               "worker-3": HostDeploymentState()},
        batches=[["worker-1"], ["worker-2"]], created_at=now - timedelta(minutes=3),
        updated_at=now - timedelta(minutes=1))
    writer.put(deployment_key(in_flight.deployment_id), in_flight)
    writer.put(group_state_key("shop", "worker"), GroupState(
        application="shop", deployment_group="worker", desired_revision=revision, desired_commit="3" * 40,
        effective_revision=WORKER_V2, effective_commit="1" * 40, deployment_in_flight="d-worker-0009",
        history=["d-worker-0009"], updated_at=now - timedelta(minutes=1)))
    # worker-2 is running its command right now, as its agent reports.
    command = CommandProgress(deployment_id="d-worker-0009", generation=4, application="shop",
                              deployment_group="worker", status=CommandStatus.IN_PROGRESS,
                              started_at=now - timedelta(minutes=1))
    writer.put(status_key("worker-2"), HostStatus(
        host_id="worker-2", heartbeat_at=now - timedelta(seconds=5), agent_version="0.1.0", command=command,
        installed={"shop/worker": InstalledRevision(application="shop", deployment_group="worker",
                                                    revision=WORKER_V2, deployment_id="d-worker-0001",
                                                    installed_at=now - timedelta(days=2))}))
    writer.put(command_key("worker-2"), HostCommand(
        host_id="worker-2", generation=4, deployment_id="d-worker-0009", application="shop",
        deployment_group="worker", deployment_group_id="dg-test", revision=revision,
        created_at=now - timedelta(minutes=1)))


@dataclass(frozen=True)
class Scenario:
    """What the pull request changes (path -> new content, None to delete) and the fleet, if any."""

    changes: dict[str, str | None]
    fleet: Callable[[Store, datetime], None] | None = None
    exit_code: int = 2
    description: str = ""
    extra_base: dict[str, str] = field(default_factory=dict)


SCENARIOS: dict[str, Scenario] = {
    "no-change": Scenario(
        {"manifests/web.yaml": WEB_REFORMATTED, "README.md": "The shop's config repo, now with more words.\n"},
        exit_code=0, description="reordered keys and tag sets, comments, flow style, explicit defaults"),
    "revision-bump": Scenario({"manifests/web.yaml": WEB.replace(WEB_A, WEB_B)}, description="offline"),
    "revision-bump-store": Scenario({"manifests/web.yaml": WEB.replace(WEB_A, WEB_B)}, fleet=fleet_of_shop,
                                    description="the same change, with a store holding the fleet"),
    "config-change": Scenario({
        "manifests/web.yaml": WEB.replace("canary-half", "CodeDeployDefault.HalfAtATime"),
        "manifests/configs.yaml": CONFIGS.replace("bakeTime: 2m", "bakeTime: 5m"),
        "manifests/worker.yaml": WORKER + "  options: {fileExistsBehavior: OVERWRITE}\n",
    }, description="deployment config and options, no new revision"),
    "new-group": Scenario({"manifests/api.yaml": API}, description="an unpinned revision, rollback disabled, 7 hosts"),
    "removed-group": Scenario({"manifests/worker.yaml": None}),
    "invalid-head": Scenario({
        "manifests/web.yaml": WEB.replace("  deploymentConfig:", "  deploymentConfg:")
        .replace(WEB_A, "3f2c9e1"),
    }, exit_code=1),
    "invalid-base": Scenario(
        {"manifests/broken.yaml": None},
        extra_base={"manifests/broken.yaml": "apiVersion: deploy/v1\nkind: Application\nmetadata: {name: ops}\n"
                                             "spec: {descripton: typo}\n"},
        description="main is broken; the change repairs it: compared as empty, with a warning"),
    "gates": Scenario({
        "manifests/worker.yaml": WORKER.replace("v2-5f1c0b", "v3-77aa01").replace(
            "CodeDeployDefault.HalfAtATime", "CodeDeployDefault.OneAtATime") + GATES,
    }, fleet=fleet_of_shop, description="a new revision for a group with a health check, alarms and two analysis "
                                        "gates"),
    "store-warnings": Scenario({
        "manifests/worker.yaml": WORKER.replace("v2-5f1c0b", "v3-77aa01").replace(
            "CodeDeployDefault.HalfAtATime", "keep-three"),
        "manifests/search.yaml": SEARCH,
    }, fleet=fleet_with_worker_in_flight,
        description="minimum healthy unmet, a deployment in flight, a selector that matches nothing"),
}


@dataclass(frozen=True)
class Built:
    request: PlanRequest
    repo: ConfigRepo
    base_commit: str
    head_commit: str
    store_url: str | None


def build(tmp_path: Path, name: str, *, now: datetime = NOW, store_url: str | None = None) -> Built:
    """The scenario's config repo and store under tmp_path; the request `reconcile plan` would make. The
    fleet's heartbeats are written relative to `now` (the real clock for tests that run the CLI)."""
    scenario = SCENARIOS[name]
    repo = ConfigRepo(tmp_path / "config")
    for path, content in {**BASE_FILES, **scenario.extra_base}.items():
        repo.write(path, content)
    base_commit = repo.commit("base")
    repo.repo.git.checkout("-b", "change")
    for path, new in scenario.changes.items():
        if new is None:
            repo.remove(path)
        else:
            repo.write(path, new)
    head_commit = repo.commit(f"change: {name}")
    # Offline scenarios name a store that does not exist, as a PR job without store access would see it.
    if scenario.fleet is not None:
        if store_url is None:
            store_dir = tmp_path / "store"
            store_dir.mkdir()
            store_url = f"file://{store_dir}"
        scenario.fleet(open_store(store_url), now)
    elif store_url is None:
        store_url = f"file://{tmp_path / 'no-store'}"
    request = PlanRequest(repository=str(repo.path), manifest_path="manifests", configured_ref="main",
                          store=store_url)
    return Built(request=request, repo=repo, base_commit=base_commit, head_commit=head_commit, store_url=store_url)
