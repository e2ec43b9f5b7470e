"""Progress output: rows carry batch and host counts and the event each busy host runs; the log renderer
speaks only on change; the live table shows the same facts."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from structlog.testing import capture_logs

from contract.keys import status_key
from contract.models import CommandProgress, CommandStatus, EventReport, EventStatus, HostStatus
from contract.store import Store, open_store
from reconciler.cli.progress import LiveProgress, LogProgress, rollout_rows
from reconciler.settings import LoggingSettings, ReconcileSettings
from reconciler.shell.lease import WriteLease
from reconciler.shell.passes import PassOutcome, PassRunner
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, local_revision, now, settings_overrides


def report_running(store: Store, host: str, event: str) -> None:
    """The agent on `host` is in the middle of `event` of the command it was given."""
    command = ScriptedAgents(store, [host]).command(host)
    assert command is not None
    stored = store.get(status_key(host))
    assert stored is not None
    status = HostStatus.model_validate_json(stored.data)
    progress = CommandProgress(
        deployment_id=command.deployment_id, generation=command.generation, application=command.application,
        deployment_group=command.deployment_group, status=CommandStatus.IN_PROGRESS, started_at=now(),
        events=[EventReport(name="ApplicationStop", status=EventStatus.SUCCEEDED),
                EventReport(name=event, status=EventStatus.IN_PROGRESS)],
    )
    store.put(status_key(host), status.model_copy(update={"command": progress, "heartbeat_at": now()}).to_json())


def rollout(tmp_path: Path) -> tuple[Store, Config, ScriptedAgents, PassRunner]:
    store = open_store(f"file://{tmp_path / 'store'}")
    config = Config(tmp_path / "config")
    agents = ScriptedAgents(store, ["h1", "h2", "h3"])
    agents.register()
    settings = ReconcileSettings.model_validate(settings_overrides())
    lease = WriteLease(store, duration=settings.lease_duration)
    assert lease.try_acquire()
    runner = PassRunner(store, lease, settings)
    config.set_group(group_manifest(revision=local_revision(1)), message="v1")
    for _ in range(5):
        if runner.run_pass(config.desired()).settled:
            break
        agents.answer()
    config.set_group(group_manifest(revision=local_revision(2)), message="v2")
    return store, config, agents, runner


def test_rows_show_batch_counts_and_the_running_event(tmp_path: Path) -> None:
    store, config, _, runner = rollout(tmp_path)
    runner.run_pass(config.desired())  # v2: first host dispatched (one at a time)
    report_running(store, "h1", "ValidateService")
    outcome: PassOutcome = runner.run_pass(config.desired())
    (row,) = rollout_rows(outcome)
    assert (row.group, row.status, row.batches, row.total) == ("hello/web", "InProgress", 1, 3)
    assert (row.succeeded, row.failed, row.in_flight, row.pending) == (0, 0, 1, 2)
    assert row.running == (("h1", "ValidateService"),)
    assert row.revision == "bundles/v2.zip"

    live = LiveProgress(LoggingSettings())
    live.on_pass(outcome)  # not started: records the pass without drawing
    console = Console(record=True, width=150, force_terminal=False)
    console.print(live.table())
    text = console.export_text()
    assert "hello/web" in text and row.deployment_id in text
    assert "0/3 done, 1 running, 2 pending" in text
    assert "h1: ValidateService" in text


def test_log_progress_speaks_only_when_something_changed(tmp_path: Path) -> None:
    _, config, agents, runner = rollout(tmp_path)
    progress = LogProgress()
    with capture_logs() as logs:
        progress.on_pass(runner.run_pass(config.desired()))
        progress.on_pass(runner.run_pass(config.desired()))  # nothing new from the agents
        progress.on_pass(runner.run_pass(config.desired()))
        agents.answer()
        progress.on_pass(runner.run_pass(config.desired()))
    updates = [log for log in logs if log["event"] == "rollout.progress"]
    assert [(u["succeeded"], u["in_flight"], u["pending"]) for u in updates] == [(0, 1, 2), (1, 1, 1)]
    assert all(u["group"] == "hello/web" and u["total"] == 3 for u in updates)


def test_a_standby_forgets_the_fleet_and_logs_afresh_when_it_leads_again(tmp_path: Path) -> None:
    """`forget_view` (a `watch` that lost its lease): the table shows no fleet, and the log compares nothing with
    what it said before; ended deployments are not kept for comparison either (a `watch` runs for months)."""
    _, config, agents, runner = rollout(tmp_path)
    progress = LogProgress()
    live = LiveProgress(LoggingSettings())
    with capture_logs() as logs:
        outcome = runner.run_pass(config.desired())
        progress.on_pass(outcome)
        live.on_pass(outcome)
        assert set(progress._last_counts) == {outcome.in_flight["hello/web"]}
        progress.forget_view()
        live.forget_view()
        progress.on_pass(runner.run_pass(config.desired()))  # the same counts, logged again after standing by
        for _ in range(10):  # the rollout ends: its deployment leaves the log's memory with it
            agents.answer()
            progress.on_pass(runner.run_pass(config.desired()))
    updates = [(u["succeeded"], u["in_flight"], u["pending"]) for u in logs if u["event"] == "rollout.progress"]
    assert updates[:2] == [(0, 1, 2), (0, 1, 2)] and updates[-1][0] == 3
    assert progress._last_counts == {}
    console = Console(record=True, width=150, force_terminal=False)
    console.print(live.table())
    text = console.export_text()
    assert "standby: another reconciler holds the write lease" in text and "hello/web" not in text
