"""A hostile commit (the fuzz corpus's hostile documents) through every entry point: `validate`, `--once`,
`plan` and `status` as processes exit with located errors and no traceback; `watch` (in-process) logs the
commit as invalid, keeps running and keeps the last valid commit."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from contract.store import open_store
from reconciler.settings import DeploySettings
from reconciler.shell.watch import Watcher
from tests.gitrepo import ConfigRepo
from tests.reconciler.procs import wait_for

CORPUS = Path(__file__).parent / "fuzz" / "corpus" / "manifests"
HOSTILE = sorted(CORPUS.glob("hostile-*.yaml"))
VALID = sorted(CORPUS.glob("valid-*.yaml"))
LOCATED = re.compile(r"(?P<file>hostile-[\w-]+\.yaml):\d+:\d+: ")


def reconcile(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli.main", *args, "--log-level", "warning"], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def hostile_repo(tmp_path: Path) -> tuple[ConfigRepo, str]:
    repo = ConfigRepo(tmp_path / "config")
    for path in VALID:
        repo.write(f"manifests/{path.name}", path.read_bytes())
    valid = repo.commit("valid")
    for path in HOSTILE:
        repo.write(f"manifests/{path.name}", path.read_bytes())
    repo.write("manifests/hostile-oversize.yaml", b"# big\n" * 200_000)
    repo.commit("hostile")
    return repo, valid


@pytest.mark.slow
def test_every_command_reports_a_hostile_commit_with_located_errors(
    tmp_path: Path, hostile_repo: tuple[ConfigRepo, str]
) -> None:
    repo, _ = hostile_repo
    common = ["--repo", str(repo.path), "--path", "manifests", "--store", f"file://{tmp_path / 'store'}"]
    validated = reconcile(tmp_path, "validate", *common)
    assert validated.returncode == 1, validated.stderr
    assert "Traceback" not in validated.stderr + validated.stdout
    named = {match["file"] for match in LOCATED.finditer(validated.stdout + validated.stderr)}
    # Every hostile file is reported at a line and column (a few are also merely invalid manifests).
    assert named == {path.name for path in HOSTILE} | {"hostile-oversize.yaml"}, validated.stdout
    for command in (["--once", "--no-wait"], ["plan"], ["status"]):
        result = reconcile(tmp_path, *command, *common)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, (command, output)
        assert result.returncode in (0, 1), (command, result.returncode, output)
        if command[0] != "status":
            assert result.returncode == 1 and LOCATED.search(output), (command, output)


def test_watch_survives_hostile_commits_and_keeps_the_last_valid_one(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    for path in VALID:
        repo.write(f"manifests/{path.name}", path.read_bytes())
    valid = repo.commit("valid")
    settings = DeploySettings.model_validate({
        "repository": {"url": str(repo.path), "ref": "main", "path": "manifests"},
        "store": f"file://{tmp_path / 'store'}",
        "reconcile": {"pollInterval": "20ms", "resyncInterval": "50ms", "leaseDuration": "5s"},
    })
    stop = threading.Event()
    watcher = Watcher(open_store(settings.store), settings, stop=stop)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: watcher.desired is not None and watcher.desired.commit == valid, 20, "the valid commit")
        for path in HOSTILE:
            repo.write(f"manifests/{path.name}", path.read_bytes())
            commit = repo.commit(f"hostile {path.name}")
            wait_for(lambda commit=commit: watcher.invalid_commit == commit, 20, f"{path.name} refused")  # type: ignore[misc]
            assert thread.is_alive(), path.name
            assert watcher.desired is not None and watcher.desired.commit == valid
            repo.remove(f"manifests/{path.name}")
    finally:
        stop.set()
        watcher.wake.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
