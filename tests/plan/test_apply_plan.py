"""End to end: `reconcile plan --out plan.json`, then `reconcile --once --plan plan.json`, as a merge job runs
them. Real processes, a real config repo and a real file store; `--no-wait` so no agents are needed."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.exitcodes import ExitCode
from contract.keys import group_state_key
from contract.models import GroupState
from contract.store import open_store
from tests.plan.scenarios import FleetWriter, build


def reconcile(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli.main", *args, "--log-level", "warning"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_a_saved_plan_is_applied_once_and_then_refused_as_stale(tmp_path: Path) -> None:
    built = build(tmp_path, "revision-bump-store", now=datetime.now(UTC))
    assert built.store_url is not None
    common = ["--repo", str(built.repo.path), "--path", "manifests", "--store", built.store_url]
    saved = tmp_path / "plan.json"
    planned = reconcile(tmp_path, "plan", *common, "--out", str(saved))
    assert planned.returncode == ExitCode.CHANGES, planned.stderr

    applied = reconcile(tmp_path, "--once", "--no-wait", "--plan", str(saved), *common)
    assert applied.returncode == ExitCode.OK, applied.stderr
    store = open_store(built.store_url)
    stored = store.get(group_state_key("shop", "web"))
    assert stored is not None
    group_state = GroupState.model_validate_json(stored.data)
    assert group_state.deployment_in_flight is not None
    assert group_state.desired_commit == built.head_commit

    # The same plan again: the deployment it started changed the group's state since it was computed.
    again = reconcile(tmp_path, "--once", "--no-wait", "--plan", str(saved), *common)
    assert again.returncode == ExitCode.STALE_PLAN
    assert "the plan is stale" in again.stderr
    assert "group state shop/web: desiredRevision:" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.slow
def test_a_plan_is_refused_when_a_host_joined_and_nothing_is_written(tmp_path: Path) -> None:
    built = build(tmp_path, "revision-bump-store", now=datetime.now(UTC))
    assert built.store_url is not None
    common = ["--repo", str(built.repo.path), "--path", "manifests", "--store", built.store_url]
    saved = tmp_path / "plan.json"
    assert reconcile(tmp_path, "plan", *common, "--out", str(saved)).returncode == ExitCode.CHANGES

    store = open_store(built.store_url)
    FleetWriter(store, datetime.now(UTC)).host("web-7", {"app": "web", "env": "prod"})
    before = store.get(group_state_key("shop", "web"))
    refused = reconcile(tmp_path, "--once", "--no-wait", "--plan", str(saved), *common)
    assert refused.returncode == ExitCode.STALE_PLAN, refused.stderr
    assert "host membership of shop/web: web-7 joined" in refused.stderr
    after = store.get(group_state_key("shop", "web"))
    assert before is not None and after is not None and after.data == before.data
