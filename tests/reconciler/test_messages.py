"""What `reconcile` and `deploy-agent` tell a person when something is missing or mistyped, through the real
commands in real processes: a store that does not exist yet (read-only commands must not create it), a
`file://` URL with a host part, an unreadable config repo, and global flags given after the sub-command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract.store import open_store
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, local_revision

VENV_BIN = Path(sys.executable).parent


def environment(tmp_path: Path) -> dict[str, str]:
    """Nothing from the developer's machine: no deploy.yaml, default store or repo mirrors outside tmp_path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("FLEETSHIFT_", "AWS_"))}
    env.update({
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "FLEETSHIFT_LOGGING_FORMAT": "json",
        "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "20ms",
        "FLEETSHIFT_RECONCILE_TIMEOUT": "30s",
    })
    return env


def reconcile(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "reconcile"), *args], cwd=tmp_path, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)


def agent(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "deploy-agent"), *args], cwd=tmp_path, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = Config(tmp_path / "config")
    config.set_group(group_manifest(revision=local_revision(1)), message="v1")
    return config


# --------------------------------------------------------------------------------------------------
# A store that does not exist yet


@pytest.mark.parametrize(("command", "code", "expected"), [
    (["status"], 0, "no store at {missing} yet: nothing has been deployed there"),
    (["status", "web"], 0, "hello/web  NEW"),
    (["history", "web"], 0, "hello/web: no deployments yet (no store at {missing} yet: nothing has been deployed "
                            "there)"),
    (["history", "api"], 1, "no deployment group named 'api' (known: hello/web); no store at {missing} yet"),
    (["plan"], 0, "store file://{missing} does not exist"),
    (["validate"], 0, "valid: 1 application(s), 1 deployment group(s)"),
    (["retry", "web"], 1, "no store at {missing} yet: nothing has been deployed there, so there is nothing to "
                          "retry"),
    (["stop", "web"], 1, "so there is nothing to stop"),
    (["forget", "web"], 1, "so there is nothing to forget"),
])
def test_commands_that_do_not_deploy_never_create_a_missing_store(
    tmp_path: Path, config: Config, command: list[str], code: int, expected: str
) -> None:
    missing = tmp_path / "nowhere" / "store"
    result = reconcile(tmp_path, *command, *config.args(), "--store", f"file://{missing}")
    assert result.returncode == code, result.stdout + result.stderr
    assert expected.format(missing=missing) in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nowhere").exists(), f"`reconcile {' '.join(command)}` created the store folder"


def test_status_json_says_the_store_is_missing(tmp_path: Path, config: Config) -> None:
    missing = tmp_path / "nowhere" / "store"
    result = reconcile(tmp_path, "status", "--format", "json", *config.args(), "--store", f"file://{missing}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["storeMissing"] == f"no store at {missing} yet: nothing has been deployed there"
    assert [(g["group"], g["state"]) for g in report["groups"]] == [("hello/web", "new")]
    assert not (tmp_path / "nowhere").exists()


def test_the_apply_path_still_creates_the_store(tmp_path: Path, config: Config) -> None:
    store = tmp_path / "new" / "store"
    result = reconcile(tmp_path, "--once", "--no-wait", *config.args(), "--store", f"file://{store}")
    assert result.returncode == 0, result.stderr
    assert (store / "groups" / "hello" / "web.json").is_file()


# --------------------------------------------------------------------------------------------------
# file://HOST/...


@pytest.mark.parametrize("command", [["--once"], ["status"], ["watch"]])
def test_a_file_url_with_a_host_is_invalid_input_for_the_reconciler(
    tmp_path: Path, config: Config, command: list[str]
) -> None:
    result = reconcile(tmp_path, *command, *config.args(), "--store", "file://tmp/x")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "file:///tmp/x (three slashes)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tmp").exists()


def test_a_file_url_with_a_host_is_invalid_input_for_the_agent(tmp_path: Path) -> None:
    result = agent(tmp_path, "run", "--once", "--store", "file://tmp/x", "--root-dir", str(tmp_path / "root"),
                   "--host-id", "h1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deploy-agent: store file://tmp/x:" in result.stderr
    assert "file:///tmp/x (three slashes)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tmp").exists()


# --------------------------------------------------------------------------------------------------
# deploy-agent: global flags after the sub-command


@pytest.mark.parametrize("where", ["before", "after"])
def test_agent_log_flags_work_before_and_after_run(tmp_path: Path, where: str) -> None:
    """`--log-level error` silences the info lines an idle `run --once` logs, wherever it is written."""
    flags = ["--log-level", "error", "--log-format", "json"]
    run = ["run", "--once", "--store", f"file://{tmp_path / 'store'}", "--root-dir", str(tmp_path / "root"),
           "--host-id", "h1"]
    result = agent(tmp_path, *(flags + run if where == "before" else run + flags))
    assert result.returncode == 0, result.stderr
    assert "agent.started" not in result.stdout + result.stderr
    assert (tmp_path / "store" / "hosts" / "h1" / "registration.json").is_file()

    chatty = agent(tmp_path, *run, "--log-level", "info", "--log-format", "json")
    assert chatty.returncode == 0, chatty.stderr
    started = [json.loads(line) for line in (chatty.stdout + chatty.stderr).splitlines()
               if '"agent.started"' in line]
    assert started and started[0]["level"] == "info"


# --------------------------------------------------------------------------------------------------
# status with a config repo that cannot be read


def test_status_with_an_unreadable_repo_shows_the_store_and_exits_1(tmp_path: Path, config: Config) -> None:
    store_dir = tmp_path / "store"
    agents = ScriptedAgents(open_store(f"file://{store_dir}"), ["h1", "h2"])
    agents.register()
    started = reconcile(tmp_path, "--once", "--no-wait", *config.args(), "--store", f"file://{store_dir}")
    assert started.returncode == 0, started.stderr

    broken = ["--repo", f"file://{tmp_path / 'no-such.git'}", "--ref", "main", "--path", "manifests"]
    result = reconcile(tmp_path, "status", *broken, "--store", f"file://{store_dir}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: the manifests could not be read:" in result.stdout
    assert "does not appear to be a git repository" in result.stdout  # git's own reason
    assert "hello/web  DEPLOYING" in result.stdout  # what the store says is in flight, not "REMOVED"
    assert "REMOVED" not in result.stdout
    assert "desired      unknown: the manifests could not be read (last recorded by a pass: bundles/v1.zip" \
        in result.stdout

    as_json = reconcile(tmp_path, "status", "--format", "json", *broken, "--store", f"file://{store_dir}")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert "does not appear to be a git repository" in report["manifestsProblem"]
    (group,) = report["groups"]
    assert group["state"] == "deploying" and group["desiredKnown"] is False
    assert "the manifests could not be read" in as_json.stderr


# --------------------------------------------------------------------------------------------------
# Two agents with one host id


def test_status_warns_about_two_agents_with_one_host_id(tmp_path: Path, config: Config) -> None:
    """The second installation is refused and exits without touching the host's documents; its conflict
    record is the only trace, and `status` must show it, or the machine silently never gets deployed to."""
    store = f"file://{tmp_path / 'store'}"
    first = agent(tmp_path, "run", "--once", "--store", store, "--root-dir", str(tmp_path / "a"), "--host-id", "h1")
    assert first.returncode == 0, first.stderr
    second = agent(tmp_path, "run", "--once", "--store", store, "--root-dir", str(tmp_path / "b"), "--host-id", "h1")
    assert second.returncode == 1, second.stderr
    (record,) = (tmp_path / "store" / "hosts" / "h1" / "conflicts").glob("*.json")
    refused = record.stem  # hosts/<host>/conflicts/<installation>.json

    result = reconcile(tmp_path, "status", *config.args(), "--store", store)
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stdout.splitlines() if line.startswith("WARNING: host h1:"))
    assert f"installation {refused} on " in warning and " was refused because installation " in warning
    assert "that machine gets no deployments. Give it its own hostId" in warning

    as_json = reconcile(tmp_path, "status", "--format", "json", *config.args(), "--store", store)
    (conflict,) = json.loads(as_json.stdout)["hostConflicts"]
    assert conflict["host"] == "h1" and conflict["kind"] == "refused" and refused in conflict["message"]
