"""`reconcile --once`, `status`, `history`, `retry`, `stop`, `forget` through the real CLI entry point, on a
real FileStore and a real Git config repo, with in-process agents answering in a background thread.

Exit codes are the contract CI scripts branch on, so each one gets a test: 0 converged, 1 invalid input
(nothing written), 3 failed and rolled back, 4 failed, 5 timed out, 6 stale plan, 7 lease held.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from contract.keys import group_state_key
from contract.models import GroupState
from contract.store import Store, open_store
from reconciler.cli.main import main
from reconciler.shell.lease import WriteLease
from tests.reconciler.fleet import Config, ScriptedAgents, answering, group_manifest, local_revision

HOSTS = ["h1", "h2", "h3", "h4"]


@pytest.fixture(autouse=True)
def fast_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_POLL_INTERVAL", "20ms")
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_LEASE_DURATION", "5s")
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT", "60s")
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_TIMEOUT", "30s")
    monkeypatch.setenv("FLEETSHIFT_LOGGING_FORMAT", "json")


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.store_dir = tmp_path / "store"
        self.store: Store = open_store(f"file://{self.store_dir}")
        self.config = Config(tmp_path / "config")
        self.agents = ScriptedAgents(self.store, list(HOSTS))
        self.agents.register()

    def run(self, *args: str) -> int:
        return main([*self.config.args(), "--store", f"file://{self.store_dir}", *args])

    def group(self, name: str = "web") -> GroupState:
        stored = self.store.get(group_state_key("hello", name))
        assert stored is not None
        return GroupState.model_validate_json(stored.data)

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Agents poll their commands every 10 ms while the block runs."""
        with answering(self.agents, every=0.01):
            yield


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def deploy(world: World, version: int, **kwargs: object) -> int:
    world.config.set_group(group_manifest(revision=local_revision(version), **kwargs),  # type: ignore[arg-type]
                           message=f"v{version}")
    with world.answering():
        return world.run("--once")


def test_once_converges_and_exits_0(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy(world, 1) == 0
    out = capsys.readouterr().out
    assert "converged" in out
    assert "deployment d-" in out and "succeeded" in out
    assert world.group().effective_revision.short() == "bundles/v1.zip"  # type: ignore[union-attr]

    assert world.run("status") == 0
    text = capsys.readouterr().out
    assert "hello/web  CONVERGED" in text
    assert "h4" in text and "current" in text
    assert "no reconciler running" in text  # the lease was released on exit

    assert world.run("status", "web", "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    (group,) = report["groups"]
    assert group["state"] == "converged"
    assert gc.get_freeze_count() == 0  # status froze the fleet it read only while it ran (issue 18)
    assert [h["host"] for h in group["hosts"]] == HOSTS
    assert all(h["upToDate"] and h["online"] for h in group["hosts"])


def test_failed_deployment_rolls_back_exits_3_and_is_quarantined(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy(world, 1) == 0
    world.agents.failing = {"h2": "v2.zip"}
    assert deploy(world, 2) == 3
    out = capsys.readouterr().out
    assert "failed, rolled back; " in out and " passes in " in out
    assert "rolled back by d-" in out

    assert world.run("status", "hello/web", "--format", "json") == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["state"] == "quarantined"
    assert group["effectiveRevision"]["short"] == "bundles/v1.zip"
    assert [q["revision"]["short"] for q in group["quarantined"]] == ["bundles/v2.zip"]

    assert world.run("history", "web", "--format", "json") == 0
    deployments = json.loads(capsys.readouterr().out)["deployments"]
    assert [(d["creator"], d["status"]) for d in deployments] == [
        ("rollback", "Succeeded"), ("user", "Failed"), ("user", "Succeeded")]
    assert deployments[0]["rollbackOf"] == deployments[1]["deploymentId"]

    # The rollback only deploys to the hosts the failed deployment touched: the text counts those, and says
    # what the rest of the group's hosts were, instead of "1 ok, 0 failed of 4".
    rollback = deployments[0]["hosts"]
    touched = rollback["Succeeded"]
    assert touched >= 1 and rollback["Skipped"] == len(HOSTS) - touched and rollback["Failed"] == 0
    assert world.run("history", "web") == 0
    rollback_line = next(line for line in capsys.readouterr().out.splitlines() if " rollback " in line)
    assert rollback_line.endswith(f"{touched} ok, 0 failed of {touched} ({len(HOSTS) - touched} skipped)")

    # Running again with the same manifests does not redeploy the quarantined revision, and says that nothing
    # ran (not "failed, rolled back"), why, and how to retry; the exit code stays 3 as documented.
    with world.answering():
        assert world.run("--once") == 3
    out = capsys.readouterr().out
    verdict = out.splitlines()[0]
    assert "nothing deployed: the desired revision of hello/web is quarantined after an earlier failure" in verdict
    assert "`reconcile retry GROUP`" in verdict and "; 1 pass in " in verdict and verdict.endswith("(exit 3)")
    assert "failed, rolled back" not in out and "pass(es)" not in out
    assert "reconcile retry hello/web" in out

    # After the cause is fixed, `retry` lets the next pass deploy the same revision again.
    world.agents.failing = {}
    assert world.run("retry", "web") == 0
    assert "cleared the quarantine of bundles/v2.zip" in capsys.readouterr().out
    assert world.group().quarantined == []
    with world.answering():
        assert world.run("--once") == 0
    assert world.group().effective_revision.short() == "bundles/v2.zip"  # type: ignore[union-attr]


def test_failure_without_rollback_exits_4(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy(world, 1, rollback=False) == 0
    world.agents.failing = {"h1": "v2.zip"}
    assert deploy(world, 2, rollback=False) == 4
    assert "not rolled back" in capsys.readouterr().out


def test_invalid_manifests_exit_1_and_write_nothing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.config.set_group(group_manifest().replace("deploymentConfig", "deploymentConfg"))
    assert world.run("--once") == 1
    err = capsys.readouterr().err
    assert "web.yaml" in err and "deploymentConfg" in err
    assert "Traceback" not in err
    assert world.store.list("groups/") == [] and world.store.list("commands/") == []
    assert world.store.get("leases/reconciler.json") is None


def test_timeout_exits_5_and_keeps_the_deployment(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.config.set_group(group_manifest())
    assert world.run("--once", "--timeout", "300ms") == 5  # the agents never answer
    out = capsys.readouterr().out
    assert "timed out" in out and "still in flight" in out
    in_flight = world.group().deployment_in_flight
    assert in_flight is not None
    with world.answering():  # re-running continues the same deployment
        assert world.run("--once") == 0
    assert world.group().history[-1] == in_flight


def test_no_wait_runs_one_pass(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.config.set_group(group_manifest())
    assert world.run("--once", "--no-wait") == 0
    out = capsys.readouterr().out
    assert "in flight (not waiting: --no-wait)" in out
    assert {item.key for item in world.store.list("commands/")} == {f"commands/{h}.json" for h in HOSTS}


def test_lease_held_by_another_reconciler_exits_7(world: World, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    other = WriteLease(world.store, duration=timedelta(minutes=5), holder="ci-job-41")
    assert other.try_acquire()
    monkeypatch.setenv("FLEETSHIFT_RECONCILE_LEASE_DURATION", "300ms")  # so the bounded wait is short
    world.config.set_group(group_manifest())
    assert world.run("--once") == 7
    err = capsys.readouterr().err
    assert "ci-job-41" in err and "holds the write lease" in err
    assert world.store.list("groups/") == []


def test_stop_with_rollback_during_a_rollout(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy(world, 1) == 0
    world.config.set_group(group_manifest(revision=local_revision(2)), message="v2")
    assert world.run("--once", "--no-wait") == 0  # v2 starts; agents are not answering yet
    in_flight = world.group().deployment_in_flight
    assert in_flight is not None
    capsys.readouterr()

    assert world.run("stop", "web", "--rollback") == 0
    assert f"asked to stop and roll back {in_flight}" in capsys.readouterr().out
    assert world.group().stop_request is not None
    with world.answering():
        assert world.run("--once") == 3
    out = capsys.readouterr().out
    assert f"deployment {in_flight} of bundles/v2.zip was stopped" in out
    assert world.group().effective_revision.short() == "bundles/v1.zip"  # type: ignore[union-attr]
    assert world.agents.dispatched_twice() == {}


def test_removed_group_is_shown_then_forgotten(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy(world, 1) == 0
    world.config.set_group(group_manifest("api", tag="hello"), name="api", message="add api")
    with world.answering():
        assert world.run("--once") == 0
    capsys.readouterr()

    assert world.run("forget", "api") == 1
    assert "still in the manifests" in capsys.readouterr().err

    world.config.remove_group("api")
    assert world.run("--once") == 0
    assert "hello/api: removed from the manifests" in capsys.readouterr().out
    assert world.run("status", "--format", "json") == 0
    states = {g["group"]: g["state"] for g in json.loads(capsys.readouterr().out)["groups"]}
    assert states == {"hello/api": "removed", "hello/web": "converged"}

    assert world.run("forget", "hello/api") == 0
    assert "forgot the group record" in capsys.readouterr().out
    assert world.store.get(group_state_key("hello", "api")) is None
    assert world.run("status", "--format", "json") == 0
    assert [g["group"] for g in json.loads(capsys.readouterr().out)["groups"]] == ["hello/web"]


@pytest.mark.parametrize("command", [["status", "nope"], ["history", "nope"], ["retry", "nope"],
                                     ["stop", "nope"], ["forget", "nope"]])
def test_unknown_group_is_a_clear_error(world: World, capsys: pytest.CaptureFixture[str],
                                        command: list[str]) -> None:
    world.config.set_group(group_manifest())
    assert world.run(*command) == 1
    err = capsys.readouterr().err
    assert "no deployment group named 'nope' (known: hello/web)" in err
    assert "Traceback" not in err


def test_stop_with_nothing_in_flight_is_a_clear_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy(world, 1) == 0
    capsys.readouterr()
    assert world.run("stop", "web") == 1
    assert "no deployment in flight to stop" in capsys.readouterr().err


def test_saved_plan_applies_when_fresh_and_is_refused_when_stale(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy(world, 1) == 0
    world.config.set_group(group_manifest(revision=local_revision(2)), message="v2")
    plan = tmp_path / "plan.json"
    assert world.run("plan", "--head", "main", "--base", "main~1", "--out", str(plan)) == 2

    ScriptedAgents(world.store, ["h5"]).register()  # the fleet changed since the plan was reviewed
    assert world.run("--once", "--plan", str(plan)) == 6
    assert "h5" in capsys.readouterr().err
    assert world.group().desired_revision.short() == "bundles/v1.zip"  # type: ignore[union-attr]

    world.store.delete("hosts/h5/registration.json")
    world.store.delete("hosts/h5/status.json")
    assert world.run("plan", "--head", "main", "--base", "main~1", "--out", str(plan)) == 2
    with world.answering():
        assert world.run("--once", "--plan", str(plan)) == 0
    assert world.group().effective_revision.short() == "bundles/v2.zip"  # type: ignore[union-attr]
