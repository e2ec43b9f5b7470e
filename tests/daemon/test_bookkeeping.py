"""The daemon's pure bookkeeping (folding event reports, settling a command cut off by a crash, wording a
superseded command) and its local state file, with the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.daemon.identity import INSTALLATION_FILE, StateError, load_installation
from agent.daemon.progress import AgentState, apply_event, finish_after_restart, relabel_superseded
from agent.daemon.statefile import STATE_FILE, LocalState, root_lock
from contract.vocabulary import DEFAULT_EVENTS, CommandStatus, EventStatus, LifecycleErrorCode
from contract.wire import CommandProgress, EventReport, HostCommand, InstalledRevision, LocalLocation, Revision

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)
REVISION = Revision(local=LocalLocation(path="/bundles/v1", bundle_type="directory"))


def progress(*states: EventStatus) -> CommandProgress:
    events = [
        EventReport(name=name, status=state, started_at=T0 if state != EventStatus.PENDING else None,
                    ended_at=T0 if state in (EventStatus.SUCCEEDED, EventStatus.FAILED) else None)
        for name, state in zip(DEFAULT_EVENTS, states, strict=False)
    ]
    events += [EventReport(name=name) for name in DEFAULT_EVENTS[len(states):]]
    return CommandProgress(deployment_id="d-1", generation=3, application="app", deployment_group="prod",
                           status=CommandStatus.IN_PROGRESS, events=events, started_at=T0)


def installed(deployment_id: str) -> InstalledRevision:
    return InstalledRevision(application="app", deployment_group="prod", revision=REVISION,
                             deployment_id=deployment_id, installed_at=T0)


S, F, K, R = EventStatus.SUCCEEDED, EventStatus.FAILED, EventStatus.SKIPPED, EventStatus.IN_PROGRESS


def test_apply_event_replaces_the_first_unfinished_event_of_that_name() -> None:
    current = progress(S, S)
    update = EventReport(name="BeforeInstall", status=R, started_at=T0)
    folded = apply_event(current, update)
    assert folded.events[2] == update and folded.events[:2] == current.events[:2]
    done = apply_event(folded, update.model_copy(update={"status": S, "ended_at": LATER}))
    assert done.events[2].status == S and done.events[2].ended_at == LATER


def test_cut_off_in_an_event_fails_it_after_restart_and_skips_the_rest() -> None:
    settled = finish_after_restart(progress(S, S, S, R), None, now=LATER)
    assert settled.status == CommandStatus.FAILED and settled.ended_at == LATER
    assert settled.message == "failed after restart: the agent stopped during Install; the command was not run again"
    install = settled.events[3]
    assert (install.status, install.error_code, install.started_at, install.ended_at) == (
        F, LifecycleErrorCode.FAILED_AFTER_RESTART, T0, LATER)
    assert [e.status for e in settled.events] == [S, S, S, F, K, K, K]
    assert all(e.message == "not run: the agent restarted during the command" for e in settled.events[4:])


def test_cut_off_between_events_fails_the_one_about_to_run() -> None:
    settled = finish_after_restart(progress(S, S), None, now=LATER)
    assert [e.status for e in settled.events] == [S, S, F, K, K, K, K]
    about_to_run = settled.events[2]
    assert about_to_run.started_at == LATER and about_to_run.error_code == LifecycleErrorCode.FAILED_AFTER_RESTART


def test_every_event_done_before_the_crash_keeps_the_runner_results() -> None:
    succeeded = finish_after_restart(progress(S, S, S, S, S, S, S), installed("d-1"), now=LATER)
    assert succeeded.status == CommandStatus.SUCCEEDED and succeeded.message is None
    failed = finish_after_restart(progress(S, S, S, S, F, K, K), installed("d-0"), now=LATER)
    assert failed.status == CommandStatus.FAILED
    # All events succeeded, but the runner recorded another deployment as installed: the last step was lost.
    unrecorded = finish_after_restart(progress(S, S, S, S, S, S, S), installed("d-0"), now=LATER)
    assert unrecorded.status == CommandStatus.FAILED


def test_an_ignored_application_stop_failure_does_not_fail_a_finished_command() -> None:
    settled = finish_after_restart(progress(F, S, S, S, S, S, S), installed("d-1"), now=LATER)
    assert settled.status == CommandStatus.SUCCEEDED


def test_superseded_wording() -> None:
    stopped = progress(S, S, S, K, K, K, K).model_copy(
        update={"status": CommandStatus.FAILED, "message": "stopped after BeforeInstall: the agent is shutting down"}
    )
    newer = HostCommand(host_id="h", generation=4, deployment_id="d-2", application="app", deployment_group="prod",
                        deployment_group_id="g", revision=REVISION, created_at=T0)
    relabelled = relabel_superseded(stopped, newer)
    assert relabelled.message == "stopped after BeforeInstall: superseded by command generation 4 (deployment d-2)"
    assert {e.message for e in relabelled.events[3:]} == {
        "not run: superseded by command generation 4 (deployment d-2)"}


def test_state_file_round_trip_and_corruption(tmp_path: Path) -> None:
    local = LocalState(tmp_path)
    assert local.load() is None
    state = AgentState(host_id="web-1", last_generation=7, progress=progress(S), running=True, reported=False)
    local.save(state)
    assert local.load() == state
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary file left behind
    (tmp_path / STATE_FILE).write_text('{"hostId": "web-1", "lastGeneration": "many"}')
    with pytest.raises(StateError, match=r"is unreadable \(Expected `int`, got `str` - at `\$.lastGeneration`\)"):
        local.load()


FIXTURES = Path(__file__).with_name("fixtures")


def test_an_upgraded_agent_reads_the_files_an_older_agent_wrote(tmp_path: Path) -> None:
    """The state file and the identity were written by pydantic models before they became msgspec structs (issue 18).
    These two were written by the agent of 92d8a16 (a command in flight, with a hook's process group recorded): the
    agent must read them as they are (else it would refuse to start, or take a new identity), and write them back
    byte for byte the same."""
    written = (FIXTURES / "ongoing-deployment.v92d8a16.json").read_bytes()
    (tmp_path / STATE_FILE).write_bytes(written)
    state = LocalState(tmp_path).load()
    assert state is not None and (state.host_id, state.last_generation, state.running, state.reported) == (
        "web-1", 7, True, False)
    assert state.child is not None and (state.child.pgid, state.child.start_ticks) == (4242, 123456)
    assert state.command is not None and state.command.revision.identity().startswith("local:/srv/bundles/shop-1.4")
    assert state.progress is not None and state.progress.events[1].status == EventStatus.IN_PROGRESS
    assert state.to_json() == written

    identity = (FIXTURES / "installation-id.v92d8a16.json").read_bytes()
    (tmp_path / INSTALLATION_FILE).write_bytes(identity)
    installation, warning = load_installation(tmp_path, machine="0123456789abcdef0123456789abcdef")
    assert (installation.installation_id, warning) == ("5c1d0a7e9f2b4c3d8e6f1a2b3c4d5e6f", None)
    assert installation.to_json() == identity


def test_one_agent_per_deployment_root(tmp_path: Path) -> None:
    with root_lock(tmp_path), pytest.raises(StateError, match="another deploy-agent"), root_lock(tmp_path):
        pass
    with root_lock(tmp_path):  # released on exit
        pass
