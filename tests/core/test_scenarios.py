"""Golden scenarios: one pass of `reconcile()` per folder under scenarios/, compared with expected.json.

Each folder holds desired.yaml (manifests), observed.json (what agents report), state.json (what the
reconciler wrote before, plus the pass's `now` and commit) and expected.json (the actions, as JSON). Run with
FLEETSHIFT_REGEN=1 to rewrite expected.json after an intended change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.core import actions_from_json, actions_to_json, reconcile
from tests.core.scenario import load_scenario

SCENARIOS = Path(__file__).parent / "scenarios"
REGENERATE = os.environ.get("FLEETSHIFT_REGEN") == "1"


def _folders() -> list[Path]:
    return sorted(p for p in SCENARIOS.iterdir() if (p / "desired.yaml").exists())


@pytest.mark.parametrize("folder", _folders(), ids=lambda p: p.name)
def test_scenario(folder: Path) -> None:
    desired, observed, state, now, settings = load_scenario(folder)
    actions = reconcile(desired, observed, state, now=now, settings=settings)
    produced = actions_to_json(actions)
    expected_file = folder / "expected.json"
    if REGENERATE or not expected_file.exists():
        expected_file.write_text(json.dumps(produced, indent=2) + "\n")
        if not REGENERATE:
            pytest.fail(f"{expected_file} did not exist; written now, review it and run again")
    expected = json.loads(expected_file.read_text())
    assert produced == expected, (
        f"{folder.name}: actions differ from expected.json; if intended, run with FLEETSHIFT_REGEN=1 and review"
    )
    # The JSON form is complete: parsing it back gives the same actions (what `plan --json` relies on).
    assert actions_from_json(expected) == actions


def test_every_scenario_has_all_files() -> None:
    for folder in SCENARIOS.iterdir():
        if folder.is_dir():
            missing = [f for f in ("desired.yaml", "observed.json", "state.json", "expected.json")
                       if not (folder / f).exists()]
            assert not missing, f"{folder.name} lacks {missing}"
