"""docs/first-fleet.md, run as written: every `sh` block, in order, in one shell, against the local S3 server.

The guide is the path a new user takes from the demo to a real fleet; if a command in it stops working, this
test fails, so the guide cannot rot. The only blocks it passes over are the ones marked in the guide as not
run by the test (installing on a server, creating the bucket), and it checks that there are exactly those.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3Server

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "first-fleet.md"
BUCKET = "my-fleet-store"
NOT_RUN = "<!-- first-fleet: not run by the test"

BLOCK = re.compile(r"(?P<before>[^\n]*)\n```sh\n(?P<body>.*?)\n```", re.DOTALL)


def guide_blocks() -> tuple[list[str], list[str]]:
    """The guide's shell blocks: (run by the test, marked as not run)."""
    run: list[str] = []
    skipped: list[str] = []
    for match in BLOCK.finditer(GUIDE.read_text(encoding="utf-8")):
        (skipped if match["before"].startswith(NOT_RUN) else run).append(match["body"])
    return run, skipped


def test_the_guide_marks_only_the_install_and_the_bucket_as_not_run() -> None:
    run, skipped = guide_blocks()
    assert len(skipped) == 2, skipped
    assert "pip install" in skipped[0]
    assert "aws s3 mb" in skipped[1]
    assert len(run) >= 8


@pytest.mark.slow
def test_the_first_fleet_guide_runs_as_written(s3_server: S3Server, tmp_path: Path) -> None:
    client = s3_server.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    run, _ = guide_blocks()
    script = "set -euo pipefail\ncd \"$HOME\"\n" + "\n".join(
        f"echo '### block {n}'\n{body}" for n, body in enumerate(run, 1)
    )
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("FLEETSHIFT_", "GIT_", "AWS_"))
    }
    env.update(s3_server.env())
    env.update({
        "HOME": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "XDG_CACHE_HOME": str(tmp_path / ".cache"),
        "XDG_STATE_HOME": str(tmp_path / ".state"),
        "NO_COLOR": "1",
    })
    proc = subprocess.Popen(
        ["bash", "-c", script], env=env, cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    finally:
        for pid_file in (tmp_path / "first-fleet" / "agents").glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    logs = "".join(
        f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted((tmp_path / "first-fleet" / "agents").glob("*.log"))
    )
    print(output)  # shown by pytest when the test fails, or with -s
    assert proc.returncode == 0, f"the guide failed (exit {proc.returncode}):\n{output}\n{logs}"
    # What the guide promises a reader sees, not only that its commands exited 0.
    assert "QUARANTINED" in output
    assert "web-1 failed: ValidateService failed: scripts/validate.sh exited with code 1" in output
    assert re.search(r"failed, rolled back", output), output
    assert (tmp_path / "first-fleet/agents/web-1/root/srv/myapp/index.html").read_text() == "version 3\n"
