"""The README's first command, end to end: real agents, real Git repos, a rollout, a failure, a rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_rolls_out_fails_on_the_canary_and_rolls_back(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--hosts", "4", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "the canary batch failed on host-1" in output
    # The CI log says why, from the agent's own report: event, script, exit code, and the service's traceback.
    assert "host-1 failed: ValidateService failed: scripts/validate.sh exited with code 1" in output
    assert "FileExistsError" in output
    assert "rollout v3" in output and "exit code 3" in output

    app_repo = workdir / "app-repo"
    v2 = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=app_repo, capture_output=True, text=True,
                        check=True).stdout.strip()
    v3 = subprocess.run(["git", "rev-parse", "HEAD"], cwd=app_repo, capture_output=True, text=True,
                        check=True).stdout.strip()
    group = json.loads((workdir / "store" / "groups" / "hello" / "hello-demo.json").read_text())
    assert group["effectiveRevision"]["git"]["commit"] == v2
    assert [q["revision"]["git"]["commit"] for q in group["quarantined"]] == [v3]
    for index in range(1, 5):
        status = json.loads((workdir / "store" / "hosts" / f"host-{index}" / "status.json").read_text())
        installed = status["installed"]["hello/hello-demo"]["revision"]["git"]["commit"]
        assert installed == v2, f"host-{index} runs {installed}, expected v2 after the rollback"
        # Every host answers with v2 (the services were stopped when the demo ended, so read the files).
        version = (workdir / f"host-{index}" / "root" / "srv" / "hello" / "VERSION").read_text().strip()
        assert version == "2"
    # The demo stops what it started: no agent keeps running.
    leftover = subprocess.run(["pgrep", "-f", "--", f"file://{workdir}/store"], capture_output=True, check=False)
    assert leftover.returncode == 1, leftover.stdout
