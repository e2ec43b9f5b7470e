"""`reconcile --once` on a local store moves on as soon as a host it waits for reports, not a poll interval later
(issue 18: a OneAtATime rollout spent a whole interval per host). On S3 the poll interval still paces it."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from contract.store import open_store
from reconciler.settings import ReconcileSettings
from reconciler.shell.lease import WriteLease
from reconciler.shell.passes import PassRunner
from reconciler.shell.settle import run_until_settled
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, local_revision, settings_overrides


def test_a_host_report_wakes_the_run_long_before_its_poll_interval(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}", create=True)
    config = Config(tmp_path / "config")
    agents = ScriptedAgents(store, [f"h{i}" for i in range(5)])
    agents.register()
    # A 10 s poll: without waking on reports, five one-at-a-time hosts would take 40 s or more.
    settings = ReconcileSettings.model_validate(settings_overrides(poll="10s", lease="60s", timeout="120s"))
    lease = WriteLease(store, duration=settings.lease_duration)
    assert lease.try_acquire()
    runner = PassRunner(store, lease, settings)
    stop = threading.Event()

    def answer() -> None:  # agents that take 0.2 s to run each command
        while not stop.is_set():
            time.sleep(0.2)
            if not agents.answer():
                agents.heartbeat()

    worker = threading.Thread(target=answer, daemon=True)
    worker.start()
    try:
        config.set_group(group_manifest(revision=local_revision(1)))
        first = run_until_settled(runner, config.desired(), timeout=timedelta(seconds=60))  # v1: all at once
        assert first.exit_code == 0, first.lines
        config.set_group(group_manifest(revision=local_revision(2), config="CodeDeployDefault.OneAtATime"))
        began = time.monotonic()
        result = run_until_settled(runner, config.desired(), timeout=timedelta(seconds=60))
        took = time.monotonic() - began
    finally:
        stop.set()
        worker.join()
    assert result.exit_code == 0, result.lines
    assert all(any("v2.zip" in run[2] for run in agents.runs[h]) for h in agents.hosts)
    assert took < 10, f"five hosts one at a time took {took:.1f}s with a 10 s poll interval"
