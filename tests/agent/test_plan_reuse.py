"""Install carries out the early check's install plan when nothing ran on the host in between, and plans again
when something did (issue 18: a 10,000-file bundle was planned twice, 1.2 s each). Either way the host is never
left half-installed: a plan gone stale without a hook is refused by the transaction and undone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import agent.lifecycle.command_run
import agent.lifecycle.revision_check
from agent.lifecycle.install import plan_install
from contract.vocabulary import EventStatus
from contract.wire import EventReport
from tests.agent.conftest import Bundle, Sandbox

PLAIN = "version: 0.0\nos: linux\nfiles:\n  - {source: app, destination: /srv/app}\n"


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Who made an install plan during the test: the early check or Install (the real planner runs)."""
    made: list[str] = []

    def counted(who: str) -> Callable[..., object]:
        def plan(*args: object, **kwargs: object) -> object:
            made.append(who)
            return plan_install(*args, **kwargs)  # type: ignore[arg-type]
        return plan

    monkeypatch.setattr(agent.lifecycle.revision_check, "plan_install", counted("check"))
    monkeypatch.setattr(agent.lifecycle.command_run, "plan_install", counted("install"))
    return made


def _bundle(make_bundle: Callable[[str], Bundle], name: str, appspec: str) -> Bundle:
    bundle = make_bundle(name)
    bundle.appspec(appspec)
    for index in range(3):
        bundle.file(f"app/file{index}.txt", f"{name} {index}")
    return bundle


def test_no_script_before_install_plans_once(sandbox: Sandbox, make_bundle: Callable[[str], Bundle],
                                             plans: list[str]) -> None:
    v1 = _bundle(make_bundle, "v1", PLAIN)
    assert sandbox.deploy(v1).status == "Succeeded"
    v2 = _bundle(make_bundle, "v2", PLAIN + "hooks:\n  AfterInstall:\n    - location: after.sh\n")
    v2.script("after.sh", "exit 0\n")
    plans.clear()
    outcome = sandbox.deploy(v2)
    assert outcome.status == "Succeeded", outcome.message
    assert plans == ["check"]  # an AfterInstall script runs after Install: it changes nothing of the plan
    assert sandbox.on_host("/srv/app/file0.txt").read_text() == "v2 0"


@pytest.mark.parametrize("hook", ["BeforeInstall", "ApplicationStop"])
def test_a_script_before_install_makes_it_plan_again(sandbox: Sandbox, make_bundle: Callable[[str], Bundle],
                                                     plans: list[str], hook: str) -> None:
    with_hook = PLAIN + f"hooks:\n  {hook}:\n    - location: hook.sh\n"
    v1 = _bundle(make_bundle, "v1", with_hook)
    v1.script("hook.sh", "exit 0\n")
    assert sandbox.deploy(v1).status == "Succeeded"
    v2 = _bundle(make_bundle, "v2", with_hook)
    v2.script("hook.sh", "exit 0\n")
    plans.clear()
    assert sandbox.deploy(v2).status == "Succeeded"
    assert plans == ["check", "install"]


def test_a_file_that_appears_after_the_check_fails_install_and_nothing_changes(
        sandbox: Sandbox, make_bundle: Callable[[str], Bundle], plans: list[str]) -> None:
    """No script runs between the check and Install, yet something else writes where the plan will copy: the
    reused plan does not overwrite it; Install fails, the previous revision stays whole."""
    v1 = _bundle(make_bundle, "v1", PLAIN)
    assert sandbox.deploy(v1).status == "Succeeded"
    v2 = _bundle(make_bundle, "v2", PLAIN)
    v2.file("app/new.txt", "v2 only")
    intruder = sandbox.on_host("/srv/app/new.txt")

    def meanwhile(report: EventReport) -> None:
        sandbox.reports.append(report)
        if report.name == "DownloadBundle" and report.status == EventStatus.SUCCEEDED:
            intruder.write_text("written by someone else")

    plans.clear()
    outcome = sandbox.runner.run(sandbox.command(v2), on_event=meanwhile)
    assert plans == ["check"]
    assert outcome.status == "Failed"
    install = next(report for report in outcome.events if report.name == "Install")
    assert install.status == EventStatus.FAILED and "put back" in (install.message or "")
    assert intruder.read_text() == "written by someone else"
    assert [sandbox.on_host(f"/srv/app/file{i}.txt").read_text() for i in range(3)] == ["v1 0", "v1 1", "v1 2"]
