"""Real `deploy-agent run` processes against a file store and against the S3 server: commands appear, hooks
run, every event shows up in the host's status as it happens, and the installed revision is reported.
Crashes, restarts, store outages and superseding commands, each with a real process."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from contract.keys import command_key, registration_key
from contract.store.docs import read_document
from contract.vocabulary import CommandStatus, EventStatus, LifecycleErrorCode, group_key
from contract.wire import EventReport, HostRegistration, HostStatus
from tests.conftest import S3Server
from tests.daemon.agentproc import HOOK_EVENTS, AgentHost, make_bundle, make_command, stop_agent, wait_for
from tests.daemon.conftest import HostFactory
from tests.store.s3proxy import running_proxy

pytestmark = pytest.mark.slow

GROUP = group_key("hello", "production")


def event(status: HostStatus | None, name: str) -> EventReport | None:
    if status is None or status.command is None:
        return None
    return next((e for e in status.command.events if e.name == name), None)


def finished(host: AgentHost, generation: int) -> HostStatus | None:
    status = host.status()
    command = status.command if status is not None else None
    if command is not None and command.generation == generation and command.status != CommandStatus.IN_PROGRESS:
        return status
    return None


def test_command_runs_and_every_event_is_reported_as_it_happens(make_host: HostFactory, tmp_path: Path) -> None:
    host = make_host(gated=True)
    bundle = make_bundle(tmp_path / "v1")
    agent = host.start()
    try:
        first = wait_for(host.status, "the first heartbeat", process=agent)
        assert first.command is None and first.installed == {} and first.heartbeat_interval_seconds == 300
        registration = read_document(host.store, registration_key("web-1"), HostRegistration)
        assert registration is not None
        assert registration.document.tags == {"app": "hello"} and registration.document.platform == "linux"

        host.send(make_command("web-1", 1, bundle))
        for index, name in enumerate(HOOK_EVENTS):
            def running(name: str = name) -> HostStatus | None:
                status = host.status()
                report = event(status, name)
                return status if report is not None and report.status == EventStatus.IN_PROGRESS else None

            status = wait_for(running, f"{name} in progress", process=agent)
            report = event(status, name)
            assert report is not None and report.started_at is not None and report.ended_at is None
            assert status.command is not None and status.command.status == CommandStatus.IN_PROGRESS
            for earlier in HOOK_EVENTS[:index]:
                assert (event(status, earlier) or EventReport(name=earlier)).status == EventStatus.SUCCEEDED
            for later in HOOK_EVENTS[index + 1 :]:
                assert (event(status, later) or EventReport(name=later)).status == EventStatus.PENDING
            host.open_gate(name)

        final = wait_for(lambda: finished(host, 1), "the command's result", process=agent)
        assert final.command is not None and final.command.status == CommandStatus.SUCCEEDED
        assert final.command.ended_at is not None
        assert [e.status for e in final.command.events] == [EventStatus.SUCCEEDED] * 7
        for name in HOOK_EVENTS:
            report = event(final, name)
            assert report is not None and report.ended_at is not None and report.started_at is not None
            assert f"ran {name} of d-000000001" in (report.log_tail or "")
        installed = final.installed[GROUP]
        assert installed.deployment_id == "d-000000001" and installed.revision.local is not None
        assert installed.revision.local.path == str(bundle)
        assert (host.host_root / "srv/app/index.html").read_text() == "revision v1\n"
        assert host.hook_runs() == [f"{name} d-000000001" for name in HOOK_EVENTS]
    finally:
        code = stop_agent(agent)
    assert code == 0
    assert host.log_events("agent.stopped")[-1]["all_reported"] is True


def test_once_exit_codes_and_a_failed_hook(file_host: HostFactory, tmp_path: Path) -> None:
    host = file_host()
    nothing = host.once()
    assert nothing.returncode == 0, nothing.stderr
    status = host.status()
    assert status is not None and status.command is None  # registered and heartbeated, nothing to do
    registered = host.store.get(registration_key("web-1"))

    host.send(make_command("web-1", 1, make_bundle(tmp_path / "broken", failing="AfterInstall")))
    failed = host.once()
    assert failed.returncode == 4, failed.stderr
    status = host.status()
    assert status is not None and status.command is not None
    assert status.command.status == CommandStatus.FAILED and "AfterInstall failed" in (status.command.message or "")
    after_install = event(status, "AfterInstall")
    assert after_install is not None and after_install.status == EventStatus.FAILED
    assert after_install.exit_code == 3 and after_install.error_code == LifecycleErrorCode.SCRIPT_FAILED
    assert "AfterInstall is broken" in (after_install.log_tail or "")
    assert [e.status for e in status.command.events[-2:]] == [EventStatus.SKIPPED, EventStatus.SKIPPED]
    assert status.installed == {}  # only a deployment that succeeded end to end counts as installed

    again = host.once()
    assert again.returncode == 0, again.stderr
    unchanged = host.store.get(registration_key("web-1"))
    assert registered is not None and unchanged is not None and unchanged.version == registered.version, (
        "an unchanged registration is not rewritten on every start")
    assert host.hook_runs() == ["BeforeInstall d-000000001", "AfterInstall d-000000001"], "a finished command ran again"

    host.send(make_command("web-1", 2, make_bundle(tmp_path / "fixed")))
    fixed = host.once()
    assert fixed.returncode == 0, fixed.stderr
    status = host.status()
    assert status is not None and status.command is not None and status.command.status == CommandStatus.SUCCEEDED
    assert status.installed[GROUP].deployment_id == "d-000000002"


@pytest.mark.parametrize("make_host", ["file", "s3"], indirect=True)
def test_kill_9_in_a_hook_is_reported_failed_after_restart_and_never_rerun(
    make_host: HostFactory, tmp_path: Path
) -> None:
    host = make_host(gated=True)
    agent = host.start()
    try:
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        host.open_gate("BeforeInstall")

        def in_after_install() -> HostStatus | None:
            status = host.status()
            report = event(status, "AfterInstall")
            started = (host.pids / "AfterInstall").exists()  # the hook itself is running, not only reported
            return status if report is not None and report.status == EventStatus.IN_PROGRESS and started else None

        wait_for(in_after_install, "AfterInstall in progress", process=agent)
        assert host.hook_runs() == ["BeforeInstall d-000000001", "AfterInstall d-000000001"]
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
    host.kill_hooks()  # the hook the dead agent started; its gate never opens
    for name in HOOK_EVENTS:
        host.open_gate(name)  # were anything run again, it would now run to the end

    restarted = host.once()
    assert restarted.returncode == 4, restarted.stderr
    status = host.status()
    assert status is not None and status.command is not None
    assert status.command.status == CommandStatus.FAILED
    assert status.command.message == (
        "failed after restart: the agent stopped during AfterInstall; the command was not run again")
    after_install = event(status, "AfterInstall")
    assert after_install is not None and after_install.status == EventStatus.FAILED
    assert after_install.error_code == LifecycleErrorCode.FAILED_AFTER_RESTART
    assert [event(status, name).status for name in ("ApplicationStart", "ValidateService")] == [  # type: ignore[union-attr]
        EventStatus.SKIPPED, EventStatus.SKIPPED]
    before_install = event(status, "BeforeInstall")
    assert before_install is not None and before_install.status == EventStatus.SUCCEEDED
    assert host.hook_runs() == ["BeforeInstall d-000000001", "AfterInstall d-000000001"]
    assert host.once().returncode == 0
    assert len(host.hook_runs()) == 2


def test_sigterm_finishes_the_current_event_reports_and_exits_0(file_host: HostFactory, tmp_path: Path) -> None:
    host = file_host(gated=True)
    agent = host.start()
    try:
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        wait_for(lambda: (e := event(host.status(), "BeforeInstall")) and e.status == EventStatus.IN_PROGRESS,
                 "BeforeInstall in progress", process=agent)
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: host.log_events("signal.received"), "the agent to take the signal", process=agent)
        assert agent.poll() is None, "the running event is finished first"
        host.open_gate("BeforeInstall")
        assert agent.wait(timeout=20) == 0
    finally:
        stop_agent(agent)
    status = host.status()
    assert status is not None and status.command is not None
    assert status.command.status == CommandStatus.FAILED
    assert status.command.message == ("stopped after BeforeInstall: the agent is shutting down, so the remaining "
                                      "events were skipped")
    assert [e.status for e in status.command.events] == [EventStatus.SUCCEEDED] * 3 + [EventStatus.SKIPPED] * 4
    assert host.log_events("agent.stopped")[-1]["all_reported"] is True
    for name in HOOK_EVENTS:
        host.open_gate(name)
    assert host.once().returncode == 0  # already reported; nothing runs again
    assert host.hook_runs() == ["BeforeInstall d-000000001"]


def test_unreadable_and_misaddressed_commands_are_never_run(file_host: HostFactory, tmp_path: Path) -> None:
    host = file_host()
    misaddressed = make_command("web-2", 1, make_bundle(tmp_path / "v1"))
    host.store.put(command_key("web-1"), misaddressed.to_json())
    assert host.once().returncode == 0
    status = host.status()
    assert status is not None and status.command is None

    host.store.put(command_key("web-1"), json.dumps(
        {"schemaVersion": 1, "hostId": "web-1", "generation": 2, "deploymentId": "d-2", "application": "hello",
         "deploymentGroup": "production", "revision": "not a revision"}).encode())
    unreadable = host.once()
    assert unreadable.returncode == 4, unreadable.stderr
    status = host.status()
    assert status is not None and status.command is not None
    assert (status.command.generation, status.command.status) == (2, CommandStatus.FAILED)
    assert "the agent cannot read this command: commands/web-1.json: not a valid HostCommand" in (
        status.command.message or "")
    assert host.once().returncode == 0
    assert host.hook_runs() == []


def test_a_wiped_deployment_root_does_not_run_a_reported_command_again(file_host: HostFactory, tmp_path: Path) -> None:
    """The store's copy of the status is the second guard when the state file is gone."""
    host = file_host()
    host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
    assert host.once().returncode == 0
    (host.root_dir / "ongoing-deployment").unlink()
    assert host.once().returncode == 0
    assert len(host.hook_runs()) == 4


def test_store_outage_keeps_the_result_and_reports_it_when_the_store_is_back(
    s3_server: S3Server, tmp_path: Path
) -> None:
    from contract.store import open_store

    s3_server.client().create_bucket(Bucket="fleetshift-outage")
    store = open_store(f"s3://fleetshift-outage/fleet?endpoint={s3_server.endpoint_url}")
    with running_proxy(s3_server.endpoint_url) as proxy:
        host = AgentHost("web-1", tmp_path / "web-1", store, gated=True,
                         env={**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                         agent_store_url="s3://fleetshift-outage/fleet")
        agent = host.start()
        try:
            host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
            wait_for(lambda: (e := event(host.status(), "BeforeInstall")) and e.status == EventStatus.IN_PROGRESS,
                     "BeforeInstall in progress", process=agent)
            proxy.fail_next(100_000, 503, "SlowDown")  # S3 goes away mid-deployment
            for name in HOOK_EVENTS:
                host.open_gate(name)

            def finished_locally() -> dict[str, object] | None:
                state = json.loads((host.root_dir / "ongoing-deployment").read_text())
                done = state["progress"]["status"] == "Succeeded" and not state["reported"]
                return state if done else None

            wait_for(finished_locally, "the command to finish while the store is down", process=agent)
            wait_for(lambda: host.log_events("store.unavailable"), "the outage to be logged", process=agent)
            during = host.status()  # read directly from the server, not through the failing proxy
            assert during is not None and during.command is not None
            assert during.command.status == CommandStatus.IN_PROGRESS
            assert agent.poll() is None, "the agent must keep running through an outage"

            proxy.clear()  # S3 is back
            final = wait_for(lambda: finished(host, 1), "the result to be reported after the outage",
                             process=agent, timeout=40)
            assert final.command is not None and final.command.status == CommandStatus.SUCCEEDED
            assert final.installed[GROUP].deployment_id == "d-000000001"
            wait_for(lambda: json.loads((host.root_dir / "ongoing-deployment").read_text())["reported"],
                     "the state file to record the report", process=agent)
        finally:
            assert stop_agent(agent) == 0
    assert len(host.hook_runs()) == 4


def test_once_with_the_store_refusing_writes_exits_8_and_reports_on_the_next_run(
    s3_server: S3Server, tmp_path: Path
) -> None:
    from contract.store import open_store

    s3_server.client().create_bucket(Bucket="fleetshift-once-outage")
    store = open_store(f"s3://fleetshift-once-outage/fleet?endpoint={s3_server.endpoint_url}")
    with running_proxy(s3_server.endpoint_url) as proxy:
        host = AgentHost("web-1", tmp_path / "web-1", store,
                         env={**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url,
                              "FLEETSHIFT_AGENT_REPORT_TIMEOUT": "500ms"},
                         agent_store_url="s3://fleetshift-once-outage/fleet")
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        proxy.fail_next(100_000, 503, "SlowDown", methods={"PUT"})
        down = host.once()
        assert down.returncode == 8, down.stderr
        assert "unreported results are kept in" in down.stderr and "Traceback" not in down.stderr
        assert host.status() is None
        assert len(host.hook_runs()) == 4

        proxy.clear()
        back = host.once()
        assert back.returncode == 0, back.stderr
        status = host.status()
        assert status is not None and status.command is not None
        assert status.command.status == CommandStatus.SUCCEEDED and status.installed[GROUP].deployment_id
        assert len(host.hook_runs()) == 4


def test_unreachable_store_with_once_exits_8(tmp_path: Path) -> None:
    from contract.store import open_store

    host = AgentHost("web-1", tmp_path / "web-1", open_store(f"file://{tmp_path / 'unused'}"),
                     agent_store_url="s3://nowhere-bucket/p?endpoint=http://127.0.0.1:9")
    result = host.once()
    assert result.returncode == 8, result.stderr
    assert "cannot reach S3 at http://127.0.0.1:9" in result.stderr and "Traceback" not in result.stderr


def test_a_newer_command_supersedes_the_running_one_after_its_current_event(
    file_host: HostFactory, tmp_path: Path
) -> None:
    host = file_host(gated=True)
    agent = host.start()
    try:
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        wait_for(lambda: (e := event(host.status(), "BeforeInstall")) and e.status == EventStatus.IN_PROGRESS,
                 "BeforeInstall in progress", process=agent)
        host.send(make_command("web-1", 2, make_bundle(tmp_path / "v2")))
        wait_for(lambda: host.log_events("command.superseded"), "the agent to notice command 2", process=agent)
        for name in HOOK_EVENTS:
            host.open_gate(name)
        final = wait_for(lambda: finished(host, 2), "command 2's result", process=agent)
        assert final.command is not None and final.command.status == CommandStatus.SUCCEEDED
        assert final.installed[GROUP].deployment_id == "d-000000002"
    finally:
        assert stop_agent(agent) == 0
    first = next(r for r in host.log_events("command.finished") if r["generation"] == 1)
    assert first["status"] == "Failed"
    assert first["message"] == ("stopped after BeforeInstall: superseded by command generation 2 "
                                "(deployment d-000000002)")
    assert host.hook_runs() == ["BeforeInstall d-000000001", *[f"{name} d-000000002" for name in HOOK_EVENTS]]


def test_log_dir_keeps_a_copy_of_the_agents_log(tmp_path: Path) -> None:
    from contract.store import open_store

    host = AgentHost("web-1", tmp_path / "web-1", open_store(f"file://{tmp_path / 'store'}"),
                     env={"FLEETSHIFT_AGENT_LOG_DIR": str(tmp_path / "logs")})
    result = host.once()
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "logs" / "deploy-agent.log").read_text().splitlines()]
    assert lines[0]["event"] == "agent.started"
    assert '"event": "agent.started"' in result.stderr  # and still on stderr, for journald


def test_two_agents_cannot_share_a_deployment_root(file_host: HostFactory) -> None:
    host = file_host()
    agent = host.start()
    try:
        wait_for(host.status, "the first agent's heartbeat", process=agent)
        second = host.once()
        assert second.returncode == 1
        assert f"is using the deployment root {host.root_dir}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert stop_agent(agent) == 0


def test_an_idle_agent_polls_with_conditional_reads_that_move_no_body(s3_server: S3Server, tmp_path: Path) -> None:
    from contract.store import open_store

    s3_server.client().create_bucket(Bucket="fleetshift-idle")
    store = open_store(f"s3://fleetshift-idle/fleet?endpoint={s3_server.endpoint_url}")
    with running_proxy(s3_server.endpoint_url) as proxy:
        host = AgentHost("web-1", tmp_path / "web-1", store,
                         env={**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                         agent_store_url="s3://fleetshift-idle/fleet")
        host.send(make_command("web-1", 1, make_bundle(tmp_path / "v1")))
        agent = host.start()
        try:
            wait_for(lambda: finished(host, 1), "the command to finish", process=agent)
            # The agent marks the report sent once S3 answered, which is after the proxy counted that PUT.
            wait_for(lambda: json.loads((host.root_dir / "ongoing-deployment").read_text())["reported"],
                     "the final report to be acknowledged", process=agent)
            proxy.clear()
            wait_for(lambda: len(proxy.exchanges) >= 8, "eight idle polls", process=agent)
            idle = list(proxy.exchanges)
        finally:
            assert stop_agent(agent) == 0
    assert {(e.method, e.status) for e in idle} == {("GET", 304)}, idle
    assert sum(e.response_body_bytes for e in idle) == 0


def test_a_misspelled_agent_variable_is_warned_about_with_the_one_it_meant(
    file_host: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = file_host()
    monkeypatch.setattr(host, "environment", lambda: {**AgentHost.environment(host),
                                                      "FLEETSHIFT_AGENT_POL_INTERVAL": "1s"})
    result = host.once()
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "settings.unknown_variable" in line)
    assert "FLEETSHIFT_AGENT_POL_INTERVAL" in warning and "FLEETSHIFT_AGENT_POLL_INTERVAL" in warning


def test_report_output_settings_reach_the_runner(tmp_path: Path) -> None:
    """agent.yaml's reportOutput reaches the runner (here through its variable): with tailBytes 0 no hook
    output leaves the host, neither as a log tail nor in the failure message."""
    from contract.store import open_store

    store = open_store(f"file://{tmp_path / 'store'}")
    quiet = AgentHost("web-1", tmp_path / "web-1", store, env={"FLEETSHIFT_AGENT_REPORT_OUTPUT_TAIL_BYTES": "0"})
    quiet.send(make_command("web-1", 1, make_bundle(tmp_path / "broken", failing="AfterInstall")))
    assert quiet.once().returncode == 4
    status = quiet.status()
    assert status is not None and status.command is not None
    assert all(not e.log_tail for e in status.command.events), "tailBytes 0 published hook output"
    assert "AfterInstall is broken" not in (status.command.message or "")
