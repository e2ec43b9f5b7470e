"""Unreadable config repos, as a user meets them: a real `reconcile` process, real git failures, git's own
reason in the message, exit code 1 and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitrepo import ConfigRepo

RECONCILE = Path(sys.executable).parent / "reconcile"
APP = "apiVersion: deploy/v1\nkind: Application\nmetadata: {name: hello}\n"


def reconcile(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed console script with no FLEETSHIFT_* settings leaking in from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSHIFT_")}
    env["XDG_CACHE_HOME"] = str(cwd / "cache")
    env["GIT_TERMINAL_PROMPT"] = "0"
    return subprocess.run([str(RECONCILE), *args], cwd=cwd, env=env, capture_output=True, check=False, text=True,
                          timeout=120)


def assert_user_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["validate"], ["plan", "--offline"], ["--once", "--no-wait"]])
def test_unresolvable_host_says_so(tmp_path: Path, command: list[str]) -> None:
    url = "https://git.invalid/x.git"
    result = reconcile(*command, "--repo", url, "--store", (tmp_path / "store").as_uri(), cwd=tmp_path)
    assert_user_error(result, f"{url}: git clone failed: ", "Could not resolve host: git.invalid")
    assert len(result.stderr.strip().splitlines()) == 1, "one line: git's progress and advice are trimmed"


@pytest.mark.parametrize("command", [["validate"], ["plan", "--offline"]])
def test_file_url_to_a_missing_repository(tmp_path: Path, command: list[str]) -> None:
    url = (tmp_path / "missing.git").as_uri()
    result = reconcile(*command, "--repo", url, cwd=tmp_path)
    assert_user_error(result, f"{url}: git clone failed: ", "does not appear to be a git repository")
    assert "Please make sure" not in result.stderr
    assert "Cloning into" not in result.stderr


@pytest.mark.parametrize("command", [["validate"], ["plan", "--offline"]])
def test_a_folder_that_is_not_a_repository(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    result = reconcile(*command, "--repo", str(folder), cwd=tmp_path)
    assert_user_error(result, f"{folder}: not a Git repository (give the top folder of a checkout")


def test_unknown_ref_names_the_branches_there_are(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.write("app.yaml", APP)
    repo.commit("one")
    repo.repo.create_tag("v1")
    result = reconcile("validate", "--repo", str(repo.path), "--ref", "master", cwd=tmp_path)
    assert_user_error(result, f"reconcile: {repo.path}: no commit named 'master' (not a branch, tag or commit of "
                              "it; branches: main; tags: v1)")


def test_unknown_ref_in_a_remote_mirror(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.write("app.yaml", APP)
    repo.commit("one")
    url = repo.path.as_uri()
    result = reconcile("validate", "--repo", url, "--ref", "release", cwd=tmp_path)
    assert_user_error(result, f"{url}: no commit named 'release' (not a branch, tag or commit of it; branches: main")


def test_too_many_parents_says_why(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.write("app.yaml", APP)
    repo.commit("one")
    result = reconcile("validate", "--repo", str(repo.path), "--ref", "HEAD~3", cwd=tmp_path)
    assert_user_error(result, "no commit named 'HEAD~3': not enough parent commits to reach '~3'")


def test_empty_repository(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    result = reconcile("validate", "--repo", str(repo.path), cwd=tmp_path)
    assert_user_error(result, "no commit named 'HEAD' (the repository has no commits yet)")


def test_a_failed_fetch_keeps_gits_reason(tmp_path: Path) -> None:
    """The first load mirrors the repo; once the origin is gone, the fetch fails with git's words."""
    repo = ConfigRepo(tmp_path / "config")
    repo.write("app.yaml", APP)
    repo.commit("one")
    url = repo.path.as_uri()
    assert reconcile("validate", "--repo", url, cwd=tmp_path).returncode == 0
    repo.path.rename(tmp_path / "moved")
    result = reconcile("validate", "--repo", url, cwd=tmp_path)
    assert_user_error(result, f"{url}: git fetch failed: ", "does not appear to be a git repository")
