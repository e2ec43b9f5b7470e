"""Reverting a group to its last good revision (after a failed deployment) starts nothing: the hosts run it."""

from __future__ import annotations

from pathlib import Path

from reconciler.cli.plan import make_plan
from tests.plan.scenarios import NOW, SCENARIOS, WEB, WEB_A, WEB_B, Scenario, build, fleet_of_shop


def test_back_to_the_effective_revision_plans_no_deployment(tmp_path: Path) -> None:
    # The base asks for WEB_B (say it failed and was quarantined); the change goes back to WEB_A, which the
    # store records as the group's effective revision and every web host reports installed.
    SCENARIOS["revert-to-effective"] = Scenario(
        {"manifests/web.yaml": WEB}, fleet=fleet_of_shop,
        extra_base={"manifests/web.yaml": WEB.replace(WEB_A, WEB_B)},
    )
    try:
        built = build(tmp_path, "revert-to-effective")
    finally:
        del SCENARIOS["revert-to-effective"]
    plan = make_plan(built.request, now=NOW).plan
    web = next(r for r in plan.rollouts if r.group == "shop/web")
    assert web.action == "settings"
    assert "effective (last good) revision" in web.reason and "already run" in web.reason
    assert plan.has_changes  # the manifest did change: exit code 2, but no deployment is announced
    assert not [r for r in plan.rollouts if r.action == "deploy"]
