"""`reconcile plan` as CI runs it: a real process, real repos, real store; exit codes 0 / 2 / 1 like
`terraform plan -detailed-exitcode`, errors as messages, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.plan.render import COMMENT_MARKER
from reconciler.plan.saved import load_saved_plan
from tests.plan.scenarios import build


def plan(tmp_path: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "reconciler.cli.main", "plan", "--repo", str(repo), "--path", "manifests",
               "--log-level", "warning", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_no_change_exits_0(tmp_path: Path) -> None:
    built = build(tmp_path, "no-change")
    result = plan(tmp_path, built.repo.path, "--offline")
    assert result.returncode == 0, result.stderr
    assert "No changes: the manifests mean the same at both refs." in result.stdout


@pytest.mark.slow
def test_changes_exit_2_in_every_format(tmp_path: Path) -> None:
    built = build(tmp_path, "revision-bump-store", now=datetime.now(UTC))
    assert built.store_url is not None
    as_json = plan(tmp_path, built.repo.path, "--store", built.store_url, "--format", "json")
    assert as_json.returncode == 2, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["hasChanges"] is True and data["fleet"] == "store"
    assert [b["hosts"] for b in data["rollouts"][0]["batches"]] == [["web-3"], ["web-1", "web-2"], ["web-4", "web-5"]]

    as_markdown = plan(tmp_path, built.repo.path, "--offline", "--format", "markdown", "--base", "main",
                       "--head", "change")
    assert as_markdown.returncode == 2, as_markdown.stderr
    assert as_markdown.stdout.startswith(COMMENT_MARKER)
    assert "`revision.git.commit` | `3f2c9e1` | `8a01d2f`" in as_markdown.stdout


@pytest.mark.slow
def test_invalid_head_exits_1_with_every_error_located(tmp_path: Path) -> None:
    built = build(tmp_path, "invalid-head")
    result = plan(tmp_path, built.repo.path, "--offline")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "manifests/web.yaml:11:7: DeploymentGroup/web: spec.revision.git.commit:" in result.stdout
    assert "manifests/web.yaml:17:3: DeploymentGroup/web: spec.deploymentConfg: unknown field" in result.stdout
    assert "the head has 2 manifest errors; nothing was planned" in result.stderr


@pytest.mark.slow
def test_bad_ref_and_unsavable_plan_exit_1_without_traceback(tmp_path: Path) -> None:
    built = build(tmp_path, "revision-bump")
    bad_ref = plan(tmp_path, built.repo.path, "--base", "no-such-branch")
    assert bad_ref.returncode == 1
    assert "--base 'no-such-branch' names no commit" in bad_ref.stderr
    assert "Traceback" not in bad_ref.stderr

    offline_out = plan(tmp_path, built.repo.path, "--offline", "--out", str(tmp_path / "plan.json"))
    assert offline_out.returncode == 1
    assert "--out needs the store" in offline_out.stderr
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.slow
def test_out_saves_a_plan_that_loads(tmp_path: Path) -> None:
    built = build(tmp_path, "revision-bump-store", now=datetime.now(UTC))
    assert built.store_url is not None
    saved = tmp_path / "plan.json"
    result = plan(tmp_path, built.repo.path, "--store", built.store_url, "--out", str(saved))
    assert result.returncode == 2, result.stderr
    assert f"apply exactly this plan with `reconcile --once --plan {saved}`" in result.stderr
    assert load_saved_plan(saved).head_commit == built.head_commit


UNREACHABLE_S3 = "s3://fleetshift-plan/prod?endpoint=http://127.0.0.1:1"


@pytest.mark.slow
def test_each_failure_has_its_own_exit_code_and_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI workflow must tell "the change is invalid" (1, errors on stdout) from "the repository cannot be
    read" (1, a different message, nothing on stdout) from "the store cannot be read" (8, as everywhere in
    `reconcile`), and the last must not pass for a complete plan with exit 0 or 2."""
    # Credentials that would do, so what fails is the connection (nothing listens on port 1).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    built = build(tmp_path / "good", "revision-bump")
    unreachable = plan(tmp_path, built.repo.path, "--store", UNREACHABLE_S3)
    assert unreachable.returncode == 8, unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert f"reconcile plan: store {UNREACHABLE_S3} could not be read: cannot reach S3 at http://127.0.0.1:1" \
        in unreachable.stderr
    assert "Could not connect to the endpoint URL" in unreachable.stderr  # botocore's own reason is kept
    assert "computed offline" in unreachable.stderr
    assert "~ DeploymentGroup/web" in unreachable.stdout  # the diff is still worth reviewing, so it is shown
    with_out = plan(tmp_path, built.repo.path, "--store", UNREACHABLE_S3, "--out", str(tmp_path / "plan.json"))
    assert with_out.returncode == 8 and "was not saved" in with_out.stderr
    assert not (tmp_path / "plan.json").exists()

    invalid = build(tmp_path / "invalid", "invalid-head")
    bad_manifests = plan(tmp_path, invalid.repo.path, "--store", UNREACHABLE_S3)
    assert bad_manifests.returncode == 1, bad_manifests.stderr
    assert "the head has 2 manifest errors; nothing was planned" in bad_manifests.stderr
    assert "cannot read the config repository" not in bad_manifests.stderr

    (tmp_path / "not-a-repo").mkdir()
    no_repo = plan(tmp_path, tmp_path / "not-a-repo", "--offline")
    assert no_repo.returncode == 1
    assert no_repo.stderr.startswith(f"reconcile plan: cannot read the config repository: {tmp_path / 'not-a-repo'}")
    assert "manifest error" not in no_repo.stderr and no_repo.stdout == ""
    assert "Traceback" not in no_repo.stderr


@pytest.mark.slow
def test_a_missing_file_store_is_reported_and_not_created(tmp_path: Path) -> None:
    built = build(tmp_path / "repo", "revision-bump")
    missing = tmp_path / "nowhere" / "store"
    result = plan(tmp_path, built.repo.path, "--store", f"file://{missing}")
    assert result.returncode == 2, result.stderr
    assert f"store file://{missing} does not exist" in result.stdout
    assert not (tmp_path / "nowhere").exists()
