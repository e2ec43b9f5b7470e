"""The agent's own Prometheus metrics (issue 17, agent/metrics.py): real `deploy-agent run` processes deploying
real bundles, scraped over HTTP, read by a real Prometheus server and written to a node_exporter textfile.

The counts are exact: one deployment of the seven default events is seven Succeeded events and one Succeeded
command; a hook that fails is one Failed event, the events after it Skipped, one Failed command. No series
carries a deployment id, revision or host (the info gauge's host_id aside), and no `_created` series is shown.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.metrics import OTHER_EVENT, PrometheusAgentMetrics
from contract.store import open_store
from contract.vocabulary import DEFAULT_EVENTS, CommandStatus, EventStatus
from contract.wire import CommandProgress, EventReport, HostStatus
from fleetlab.prometheus import LocalPrometheus
from fleetlab.service import free_port
from tests.conftest import S3Server, require_tool
from tests.daemon.agentproc import AgentHost, make_bundle, make_command, stop_agent, wait_for
from tests.daemon.conftest import HostFactory
from tests.store.s3proxy import running_proxy

#: Every family the agent exposes, in registration order (the textfile ends with the last one).
FAMILIES = (
    "fleetshift_agent_info",
    "fleetshift_agent_lifecycle_events",
    "fleetshift_agent_hook_duration_seconds",
    "fleetshift_agent_commands",
    "fleetshift_agent_command_in_progress",
    "fleetshift_agent_polls",
    "fleetshift_agent_poll_errors",
    "fleetshift_agent_last_successful_poll_timestamp_seconds",
    "fleetshift_agent_command_refusals",
    "fleetshift_agent_store_write_errors",
)
#: The only label names any series may carry (`le` is the histogram's bucket bound).
ALLOWED_LABELS = {"event", "outcome", "le", "version", "host_id"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition as {(sample name, labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        return parse(answer.read().decode())


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


def scraped_when(port: int, **least: float) -> Samples | None:
    """A scrape in which each named unlabelled metric is at least its value, else None (not yet)."""
    samples = try_scrape(port)
    if samples is None or any((value(samples, name) or 0) < number for name, number in least.items()):
        return None
    return samples


def read_textfile(path: Path) -> Samples | None:
    return parse(path.read_text()) if path.exists() else None


def events_by_outcome(samples: Samples) -> dict[tuple[str, str], float]:
    found = {}
    for (name, labels), number in samples.items():
        if name == "fleetshift_agent_lifecycle_events_total":
            label = dict(labels)
            found[(label["event"], label["outcome"])] = number
    return found


def configure(host: AgentHost, **metrics: str) -> Path:
    """agent.yaml with a `metrics` section for `host`."""
    config = host.base / "agent.yaml"
    config.write_text("metrics:\n" + "".join(f"  {key}: {text!r}\n" for key, text in metrics.items()))
    return config


def finished(host: AgentHost, generation: int) -> HostStatus | None:
    status = host.status()
    command = status.command if status is not None else None
    if command is not None and command.generation == generation and command.status != CommandStatus.IN_PROGRESS:
        return status
    return None


def in_progress(host: AgentHost, event: str) -> bool:
    status = host.status()
    if status is None or status.command is None:
        return False
    return any(e.name == event and e.status == EventStatus.IN_PROGRESS for e in status.command.events)


@pytest.mark.slow
def test_a_deployment_and_a_failing_hook_are_counted_exactly_and_served_over_http(
    file_host: HostFactory, tmp_path: Path
) -> None:
    host = file_host(gated=True)
    port = free_port()
    agent = host.start("--config", str(configure(host, address=f"127.0.0.1:{port}")))
    try:
        idle = wait_for(lambda: try_scrape(port), "/metrics to answer", process=agent)
        assert value(idle, "fleetshift_agent_info", version=__version__, host_id="web-1") == 1
        assert value(idle, "fleetshift_agent_commands_total", outcome="Succeeded") == 0
        assert value(idle, "fleetshift_agent_commands_total", outcome="Failed") == 0
        assert value(idle, "fleetshift_agent_command_in_progress") == 0
        assert value(idle, "fleetshift_agent_poll_errors_total") == 0
        assert value(idle, "fleetshift_agent_store_write_errors_total") == 0
        assert value(idle, "fleetshift_agent_command_refusals_total") == 0
        assert events_by_outcome(idle) == {}
        assert not any(name.endswith("_created") for name, _ in idle)
        polled = wait_for(lambda: scraped_when(port, fleetshift_agent_polls_total=3), "a few polls", process=agent)
        last_poll = value(polled, "fleetshift_agent_last_successful_poll_timestamp_seconds")
        assert last_poll is not None and abs(last_poll - time.time()) < 5, "the last poll is a Unix time, and recent"

        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        wait_for(lambda: in_progress(host, "BeforeInstall"), "BeforeInstall in progress", process=agent)
        held_from = time.monotonic()
        running = scrape(port)
        assert value(running, "fleetshift_agent_command_in_progress") == 1
        assert events_by_outcome(running) == {("ApplicationStop", "Succeeded"): 1, ("DownloadBundle", "Succeeded"): 1}
        held_for = time.monotonic() - held_from
        for event in DEFAULT_EVENTS:
            host.open_gate(event)
        wait_for(lambda: finished(host, 1), "the first command's result", process=agent)

        first = scrape(port)
        assert events_by_outcome(first) == {(event, "Succeeded"): 1 for event in DEFAULT_EVENTS}
        assert value(first, "fleetshift_agent_commands_total", outcome="Succeeded") == 1
        assert value(first, "fleetshift_agent_commands_total", outcome="Failed") == 0
        assert value(first, "fleetshift_agent_command_in_progress") == 0
        for event in DEFAULT_EVENTS:
            assert value(first, "fleetshift_agent_hook_duration_seconds_count", event=event) == 1
            assert value(first, "fleetshift_agent_hook_duration_seconds_bucket", event=event, le="+Inf") == 1
        # BeforeInstall was held at its gate while the test looked: it took at least that long.
        before_install = value(first, "fleetshift_agent_hook_duration_seconds_sum", event="BeforeInstall")
        assert before_install is not None and before_install >= held_for

        host.send(make_command("web-1", 2, make_bundle(tmp_path / "v2", failing="AfterInstall")))
        result = wait_for(lambda: finished(host, 2), "the second command's result", process=agent)
        assert result.command is not None and result.command.status == CommandStatus.FAILED
        second = scrape(port)
        assert events_by_outcome(second) == {
            ("ApplicationStop", "Succeeded"): 2, ("DownloadBundle", "Succeeded"): 2, ("BeforeInstall", "Succeeded"): 2,
            ("Install", "Succeeded"): 2, ("AfterInstall", "Succeeded"): 1, ("AfterInstall", "Failed"): 1,
            ("ApplicationStart", "Succeeded"): 1, ("ApplicationStart", "Skipped"): 1,
            ("ValidateService", "Succeeded"): 1, ("ValidateService", "Skipped"): 1,
        }
        assert value(second, "fleetshift_agent_commands_total", outcome="Succeeded") == 1
        assert value(second, "fleetshift_agent_commands_total", outcome="Failed") == 1
        # A failed hook ran, so it has a duration; a skipped one has none.
        assert value(second, "fleetshift_agent_hook_duration_seconds_count", event="AfterInstall") == 2
        assert value(second, "fleetshift_agent_hook_duration_seconds_count", event="ApplicationStart") == 1

        # Bounded cardinality: no deployment id, revision, group or host on any series; host_id on the info only.
        labels = {name for _, pairs in second for name, _ in pairs}
        assert labels <= ALLOWED_LABELS, labels - ALLOWED_LABELS
        assert {name for name, pairs in second if "host_id" in dict(pairs)} == {"fleetshift_agent_info"}
        assert not any("d-0000000" in text for _, pairs in second for _, text in pairs)
    finally:
        assert stop_agent(agent) == 0


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_agent(file_host: HostFactory, tmp_path: Path) -> None:
    require_tool("prometheus", "prometheus")
    host = file_host()
    port = free_port()
    agent = host.start("--config", str(configure(host, address=f"127.0.0.1:{port}")))
    try:
        wait_for(lambda: try_scrape(port), "/metrics to answer", process=agent)
        with LocalPrometheus(tmp_path / "prometheus", [("web-1", "127.0.0.1", port)],
                             job="fleetshift-agent") as prometheus:
            host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
            wait_for(lambda: finished(host, 1), "the command's result", process=agent)
            prometheus.wait_for_targets_up(timeout=20)

            def succeeded_in_prometheus() -> dict[str, float] | None:
                found = prometheus.values("fleetshift_agent_commands_total", by="outcome")
                return found if found.get("Succeeded") == 1 else None

            commands = wait_for(succeeded_in_prometheus, "Prometheus to scrape the finished command", timeout=20)
            assert commands == {"Succeeded": 1.0, "Failed": 0.0}
            by_outcome = prometheus.values("sum by (outcome) (fleetshift_agent_lifecycle_events_total)", by="outcome")
            assert by_outcome == {"Succeeded": 7.0}
            assert prometheus.values('fleetshift_agent_hook_duration_seconds_count{event="Install"}') == {"web-1": 1.0}
            info = prometheus.query("fleetshift_agent_info")["result"]
            assert [(s["metric"]["host_id"], s["metric"]["version"], s["metric"]["host"], s["value"][1])
                    for s in info] == [("web-1", __version__, "web-1", "1")]
            # What an alert on a silent agent asks: seconds since its last successful poll.
            age = prometheus.values("time() - fleetshift_agent_last_successful_poll_timestamp_seconds")
            assert 0 <= age["web-1"] < 10, age
            assert prometheus.values("fleetshift_agent_command_in_progress") == {"web-1": 0.0}
            assert prometheus.query('{__name__=~"fleetshift_agent_.*_created"}')["result"] == []
    finally:
        assert stop_agent(agent) == 0


@pytest.mark.slow
def test_the_textfile_is_written_at_start_and_after_every_command(file_host: HostFactory, tmp_path: Path) -> None:
    host = file_host()
    textfile = tmp_path / "textfile" / "fleetshift-agent.prom"
    textfile.parent.mkdir()
    config = configure(host, textfile=str(textfile))
    host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
    once = host.once("--config", str(config))
    assert once.returncode == 0, once.stderr
    written = parse(textfile.read_text())
    assert events_by_outcome(written) == {(event, "Succeeded"): 1 for event in DEFAULT_EVENTS}
    assert value(written, "fleetshift_agent_commands_total", outcome="Succeeded") == 1
    assert value(written, "fleetshift_agent_polls_total") == 1
    assert value(written, "fleetshift_agent_command_in_progress") == 0
    assert os.listdir(textfile.parent) == ["fleetshift-agent.prom"], "no temporary file is left behind"

    # A long-running agent with the default 5-minute heartbeat: the file is written when it starts (counters
    # from zero: a new process) and again as soon as a command ends, not at the next heartbeat.
    textfile.unlink()
    agent = host.start("--config", str(config))
    try:
        started = wait_for(lambda: read_textfile(textfile), "the textfile", process=agent)
        assert value(started, "fleetshift_agent_commands_total", outcome="Succeeded") == 0
        host.send(make_command("web-1", 2, make_bundle(tmp_path / "v2", failing="ApplicationStart")))
        wait_for(lambda: value(parse(textfile.read_text()), "fleetshift_agent_commands_total", outcome="Failed") == 1,
                 "the failed command in the textfile", process=agent, timeout=30)
        after = parse(textfile.read_text())
        assert after[("fleetshift_agent_lifecycle_events_total",
                      frozenset({("event", "ApplicationStart"), ("outcome", "Failed")}))] == 1
    finally:
        assert stop_agent(agent) == 0


@pytest.mark.slow
def test_a_command_cut_off_by_kill_9_is_counted_failed_by_the_restarted_agent(
    file_host: HostFactory, tmp_path: Path
) -> None:
    host = file_host(gated=True)
    textfile = tmp_path / "fleetshift-agent.prom"
    config = configure(host, textfile=str(textfile))
    agent = host.start("--config", str(config))
    try:
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        host.open_gate("BeforeInstall")
        wait_for(lambda: in_progress(host, "AfterInstall") and (host.pids / "AfterInstall").exists(),
                 "AfterInstall running", process=agent)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
    host.kill_hooks()
    textfile.unlink()  # what the killed agent wrote at the command's start

    restarted = host.once("--config", str(config))
    assert restarted.returncode == 4, restarted.stderr
    settled = parse(textfile.read_text())
    # The new process counts what it settled: the event the crash cut off and the ones never run. The events
    # that had ended before the crash were counted by the process that died, and are not counted again.
    assert events_by_outcome(settled) == {("AfterInstall", "Failed"): 1, ("ApplicationStart", "Skipped"): 1,
                                          ("ValidateService", "Skipped"): 1}
    assert value(settled, "fleetshift_agent_commands_total", outcome="Failed") == 1
    assert value(settled, "fleetshift_agent_commands_total", outcome="Succeeded") == 0
    assert value(settled, "fleetshift_agent_command_in_progress") == 0
    assert host.hook_runs() == ["BeforeInstall d-000000001", "AfterInstall d-000000001"]


@pytest.mark.slow
def test_the_textfile_is_replaced_whole_never_seen_half_written(file_host: HostFactory, tmp_path: Path) -> None:
    """With a 100 ms heartbeat the agent rewrites the file ~10 times a second while a reader reads it as fast as
    it can: every read is a whole exposition (all ten families, parseable), and each rewrite is a new file
    renamed over the old one (a new inode), which is what makes a reader never see a partial one."""
    host = file_host()
    textfile = tmp_path / "textfile" / "fleetshift-agent.prom"
    textfile.parent.mkdir()
    agent = host.start("--config", str(configure(host, textfile=str(textfile))), "--heartbeat-interval", "100ms")
    reads: list[str] = []
    inodes: set[int] = set()
    try:
        wait_for(textfile.exists, "the textfile", process=agent)
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with textfile.open() as handle:
                inodes.add(os.fstat(handle.fileno()).st_ino)
                reads.append(handle.read())
        wait_for(lambda: finished(host, 1), "the command's result", process=agent)
    finally:
        assert stop_agent(agent) == 0
    assert len(inodes) >= 5, f"the file was replaced only {len(inodes)} times in 3 s"
    for text in set(reads):
        families = [family.name for family in text_string_to_metric_families(text)]
        assert tuple(families) == FAMILIES, text
    assert len(set(reads)) >= 2, "the reader saw the contents change"
    assert os.listdir(textfile.parent) == ["fleetshift-agent.prom"]


@pytest.mark.slow
def test_a_port_in_use_is_a_clean_start_up_error(file_host: HostFactory, tmp_path: Path) -> None:
    host = file_host()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        result = host.once("--config", str(configure(host, address=f"127.0.0.1:{port}")))
    assert result.returncode == 1
    assert f"deploy-agent: metrics.address 127.0.0.1:{port}: cannot listen there: Address already in use\n" \
        in result.stderr
    assert "Traceback" not in result.stderr
    assert host.hook_runs() == [] and host.status() is None, "nothing ran and nothing was reported"

    missing = tmp_path / "no-such-folder" / "agent.prom"
    result = host.once("--config", str(configure(host, textfile=str(missing))))
    assert result.returncode == 1
    assert f"deploy-agent: metrics.textfile {missing}: cannot write it: No such file or directory\n" in result.stderr
    assert "Traceback" not in result.stderr and host.hook_runs() == []


@pytest.mark.slow
def test_a_store_outage_shows_as_poll_errors_write_errors_and_a_stale_last_poll(
    s3_server: S3Server, tmp_path: Path
) -> None:
    s3_server.client().create_bucket(Bucket="fleetshift-metrics-outage")  # type: ignore[no-untyped-call]
    store = open_store(f"s3://fleetshift-metrics-outage/fleet?endpoint={s3_server.endpoint_url}")
    port = free_port()
    with running_proxy(s3_server.endpoint_url) as proxy:
        host = AgentHost("web-1", tmp_path / "web-1", store,
                         env={**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                         agent_store_url="s3://fleetshift-metrics-outage/fleet")
        config = configure(host, address=f"127.0.0.1:{port}")
        agent = host.start("--config", str(config), "--heartbeat-interval", "200ms")
        try:
            wait_for(lambda: scraped_when(port, fleetshift_agent_polls_total=2), "polls", process=agent)
            healthy = scrape(port)
            assert value(healthy, "fleetshift_agent_poll_errors_total") == 0
            assert value(healthy, "fleetshift_agent_store_write_errors_total") == 0

            proxy.fail_next(100_000, 503, "SlowDown")  # S3 goes away
            down = wait_for(lambda: scraped_when(port, fleetshift_agent_poll_errors_total=1,
                                                 fleetshift_agent_store_write_errors_total=1),
                            "poll and write errors", process=agent, timeout=60)
            stale = value(down, "fleetshift_agent_last_successful_poll_timestamp_seconds")
            assert stale is not None
            polls = value(down, "fleetshift_agent_polls_total")
            errors = value(down, "fleetshift_agent_poll_errors_total")
            assert polls is not None and errors is not None and polls > errors

            proxy.clear()  # S3 is back: the last successful poll moves on
            wait_for(lambda: scraped_when(port, fleetshift_agent_last_successful_poll_timestamp_seconds=stale + 0.001),
                     "a successful poll after the outage", process=agent, timeout=60)
        finally:
            assert stop_agent(agent) == 0


# ------------------------------------------------------------------------------------------------------------
# The metrics object itself, in this process: a real registry and a real file, the clock stepped by hand.


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def metrics_with_textfile(tmp_path: Path, clock: StepClock) -> Iterator[PrometheusAgentMetrics]:
    metrics = PrometheusAgentMetrics(host_id="web-1", version="test", textfile=tmp_path / "agent.prom",
                                     textfile_interval=60.0, monotonic=clock)
    try:
        yield metrics
    finally:
        metrics.close()


def test_the_textfile_is_rewritten_at_most_once_per_heartbeat_unless_a_command_starts_or_ends(tmp_path: Path) -> None:
    clock = StepClock()
    with metrics_with_textfile(tmp_path, clock) as metrics:
        textfile = tmp_path / "agent.prom"
        metrics.flush()
        assert textfile.exists()
        textfile.unlink()
        clock.now += 59.9
        metrics.poll_succeeded(datetime.now(UTC))
        metrics.flush()
        assert not textfile.exists(), "rewritten before the heartbeat interval passed"
        clock.now += 0.1
        metrics.flush()
        assert value(parse(textfile.read_text()), "fleetshift_agent_polls_total") == 1
        textfile.unlink()
        metrics.command_started()
        assert value(parse(textfile.read_text()), "fleetshift_agent_command_in_progress") == 1
        textfile.unlink()
        metrics.command_finished(CommandStatus.SUCCEEDED)
        written = parse(textfile.read_text())
        assert value(written, "fleetshift_agent_command_in_progress") == 0
        assert value(written, "fleetshift_agent_commands_total", outcome="Succeeded") == 1


def test_a_textfile_that_cannot_be_written_later_is_logged_not_fatal(tmp_path: Path) -> None:
    clock = StepClock()
    folder = tmp_path / "textfile"
    folder.mkdir()
    metrics = PrometheusAgentMetrics(host_id="web-1", version="test", textfile=folder / "agent.prom",
                                     monotonic=clock)
    folder.rmdir()  # node_exporter's folder removed under a running agent
    metrics.flush(force=True)  # logged (metrics.textfile_failed), the agent carries on
    metrics.command_finished(CommandStatus.FAILED)
    folder.mkdir()
    metrics.flush(force=True)
    assert value(parse((folder / "agent.prom").read_text()), "fleetshift_agent_commands_total", outcome="Failed") == 1


def test_events_are_counted_once_when_they_end_and_unknown_names_are_other(tmp_path: Path) -> None:
    clock = StepClock()
    with metrics_with_textfile(tmp_path, clock) as metrics:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        metrics.event_reported(EventReport(name="DownloadBundle", status=EventStatus.PENDING, message="12 kB"))
        metrics.event_reported(EventReport(name="BeforeInstall", status=EventStatus.IN_PROGRESS, started_at=start))
        metrics.event_reported(EventReport(name="BeforeInstall", status=EventStatus.SUCCEEDED, started_at=start,
                                           ended_at=start + timedelta(seconds=42)))
        metrics.event_reported(EventReport(name="MyCustomHook", status=EventStatus.FAILED, started_at=start,
                                           ended_at=start + timedelta(seconds=1)))
        metrics.event_reported(EventReport(name="ValidateService", status=EventStatus.SKIPPED))
        # A crash cut the next command off in AfterInstall: that event fails and ValidateService is skipped,
        # as the restarted agent reports them; BeforeInstall had already ended and is not counted again.
        events = [EventReport(name="BeforeInstall", status=EventStatus.SUCCEEDED, started_at=start, ended_at=start),
                  EventReport(name="AfterInstall", status=EventStatus.IN_PROGRESS, started_at=start),
                  EventReport(name="ValidateService")]
        cut_off = CommandProgress(deployment_id="d-1", generation=1, application="a", deployment_group="g",
                                  status=CommandStatus.IN_PROGRESS, events=events, started_at=start)
        settled_events = [events[0], events[1].model_copy(update={"status": EventStatus.FAILED, "ended_at": start}),
                          events[2].model_copy(update={"status": EventStatus.SKIPPED})]
        metrics.events_settled(cut_off, cut_off.model_copy(update={"events": settled_events,
                                                                   "status": CommandStatus.FAILED}))
        metrics.flush(force=True)
        written = parse((tmp_path / "agent.prom").read_text())
    assert events_by_outcome(written) == {
        ("BeforeInstall", "Succeeded"): 1, (OTHER_EVENT, "Failed"): 1, ("ValidateService", "Skipped"): 2,
        ("AfterInstall", "Failed"): 1,
    }
    assert value(written, "fleetshift_agent_hook_duration_seconds_sum", event="BeforeInstall") == 42
    assert value(written, "fleetshift_agent_hook_duration_seconds_bucket", event="BeforeInstall", le="30.0") == 0
    assert value(written, "fleetshift_agent_hook_duration_seconds_bucket", event="BeforeInstall", le="60.0") == 1
    assert value(written, "fleetshift_agent_hook_duration_seconds_count", event=OTHER_EVENT) == 1
    assert value(written, "fleetshift_agent_hook_duration_seconds_count", event="ValidateService") is None


def test_concurrent_flushes_from_both_threads_leave_one_whole_file(tmp_path: Path) -> None:
    """The main thread (polls, commands) and the reporter (status writes) both flush; each write is whole."""
    clock = StepClock()
    with metrics_with_textfile(tmp_path, clock) as metrics:
        def hammer() -> None:
            for _ in range(200):
                metrics.poll_succeeded(datetime.now(UTC))
                metrics.flush(force=True)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        written = parse((tmp_path / "agent.prom").read_text())
    assert value(written, "fleetshift_agent_polls_total") == 800
    assert os.listdir(tmp_path) == ["agent.prom"]
