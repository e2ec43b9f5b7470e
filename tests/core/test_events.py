"""The event stream's edge cases, found in review: each one a case the property tests do not generate.

- a crash between a failed deployment's write and its group's write records `revision.quarantined` once;
- refusals are known by what they are, not by the host's clock; more than a host lists are counted; their text is
  redacted and bounded;
- an unreadable fleet log is never rewritten from scratch;
- a deployment recorded by a version without events does not replay its old gate measurements;
- a token in a Git revision URL never reaches the public event;
- with `historyLimit: 1` a failed deployment's record outlives the pass that starts its rollback.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from contract.events import from_deployment
from contract.models import (
    CommandRefusal,
    DeploymentAnalysis,
    EventType,
    GateMeasurement,
    GateResult,
    HostCommand,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
)
from reconciler.core import CoreSettings, Observed, State, apply_actions, reconcile
from reconciler.core.actions import RecordFleetEvents
from reconciler.core.events import fleet_events
from reconciler.core.simulate import run_agents
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def FAIL_H0(command: HostCommand) -> bool:
    """h0's hooks fail with v2; every other command succeeds."""
    return not (command.host_id == "h0" and "v2" in command.revision.identity())


def desired(version: int, *, config: str = "CodeDeployDefault.OneAtATime", rollback: bool = True) -> Desired:
    text = (
        "apiVersion: deploy/v1\nkind: Application\nmetadata: {name: shop}\n---\n"
        "apiVersion: deploy/v1\nkind: DeploymentGroup\nmetadata: {name: web}\nspec:\n  application: shop\n"
        f"  revision: {{local: {{path: bundles/v{version}.zip, bundleType: zip}}}}\n"
        "  targets: {tagSets: [[{key: role, value: web}]]}\n"
        f"  deploymentConfig: {config}\n  autoRollback: {{enabled: {str(rollback).lower()}}}\n"
    )
    return load_files([ManifestFile("m.yaml", text.encode())], commit=f"c{version}")


def fleet(hosts: int) -> Observed:
    v1 = Revision.model_validate({"local": {"path": "bundles/v1.zip", "bundleType": "zip"}})
    registrations = {f"h{i}": HostRegistration(host_id=f"h{i}", tags={"role": "web"}, platform="linux",
                                               hostname=f"h{i}", agent_version="t", registered_at=T0)
                     for i in range(hosts)}
    installed = {"shop/web": InstalledRevision(application="shop", deployment_group="web", revision=v1,
                                               deployment_id="d-0", installed_at=T0)}
    statuses = {h: HostStatus(host_id=h, heartbeat_at=T0, agent_version="t", installed=installed)
                for h in registrations}
    return Observed(registrations=registrations, statuses=statuses)


def test_a_crash_between_the_failed_deployment_and_its_group_records_the_quarantine_once() -> None:
    wanted, observed, state, now = desired(2), fleet(3), State(), T0
    for _ in range(40):  # run until the first host's failure ends the deployment
        actions = reconcile(wanted, observed, state, now=now)
        writes = [w for a in actions for w in a.writes()]
        finish = next((a for a in actions if a.kind == "FinishDeployment"), None)
        if finish is not None:
            # Killed after the deployment's write, before the group's: the next pass finishes the group side.
            done = writes.index(next(w for w in writes if w.document is finish.deployment))
            state = state.with_documents(w.document for w in writes[: done + 1])
            break
        state = apply_actions(state, actions)
        observed = run_agents(observed, state, now=now, alive=set(observed.statuses), outcome=FAIL_H0)
        now += timedelta(seconds=10)
    else:
        raise AssertionError("the deployment never ended")
    state = apply_actions(state, reconcile(wanted, observed, state, now=now + timedelta(seconds=10)))
    failed = state.deployments[finish.deployment_id]
    assert [e.type for e in failed.events].count(EventType.REVISION_QUARANTINED) == 1
    assert [e.type for e in failed.events].count(EventType.DEPLOYMENT_FAILED) == 1


def refusals(*items: tuple[datetime, str], total: int | None = None, reason: str = "not signed") -> Observed:
    listed = [CommandRefusal(at=at, key="commands/h0.json", version=version, reason=reason) for at, version in items]
    status = HostStatus(host_id="h0", heartbeat_at=T0, agent_version="t", refusals=listed,
                        refused_total=len(listed) if total is None else total)
    return Observed(statuses={"h0": status})


def test_refusals_are_known_by_what_they_are_not_by_the_host_clock() -> None:
    first = fleet_events(None, refusals((T0 + timedelta(days=1), "v1")), T0)
    assert first is not None and first.events == 1
    # The host's clock is put right: its next refusals are older than the first one, and still recorded, once.
    soon = T0 + timedelta(minutes=5)
    later = refusals((T0 + timedelta(days=1), "v1"), (soon, "v2"), (soon, "v3"))
    second = fleet_events(first.log, later, T0 + timedelta(minutes=6))
    assert second is not None and second.events == 2
    assert [e.seq for e in second.log.events] == [1, 2, 3]
    assert fleet_events(second.log, later, T0 + timedelta(minutes=7)) is None  # nothing new: nothing written


def test_more_refusals_than_a_host_lists_are_counted() -> None:
    first = fleet_events(None, refusals((T0, "v1")), T0)
    assert first is not None
    listed = [(T0 + timedelta(seconds=s), f"v{s}") for s in range(10, 15)]
    second = fleet_events(first.log, refusals(*listed, total=9), T0 + timedelta(minutes=1))
    assert second is not None and second.events == 6
    assert "3 more command(s)" in second.log.events[-1].message


def test_refusal_text_is_redacted_and_bounded() -> None:
    reason = "token=ghp_0123456789abcdef0123456789abcdef0123 " + "x" * 100_000
    recorded = fleet_events(None, refusals((T0, "v1"), reason=reason), T0)
    assert recorded is not None
    message = recorded.log.events[0].message
    assert len(message) <= 300 and "ghp_0123456789abcdef" not in message
    assert len(recorded.describe()) <= 1100


def test_an_unreadable_fleet_log_is_never_rewritten() -> None:
    observed = dataclasses.replace(fleet(1), statuses=refusals((T0, "v1")).statuses)
    actions = reconcile(desired(1), observed, State(fleet_events_unreadable=True), now=T0)
    assert not [a for a in actions if isinstance(a, RecordFleetEvents)]
    assert [a for a in reconcile(desired(1), observed, State(), now=T0) if isinstance(a, RecordFleetEvents)]


def test_a_deployment_from_a_version_without_events_does_not_replay_old_measurements() -> None:
    wanted, observed = desired(2), fleet(3)
    state = apply_actions(State(), reconcile(wanted, observed, State(), now=T0))
    (deployment_id, deployment), = state.deployments.items()
    state = dataclasses.replace(state, deployments={deployment_id: deployment.model_copy(update={"events": []})})
    old = [GateMeasurement(gate="errors", checkpoint="batch-0", index=0, due_at=T0, measured_at=T0,
                           result=GateResult.FAILED, message="error rate 0.3")]
    later = T0 + timedelta(hours=2)
    observed = run_agents(observed, state, now=later, alive=set(observed.statuses))
    observed = dataclasses.replace(observed, analysis={deployment_id: DeploymentAnalysis(
        deployment_id=deployment_id, application="shop", deployment_group="web", measurements=old, updated_at=T0)})
    state = apply_actions(state, reconcile(wanted, observed, state, now=later))
    assert not [e for e in state.deployments[deployment_id].events if e.gate is not None]


def test_a_git_token_never_reaches_the_public_event() -> None:
    wanted, observed = desired(2), fleet(1)
    state = apply_actions(State(), reconcile(wanted, observed, State(), now=T0))
    deployment = next(iter(state.deployments.values()))
    secret = Revision.model_validate({"git": {"repository": "https://x-access-token:ghp_SECRET@github.com/a/b.git",
                                              "commit": "a" * 40}})
    events = from_deployment(deployment.model_copy(update={"revision": secret}))
    assert events and all("ghp_SECRET" not in e.model_dump_json() for e in events)


def test_history_limit_one_keeps_the_failed_deployment_beside_its_rollback() -> None:
    observed, state, now = fleet(3), State(), T0
    settings = CoreSettings(history_limit=1)
    for wanted in (desired(1), desired(2)):  # v1 becomes the last good revision, v2 fails and is rolled back
        for _ in range(60):
            state = apply_actions(state, reconcile(wanted, observed, state, now=now, settings=settings))
            observed = run_agents(observed, state, now=now, alive=set(observed.statuses), outcome=FAIL_H0)
            now += timedelta(seconds=10)
    group = state.groups["shop/web"]
    failed = [d for d in state.deployments.values() if d.creator == "user" and d.status.value == "Failed"]
    assert len(group.history) == 2 and failed and failed[0].deployment_id in group.history
    assert EventType.DEPLOYMENT_FAILED in [e.type for e in failed[0].events]
