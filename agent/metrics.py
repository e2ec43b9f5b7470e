"""The agent's own Prometheus metrics (issue 17): what one host's agent did, for dashboards and alerts that
the store's status documents cannot serve (rates, durations, "this agent stopped polling").

Where it sits: `deploy-agent run` (agent/daemon/cli.py) builds one `AgentMetrics` from agent.yaml's
`metrics` and hands it to the Agent (agent/daemon/loop.py), which calls one method where each thing happens:
a poll, a lifecycle event's report, a finished command, a refused command, a failed status write. With metrics
off that object is the base class, whose methods do nothing, so the loop never asks whether metrics are on.

With metrics on, `PrometheusAgentMetrics` keeps them in a private `CollectorRegistry` (never prometheus_client's
global one: an agent run in-process by a test, or a second agent in the same process, must not share
counters), serves them with prometheus_client's own HTTP server in a daemon thread, and/or writes them to a
node_exporter textfile with `write_to_textfile` (a temporary file renamed over the old one, so the collector
never reads half a file): after every command that starts or finishes, at shutdown, and otherwise at most once
per heartbeat interval. prometheus_client is imported only here and only then: a host that does not scrape its
agent does not load it (tests/daemon/test_import_boundary.py).

Cardinality is bounded by construction: no label carries a deployment id, revision, group or host (the host
id is a label of the info gauge only, for joins), and an event name outside CodeDeploy's and fleetshift's
known events is counted as `other`. The names are fixed; a Grafana dashboard is built on them (docs/agent.md,
"Metrics", has the table).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent.settings import AgentSettings, parse_listen_address
from contract.clock import Monotonic
from contract.vocabulary import HEALTH_CHECK, LIFECYCLE_EVENTS, TRAFFIC_STEPS, CommandStatus, EventStatus
from contract.wire import CommandProgress, EventReport

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

log = structlog.get_logger("agent.metrics")

#: Every event name a command can carry; anything else (a custom hook name) is labelled `other`, so a
#: command cannot create series without bound.
KNOWN_EVENTS: frozenset[str] = frozenset({*LIFECYCLE_EVENTS, *TRAFFIC_STEPS, HEALTH_CHECK})
OTHER_EVENT = "other"
#: Hooks take from a fraction of a second (a config check) to the 30 minutes a slow migration is given.
HOOK_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_OUTCOMES = {EventStatus.SUCCEEDED: "Succeeded", EventStatus.FAILED: "Failed", EventStatus.SKIPPED: "Skipped"}


class MetricsUnavailable(Exception):
    """Metrics are configured but cannot be served or written (a port in use, a folder that is not there):
    a start-up error, printed as one line by the CLI (exit 1)."""


def event_label(name: str) -> str:
    return name if name in KNOWN_EVENTS else OTHER_EVENT


class _WithoutCreated:
    """The registry as exposed: without prometheus_client's `<name>_created` series (one per counter and
    histogram series, holding its creation time). A fleet's Prometheus would store twice the series per host for
    a value nothing here reads; prometheus_client can only turn them off for the whole process, and the agent's
    registry is private so as not to touch anything process-wide."""

    def __init__(self, registry: CollectorRegistry, names: Iterable[str] | None = None) -> None:
        self.registry = registry
        self.source: Collector = registry if names is None else registry.restricted_registry(names)

    def restricted_registry(self, names: Iterable[str]) -> _WithoutCreated:
        """`/metrics?name[]=...`, which prometheus_client's HTTP handler answers through this method."""
        return _WithoutCreated(self.registry, names)

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():  # fresh objects on every collect: ours to trim
            created = f"{family.name}_created"
            family.samples = [sample for sample in family.samples if sample.name != created]
            yield family


class AgentMetrics:
    """What the agent reports about itself. This base class records nothing: it is what the Agent holds when
    agent.yaml has no `metrics`, so every call site stays one unconditional line."""

    def poll_succeeded(self, at: datetime) -> None:
        """A read of this host's command slot answered (whatever it held), at wall time `at`."""

    def poll_failed(self) -> None:
        """A read of the command slot failed (store outage, refused credentials)."""

    def command_started(self) -> None:
        """A command is about to run its first event."""

    def event_reported(self, report: EventReport) -> None:
        """One of the runner's event reports, as it happens; only final ones (Succeeded, Failed, Skipped) count."""

    def events_settled(self, before: CommandProgress, after: CommandProgress) -> None:
        """Events that ended without a report from the runner (cut off by a crash, or by an internal error):
        those not final in `before` and final in `after`."""

    def command_finished(self, status: CommandStatus) -> None:
        """A command ended (run here, or settled after a crash)."""

    def command_refused(self) -> None:
        """A command was refused by the signature or target checks (docs/trust.md)."""

    def store_write_failed(self) -> None:
        """The reporter could not write this host's status."""

    def flush(self, *, force: bool = False) -> None:
        """Write the textfile if one is configured and it is due (`force`: now)."""

    def close(self) -> None:
        """Stop serving; the last textfile stays for node_exporter (its age says the agent stopped)."""


class PrometheusAgentMetrics(AgentMetrics):
    """The metrics in a private registry, served over HTTP and/or written to a textfile."""

    def __init__(
        self,
        *,
        host_id: str,
        version: str,
        textfile: Path | None = None,
        textfile_interval: float = 300.0,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        """`textfile_interval`: the least time between two textfile writes that are not forced (the
        heartbeat interval, so a host's disk sees no more writes than its store)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        #: What /metrics and the textfile show.
        self.exposed = _WithoutCreated(registry)
        info = Gauge("fleetshift_agent_info", "This agent: always 1, its version and host id as labels.",
                     ["version", "host_id"], registry=registry)
        info.labels(version=version, host_id=host_id).set(1)
        self._events = Counter("fleetshift_agent_lifecycle_events", "Lifecycle events that ended, by event and "
                               "outcome (Succeeded, Failed, Skipped).", ["event", "outcome"], registry=registry)
        self._durations = Histogram("fleetshift_agent_hook_duration_seconds", "How long each lifecycle event that "
                                    "ran took, from its start to its end as reported.", ["event"],
                                    buckets=HOOK_BUCKETS, registry=registry)
        self._commands = Counter("fleetshift_agent_commands", "Commands that ended, by outcome (Succeeded, Failed).",
                                 ["outcome"], registry=registry)
        # Both outcomes exist from the start: increase() over a series that appears at 1 misses that first 1.
        for outcome in ("Succeeded", "Failed"):
            self._commands.labels(outcome=outcome)
        self._in_progress = Gauge("fleetshift_agent_command_in_progress", "1 while a command runs, else 0.",
                                  registry=registry)
        self._polls = Counter("fleetshift_agent_polls", "Reads of this host's command slot in the store.",
                              registry=registry)
        self._poll_errors = Counter("fleetshift_agent_poll_errors", "Reads of the command slot that failed.",
                                    registry=registry)
        self._last_poll = Gauge("fleetshift_agent_last_successful_poll_timestamp_seconds",
                                "Unix time of the last read of the command slot that the store answered.",
                                registry=registry)
        self._refusals = Counter("fleetshift_agent_command_refusals", "Commands refused by the signature or "
                                 "target checks.", registry=registry)
        self._write_errors = Counter("fleetshift_agent_store_write_errors", "Status writes to the store that "
                                     "failed (each retry counts).", registry=registry)
        self.textfile = textfile
        self._textfile_interval = textfile_interval
        self._monotonic = monotonic
        self._textfile_lock = threading.Lock()
        self._textfile_written_at: float | None = None
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None

    # -- serving and writing

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve /metrics on (host, port) from a daemon thread; "" means every IPv4 interface. Returns the
        address bound (port 0 picks one). Raises MetricsUnavailable with the OS's words."""
        from prometheus_client import start_http_server

        every_interface = "0.0.0.0"  # noqa: S104 - only when the operator wrote `:PORT`
        try:
            server, thread = start_http_server(port, addr=host or every_interface, registry=self.exposed)
        except OSError as exc:  # address in use, not ours, a name that does not resolve
            raise MetricsUnavailable(f"cannot listen there: {exc.strerror or exc}") from None
        self._server, self._server_thread = server, thread
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def write_textfile(self) -> None:
        """Write the textfile now. Raises OSError (the caller decides whether that is fatal)."""
        from prometheus_client import write_to_textfile

        assert self.textfile is not None
        with self._textfile_lock:
            write_to_textfile(str(self.textfile), self.exposed)
            self._textfile_written_at = self._monotonic()

    def flush(self, *, force: bool = False) -> None:
        if self.textfile is None:
            return
        last = self._textfile_written_at
        if not force and last is not None and self._monotonic() - last < self._textfile_interval:
            return
        try:
            self.write_textfile()
        except OSError as exc:  # a full disk must not stop deployments; the file's age tells node_exporter
            log.warning("metrics.textfile_failed", path=str(self.textfile), error=str(exc))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._server_thread is not None:
            self._server_thread.join(timeout=2.0)
            self._server_thread = None

    # -- what the agent did

    def poll_succeeded(self, at: datetime) -> None:
        self._polls.inc()
        self._last_poll.set(at.timestamp())

    def poll_failed(self) -> None:
        self._polls.inc()
        self._poll_errors.inc()

    def command_started(self) -> None:
        self._in_progress.set(1)
        self.flush(force=True)

    def event_reported(self, report: EventReport) -> None:
        outcome = _OUTCOMES.get(report.status)
        if outcome is None:
            return  # Pending or InProgress: not an end
        event = event_label(report.name)
        self._events.labels(event=event, outcome=outcome).inc()
        if report.status != EventStatus.SKIPPED and report.started_at is not None and report.ended_at is not None:
            # The report's own times: DownloadBundle's include the fetch and check before its InProgress report.
            seconds = (report.ended_at - report.started_at).total_seconds()
            self._durations.labels(event=event).observe(max(0.0, seconds))

    def events_settled(self, before: CommandProgress, after: CommandProgress) -> None:
        ended_before = {index for index, event in enumerate(before.events) if event.status in _OUTCOMES}
        for index, event in enumerate(after.events):
            if index not in ended_before and event.status in _OUTCOMES:
                self._events.labels(event=event_label(event.name), outcome=_OUTCOMES[event.status]).inc()

    def command_finished(self, status: CommandStatus) -> None:
        if status != CommandStatus.IN_PROGRESS:
            self._commands.labels(outcome=status.value).inc()
        self._in_progress.set(0)
        self.flush(force=True)

    def command_refused(self) -> None:
        self._refusals.inc()

    def store_write_failed(self) -> None:
        self._write_errors.inc()


def open_metrics(settings: AgentSettings, *, version: str, monotonic: Monotonic = time.monotonic) -> AgentMetrics:
    """The metrics agent.yaml asks for, already served and written once; the do-nothing base class when it asks
    for none. Raises MetricsUnavailable naming the setting, the address or file, and the OS's words."""
    configured = settings.metrics
    if not configured.enabled:
        return AgentMetrics()
    metrics = PrometheusAgentMetrics(
        host_id=settings.host_id, version=version, textfile=configured.textfile,
        textfile_interval=settings.heartbeat_interval.total_seconds(), monotonic=monotonic,
    )
    # The address first: an agent that cannot start (a second one for the same port) must not overwrite the
    # textfile of the one that runs.
    if configured.address is not None:
        host, port = parse_listen_address(configured.address)
        try:
            bound = metrics.serve(host, port)
        except MetricsUnavailable as exc:
            raise MetricsUnavailable(f"metrics.address {configured.address}: {exc}") from None
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        log.info("metrics.serving", address=f"{shown}:{bound[1]}", path="/metrics")
    if configured.textfile is not None:
        # Written once now so a folder that is missing or not ours is a start-up error, not a warning an hour on.
        try:
            metrics.write_textfile()
        except OSError as exc:
            metrics.close()
            raise MetricsUnavailable(
                f"metrics.textfile {configured.textfile}: cannot write it: {exc.strerror or exc}"
            ) from None
    return metrics
