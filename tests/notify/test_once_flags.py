"""`reconcile --once --notify-timeout`: a bad duration is one line and exit 1, before anything is read or written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_a_bad_notify_timeout_is_refused_before_anything_happens(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = subprocess.run(
        [str(BIN / "reconcile"), "--once", "--notify-timeout", "soon", "--repo", str(tmp_path / "no-repo"),
         "--store", f"file://{store}"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == ("reconcile: --notify-timeout: invalid duration 'soon': write a number and a "
                                     "unit, like 90s, 5m, 1h30m")
    assert not store.exists(), "nothing was created"


def test_the_flag_is_in_the_help() -> None:
    result = subprocess.run([str(BIN / "reconcile"), "--help"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert "--notify-timeout DURATION" in result.stdout
