"""`reconcile validate` as a user runs it: a real process, exit codes, messages, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.gitrepo import ConfigRepo

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "config-repo" / "manifests"


def reconcile(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli.main", *args], cwd=cwd, capture_output=True,
                          check=False, text=True, timeout=60)


def test_example_config_repo_is_valid(tmp_path: Path) -> None:
    result = reconcile("validate", str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid: 1 application(s), 2 deployment group(s), 1 deployment config(s)" in result.stdout


def test_broken_copy_prints_every_error_and_exits_1(tmp_path: Path) -> None:
    broken = tmp_path / "manifests"
    shutil.copytree(EXAMPLE, broken)
    production = broken / "hello-production.yaml"
    production.write_text(production.read_text().replace("bundleType: tgz", "bundleType: rar")
                          .replace("canary-then-half", "canary-then-halve"))
    staging = broken / "hello-staging.yaml"
    staging.write_text(staging.read_text().replace("fileExistsBehavior", "fileExistBehavior"))
    (broken / "extra.yaml").write_text("apiVersion: deploy/v1\nkind: Application\nmetadata: {name: hello}\n")

    result = reconcile("validate", str(broken), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "4 error(s); nothing was applied."
    assert "extra.yaml:3:12: Application/hello: metadata.name: duplicate Application 'hello'" in lines[0]
    assert lines[1] == ("hello-production.yaml:14:7: DeploymentGroup/hello-production: "
                        "spec.revision.s3.bundleType: must be one of 'zip', 'tar' or 'tgz' (got 'rar')")
    assert lines[2].startswith("hello-production.yaml:28:3: DeploymentGroup/hello-production: spec.deploymentConfig: "
                               "no DeploymentConfig named 'canary-then-halve' (choose from: canary-then-half, ")
    assert lines[3].startswith("hello-staging.yaml:24:5: DeploymentGroup/hello-staging: "
                               "spec.options.fileExistBehavior: unknown field")

    as_json = reconcile("validate", str(broken), "--format", "json", cwd=tmp_path)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["valid"] is False
    assert {e["file"] for e in report["errors"]} == {"extra.yaml", "hello-production.yaml", "hello-staging.yaml"}


def test_validate_a_repo_at_a_ref(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.copy_tree(EXAMPLE, "manifests")
    sha = repo.commit("initial")
    result = reconcile("validate", "--repo", str(repo.path), "--ref", "main", "--path", "manifests",
                       "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["commit"] == sha


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = reconcile("validate", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"reconcile: {tmp_path / 'nope'}: no such folder"


def test_a_wrong_store_url_or_flag_is_invalid_input_not_an_outage(tmp_path: Path) -> None:
    bad_store = reconcile("status", "--repo", str(ROOT), "--path", "examples/config-repo/manifests",
                          "--store", "bogus://x", cwd=tmp_path)
    assert bad_store.returncode == 1
    assert bad_store.stderr.strip() == ("reconcile: unsupported store URL 'bogus://x': use file:///path/to/dir "
                                        "or s3://bucket/prefix")
    bad_flag = reconcile("--once", "--timeout", "soon", "--repo", str(ROOT), cwd=tmp_path)
    assert bad_flag.returncode == 1
    assert bad_flag.stderr.strip() == ("reconcile: --timeout: invalid duration 'soon': write a number and a unit, "
                                       "like 90s, 5m, 1h30m")


def test_defaults_work_in_a_repository_with_settings_and_ci_files(tmp_path: Path) -> None:
    """`reconcile validate` in a checkout, no flags: deploy.yaml is read as settings (not as a manifest), the
    CI files at the root and under .github/ are not manifests, and the manifests are found."""
    repo = ConfigRepo(tmp_path / "config")
    repo.copy_tree(EXAMPLE, "manifests")
    repo.write("deploy.yaml", f"store: {(tmp_path / 'store').as_uri()}\nlogging: {{level: warning}}\n")
    repo.write(".github/workflows/ci.yml", "on: [push]\njobs: {plan: {runs-on: ubuntu-latest, steps: []}}\n")
    repo.write(".gitlab-ci.yml", "stages: [plan]\nplan: {script: [reconcile plan]}\n")
    repo.commit("a normal layout")

    result = reconcile("validate", cwd=repo.path)
    assert result.returncode == 0, result.stderr
    assert "valid: 1 application(s), 2 deployment group(s), 1 deployment config(s)" in result.stdout
    folder = reconcile("validate", str(repo.path), cwd=tmp_path)
    assert folder.returncode == 0, folder.stderr

    plan = reconcile("plan", "--offline", "--base", "HEAD", cwd=repo.path)
    assert plan.returncode == 0, plan.stderr


def test_help_documents_the_defaults(tmp_path: Path) -> None:
    result = reconcile("--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--repo . --ref HEAD --path ." in text
    assert "hidden files and folders" in text and "deploy.yaml" in text
