"""A HalfAtATime deployment where one host fails within the minimum healthy hosts: CodeDeploy counts it
successful, and so does `reconcile --once` (exit 0), but the summary names the host that did not get the
revision and why, and docs/reconciler.md "After a partial success" says how to bring it up to date. Through
the real CLI entry point, a real FileStore and Git config repo, with in-process agents (tests/reconciler/fleet.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reconciler.fleet import group_manifest, local_revision
from tests.reconciler.test_cli import World, fast_settings

__all__ = ["fast_settings"]  # the fixture, used here too

ROOT = Path(__file__).resolve().parents[2]


def deploy(world: World, version: int) -> int:
    world.config.set_group(group_manifest(revision=local_revision(version), config="CodeDeployDefault.HalfAtATime"),
                           message=f"v{version}")
    with world.answering():
        return world.run("--once")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def hosts_of(world: World, capsys: pytest.CaptureFixture[str]) -> dict[str, bool]:
    assert world.run("status", "web", "--format", "json") == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    return {host["host"]: host["upToDate"] for host in group["hosts"]}


def test_a_host_failing_within_the_minimum_is_named_and_caught_up_by_the_next_revision(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy(world, 1) == 0
    capsys.readouterr()

    world.agents.failing = {"h3": "v2.zip"}
    assert deploy(world, 2) == 0  # CodeDeploy counts it successful: 3 of 4 is above the minimum of 2
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "deployment d-" in line)
    assert line.endswith(
        "of bundles/v2.zip succeeded, but 1 of 4 hosts failed and did not get it (within the minimum healthy "
        'hosts); see docs/reconciler.md "After a partial success" to bring them up to date'
    ), out
    assert "  h3 failed: ValidateService failed" in out
    assert world.group().effective_revision.short() == "bundles/v2.zip"  # type: ignore[union-attr]
    assert hosts_of(world, capsys) == {"h1": True, "h2": True, "h3": False, "h4": True}

    # Not retried by itself (it would fail on every pass), and nothing is quarantined for `retry` to clear.
    world.agents.failing = {}
    with world.answering():
        assert world.run("--once") == 0
    assert "converged" in capsys.readouterr().out
    assert hosts_of(world, capsys)["h3"] is False
    assert world.run("retry", "web") == 0
    assert "nothing is quarantined" in capsys.readouterr().out

    # The documented way: once the host is fixed, the next revision goes to every host, h3 included.
    assert deploy(world, 3) == 0
    out = capsys.readouterr().out
    assert "of bundles/v3.zip succeeded" in out and "failed" not in out
    assert hosts_of(world, capsys) == {"h1": True, "h2": True, "h3": True, "h4": True}
    assert "v3.zip" in world.agents.runs["h3"][-1][2]


def test_the_documented_section_exists() -> None:
    text = (ROOT / "docs" / "reconciler.md").read_text()
    assert "\n## After a partial success\n" in text
