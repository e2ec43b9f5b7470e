"""The reconciler's decision: one pure pass from (desired, observed, state, now) to a list of actions.

Where it sits: the shell loads `Desired` (manifests at a commit), `Observed` (agents' registrations and
statuses) and `State` (groups, deployments, commands) from the store, calls `reconcile()`, and applies the
returned actions in order. Nothing here does I/O, logs, reads a clock or draws random numbers; the same
inputs always give the same actions (deployment ids included), which is what makes `plan` trustworthy and
the golden tests possible.

Per group, a pass pairs the desired group with its recorded state (Argo CD style: a missing side means a
new group or a removed one), then:
1. records a changed desired revision (the commit it changed at keys quarantine);
2. advances the deployment in flight (`advance.py`): agents' results (`results.py`), per-host timeouts,
   offline hosts, interrupted command writes, then one rollout step (`rollout.decide_step`) or its end
   (`ending.py`), with rollback (`rollback.py`) and quarantine (`quarantine.py`);
3. with nothing in flight, decides whether a deployment starts (`start.py`): a new desired revision
   ("user"), or hosts that lack the effective revision ("outdated" catch-up), and steps it at once;
4. after all groups: the traffic steps of hosts waiting at BlockTraffic or AllowTraffic (`traffic.py`), then the
   Auto Scaling lifecycle calls for new instances held at launch (`lifecycle.py`);
5. last, the events of every deployment write, recorded in the document written (`events.py`).
What the pass knows about hosts, and what it has decided so far, is in one `PassView` (`view.py`).
"""

from __future__ import annotations

from datetime import datetime

from contract.models import Deployment, GroupState
from reconciler.core.actions import Action, ClearStopRequest, MarkGroupRemoved, RecordDesired
from reconciler.core.advance import drive
from reconciler.core.events import record_events
from reconciler.core.identity import same_revision
from reconciler.core.lifecycle import launch_actions
from reconciler.core.membership import MembershipIndex
from reconciler.core.observed import Observed
from reconciler.core.results import record_in_flight
from reconciler.core.rollback import recover_lost_rollback
from reconciler.core.start import start_if_due
from reconciler.core.state import DEFAULT_SETTINGS, CoreSettings, State
from reconciler.core.traffic import traffic_steps
from reconciler.core.view import PassView
from reconciler.desired.manifests import Desired, DesiredGroup


def reconcile(
    desired: Desired,
    observed: Observed,
    state: State,
    *,
    now: datetime,
    settings: CoreSettings = DEFAULT_SETTINGS,
    events: bool = True,
    index: MembershipIndex | None = None,
) -> list[Action]:
    """Decide what to write now so the fleet moves one safe step toward `desired`.

    Contract:
    - Pure and deterministic. `now` must be timezone-aware; deployment ids are derived from the group key,
      the revision identity, the commit, the creator and `now` (a rollback's from the failed deployment).
    - Re-run safe: applying the returned actions and calling again with nothing new observed returns only
      `Blocked` actions (which write nothing). A crash part-way through applying is completed by the next
      pass (see `reconciler.core.actions`).
    - Per group, at most one deployment is in flight; per host, one command slot: a host whose last
      command has not been reported Succeeded/Failed gets nothing new, whichever group it came from.
    - Groups are handled in key order, so when two groups want the same free host in one pass the first
      key wins and the other waits for the next pass.
    - `events=False` leaves the events out of the documents written (step 5): for the dry run of `reconcile plan`
      (`reconciler.core.simulate`), which writes nothing and reads no event, and would spend a fifth of its time
      recording them. Every other decision is the same.
    - `index`: the membership index of an earlier pass, reused when it indexes the very registrations and EC2 read
      of `observed` (`MembershipIndex.indexes`), else ignored: the dry run's passes share one (issue 18).
    """
    view = PassView(desired, observed, state, now, settings, index=index)
    record_in_flight(view)
    actions: list[Action] = []
    for key in sorted(set(view.desired_groups) | set(state.groups)):
        group = view.desired_groups.get(key)
        recorded = state.groups.get(key)
        if group is not None:
            actions.extend(_desired_group(view, key, group, recorded))
        elif recorded is not None:
            actions.extend(_removed_group(view, key, recorded))
    # After every group decided: a host counted failed this pass no longer has its traffic step waited for.
    actions.extend(traffic_steps(view))
    # Last: a held instance is let in by what this pass decided (a catch-up that just succeeded on it).
    actions.extend(launch_actions(view, actions))
    # What the writes mean, recorded in the documents they write (events.py): decided last, from the documents.
    return record_events(actions, state, observed, now) if events else actions


def _desired_group(view: PassView, key: str, group: DesiredGroup, recorded: GroupState | None) -> list[Action]:
    group_state, actions = _record_desired(view, key, group, recorded)
    group_state, cleared = _clear_stale_stop_request(view, key, group_state)
    actions.extend(cleared)
    deployment, recovered = _in_flight(view, key, group_state, group)
    actions.extend(recovered)
    if deployment is not None:
        group_state, stepped = drive(view, key, group_state, deployment, group)
        actions.extend(stepped)
    if group_state.deployment_in_flight is None:
        group_state, cleared = _clear_stale_stop_request(view, key, group_state)
        actions.extend(cleared)
        actions.extend(start_if_due(view, key, group_state, group))
    return actions


def _record_desired(
    view: PassView, key: str, group: DesiredGroup, recorded: GroupState | None
) -> tuple[GroupState, list[Action]]:
    """A new group, a changed desired revision, or a group back in the manifests: record it."""
    group_state = recorded or GroupState(
        application=group.application, deployment_group=group.name, updated_at=view.now
    )
    changed = recorded is None or not same_revision(group_state.desired_revision, group.revision)
    if not changed and not group_state.removed:
        return group_state, []
    previous = group_state.desired_revision
    group_state = group_state.model_copy(
        update={
            "desired_revision": group.revision,
            "desired_commit": view.desired.commit if changed else group_state.desired_commit,
            # Entries are keyed on the old desired commit and can never match again.
            "quarantined": [] if changed else group_state.quarantined,
            "removed": False,
            "updated_at": view.now,
        }
    )
    record = RecordDesired(
        group=key,
        revision_from=previous,
        revision_to=group.revision,
        commit=group_state.desired_commit,
        group_state=group_state,
    )
    return group_state, [record]


def _removed_group(view: PassView, key: str, group_state: GroupState) -> list[Action]:
    """A group gone from the manifests: its deployment in flight stops, then the group is marked removed."""
    deployment, actions = _in_flight(view, key, group_state, None)
    if deployment is not None:
        group_state, stepped = drive(view, key, group_state, deployment, None)
        actions.extend(stepped)
    if group_state.deployment_in_flight is None and not group_state.removed:
        group_state = group_state.model_copy(update={"removed": True, "stop_request": None, "updated_at": view.now})
        actions.append(MarkGroupRemoved(group=key, group_state=group_state))
    return actions


def _clear_stale_stop_request(view: PassView, key: str, group_state: GroupState) -> tuple[GroupState, list[Action]]:
    """A stop request for a deployment that is no longer in flight has nothing left to stop."""
    request = group_state.stop_request
    if request is None:
        return group_state, []
    in_flight = group_state.deployment_in_flight
    if in_flight is not None and request.deployment_id in (None, in_flight):
        return group_state, []
    reason = (
        "no deployment in flight"
        if in_flight is None
        else f"it names {request.deployment_id}, but {in_flight} is in flight"
    )
    group_state = group_state.model_copy(update={"stop_request": None, "updated_at": view.now})
    return group_state, [ClearStopRequest(group=key, reason=reason, group_state=group_state)]


def _in_flight(
    view: PassView, key: str, group_state: GroupState, group: DesiredGroup | None
) -> tuple[Deployment | None, list[Action]]:
    """The deployment in flight, completing a rollback whose creation a crash interrupted."""
    deployment_id = group_state.deployment_in_flight
    if deployment_id is None:
        return None, []
    deployment = view.deployments.get(deployment_id)
    if deployment is not None:
        return deployment, []
    recovered = recover_lost_rollback(view, key, group_state, group)
    if recovered is None:
        return None, []
    rollback, action = recovered
    return rollback, [action]
