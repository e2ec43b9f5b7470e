"""Settings mistakes as a user meets them in a real `reconcile` process: a misspelt FLEETSHIFT_* variable is
warned about once, with a suggestion, whatever the command; a typo or a tab in deploy.yaml is located."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitrepo import ConfigRepo

RECONCILE = Path(sys.executable).parent / "reconcile"
APP = "apiVersion: deploy/v1\nkind: Application\nmetadata: {name: hello}\n"


def reconcile(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSHIFT_")}
    return subprocess.run([str(RECONCILE), *args], cwd=cwd, env=clean | env, capture_output=True, check=False,
                          text=True, timeout=120)


@pytest.fixture()
def repo(tmp_path: Path) -> ConfigRepo:
    config = ConfigRepo(tmp_path / "config")
    config.write("manifests/app.yaml", APP)
    config.commit("one")
    return config


@pytest.mark.parametrize("command", [["validate"], ["plan", "--offline"], ["status"], ["--once"]])
def test_a_misspelt_variable_is_warned_about_once(repo: ConfigRepo, tmp_path: Path, command: list[str]) -> None:
    env = {
        "FLEETSHIFT_STOR": "s3://meant-to-be-the-store/prod",
        "FLEETSHIFT_REGEN": "1",  # the test suite's own: not a setting, never warned about
        "FLEETSHIFT_REQUIRE_PLAN": "true",  # the CI examples' own
        "FLEETSHIFT_STORE": (tmp_path / "store").as_uri(),
        "FLEETSHIFT_REPOSITORY_PATH": "manifests",
    }
    result = reconcile(*command, "--repo", str(repo.path), cwd=tmp_path, env=env)
    assert result.returncode in (0, 2), result.stderr  # plan: 2 = there are changes
    warnings = [line for line in result.stderr.splitlines() if "FLEETSHIFT_" in line]
    assert warnings == ["reconcile: warning: FLEETSHIFT_STOR is not a setting and is ignored; did you mean "
                        "FLEETSHIFT_STORE?"]
    assert "Traceback" not in result.stderr


def test_the_warning_shows_even_when_the_settings_are_invalid(tmp_path: Path) -> None:
    (tmp_path / "deploy.yaml").write_text("repository:\n\tref: main\n")
    result = reconcile("validate", cwd=tmp_path, env={"FLEETSHIFT_RECONCILE_TIMOUT": "5m"})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "reconcile: warning: FLEETSHIFT_RECONCILE_TIMOUT is not a setting and is ignored; did you mean "
        "FLEETSHIFT_RECONCILE_TIMEOUT?",
        "deploy.yaml:2:1: YAML syntax error: a tab character (YAML indents with spaces only)",
    ]


def test_a_settings_typo_names_the_key_it_meant(tmp_path: Path) -> None:
    (tmp_path / "deploy.yaml").write_text("repository:\n  url: .\nreconcile:\n  histroyLimit: 5\n")
    result = reconcile("validate", cwd=tmp_path, env={})
    assert result.returncode == 1
    assert result.stderr == "deploy.yaml:4:3: reconcile.histroyLimit: unknown field; did you mean `historyLimit`?\n"


def test_a_warm_start_interval_under_a_second_is_refused_where_it_is_written(tmp_path: Path) -> None:
    """0s would rewrite the warm-start cache after nearly every pass of a rollout, and retry a failed write as often."""
    (tmp_path / "deploy.yaml").write_text("repository:\n  url: .\nreconcile:\n  warmStartInterval: 0s\n")
    result = reconcile("validate", cwd=tmp_path, env={})
    assert result.returncode == 1
    assert result.stderr.startswith("deploy.yaml:4:3: reconcile.warmStartInterval: ")
    assert "at least 1s" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "bare").mkdir()
    variable = reconcile("validate", cwd=tmp_path / "bare", env={"FLEETSHIFT_RECONCILE_WARM_START_INTERVAL": "500ms"})
    assert variable.returncode == 1
    assert "FLEETSHIFT_RECONCILE_WARM_START_INTERVAL" in variable.stderr and "at least 1s" in variable.stderr


def test_a_tab_in_a_manifest_is_located(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "app.yaml").write_text("apiVersion: deploy/v1\nkind: Application\nmetadata:\n  name: hello\n"
                                     "  labels:\n  \tteam: web\n")
    result = reconcile("validate", str(folder), cwd=tmp_path, env={})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "app.yaml:6:3: YAML syntax error: a tab character (YAML indents with spaces only)",
        "1 error(s); nothing was applied.",
    ]
