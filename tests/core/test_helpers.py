"""The helpers `reconcile plan` and the executor build on: membership, the rollout preview, write order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.models import Deployment, GroupState, HostCommand, HostRegistration
from reconciler.core import (
    Action,
    DispatchBatch,
    FinishDeployment,
    MembershipIndex,
    Observed,
    State,
    apply_actions,
    group_members,
    preview_rollout,
    reconcile,
    run_agents,
)
from reconciler.desired.manifests import TagFilter, TargetsSpec
from tests.core.scenario import load_desired, load_scenario

SCENARIOS = Path(__file__).parent / "scenarios"
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

tag_keys = st.sampled_from(["role", "env", "az"])
tag_values = st.sampled_from(["web", "api", "prod", "a", "b"])
filters = st.one_of(
    st.builds(lambda k: TagFilter(key=k, type="KEY_ONLY"), tag_keys),
    st.builds(lambda v: TagFilter(value=v, type="VALUE_ONLY"), tag_values),
    st.builds(lambda k, v: TagFilter(key=k, value=v, type="KEY_AND_VALUE"), tag_keys, tag_values),
)


@settings(max_examples=200, deadline=None)
@given(
    fleet=st.dictionaries(st.sampled_from([f"h{i}" for i in range(12)]), st.dictionaries(tag_keys, tag_values)),
    tag_sets=st.lists(st.lists(filters, min_size=1, max_size=3), max_size=3),
    explicit=st.lists(st.sampled_from(["h1", "h5", "ghost"]), max_size=2),
)
def test_membership_index_agrees_with_the_manifest_rule(
    fleet: dict[str, dict[str, str]], tag_sets: list[list[TagFilter]], explicit: list[str]
) -> None:
    """The index is an optimisation: it must select exactly the hosts `TargetsSpec.matches` selects."""
    if not tag_sets and not explicit:
        explicit = ["ghost"]
    targets = TargetsSpec(tag_sets=tag_sets, hosts=explicit)
    observed = Observed(
        registrations={
            h: HostRegistration(host_id=h, tags=t, platform="linux", hostname=h, agent_version="t", registered_at=NOW)
            for h, t in fleet.items()
        }
    )
    expected = {h for h, t in fleet.items() if targets.matches(h, t)} | set(explicit)
    assert MembershipIndex(observed).members(targets) == expected


def test_group_members_in_natural_order() -> None:
    desired, observed, _, _, _ = load_scenario(SCENARIOS / "codedeploy-10-hosts-min-8-first-failure-continues")
    group = desired.desired_groups()["shop/web"]
    assert group_members(group, observed) == [f"web-{i}" for i in range(1, 11)]


def test_preview_shows_every_batch_of_a_rollout() -> None:
    desired, observed, state, now, _ = load_scenario(SCENARIOS / "codedeploy-host-count-6-of-9")
    preview = preview_rollout(desired, observed, state, now=now)["shop/web"]
    assert preview.complete
    [deployment] = preview.deployments
    assert [b.hosts for b in deployment.batches] == [
        ["web-1", "web-2", "web-3"], ["web-4", "web-5", "web-6"], ["web-7", "web-8", "web-9"],
    ]
    assert deployment.status == "Succeeded"
    # The first pass of the preview is exactly what `reconcile()` returns now.
    assert preview.first_pass == [a for a in reconcile(desired, observed, state, now=now) if a.group == "shop/web"]


def test_preview_shows_bakes_as_time_between_batches() -> None:
    desired, observed, state, now, _ = load_scenario(SCENARIOS / "canary-first-batch")
    [deployment] = preview_rollout(desired, observed, state, now=now)["shop/web"].deployments
    canary, first_rest = deployment.batches[0], deployment.batches[1]
    assert canary.canary and canary.hosts == ["web-1"]
    assert first_rest.after - canary.after >= timedelta(minutes=10)


def test_preview_finishes_commands_reported_running() -> None:
    """A host running its command when the preview starts is assumed to succeed, not to hang."""
    desired, observed, state, now, _ = load_scenario(SCENARIOS / "stop-on-request-waits-for-hosts-in-flight")
    without_stop = State(
        groups={k: g.model_copy(update={"stop_request": None}) for k, g in state.groups.items()},
        deployments=state.deployments,
        commands=state.commands,
    )
    preview = preview_rollout(desired, observed, without_stop, now=now)["shop/web"]
    assert preview.complete
    assert [b.hosts for b in preview.deployments[0].batches] == [["web-3"]]


def test_preview_of_a_blocked_group_explains_why() -> None:
    desired, observed, state, now, _ = load_scenario(SCENARIOS / "no-matching-hosts")
    preview = preview_rollout(desired, observed, state, now=now)["shop/web"]
    assert preview.deployments == []
    assert [b.code for b in preview.blocked] == ["NO_INSTANCES"]


def test_writes_come_in_crash_safe_order() -> None:
    desired, observed, state, now, _ = load_scenario(SCENARIOS / "rollback-after-health-constraints")
    actions = reconcile(desired, observed, state, now=now)
    for action in actions:
        kinds = [type(w.document) for w in action.writes()]
        if isinstance(action, DispatchBatch):
            assert kinds[0] is Deployment and set(kinds[1:]) == {HostCommand}
        if isinstance(action, FinishDeployment):
            assert kinds == [Deployment, GroupState]
    keys = [w.key for a in actions for w in a.writes()]
    assert keys[0].startswith("deployments/") and "commands/web-2.json" in keys


def test_same_inputs_same_actions() -> None:
    """Deterministic: deployment ids and every document are a function of the inputs."""
    desired, observed, state, now, _ = load_scenario(SCENARIOS / "first-deployment-new-group")
    assert reconcile(desired, observed, state, now=now) == reconcile(desired, observed, state, now=now)
    later = reconcile(desired, observed, state, now=now + timedelta(seconds=1))
    assert later != reconcile(desired, observed, state, now=now)


def test_desired_loaded_from_text_keeps_the_commit() -> None:
    desired = load_desired((SCENARIOS / "suspended-group" / "desired.yaml").read_bytes(), "abc123")
    [action, blocked] = reconcile(desired, Observed(), State(), now=NOW)
    assert action.kind == "RecordDesired" and action.commit == "abc123"
    assert blocked.kind == "Blocked" and blocked.code == "SUSPENDED"


def _without_events(actions: list[object]) -> list[object]:
    """Actions with the events cleared from every deployment they write."""
    cleared: list[object] = []
    for action in actions:
        deployment = getattr(action, "deployment", None)
        if isinstance(deployment, Deployment) and deployment.events:
            plain = deployment.model_copy(update={"events": []})
            cleared.append(action.model_copy(update={"deployment": plain}))  # type: ignore[attr-defined]
        else:
            cleared.append(action)
    return cleared


def test_a_pass_without_events_decides_exactly_what_a_pass_with_them_does() -> None:
    """`reconcile(events=False)`, the dry run's later passes: the same actions, only without the events recorded in
    the documents they write. Every golden scenario, so starts, results, rollbacks and quarantines are covered."""
    with_events = 0
    for folder in sorted(path for path in SCENARIOS.iterdir() if path.is_dir()):
        desired, observed, state, now, _ = load_scenario(folder)
        recorded = reconcile(desired, observed, state, now=now)
        plain = reconcile(desired, observed, state, now=now, events=False)
        with_events += any(getattr(a, "deployment", None) is not None and a.deployment.events for a in recorded)  # type: ignore[attr-defined]
        assert _without_events(recorded) == _without_events(plain), folder.name
        assert not any(getattr(a, "deployment", None) is not None and a.deployment.events for a in plain), folder.name  # type: ignore[attr-defined]
    assert with_events >= 10  # the scenarios do record events: the comparison above is not between empty lists


def test_shared_copies_give_model_copys_value_and_one_object_per_record_and_update() -> None:
    from contract.models import HostDeploymentState, HostDeploymentStatus
    from reconciler.core.sharing import SharedCopies

    shared = SharedCopies()
    pending, other = HostDeploymentState(), HostDeploymentState()
    update = {"status": HostDeploymentStatus.IN_PROGRESS, "batch": 0, "generation": 2, "dispatched_at": NOW}
    first = shared.copy(pending, update)
    assert first == pending.model_copy(update=update) and first is not pending
    assert shared.copy(pending, dict(update)) is first  # an equal update: the same copy
    assert shared.copy(pending, {**update, "generation": 3}).generation == 3  # another update: another copy
    assert shared.copy(other, update) is not first and shared.copy(other, update) == first  # keyed by the record
    # Field order of the update is part of the key, not of the value: a reordered update is only copied again.
    assert shared.copy(pending, dict(reversed(update.items()))) == first
    # Equal values written differently never share: 0.0 and -0.0, 1 and 1.0, one instant at two offsets.
    plus, minus = (shared.copy(pending, {"out_of_service_seconds": v}) for v in (0.0, -0.0))
    assert plus is not minus and minus.to_json() != plus.to_json()
    assert shared.copy(pending, {"batch": 1}) is not shared.copy(pending, {"batch": 1.0})
    east = NOW.astimezone(timezone(timedelta(hours=2)))
    assert shared.copy(pending, {"finished_at": NOW}) is not shared.copy(pending, {"finished_at": east})
    assert shared.copy(pending, {"finished_at": east}).to_json() != shared.copy(pending, {"finished_at": NOW}).to_json()


def test_a_batch_and_its_results_share_one_record_per_change_and_write_what_separate_copies_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 18: the hosts of a batch go in flight, and end, as one shared frozen record each, not one copy per
    host; what is written is byte for byte what a copy per host gives, even when agents report one instant in
    different time zones (equal times, written differently: they must not share a record)."""
    from reconciler.core.sharing import SharedCopies

    def two_passes() -> tuple[DispatchBatch, list[Action]]:
        desired, observed, state, now, _ = load_scenario(SCENARIOS / "codedeploy-host-count-6-of-9")
        actions = reconcile(desired, observed, state, now=now)
        [dispatch] = [a for a in actions if isinstance(a, DispatchBatch)]
        state = apply_actions(state, actions)
        later = now + timedelta(seconds=30)
        observed = run_agents(observed, state, now=later, alive=observed.statuses.keys())
        # web-3's agent reports the very same end, on a clock set to UTC+2.
        status = observed.statuses["web-3"]
        assert status.command is not None and status.command.ended_at is not None
        east = status.command.ended_at.astimezone(timezone(timedelta(hours=2)))
        command = status.command.model_copy(update={"ended_at": east})
        statuses = {**observed.statuses, "web-3": status.model_copy(update={"command": command})}
        observed = Observed(registrations=observed.registrations, statuses=statuses)
        return dispatch, reconcile(desired, observed, state, now=later)

    dispatch, actions = two_passes()
    in_flight = [dispatch.deployment.hosts[h] for h in dispatch.hosts]
    assert len(in_flight) == 3 and len({id(s) for s in in_flight}) == 1
    pending = [s for h, s in dispatch.deployment.hosts.items() if h not in dispatch.hosts]
    assert len({id(s) for s in pending}) == 1
    assert {c.targets is dispatch.commands[0].targets for c in dispatch.commands} == {True}
    [next_batch] = [a for a in actions if isinstance(a, DispatchBatch)]
    ended = {h: next_batch.deployment.hosts[h] for h in dispatch.hosts}
    assert {s.status for s in ended.values()} == {"Succeeded"}
    assert ended["web-1"] is ended["web-2"] and ended["web-3"] is not ended["web-1"]  # another offset: its own
    assert ended["web-3"].finished_at is not None and ended["web-3"].finished_at.utcoffset() == timedelta(hours=2)

    # The same passes with a copy per host write exactly the same documents.
    monkeypatch.setattr(SharedCopies, "copy", lambda self, record, update: record.model_copy(update=dict(update)))
    _, unshared = two_passes()
    assert [w.document.to_json() for a in unshared for w in a.writes()] == [
        w.document.to_json() for a in actions for w in a.writes()
    ]


def test_an_index_of_other_registrations_is_never_used() -> None:
    """`reconcile(index=...)` (the dry run's one index for all its passes) is taken only over the very same
    registrations and EC2 read; an index of others, however alike, is ignored rather than trusted."""
    import dataclasses

    desired, observed, state, now, _ = load_scenario(SCENARIOS / "codedeploy-host-count-6-of-9")
    index = MembershipIndex(observed)
    assert index.indexes(dataclasses.replace(observed, statuses={}))  # statuses are not membership
    fewer = dataclasses.replace(
        observed, registrations={h: r for h, r in observed.registrations.items() if h != "web-9"}
    )
    assert not index.indexes(fewer) and not index.indexes(dataclasses.replace(observed, ec2={}))
    assert reconcile(desired, fewer, state, now=now, index=index) == reconcile(desired, fewer, state, now=now)
    dispatched = [a for a in reconcile(desired, fewer, state, now=now, index=index) if isinstance(a, DispatchBatch)]
    assert "web-9" not in dispatched[0].deployment.hosts  # what the stale index would have put in
    assert reconcile(desired, observed, state, now=now, index=index) == reconcile(desired, observed, state, now=now)


@settings(max_examples=300, deadline=None)
@given(
    interval=st.one_of(st.sampled_from([1.0, 5.0, 60.0, 300.0]), st.floats(min_value=0.001, max_value=86_400)),
    silent_us=st.integers(min_value=0, max_value=400 * 86_400 * 1_000_000),
    near=st.one_of(st.none(), st.integers(min_value=-2, max_value=2)),
    timeout_s=st.integers(min_value=1, max_value=3_600),
)
def test_online_is_a_heartbeat_within_the_larger_of_the_timeout_and_three_intervals(
    interval: float, silent_us: int, near: int | None, timeout_s: int
) -> None:
    """`is_online` answers without building a timedelta per host (issue 18); it must say exactly what the rule says,
    to the microsecond: silent for no longer than `liveness_timeout`."""
    from contract.models import HostStatus
    from reconciler.core import is_online
    from reconciler.core.observed import liveness_timeout

    status = HostStatus(host_id="h", heartbeat_at=NOW, agent_version="t", heartbeat_interval_seconds=interval)
    observed = Observed(statuses={"h": status})
    timeout = timedelta(seconds=timeout_s)
    if near is not None:  # right at the edge of three intervals, where rounding would show
        silent_us = max(0, round(3 * interval * 1_000_000) + near)
    now = NOW + timedelta(microseconds=silent_us)
    expected = now - NOW <= max(timeout, timedelta(seconds=3 * interval))
    assert is_online(observed, "h", now=now, heartbeat_timeout=timeout) is expected
    assert liveness_timeout(status, timeout) == max(timeout, timedelta(seconds=3 * interval))
