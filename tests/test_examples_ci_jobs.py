"""The CI examples' jobs behave as their comments say.

The plan jobs give every exit code of `reconcile plan` its own message (0 and 2 pass, 1 and 8 fail) and always
leave a current comment. The apply jobs continue long rollouts on a schedule. Their shell code is run here
as written (bash for GitHub's steps, sh for GitLab's script) with a stand-in
`reconcile` on PATH that answers `status --format json` with a chosen fleet and exits `--once` with a chosen
code: a scheduled run does nothing when nothing is in flight or pending, continues otherwise, treats exit 5
as "still rolling out" (and exit 7 as someone else carrying on), and applies changes still pending on the
default branch only with a reviewed plan when FLEETSHIFT_REQUIRE_PLAN is true.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_tool

CI = Path(__file__).resolve().parents[1] / "examples" / "ci"

FAKE_RECONCILE = """#!/bin/sh
echo "reconcile $*" >> "$CALLS"
if [ "$1" = status ]; then cat "$STATUS"; exit 0; fi
exit "$ONCE_CODE"
"""


def _fleet(*groups: tuple[str, str, bool]) -> dict[str, Any]:
    return {"groups": [{"group": name, "state": state, "inFlight": {"id": "d-1"} if busy else None}
                       for name, state, busy in groups]}


CONVERGED = _fleet(("hello/prod", "converged", False), ("hello/staging", "quarantined", False))
ROLLING = _fleet(("hello/prod", "deploying", True), ("hello/staging", "converged", False))
PENDING = _fleet(("hello/prod", "pending", False))


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        bin_dir = root / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "reconcile"
        fake.write_text(FAKE_RECONCILE)
        fake.chmod(0o755)
        (root / "ci").mkdir()
        # The reviewed-plan download, faked: it records that it ran and leaves a plan.json.
        (root / "ci" / "fleetshift-fetch-plan.sh").write_text('echo fetch >> "$CALLS"; echo {} > "$1"\n')
        self.env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(root / "calls"), "STATUS": str(root / "status"),
                    "HOME": str(root)}

    def calls(self) -> list[str]:
        path = self.root / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def run(self, shell: str, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([shell, "-e", "-c", script], cwd=self.root, env={**self.env, **env},
                              capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    require_tool("jq", "jq")
    return Sandbox(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# GitLab: one script, branching on CI_PIPELINE_SOURCE


def _gitlab(sandbox: Sandbox, source: str, fleet: dict[str, Any], once_code: int,
            require_plan: bool = False) -> subprocess.CompletedProcess[str]:
    config = yaml.safe_load((CI / "gitlab" / ".gitlab-ci.yml").read_text())
    job = config["fleetshift-apply"]
    (sandbox.root / "status").write_text(json.dumps(fleet))
    env = {"CI_PIPELINE_SOURCE": source, "ONCE_CODE": str(once_code),
           "FLEETSHIFT_REQUIRE_PLAN": "true" if require_plan else "",
           **{key: str(value) for key, value in job["variables"].items() if not str(value).startswith("$")}}
    return sandbox.run("sh", "\n".join(job["script"]), env)


def test_gitlab_schedule_does_nothing_when_nothing_is_in_flight(sandbox: Sandbox) -> None:
    result = _gitlab(sandbox, "schedule", CONVERGED, once_code=3)
    assert result.returncode == 0, result.stderr
    assert sandbox.calls() == ["reconcile status --repo . --format json"]
    assert "nothing to continue" in result.stdout


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (5, 0), (7, 0), (4, 4), (8, 8)])
def test_gitlab_schedule_continues_a_rollout_in_flight(sandbox: Sandbox, code: int, expected: int) -> None:
    result = _gitlab(sandbox, "schedule", ROLLING, once_code=code)
    assert result.returncode == expected, result.stdout + result.stderr
    assert sandbox.calls()[-1] == "reconcile --once --repo . --timeout 12m"
    if code == 5:
        assert "still rolling out" in result.stdout


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (5, 0), (7, 7), (3, 3)])
def test_gitlab_push_treats_exit_5_as_still_rolling_out(sandbox: Sandbox, code: int, expected: int) -> None:
    result = _gitlab(sandbox, "push", ROLLING, once_code=code)
    assert result.returncode == expected, result.stdout + result.stderr
    assert sandbox.calls() == ["reconcile --once --repo ."]


def test_gitlab_schedule_applies_pending_changes_only_with_the_reviewed_plan(sandbox: Sandbox) -> None:
    result = _gitlab(sandbox, "schedule", PENDING, once_code=0, require_plan=True)
    assert result.returncode == 0, result.stderr
    assert sandbox.calls()[1:] == ["fetch", "reconcile --once --repo . --timeout 12m --plan plan.json"]
    # Only continuing what is in flight needs no plan.
    (sandbox.root / "calls").unlink()
    result = _gitlab(sandbox, "schedule", ROLLING, once_code=0, require_plan=True)
    assert result.returncode == 0, result.stderr
    assert sandbox.calls()[1:] == ["reconcile --once --repo . --timeout 12m"]


# ---------------------------------------------------------------------------------------------------------
# GitHub: the "What is left to do" step's outputs feed the "reconcile --once" step


def _step(workflow: dict[str, Any], name: str) -> dict[str, Any]:
    return next(step for step in workflow["jobs"]["apply"]["steps"] if step.get("name") == name)


def _github(sandbox: Sandbox, event: str, fleet: dict[str, Any], once_code: int) -> subprocess.CompletedProcess[str]:
    workflow = yaml.safe_load((CI / "github" / "fleetshift-apply.yml").read_text())
    env = {key: str(value) for key, value in workflow["env"].items() if "${{" not in str(value)}
    env["ONCE_CODE"] = str(once_code)
    outputs: dict[str, str] = {}
    if event != "push":
        (sandbox.root / "status").write_text(json.dumps(fleet))
        output_file = sandbox.root / "outputs"
        output_file.write_text("")
        left = sandbox.run("bash", _step(workflow, "What is left to do")["run"],
                           {**env, "GITHUB_OUTPUT": str(output_file)})
        assert left.returncode == 0, left.stderr
        outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines())
    once = _step(workflow, "reconcile --once")
    assert set(once["env"]) == {"EVENT", "IN_FLIGHT", "PENDING"}
    step_env = {**env, "EVENT": event, "IN_FLIGHT": outputs.get("in-flight", ""), "PENDING": outputs.get("pending", "")}
    return sandbox.run("bash", once["run"], step_env)


def test_github_schedule_does_nothing_when_nothing_is_in_flight(sandbox: Sandbox) -> None:
    result = _github(sandbox, "schedule", CONVERGED, once_code=3)
    assert result.returncode == 0, result.stderr
    assert sandbox.calls() == ["reconcile status --repo . --format json"]


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (5, 0), (7, 0), (4, 4)])
def test_github_schedule_continues_a_rollout_in_flight(sandbox: Sandbox, code: int, expected: int) -> None:
    result = _github(sandbox, "schedule", ROLLING, once_code=code)
    assert result.returncode == expected, result.stdout + result.stderr
    assert sandbox.calls()[-1] == "reconcile --once --repo . --timeout 12m"
    if code == 5:
        assert "::notice::still rolling out" in result.stdout


@pytest.mark.parametrize(("code", "expected"), [(5, 0), (7, 7), (6, 6)])
def test_github_push_treats_exit_5_as_still_rolling_out(sandbox: Sandbox, code: int, expected: int) -> None:
    (sandbox.root / "plan.json").write_text("{}")  # the reviewed plan was downloaded
    result = _github(sandbox, "push", ROLLING, once_code=code)
    assert result.returncode == expected, result.stdout + result.stderr
    assert sandbox.calls() == ["reconcile --once --repo . --plan plan.json"]


def test_the_schedule_is_there() -> None:
    workflow = yaml.safe_load((CI / "github" / "fleetshift-apply.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["schedule"] == [{"cron": "*/15 * * * *"}]
    assert "push" in triggers
    rules = yaml.safe_load((CI / "gitlab" / ".gitlab-ci.yml").read_text())["fleetshift-apply"]["rules"]
    assert any('$CI_PIPELINE_SOURCE == "schedule"' in rule["if"] for rule in rules)


# ---------------------------------------------------------------------------------------------------------
# The plan jobs: one message per exit code, and a comment even when nothing was rendered

PLAN_MESSAGES = {0: "no changes", 2: "changes to review", 1: "invalid input", 8: "the store could not be read",
                 9: "failed unexpectedly"}


def _fake_plan(sandbox: Sandbox, code: int, rendered: str) -> None:
    fake = sandbox.root / "bin" / "reconcile"
    fake.write_text(f'#!/bin/sh\necho "reconcile $*" >> "$CALLS"\nprintf %s "{rendered}"\n'
                    f'echo "reconcile: why it failed" >&2\nexit {code}\n')
    (sandbox.root / "ci" / "fleetshift-mr-note.sh").write_text('cp "$1" posted.md\n')


@pytest.mark.parametrize("code", sorted(PLAN_MESSAGES))
def test_gitlab_plan_names_each_exit_code_and_always_updates_the_note(sandbox: Sandbox, code: int) -> None:
    rendered = "<!-- fleetshift:plan -->\n### fleetshift plan: 1 to change" if code in (0, 2) else ""
    _fake_plan(sandbox, code, rendered)
    job = yaml.safe_load((CI / "gitlab" / ".gitlab-ci.yml").read_text())["fleetshift-plan"]
    result = sandbox.run("sh", "\n".join(job["script"]), {"FLEETSHIFT_STORE": "s3://b/prod"})
    assert result.returncode == (0 if code in (0, 2) else 1), result.stdout + result.stderr
    assert PLAN_MESSAGES[code] in result.stdout + result.stderr
    posted = (sandbox.root / "posted.md").read_text()
    assert posted.startswith("<!-- fleetshift:plan -->")
    if not rendered:
        assert f"no plan (exit {code})" in posted and PLAN_MESSAGES[code] in posted and "why it failed" in posted


@pytest.mark.parametrize("code", sorted(PLAN_MESSAGES))
def test_github_plan_names_each_exit_code(sandbox: Sandbox, code: int) -> None:
    rendered = "<!-- fleetshift:plan -->\n### fleetshift plan: 1 to change" if code in (0, 2) else ""
    _fake_plan(sandbox, code, rendered)
    workflow = yaml.safe_load((CI / "github" / "fleetshift-plan.yml").read_text())
    steps = {step.get("name"): step for step in workflow["jobs"]["plan"]["steps"]}
    output_file, summary = sandbox.root / "outputs", sandbox.root / "summary"
    script = steps["reconcile plan"]["run"].replace("${{ github.base_ref }}", "main")
    plan = sandbox.run("bash", script, {"FLEETSHIFT_STORE": "s3://b/prod", "GITHUB_OUTPUT": str(output_file),
                                        "GITHUB_STEP_SUMMARY": str(summary)})
    assert plan.returncode == 0, plan.stderr  # the comment is posted by the next step, whatever happened
    assert (sandbox.root / "plan.md").read_text().startswith("<!-- fleetshift:plan -->")
    outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines())
    assert outputs["exit-code"] == str(code)
    verdict = steps["Verdict"]
    assert set(verdict["env"]) == {"CODE", "MESSAGE"}
    result = sandbox.run("bash", verdict["run"], {"CODE": outputs["exit-code"], "MESSAGE": outputs["message"]})
    assert result.returncode == (0 if code in (0, 2) else 1)
    assert PLAN_MESSAGES[code] in result.stdout
