"""`reconcile events` over a real file store: what it prints, its filters, and its errors.

The records are made by the real core (one rollout of three hosts, one of which fails, then the rollback), driven by
`ScriptedAgents` through real passes, so the events listed are the ones a pass records. The live side (`--follow`
during a rollout with real agents and a kill -9) is in tests/reconciler/test_e2e.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from contract.events import Event
from contract.models import EventSeverity, EventType
from contract.store import open_store
from reconciler.cli.events import EventFilter, parse_since
from reconciler.cli.main import main
from reconciler.settings import ReconcileSettings
from reconciler.shell.lease import WriteLease
from reconciler.shell.passes import PassRunner
from tests.reconciler.fleet import Config, ScriptedAgents, group_manifest, local_revision, settings_overrides

HOSTS = ["web-1", "web-2", "web-3"]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """v1 everywhere, then v2 which fails on web-2 (OneAtATime: web-1 succeeded first), rolled back."""
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url, create=True)
    config = Config(tmp_path / "config")
    agents = ScriptedAgents(store, HOSTS, failing={"web-2": "v2.zip"})
    agents.register()
    settings = ReconcileSettings.model_validate(settings_overrides())
    lease = WriteLease(store, duration=settings.lease_duration, holder="test")
    assert lease.try_acquire()
    runner = PassRunner(store, lease, settings)
    for version in (1, 2):
        config.set_group(group_manifest(revision=local_revision(version)))
        desired = config.desired()
        for _ in range(40):
            outcome = runner.run_pass(desired)
            agents.answer()
            if outcome.settled:
                break
    return url


def events(store_url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["events", "--store", store_url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lines_tell_the_whole_story(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = events(store_url, capsys, "--format", "json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "event.json").read_text())
    for line in lines:  # every printed event is valid against the published schema
        jsonschema.validate(line, schema)
    listed = [Event.model_validate(line) for line in lines]
    kinds = [(e.type.value, e.host) for e in listed if e.creator == "user" and "v2" in (e.revision_label or "")]
    assert kinds[0] == ("deployment.started", None)
    assert ("host.succeeded", "web-1") in kinds
    assert ("host.failed", "web-2") in kinds
    assert kinds.index(("host.succeeded", "web-1")) < kinds.index(("host.failed", "web-2"))
    assert ("deployment.failed", None) in kinds and ("revision.quarantined", None) in kinds
    rollback = [e for e in listed if e.creator == "rollback"]
    assert rollback[0].type is EventType.ROLLBACK_STARTED and rollback[-1].type is EventType.ROLLBACK_SUCCEEDED
    assert len({e.id for e in listed}) == len(listed)
    assert [e.at for e in listed] == sorted(e.at for e in listed)
    failed = next(e for e in listed if e.type is EventType.DEPLOYMENT_FAILED)
    assert failed.severity is EventSeverity.ERROR and failed.group == "hello/web" and failed.commit
    assert "web-2" in failed.message


def test_text_and_filters(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = events(store_url, capsys, "web", "--min-severity", "error")
    assert code == 0
    lines = out.splitlines()
    assert lines and all(" ERROR " in line or " CRITICAL " in line for line in lines)
    assert any("deployment.failed" in line and "hello/web" in line for line in lines)
    code, out, _ = events(store_url, capsys, "--type", "rollback.*", "--format", "json")
    assert {json.loads(line)["type"] for line in out.splitlines()} == {"rollback.started", "rollback.succeeded"}
    code, out, _ = events(store_url, capsys, "--since", "2099-01-01T00:00:00Z")
    assert code == 0 and out.startswith("no events recorded since then")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday'"),
        (["--since", "2026-13-45"], "not a time"),
        (["--type", "deploy.failed"], "matches no event type"),
        (["nope"], "no deployment group named 'nope'"),
    ],
)
def test_bad_options_are_one_clear_line(
    store_url: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = events(store_url, capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith("reconcile: ") and message in err and "Traceback" not in err


def test_missing_store_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = events(f"file://{tmp_path / 'nowhere'}", capsys)
    assert code == 0 and "no events recorded" in out
    assert not (tmp_path / "nowhere").exists()


def test_since_and_filter_units() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-28T10:00:00", now) == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    event = Event(id="d-1.1", source="d-1", seq=1, type=EventType.HOST_FAILED, severity=EventSeverity.WARNING,
                  at=now, group="a/b", message="x")
    assert EventFilter(group="a/b", since=None, types=["host.*"], min_severity=EventSeverity.WARNING).wants(event)
    assert not EventFilter(group=None, since=None, types=None, min_severity=EventSeverity.ERROR).wants(event)
    assert not EventFilter(group="a/c", since=None, types=None, min_severity=None).wants(event)
    assert not EventFilter(group=None, since=now + timedelta(seconds=1), types=None, min_severity=None).wants(event)
