"""Golden plans: every scenario in `scenarios.py`, rendered as text, Markdown and JSON, compared byte for byte
with `golden/<scenario>/plan.{txt,md,json}`. After an intended change, regenerate with FLEETSHIFT_REGEN=1 and
review the diff like any other change to what users read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from reconciler.cli.plan import make_plan
from reconciler.plan.render import COMMENT_MARKER, render_json, render_markdown, render_text
from tests.plan.markdown_check import check_markdown
from tests.plan.scenarios import NOW, SCENARIOS, build

GOLDEN = Path(__file__).parent / "golden"


def _normalise(text: str, tmp_path: Path) -> str:
    """Temporary paths differ per run; nothing else may."""
    return text.replace(str(tmp_path), "<tmp>")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden_plan(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    built = build(tmp_path, name)
    plan = make_plan(built.request, now=NOW).plan
    rendered = {
        "plan.txt": render_text(plan, width=110),
        "plan.md": render_markdown(plan, mermaid=True),
        "plan.json": render_json(plan),
    }
    folder = GOLDEN / name
    for file_name, text in rendered.items():
        actual = _normalise(text, tmp_path)
        expected_file = folder / file_name
        if os.environ.get("FLEETSHIFT_REGEN"):
            folder.mkdir(parents=True, exist_ok=True)
            expected_file.write_text(actual)
        assert expected_file.exists(), f"no golden file {expected_file}; run with FLEETSHIFT_REGEN=1"
        assert actual == expected_file.read_text(), f"{name}/{file_name} differs from the golden file"

    # Beyond the bytes: the facts each scenario exists to show.
    exit_code = 1 if not plan.head.valid else (2 if plan.has_changes else 0)
    assert exit_code == scenario.exit_code
    assert rendered["plan.md"].startswith(COMMENT_MARKER)
    check_markdown(rendered["plan.md"])
    data = json.loads(rendered["plan.json"])
    assert data["formatVersion"] == 1
    assert data["head"]["commit"] == built.head_commit
    assert data["base"]["commit"] == built.base_commit
    assert data["fleet"] == ("store" if scenario.fleet else "offline")


def test_colour_on_a_terminal_is_the_same_text_styled(tmp_path: Path) -> None:
    plan = make_plan(build(tmp_path, "store-warnings").request, now=NOW).plan
    plain = render_text(plan, width=110)
    coloured = render_text(plan, color=True, width=110)
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain
