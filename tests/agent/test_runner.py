"""The lifecycle runner: CodeDeploy's event order, the previous revision's stop scripts, reports, early checks,
stopping, retention (reference 2.1-2.2, 3.2, 3.4; observed sections 3-4)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.lifecycle.revision_check import check_event_order
from contract.vocabulary import LIFECYCLE_EVENTS, EventStatus
from tests.agent.conftest import Bundle, Sandbox, SteppingClock, make_sandbox, statuses

SCRIPTABLE = [e for e in LIFECYCLE_EVENTS if e not in {"DownloadBundle", "Install"}]


def recording_bundle(bundle: Bundle, trace: Path, tag: str) -> Bundle:
    """Every scriptable hook appends `<tag> <event> <deployment id> <script path>`; hooks listed in reverse."""
    hooks = "\n".join(f"  {event}:\n    - location: scripts/hook.sh" for event in reversed(SCRIPTABLE))
    bundle.appspec(f"version: 0.0\nos: linux\nfiles:\n  - {{source: app, destination: /srv/app}}\nhooks:\n{hooks}\n")
    bundle.file("app/version", tag)
    bundle.script("scripts/hook.sh", f'echo "{tag} $LIFECYCLE_EVENT $DEPLOYMENT_ID $0" >> {trace}\n')
    return bundle


def test_events_run_in_codedeploy_order_and_stop_scripts_come_from_the_last_revision(
    sandbox: Sandbox, make_bundle, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    v1 = recording_bundle(make_bundle("v1"), trace, "v1")
    first = sandbox.deploy(v1, events=list(LIFECYCLE_EVENTS))
    assert first.status == "Succeeded", first.message
    assert [line.split()[1] for line in trace.read_text().splitlines()] == [
        "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService", "BeforeAllowTraffic",
        "AfterAllowTraffic",
    ]
    skipped_first = {r.name: r.message for r in first.events if r.name in {"BeforeBlockTraffic", "ApplicationStop"}}
    assert set(skipped_first.values()) == {
        "nothing to run: no earlier revision of this deployment group is installed on this host"
    }

    trace.write_text("")
    v2 = recording_bundle(make_bundle("v2"), trace, "v2")
    second = sandbox.deploy(v2, events=list(LIFECYCLE_EVENTS))
    assert second.status == "Succeeded", second.message
    lines = [line.split() for line in trace.read_text().splitlines()]
    assert [(tag, event) for tag, event, _, _ in lines] == [
        ("v1", "BeforeBlockTraffic"), ("v1", "AfterBlockTraffic"), ("v1", "ApplicationStop"),
        ("v2", "BeforeInstall"), ("v2", "AfterInstall"), ("v2", "ApplicationStart"), ("v2", "ValidateService"),
        ("v2", "BeforeAllowTraffic"), ("v2", "AfterAllowTraffic"),
    ]
    # The old scripts run with the new deployment's environment, from the old archive.
    assert {deployment for _, _, deployment, _ in lines} == {"d-TEST00002"}
    assert lines[2][3] == str(sandbox.root / "dg-1/d-TEST00001/deployment-archive/scripts/hook.sh")
    # Their output goes to the new deployment's log.
    log = (sandbox.root / "dg-1/d-TEST00002/logs/scripts.log").read_text()
    assert "LifecycleEvent - ApplicationStop" in log
    assert sandbox.on_host("/srv/app/version").read_text() == "v2"


def test_reports_go_in_progress_then_final_in_order(sandbox: Sandbox, make_bundle, tmp_path: Path) -> None:
    outcome = sandbox.deploy(recording_bundle(make_bundle(), tmp_path / "t", "v1"))
    # While the bundle is fetched and checked, DownloadBundle (still Pending) carries the step as its message.
    progress = [r for r in sandbox.reports if r.status.value == "Pending"]
    assert progress and all(r.name == "DownloadBundle" and r.message for r in progress)
    assert "reading the local bundle" in (progress[0].message or "")
    sequence = [(r.name, r.status.value) for r in sandbox.reports if r.status.value != "Pending"]
    expected = []
    for report in outcome.events:
        expected += [(report.name, "InProgress"), (report.name, "Succeeded")]
    assert sequence == expected
    for report in outcome.events:
        assert report.started_at is not None and report.ended_at is not None
        assert report.started_at <= report.ended_at
    assert outcome.installed is not None
    assert outcome.installed.deployment_id == "d-TEST00001"


def test_install_counts_as_last_successful_even_if_a_later_event_fails(
    sandbox: Sandbox, make_bundle, tmp_path: Path
) -> None:
    """Observed: revision A failed in ApplicationStart; deploying B next ran A's ApplicationStop."""
    trace = tmp_path / "trace"
    a = make_bundle("a")
    a.appspec("""
        version: 0.0
        os: linux
        hooks:
          ApplicationStop:
            - location: stop.sh
          ApplicationStart:
            - location: start.sh
    """)
    a.script("stop.sh", f"echo a-stop >> {trace}\n")
    a.script("start.sh", "exit 1\n")
    outcome = sandbox.deploy(a)
    assert statuses(outcome)["ApplicationStart"] == "Failed"
    assert outcome.installed is None
    assert sandbox.runner.last_successful("app", "group") is None
    b = make_bundle("b")
    b.appspec("version: 0.0\nos: linux\n")
    assert sandbox.deploy(b).status == "Succeeded"
    assert trace.read_text() == "a-stop\n"
    installed = sandbox.runner.last_successful("app", "group")
    assert installed is not None and installed.deployment_id == "d-TEST00002"
    assert sandbox.runner.last_successful("app", "other-group") is None


def test_broken_stop_script_blocks_until_ignored(sandbox: Sandbox, make_bundle) -> None:
    a = make_bundle("a")
    a.appspec("version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: stop.sh\n")
    a.script("stop.sh", "echo typo in stop script >&2\nexit 2\n")
    assert sandbox.deploy(a).status == "Succeeded"
    b = make_bundle("b")
    b.appspec("version: 0.0\nos: linux\n")
    blocked = sandbox.deploy(b)
    assert statuses(blocked)["ApplicationStop"] == "Failed"
    assert statuses(blocked)["DownloadBundle"] == "Skipped"
    assert "stop.sh exited with code 2 (from the last installed revision)" in (blocked.message or "")
    passed = sandbox.deploy(b, ignore_application_stop_failures=True)
    assert passed.status == "Succeeded", passed.message
    stop = next(r for r in passed.events if r.name == "ApplicationStop")
    assert stop.status == EventStatus.FAILED
    assert stop.message is not None and stop.message.endswith("(ignored: ignore_application_stop_failures is set)")


def test_previous_revision_folder_deleted_by_hand(sandbox: Sandbox, make_bundle) -> None:
    a = make_bundle("a")
    a.appspec("version: 0.0\nos: linux\n")
    assert sandbox.deploy(a).status == "Succeeded"
    shutil.rmtree(sandbox.root / "dg-1" / "d-TEST00001")
    outcome = sandbox.deploy(a)
    assert statuses(outcome)["ApplicationStop"] == "Failed"
    assert "cannot read the last installed revision's appspec" in (outcome.message or "")
    assert "deploy with ignore_application_stop_failures to get past it" in (outcome.message or "")
    assert sandbox.deploy(a, ignore_application_stop_failures=True).status == "Succeeded"


def test_broken_new_revision_never_stops_the_running_application(sandbox: Sandbox, make_bundle, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    good = make_bundle("good")
    good.appspec("""
        version: 0.0
        os: linux
        files:
          - {source: app, destination: /srv/app}
        hooks:
          ApplicationStop:
            - location: stop.sh
    """)
    good.file("app/index.html", "good")
    good.script("stop.sh", f"touch {marker}\n")
    assert sandbox.deploy(good).status == "Succeeded"
    broken = make_bundle("broken")
    broken.appspec("""
        version: 0.0
        os: linux
        files:
          - {source: app, destination: /srv/app}
          - {source: missing-dir, destination: /srv/x}
        hooks:
          AfterInstal:
            - location: after.sh
          BeforeInstall:
            - location: scripts/not-there.sh
    """)
    broken.file("app/index.html", "broken")
    outcome = sandbox.deploy(broken)
    assert statuses(outcome) == {
        "ApplicationStop": "Skipped",
        "DownloadBundle": "Failed",
        "BeforeInstall": "Skipped",
        "Install": "Skipped",
        "AfterInstall": "Skipped",
        "ApplicationStart": "Skipped",
        "ValidateService": "Skipped",
    }
    message = outcome.message or ""
    assert message.startswith("DownloadBundle failed: the new revision was checked before anything ran and cannot "
                              "be deployed (3 problems):")
    assert "AfterInstal is not a lifecycle event, so it would never run; did you mean AfterInstall?" in message
    assert "script scripts/not-there.sh does not exist in the bundle" in message
    assert "source 'missing-dir' does not exist in the bundle" in message
    assert not marker.exists()
    assert sandbox.on_host("/srv/app/index.html").read_text() == "good"


def test_appspec_yaml_is_used_in_every_phase(sandbox: Sandbox, make_bundle, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: stop.sh\n"
                   "  BeforeInstall:\n    - location: stop.sh\n", name="appspec.yaml")
    bundle.script("stop.sh", f"echo $LIFECYCLE_EVENT >> {trace}\n")
    assert sandbox.deploy(bundle).status == "Succeeded"
    assert sandbox.deploy(bundle).status == "Succeeded"
    assert trace.read_text().split() == ["BeforeInstall", "ApplicationStop", "BeforeInstall"]


def test_custom_appspec_filename(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\n", name="deploy-spec.yml")
    assert sandbox.deploy(bundle, appspec_filename="deploy-spec.yml").status == "Succeeded"
    outcome = sandbox.deploy(bundle)
    assert outcome.status == "Failed"
    assert "no appspec.yml or appspec.yaml at the top of the revision" in (outcome.message or "")


def test_custom_events_run_when_listed(sandbox: Sandbox, make_bundle, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  SmokeTest:\n    - location: h.sh\n")
    bundle.script("h.sh", f"echo $LIFECYCLE_EVENT >> {trace}\n")
    events = ["DownloadBundle", "Install", "SmokeTest", "SmokeTest"]
    assert sandbox.deploy(bundle, events=events).status == "Succeeded"
    assert trace.read_text().split() == ["SmokeTest", "SmokeTest"]
    outcome = sandbox.deploy(bundle, events=["DownloadBundle", "Install", "NotInAppspec"])
    assert "the custom event NotInAppspec has no scripts in the appspec" in (outcome.message or "")


@pytest.mark.parametrize(
    ("events", "fragment"),
    [
        ([], "no lifecycle events"),
        (["BeforeInstall", "DownloadBundle"], "BeforeInstall runs the new revision's scripts"),
        (["DownloadBundle", "DownloadBundle"], "listed twice"),
        (["Install"], "Install runs the new revision's scripts"),
    ],
)
def test_impossible_event_lists_are_refused(events: list[str], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        check_event_order(events)


def test_an_impossible_event_list_fails_without_creating_anything(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\n")
    outcome = sandbox.deploy(bundle, events=["AfterInstall", "DownloadBundle"])
    assert statuses(outcome) == {"AfterInstall": "Failed", "DownloadBundle": "Skipped"}
    assert not (sandbox.root / "dg-1").exists()


def test_previous_revision_events_after_download_use_the_new_revision(
    sandbox: Sandbox, make_bundle, tmp_path: Path
) -> None:
    """codedeploy-local: `--events ApplicationStop` on a fresh root runs the new bundle's ApplicationStop."""
    trace = tmp_path / "trace"
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: stop.sh\n")
    bundle.script("stop.sh", f"echo new >> {trace}\n")
    assert sandbox.deploy(bundle, events=["DownloadBundle", "Install", "ApplicationStop"]).status == "Succeeded"
    assert trace.read_text() == "new\n"


def test_should_stop_finishes_the_current_event_and_skips_the_rest(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nfiles:\n  - {source: a, destination: /d}\n")
    bundle.file("a")
    finished: list[str] = []

    def note(report) -> None:
        if report.status != EventStatus.IN_PROGRESS:
            finished.append(report.name)

    outcome = sandbox.runner.run(sandbox.command(bundle), on_event=note, should_stop=lambda: "Install" in finished)
    assert statuses(outcome) == {
        "ApplicationStop": "Succeeded",
        "DownloadBundle": "Succeeded",
        "BeforeInstall": "Succeeded",
        "Install": "Succeeded",
        "AfterInstall": "Skipped",
        "ApplicationStart": "Skipped",
        "ValidateService": "Skipped",
    }
    assert outcome.status == "Failed"
    assert outcome.message == "stopped after Install: the agent is shutting down, so the remaining events were skipped"
    assert outcome.installed is None


@pytest.mark.slow
def test_command_timeout_is_a_backstop(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: slow.sh\n")
    bundle.script("slow.sh", "sleep 10\n")
    started = time.monotonic()
    outcome = sandbox.deploy(bundle, timeout_seconds=1)
    assert time.monotonic() - started < 3
    assert statuses(outcome)["BeforeInstall"] == "Failed"
    assert "command's remaining time limit" in (outcome.message or "")


def test_events_without_scripts_write_nothing_to_the_log(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n  AfterInstall: []\n")
    outcome = sandbox.deploy(bundle)
    assert outcome.status == "Succeeded"
    assert outcome.log_path is None
    assert not (sandbox.root / "dg-1/d-TEST00001/logs/scripts.log").exists()


def test_script_log_format_and_instruction_files(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: s.sh\n")
    bundle.script("s.sh", "echo out\n")
    outcome = sandbox.deploy(bundle)
    assert outcome.log_path == sandbox.root / "dg-1/d-TEST00001/logs/scripts.log"
    lines = outcome.log_path.read_text().splitlines()
    assert [line[20:] for line in lines] == ["LifecycleEvent - BeforeInstall", "Script - s.sh", "[stdout]out"]
    instructions = sandbox.root / "deployment-instructions"
    assert (instructions / "dg-1_last_successful_install").read_text() == str(sandbox.root / "dg-1/d-TEST00001")
    assert (instructions / "dg-1_most_recent_install").read_text() == str(sandbox.root / "dg-1/d-TEST00001")
    shared = (sandbox.root / "deployment-logs/codedeploy-agent-deployments.log").read_text()
    assert "[d-TEST00001][stdout]out" in shared


def test_retention_keeps_max_revisions_and_never_the_last_successful(tmp_path: Path, make_bundle) -> None:
    sandbox = make_sandbox(tmp_path, max_revisions=3, now=SteppingClock())
    good = make_bundle("good")
    good.appspec("version: 0.0\nos: linux\n")
    bad = make_bundle("bad")
    bad.appspec("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: fail.sh\n")
    bad.script("fail.sh", "exit 1\n")
    assert sandbox.deploy(good).status == "Succeeded"
    for _ in range(6):
        assert sandbox.deploy(bad).status == "Failed"
    kept = sorted(p.name for p in (sandbox.root / "dg-1").iterdir())
    assert kept == ["d-TEST00001", "d-TEST00006", "d-TEST00007"]
    assert sandbox.deploy(good).status == "Succeeded"
    assert sorted(p.name for p in (sandbox.root / "dg-1").iterdir()) == ["d-TEST00001", "d-TEST00007", "d-TEST00008"]


def test_group_ids_that_would_escape_the_root_are_refused(sandbox: Sandbox, make_bundle) -> None:
    bundle = make_bundle()
    bundle.appspec("version: 0.0\nos: linux\n")
    outcome = sandbox.deploy(bundle, deployment_group_id="../../etc")
    assert outcome.status == "Failed"
    assert "cannot be used as a folder name" in (outcome.message or "")
    assert not (sandbox.tmp.parent / "etc").exists()
    assert os.path.isdir(sandbox.root)
