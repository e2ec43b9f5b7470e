"""Stale-plan protection: a plan saved with `--out` is refused once what it was computed from changed (a host
joins, another commit lands, the reconciler moved a group), and accepted when nothing did, including at the
merge commit of the reviewed branch. Real config repos, a real file store, the real saved file."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from contract.keys import group_state_key
from contract.models import GroupState
from contract.store import open_store
from reconciler.cli.plan import make_plan, read_observed_and_state
from reconciler.core import Observed, State
from reconciler.desired.loader import load_git
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import GitSource
from reconciler.plan.saved import (
    SavedPlanError,
    StalePlanError,
    load_saved_plan,
    saved_plan,
    verify_saved_plan,
    write_saved_plan,
)
from tests.plan.scenarios import NOW, WORKER, Built, FleetWriter, build


def _save(tmp_path: Path, name: str = "revision-bump-store") -> tuple[Built, Path]:
    built = build(tmp_path, name)
    result = make_plan(built.request, now=NOW)
    assert result.fleet is not None and result.head.desired is not None
    path = tmp_path / "plan.json"
    write_saved_plan(path, saved_plan(result.plan, result.head.desired, result.fleet))
    return built, path


def _now_at(built: Built, ref: str) -> tuple[Desired, Observed, State]:
    """What `reconcile --once --plan` would see: manifests at `ref`, the store as it is now."""
    desired = load_git(GitSource(str(built.repo.path), ref, "manifests"))
    assert built.store_url is not None
    observed, state = read_observed_and_state(open_store(built.store_url))
    return desired, observed, state


def test_an_unchanged_plan_is_accepted(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    saved = load_saved_plan(path)
    assert saved.head_commit == built.head_commit
    assert saved.plan.rollouts[0].group == "shop/web"
    verify_saved_plan(path, *_now_at(built, built.head_commit))


def test_the_merge_commit_of_the_reviewed_branch_is_accepted(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    git = built.repo.repo.git
    git.checkout("main")
    git.merge("--no-ff", "-m", "Merge the reviewed change", "change")
    merge_commit = built.repo.repo.head.commit.hexsha
    assert merge_commit != built.head_commit
    # A merge commit is a new commit with exactly the reviewed manifests; refusing it would make every
    # plan stale at merge time.
    verify_saved_plan(path, *_now_at(built, "main"))


def test_refused_after_a_host_joins(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    assert built.store_url is not None
    FleetWriter(open_store(built.store_url)).host("web-7", {"app": "web", "env": "prod"})
    with pytest.raises(StalePlanError) as refused:
        verify_saved_plan(path, *_now_at(built, built.head_commit))
    message = str(refused.value)
    assert "host membership of shop/web: web-7 joined" in message
    assert "Nothing was applied" in message


def test_refused_after_a_host_leaves_a_group(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    assert built.store_url is not None
    FleetWriter(open_store(built.store_url)).host("web-2", {"app": "web", "env": "staging"})
    with pytest.raises(StalePlanError, match="host membership of shop/web: web-2 left"):
        verify_saved_plan(path, *_now_at(built, built.head_commit))


def test_refused_after_another_commit_lands(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    built.repo.write("manifests/worker.yaml", WORKER.replace("v2-5f1c0b", "v2-666666"))
    later = built.repo.commit("someone else's change")
    with pytest.raises(StalePlanError) as refused:
        verify_saved_plan(path, *_now_at(built, later))
    message = str(refused.value)
    assert f"head commit: the plan was computed at {built.head_commit[:7]}; the manifests at {later[:7]} differ" \
        in message
    assert "DeploymentGroup/worker changed (revision.s3.version: v2-5f1c0b -> v2-666666)" in message


def test_refused_after_the_reconciler_moved_a_group(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    assert built.store_url is not None
    store = open_store(built.store_url)
    stored = store.get(group_state_key("shop", "web"))
    assert stored is not None
    group_state = GroupState.model_validate_json(stored.data)
    moved = group_state.model_copy(update={"deployment_in_flight": "d-web-0003",
                                           "updated_at": group_state.updated_at + timedelta(minutes=1)})
    store.put(group_state_key("shop", "web"), moved.to_json())
    with pytest.raises(StalePlanError, match=r"group state shop/web: deploymentInFlight: none -> d-web-0003"):
        verify_saved_plan(path, *_now_at(built, built.head_commit))


def test_a_heartbeat_alone_does_not_make_a_plan_stale(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    assert built.store_url is not None
    # Agents heartbeat all the time; only membership and the reconciler's records count.
    FleetWriter(open_store(built.store_url)).host("web-1", {"app": "web", "env": "prod"}, zone="eu-1a",
                                                  silent_for=timedelta(seconds=1))
    verify_saved_plan(path, *_now_at(built, built.head_commit))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such plan file"),
        ("{not json", "invalid JSON"),
        ('{"kind": "something-else"}', "not a plan file written by `reconcile plan --out`"),
        ('{"kind": "fleetshift-plan", "formatVersion": 99}', "plan format version 99 is not supported"),
        ('{"kind": "fleetshift-plan", "formatVersion": 1, "plan": {}}', "damaged plan file"),
    ],
)
def test_unreadable_plan_files_are_refused_clearly(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SavedPlanError, match=expected):
        load_saved_plan(path)


def test_saved_plan_carries_the_reviewed_plan_and_its_fingerprints(tmp_path: Path) -> None:
    built, path = _save(tmp_path)
    data = json.loads(path.read_text())
    assert data["kind"] == "fleetshift-plan" and data["formatVersion"] == 1
    fingerprints = data["fingerprints"]
    assert fingerprints["headCommit"] == built.head_commit
    assert fingerprints["membership"]["shop/web"] == [f"web-{n}" for n in range(1, 7)]
    assert fingerprints["groups"]["shop/web"]["effectiveRevision"].startswith("git:https://git.example.com/shop/web")
    assert "DeploymentGroup/web" in fingerprints["manifests"]


def test_a_plan_freezes_the_fleet_it_read_only_while_it_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """`make_plan` keeps the documents it read out of the collector's sight while it computes (issue 18) and hands
    them back when done, even when computing fails: nothing stays frozen in the caller's process."""
    import gc

    import reconciler.cli.plan as plan_cli

    built = build(tmp_path, "revision-bump-store")
    seen: list[int] = []
    real = plan_cli.compute_plan

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(gc.get_freeze_count())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plan_cli, "compute_plan", spy)
    assert gc.get_freeze_count() == 0
    make_plan(built.request, now=NOW)
    assert seen and seen[0] > 0 and gc.get_freeze_count() == 0

    def broken(*args: object, **kwargs: object) -> object:
        seen.append(gc.get_freeze_count())
        raise RuntimeError("compute failed")

    monkeypatch.setattr(plan_cli, "compute_plan", broken)
    with pytest.raises(RuntimeError):
        make_plan(built.request, now=NOW)
    assert seen[-1] > 0 and gc.get_freeze_count() == 0
