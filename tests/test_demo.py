"""The README's first command, end to end: real agents behind a real HAProxy under load, real Git repos, rollouts,
a failure, a rollback, a fix, and not one failed request."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_rolls_out_fails_on_the_canary_and_rolls_back(tmp_path: Path) -> None:
    require_tool("haproxy", "haproxy")
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
    assert "v3 is quarantined" in output and "QUARANTINED" in output
    # The load through HAProxy: three rollouts (one failed and rolled back) and not one failed request.
    assert "three rollouts under load, one failure and rollback, 0 failed requests" in output
    for version in ("v2", "v3", "v4"):
        assert re.search(rf"rollout {version}: .*, [0-9,]+ requests served, 0 failed", output), version

    app_repo = workdir / "app-repo"
    v4 = subprocess.run(["git", "rev-parse", "HEAD"], cwd=app_repo, capture_output=True, text=True,
                        check=True).stdout.strip()
    group = json.loads((workdir / "store" / "groups" / "hello" / "hello-demo.json").read_text())
    assert group["effectiveRevision"]["git"]["commit"] == v4
    assert group["quarantined"] == []  # v4 is a new desired revision: v3's quarantine holds nothing back
    for index in range(1, 5):
        status = json.loads((workdir / "store" / "hosts" / f"host-{index}" / "status.json").read_text())
        installed = status["installed"]["hello/hello-demo"]["revision"]["git"]["commit"]
        assert installed == v4, f"host-{index} runs {installed}, expected the fix, v4"
        # Every host has v4 (the services were stopped when the demo ended, so read the files).
        version = (workdir / f"host-{index}" / "root" / "srv" / "hello" / "VERSION").read_text().strip()
        assert version == "4"
        events = {e["name"]: e for e in status["command"]["events"]}
        assert events["AllowTraffic"]["status"] == "Succeeded", events["AllowTraffic"]
    # The demo stops what it started: no agent keeps running.
    leftover = subprocess.run(["pgrep", "-f", "--", f"file://{workdir}/store"], capture_output=True, check=False)
    assert leftover.returncode == 1, leftover.stdout
