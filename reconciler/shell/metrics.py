"""The reconciler's Prometheus metrics (issue 17; the table of every metric is docs/metrics.md).

Where it sits: beside the passes, fed by them and by nothing else. `ReconcilerMetrics` is a `PassListener`: the
watcher (`reconciler.shell.watch`) and `reconcile --once` (`reconciler.cli.run`) hand it every `PassOutcome`, and
it turns what the pass wrote into counters and histograms. Passes that raise are counted by `MeteredPassRunner`,
store operations by the thin wrapper of `contract.store.instrumented`. How the numbers leave the process is the
CLI's choice: an HTTP endpoint for `watch` (`serve`), a node-exporter textfile or a Pushgateway push for `--once`
(`write_textfile`, `push`).

Two kinds of numbers, kept apart on purpose:

- **What happened** (counters, histograms): deployments ended by outcome, passes by result, store operations and
  errors, how long passes, deployments and batches took, how long a commit waited for its first batch. Taken from
  the actions a pass *applied*, so a pass that lost a compare-and-swap half-way counts only what it wrote, and a
  deployment that ends is counted once: the write that ends it is the only `FinishDeployment` for it.
- **How things stand** (gauges): every group's state, revisions and hosts, computed when Prometheus scrapes from
  the last pass's view (`FleetCollector`), never kept as gauge children. A group or host that leaves the manifests
  disappears from the next scrape instead of lingering at its last value until a restart.

Labels stay bounded: application, group, host, and small fixed sets (outcome, creator, state, operation,
result). Never a deployment id, a revision on a counter, or an error message: those grow without end, which is
what makes a Prometheus server fall over. The revisions and commits a group runs are labels of
`fleetshift_group_info` only, one series per group at a time (the pattern of `kube_pod_info` and Argo CD's
`argocd_app_info`).

The registry is private (never prometheus_client's global one): importing this module registers nothing, two
`ReconcilerMetrics` in one process (tests) never collide, and only fleetshift's series are exported.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from contract.atomic import write_atomic
from contract.exposition import WithoutCreated
from contract.models import Deployment, DeploymentStatus, FleetEventLog, HostDeploymentStatus, RecordedEvent
from contract.store import Store
from contract.store.instrumented import OPERATIONS, instrument_store
from reconciler.core import DispatchBatch, FinishDeployment, MembershipIndex, group_members, missing_hosts
from reconciler.core.observed import is_online
from reconciler.core.phase import GROUP_PHASES, group_phase
from reconciler.core.view import installed_by, last_attempts
from reconciler.desired.manifests import Desired
from reconciler.settings import parse_listen_address
from reconciler.shell.lease import WriteLease
from reconciler.shell.passes import MeteredPassRunner, PassOutcome

log = structlog.get_logger(__name__)

#: The Pushgateway job `reconcile --once --metrics-push-url` pushes under.
PUSH_JOB = "fleetshift_reconcile"
#: How long a push may take before it is given up (with a warning): a CI job must not hang on it.
PUSH_TIMEOUT_SECONDS = 10.0

#: `fleetshift_passes_total{result}`: the pass wrote all it decided; a write lost a compare-and-swap (the next pass
#: re-reads); the pass raised (store outage, lease lost, refused commit).
PASS_RESULTS = ("ok", "conflict", "error")
#: The outcomes a deployment can end with (`fleetshift_deployments_total{outcome}`), and who starts deployments.
OUTCOMES = tuple(status.value for status in DeploymentStatus if status.finished)
CREATORS = ("user", "rollback", "outdated")

#: `fleetshift_group_hosts{state}`: the group's members counted by each of these (a host is in several; see
#: docs/metrics.md). online + offline = members; missing is part of offline.
HOST_STATES = (
    "online",  # heartbeating within the heartbeat timeout (the rule a pass deploys by)
    "offline",  # not: silent, never heartbeated, never registered
    "missing",  # an instance EC2 lists for the group with no agent registered (issue 16)
    "on_desired_revision",  # reports the group's desired revision installed
    "on_effective_revision",  # reports the group's effective (last good) revision installed
    "in_progress",  # running the deployment in flight, dispatched and not finished
    "failed",  # its last finished attempt in this group failed (and it did not install that revision after all)
)

#: Buckets, in seconds. A pass over a quiet fleet takes milliseconds, a 10,000-host pass about a tenth of a second,
#: one with gate measurements or slow load balancers seconds.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: A deployment: seconds on a laptop fleet, minutes to hours with bakes and large fleets.
DEPLOYMENT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
#: One batch: its slowest host's lifecycle events (plus a health check's minimum healthy time).
BATCH_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: From a commit to its first batch: seconds with `watch`, a CI pipeline's minutes, a review's hours.
COMMIT_TO_DISPATCH_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                              86400.0)

#: Committer time of a config commit, or None when it cannot be read.
CommitTime = Callable[[str], datetime | None]

_FINAL = (HostDeploymentStatus.SUCCEEDED, HostDeploymentStatus.FAILED, HostDeploymentStatus.SKIPPED)


class MetricsServeError(Exception):
    """`/metrics` could not be served on the address asked for (in use, not an address of this machine)."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        super().__init__(f"cannot serve metrics on {address}: {reason}")


# --------------------------------------------------------------------------------------------------
# How things stand: computed from the last pass at scrape time


@dataclass(frozen=True)
class GroupRow:
    """One group as the gauges show it."""

    application: str
    group: str
    state: str
    desired_revision: str
    effective_revision: str
    desired_commit: str
    effective_commit: str
    quarantined: int
    in_flight: bool
    #: `HOST_STATES` -> how many of the group's members are in it.
    hosts: Mapping[str, int]


@dataclass(frozen=True)
class HostRow:
    """One member of one group (the per-host series, `metrics.hostSeries`)."""

    application: str
    group: str
    host: str
    up: bool
    on_desired_revision: bool


@dataclass(frozen=True)
class FleetView:
    """Every group and member as the last pass left them."""

    groups: tuple[GroupRow, ...]
    hosts: tuple[HostRow, ...]


def fleet_view(outcome: PassOutcome, *, heartbeat_timeout: timedelta, host_series: bool = True) -> FleetView:
    """The gauges' rows for the records as `outcome` left them.

    Liveness is judged at the pass's own time (`outcome.now`), from the reports that pass read: a scrape between
    two passes must not call every host offline because the view is a few seconds old. Groups are those in the
    manifests, and groups recorded in the store and not yet marked removed (a group just taken out of the
    manifests shows as "removed" until the pass that marks it; then its series go)."""
    desired = outcome.desired
    state = outcome.state_after
    observed = outcome.snapshot.observed
    manifests = desired.desired_groups()
    keys = set(manifests) | {key for key, record in state.groups.items() if not record.removed}
    index = MembershipIndex(observed)
    online: dict[str, bool] = {}

    def is_up(host: str) -> bool:
        found = online.get(host)
        if found is None:
            found = online[host] = is_online(observed, host, now=outcome.now, heartbeat_timeout=heartbeat_timeout)
        return found

    groups: list[GroupRow] = []
    hosts: list[HostRow] = []
    for key in sorted(keys):
        manifest = manifests.get(key)
        record = state.groups.get(key)
        flight_id = record.deployment_in_flight if record is not None else None
        in_flight = state.deployments.get(flight_id) if flight_id else None
        if manifest is not None:
            application, name = manifest.application, manifest.name
        else:
            assert record is not None  # keys come from the manifests or from records
            application, name = record.application, record.deployment_group
        desired_revision = manifest.revision if manifest else (record.desired_revision if record else None)
        effective = record.effective_revision if record else None
        desired_id = desired_revision.identity() if desired_revision else None
        effective_id = effective.identity() if effective else None
        members = group_members(manifest, observed, index) if manifest is not None else []
        missing = ({index.host_for(i.instance_id) for i in missing_hosts(manifest, observed, index)}
                   if manifest is not None else set())
        attempts = last_attempts(record, state.deployments) if record is not None else {}
        counts = dict.fromkeys(HOST_STATES, 0)
        for host in members:
            status = observed.statuses.get(host)
            installed = status.installed.get(key) if status is not None else None
            installed_id = installed.revision.identity() if installed is not None else None
            up = is_up(host)
            on_desired = installed_id is not None and installed_id == desired_id
            attempt = attempts.get(host)
            running = in_flight is not None and host in in_flight.hosts and (
                in_flight.hosts[host].status is HostDeploymentStatus.IN_PROGRESS)
            facts = {
                "online": up,
                "offline": not up,
                "missing": host in missing,
                "on_desired_revision": on_desired,
                "on_effective_revision": installed_id is not None and installed_id == effective_id,
                "in_progress": running,
                "failed": attempt is not None and attempt.status is HostDeploymentStatus.FAILED
                and not installed_by(observed, host, key, attempt.deployment_id),
            }
            for name_of_state, true in facts.items():
                counts[name_of_state] += int(true)
            if host_series:
                hosts.append(HostRow(application, name, host, up, on_desired))
        groups.append(GroupRow(
            application=application,
            group=name,
            state=group_phase(record, manifest, in_flight_creator=in_flight.creator if in_flight else None,
                              desired_known=True),
            desired_revision=desired_revision.short() if desired_revision else "",
            effective_revision=effective.short() if effective else "",
            # The commit at which the desired revision last changed (what quarantine is keyed on), not every
            # config commit: otherwise each commit would give every group a new info series.
            desired_commit=(record.desired_commit if record and record.desired_commit else desired.commit) or "",
            effective_commit=(record.effective_commit if record else None) or "",
            quarantined=len(record.quarantined) if record else 0,
            in_flight=in_flight is not None,
            hosts=counts,
        ))
    return FleetView(tuple(groups), tuple(hosts))


class FleetCollector:
    """The gauges, built when Prometheus scrapes (a prometheus_client custom collector).

    The rows are computed once per pass, on the first scrape after it (a pass is read-only here: the outcome is
    frozen), so several scrapers cost one computation; lease and last pass time are read live."""

    def __init__(self, metrics: ReconcilerMetrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._cached: tuple[PassOutcome, FleetView] | None = None

    def view(self) -> FleetView | None:
        outcome = self._metrics.last_pass
        if outcome is None:
            return None
        with self._lock:
            if self._cached is None or self._cached[0] is not outcome:
                self._cached = (outcome, fleet_view(outcome, heartbeat_timeout=self._metrics.heartbeat_timeout,
                                                    host_series=self._metrics.host_series))
            return self._cached[1]

    def describe(self) -> Iterator[Metric]:
        """The names, for the registry's duplicate check (a counter added later under one of them fails at once)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        view = self.view()
        info, state, hosts, quarantined, in_flight, host_up, host_desired, lease, last_pass = families
        lease.add_metric([], 1.0 if self._metrics.lease_held() else 0.0)
        outcome = self._metrics.last_pass
        if outcome is not None:
            last_pass.add_metric([], outcome.now.timestamp())
        for group in view.groups if view else ():
            labels = [group.application, group.group]
            info.add_metric([*labels, group.desired_revision, group.effective_revision, group.desired_commit,
                             group.effective_commit], 1.0)
            for phase in GROUP_PHASES:
                state.add_metric([*labels, phase], 1.0 if phase == group.state else 0.0)
            for host_state in HOST_STATES:
                hosts.add_metric([*labels, host_state], float(group.hosts[host_state]))
            quarantined.add_metric(labels, float(group.quarantined))
            in_flight.add_metric(labels, 1.0 if group.in_flight else 0.0)
        for host in view.hosts if view else ():
            labels = [host.application, host.group, host.host]
            host_up.add_metric(labels, 1.0 if host.up else 0.0)
            host_desired.add_metric(labels, 1.0 if host.on_desired_revision else 0.0)
        yield from families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        group = ["application", "group"]
        host = [*group, "host"]
        return [
            GaugeMetricFamily(
                "fleetshift_group_info",
                "A group's desired and effective (last good) revision and the config commits they come from; "
                "always 1.",
                labels=[*group, "desired_revision", "effective_revision", "desired_commit", "effective_commit"]),
            GaugeMetricFamily(
                "fleetshift_group_state",
                "1 for the group's state as `reconcile status` shows it, 0 for the others.",
                labels=[*group, "state"]),
            GaugeMetricFamily(
                "fleetshift_group_hosts",
                "The group's members counted by state (overlapping: online + offline = members).",
                labels=[*group, "state"]),
            GaugeMetricFamily(
                "fleetshift_group_quarantined_revisions",
                "Revisions held back after a failed deployment (`reconcile retry` lifts them).",
                labels=group),
            GaugeMetricFamily(
                "fleetshift_group_deployment_in_flight",
                "1 while the group has a deployment (or rollback) in flight.",
                labels=group),
            GaugeMetricFamily("fleetshift_host_up", "1 while the host heartbeats within the heartbeat timeout.",
                              labels=host),
            GaugeMetricFamily("fleetshift_host_on_desired_revision",
                              "1 when the host reports the group's desired revision installed.", labels=host),
            GaugeMetricFamily("fleetshift_lease_held", "1 while this reconciler holds the write lease."),
            GaugeMetricFamily("fleetshift_last_pass_timestamp_seconds",
                              "When this reconciler's last pass decided (Unix time); absent before the first."),
        ]


# --------------------------------------------------------------------------------------------------
# What happened: counters and histograms


class ReconcilerMetrics:
    """The reconciler's metrics on a registry of their own; a `PassListener`.

    `heartbeat_timeout` is the reconcile setting (liveness is judged as the passes judge it); `host_series` turns
    the per-host series off for very large fleets; `commit_time` gives a config commit's committer time (None:
    `fleetshift_commit_to_dispatch_seconds` stays empty)."""

    def __init__(self, *, heartbeat_timeout: timedelta, host_series: bool = True,
                 commit_time: CommitTime | None = None) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.host_series = host_series
        self.commit_time = commit_time
        self.registry = CollectorRegistry()
        #: What leaves the process: the registry without prometheus_client's `_created` series.
        self.exported = WithoutCreated(self.registry)
        self.last_pass: PassOutcome | None = None
        self._lease: WriteLease | None = None
        self._groups_seen: set[tuple[str, str]] = set()
        registry = self.registry
        group = ["application", "group"]
        self.deployments = Counter(
            "fleetshift_deployments", "Deployments that ended, by who started them and how they ended.",
            [*group, "creator", "outcome"], registry=registry)
        self.passes = Counter("fleetshift_passes", "Passes (read, decide, write) by result: ok, conflict, error.",
                              ["result"], registry=registry)
        self.store_operations = Counter("fleetshift_store_operations", "Store operations, by operation.",
                                        ["operation"], registry=registry)
        self.store_errors = Counter(
            "fleetshift_store_errors", "Store operations that failed (a lost compare-and-swap is not a failure).",
            ["operation"], registry=registry)
        self.events = Counter("fleetshift_events", "Events recorded, by type and severity.", ["type", "severity"],
                              registry=registry)
        self.notifications = Counter(
            "fleetshift_notifications", "Notifications sent, by notification, provider and result.",
            ["notification", "provider", "result"], registry=registry)
        self.pass_duration = Histogram("fleetshift_pass_duration_seconds", "How long passes took.",
                                       buckets=PASS_BUCKETS, registry=registry)
        self.deployment_duration = Histogram(
            "fleetshift_deployment_duration_seconds", "From a deployment's creation to its end, by outcome.",
            [*group, "outcome"], buckets=DEPLOYMENT_BUCKETS, registry=registry)
        self.batch_duration = Histogram(
            "fleetshift_batch_duration_seconds", "From a batch's first dispatch to its last host's result.",
            group, buckets=BATCH_BUCKETS, registry=registry)
        self.commit_to_dispatch = Histogram(
            "fleetshift_commit_to_dispatch_seconds",
            "From a config commit's committer time to the first batch of the deployment it started.",
            group, buckets=COMMIT_TO_DISPATCH_BUCKETS, registry=registry)
        # Counters with fixed label sets start at 0, so rate() and increase() see their first event.
        for result in PASS_RESULTS:
            self.passes.labels(result=result)
        for operation in OPERATIONS:
            self.store_operations.labels(operation=operation)
            self.store_errors.labels(operation=operation)
        self.registry.register(FleetCollector(self))

    # Fed by the passes ---------------------------------------------------------------------------

    def on_pass(self, outcome: PassOutcome) -> None:
        """Count what one pass applied; its view becomes what the gauges show."""
        self.passes.labels(result="conflict" if outcome.conflict is not None else "ok").inc()
        self.pass_duration.observe(outcome.duration.total_seconds())
        self._start_group_counters(outcome.desired)
        for action in outcome.applied.actions:
            if isinstance(action, FinishDeployment):
                self._deployment_ended(action.deployment)
            elif isinstance(action, DispatchBatch) and action.batch == 0:
                self._first_dispatch(action.deployment, action.hosts)
        written: dict[str, Deployment] = {}
        for write in outcome.applied.writes:
            if isinstance(write.document, Deployment):
                written[write.document.deployment_id] = write.document
        for deployment_id, after in written.items():
            before = outcome.snapshot.state.deployments.get(deployment_id)
            self._batches_ended(before, after)
            self._count_new_events(after.events, before.events[-1].seq if before and before.events else 0)
        for write in outcome.applied.writes:
            if isinstance(write.document, FleetEventLog):
                seen = outcome.snapshot.state.fleet_events
                self._count_new_events(write.document.events, seen.last_seq if seen is not None else 0)
        self.last_pass = outcome

    def forget_view(self) -> None:
        """Stop describing the fleet (a `watch` that lost the lease): another reconciler does now, and a dashboard
        summing over reconcilers must count each group once, not once more from a standby's last view. The
        counters stay; the group, host and last-pass series come back with this reconciler's next pass."""
        self.last_pass = None

    def count_pass_error(self) -> None:
        """A pass raised before it could report an outcome (`MeteredPassRunner` calls this)."""
        self.passes.labels(result="error").inc()

    def count_event(self, type: str, severity: str) -> None:
        """One event recorded in the event stream (`fleetshift_events_total{type,severity}`)."""
        self.events.labels(type=type, severity=severity).inc()

    def _count_new_events(self, events: list[RecordedEvent], after_seq: int) -> None:
        """The events a pass recorded in one document it wrote: those numbered past the stored document's last."""
        for event in events:
            if event.seq > after_seq:
                self.count_event(event.type.value, event.severity.value)

    def count_notification(self, notification: str, provider: str, result: str) -> None:
        """One notification attempt (`fleetshift_notifications_total{notification,provider,result}`)."""
        self.notifications.labels(notification=notification, provider=provider, result=result).inc()

    def watch_lease(self, lease: WriteLease) -> None:
        """`fleetshift_lease_held` reads this lease at every scrape."""
        self._lease = lease

    def lease_held(self) -> bool:
        return self._lease is not None and self._lease.held

    def instrument(self, store: Store) -> Store:
        """`store`, counting every operation into `fleetshift_store_operations_total` and failures into
        `fleetshift_store_errors_total`."""
        return instrument_store(store, self._store_operation)

    def _store_operation(self, operation: str, failed: bool) -> None:
        self.store_operations.labels(operation=operation).inc()
        if failed:
            self.store_errors.labels(operation=operation).inc()

    def _start_group_counters(self, desired: Desired) -> None:
        """Every outcome of every group's deployments at 0 from the first pass that sees the group, so an alert on
        `increase(fleetshift_deployments_total{outcome="Failed"}[...])` fires on a group's very first failure (a
        series born at 1 has no increase)."""
        for group in desired.desired_groups().values():
            labels = (group.application, group.name)
            if labels in self._groups_seen:
                continue
            self._groups_seen.add(labels)
            for creator in CREATORS:
                for outcome in OUTCOMES:
                    self.deployments.labels(*labels, creator, outcome)

    def _deployment_ended(self, deployment: Deployment) -> None:
        outcome = deployment.status.value
        labels = (deployment.application, deployment.deployment_group)
        self.deployments.labels(*labels, deployment.creator, outcome).inc()
        ended = deployment.ended_at or deployment.updated_at
        self.deployment_duration.labels(*labels, outcome).observe(
            max(0.0, (ended - deployment.created_at).total_seconds()))

    def _first_dispatch(self, deployment: Deployment, hosts: list[str]) -> None:
        """The first batch of a deployment a commit started (creator user): how long since that commit."""
        if deployment.creator != "user" or not deployment.source_commit or self.commit_time is None:
            return
        dispatched = [deployment.hosts[h].dispatched_at for h in hosts if h in deployment.hosts]
        first = min((when for when in dispatched if when is not None), default=None)
        committed = self.commit_time(deployment.source_commit)
        if first is None or committed is None:
            return
        # Clocks of the committer's machine and the reconciler's differ; a commit "from the future" counts as 0.
        self.commit_to_dispatch.labels(deployment.application, deployment.deployment_group).observe(
            max(0.0, (first - committed).total_seconds()))

    def _batches_ended(self, before: Deployment | None, after: Deployment) -> None:
        """Batches of `after` whose last host got its result in this pass: each is observed exactly once, in the
        pass whose write completed it (before that write it was not complete, after it, it is)."""
        for batch in after.batches:
            span = _batch_span(after, batch)
            if span is None or (before is not None and _batch_span(before, batch) is not None):
                continue
            self.batch_duration.labels(after.application, after.deployment_group).observe(span)

    # Leaving the process -----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format, as `/metrics` serves it."""
        return generate_latest(self.exported)

    def serve(self, address: str) -> MetricsServer:
        """Serve `/metrics` on `address` (HOST:PORT) from a daemon thread. MetricsServeError when it cannot (the
        port in use, an address this machine does not have), with the system's words."""
        host, port = parse_listen_address(address)
        try:
            server, thread = start_http_server(port, addr=host, registry=self.exported)
        except OSError as exc:
            raise MetricsServeError(address, _os_words(exc)) from None
        # The port it really listens on: the one asked for, or the system's choice for port 0.
        shown = f"[{host}]:{server.server_port}" if ":" in host else f"{host}:{server.server_port}"
        log.info("metrics.serving", address=shown, path="/metrics")
        return MetricsServer(server, thread, shown)

    def write_textfile(self, path: Path) -> None:
        """The text format into `path` atomically (a reader, node-exporter's textfile collector, never sees half
        a file). The temporary file is a dot file beside it, which the collector (reading `*.prom`) skips.
        Raises OSError."""
        write_atomic(path, self.exposition(), durable=False, mode=0o644)

    def push(self, url: str) -> None:
        """PUT the metrics to a Pushgateway-compatible `url` under job `PUSH_JOB` (replacing what that job pushed
        before). A user and password in the URL (`https://user:secret@push.example.com`) are sent as HTTP basic
        auth, never as part of the address. Raises OSError (an HTTP error status included) when the push fails."""
        parts = urllib.parse.urlsplit(url)
        handler = default_handler
        if parts.username is not None:
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")

            def with_basic_auth(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                                data: bytes) -> Callable[[], None]:
                return basic_auth_handler(url, method, timeout, headers, data, username, password)

            handler = with_basic_auth
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        push_to_gateway(url, job=PUSH_JOB, registry=self.exported, timeout=PUSH_TIMEOUT_SECONDS, handler=handler)


@dataclass
class MetricsServer:
    """A running `/metrics` endpoint; `address` is where it listens (the real port when 0 was asked for)."""

    server: Any
    thread: threading.Thread
    address: str

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _batch_span(deployment: Deployment, batch: list[str]) -> float | None:
    """Seconds from the batch's first dispatch to its last host's result, once every host of it has a result
    (None before that, and for a batch never dispatched)."""
    states = [deployment.hosts[h] for h in batch if h in deployment.hosts]
    if not states or any(state.status not in _FINAL for state in states):
        return None
    dispatched = [s.dispatched_at for s in states if s.dispatched_at is not None]
    finished = [s.finished_at for s in states if s.dispatched_at is not None and s.finished_at is not None]
    if not dispatched or not finished:
        return None
    return max(0.0, (max(finished) - min(dispatched)).total_seconds())


def _os_words(exc: OSError) -> str:
    """`[Errno 98] Address already in use`: the system's own words, as a person would search for them."""
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------------


def commit_times(repository: str, *, limit: int = 256) -> CommitTime:
    """Committer times of commits in the config repository (a local checkout, or the mirror of a remote one that
    the passes read from: never fetched here). Remembered per commit, at most `limit`; None for a commit that
    cannot be read (the metric is then not observed: it must never fail a pass)."""
    from reconciler.desired.sources import open_repository

    known: dict[str, datetime | None] = {}
    lock = threading.Lock()

    def committed(commit: str) -> datetime | None:
        with lock:
            if commit in known:
                return known[commit]
        when: datetime | None
        try:
            when = open_repository(repository, fetch=False).commit(commit).committed_datetime
        except Exception as exc:  # GitPython raises many types; a metric is never worth failing a pass for
            log.debug("metrics.commit_time_unknown", commit=commit, error=f"{type(exc).__name__}: {exc}")
            when = None
        with lock:
            if len(known) >= limit:
                known.pop(next(iter(known)))
            known[commit] = when
        return when

    return committed


def metric_names(metrics: ReconcilerMetrics) -> set[str]:
    """Every series name the reconciler can export (`fleetshift_deployments_total`, `..._bucket`, `..._count`...),
    whether or not it has samples yet: what a dashboard's queries and the alerts may use."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family in metrics.exported.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


__all__ = [
    "CREATORS",
    "HOST_STATES",
    "OUTCOMES",
    "PASS_RESULTS",
    "PUSH_JOB",
    "CommitTime",
    "FleetCollector",
    "FleetView",
    "GroupRow",
    "HostRow",
    "MeteredPassRunner",
    "MetricsServeError",
    "MetricsServer",
    "ReconcilerMetrics",
    "commit_times",
    "fleet_view",
    "metric_names",
]
