"""Starting a deployment when the group has none in flight: a new desired revision ("user"), or the hosts
that lack the effective revision ("outdated" catch-up). A deployment that starts takes its first step in
the same pass, so a quiet fleet's next pass has nothing left to decide."""

from __future__ import annotations

from collections.abc import Set

from contract.models import Deployment, DeploymentStatus, GroupState, HostDeploymentState, QuarantinedRevision, Revision
from reconciler.core.actions import Action, Blocked, StartDeployment
from reconciler.core.advance import Stepped, drive
from reconciler.core.identity import new_deployment_id, same_revision
from reconciler.core.quarantine import is_quarantined
from reconciler.core.rollout import FAILED, PENDING, SKIPPED, HostFacts, decide_step, host_sort_key, scheduling_order
from reconciler.core.view import PassView
from reconciler.desired.manifests import DesiredGroup


def start_if_due(view: PassView, key: str, group_state: GroupState, group: DesiredGroup) -> list[Action]:
    """The desired revision if it is new and not quarantined; otherwise the catch-up of outdated hosts."""
    effective = group_state.effective_revision
    wants_new = not same_revision(group.revision, effective)
    quarantine = is_quarantined(group_state, group.revision) if wants_new else None
    member_set = view.index.members(group.targets, group.key)
    if wants_new and quarantine is None:
        return _start_desired(view, key, group_state, group, member_set)
    actions: list[Action] = [_quarantined(key, group, quarantine)] if quarantine is not None else []
    if effective is None:
        return actions
    return [*actions, *_catch_up(view, key, group_state, group, member_set, effective=effective, drift=not wants_new)]


def _quarantined(key: str, group: DesiredGroup, quarantine: QuarantinedRevision) -> Blocked:
    return Blocked(
        group=key,
        code="QUARANTINED",
        reason=(
            f"{group.revision.short()} is quarantined ({quarantine.reason}, {quarantine.deployment_id}); "
            "it is not retried until the manifest changes or `reconcile retry` clears it"
        ),
        deployment_id=quarantine.deployment_id,
    )


def _start_desired(
    view: PassView, key: str, group_state: GroupState, group: DesiredGroup, member_set: Set[str]
) -> list[Action]:
    members = sorted(member_set, key=host_sort_key)
    if group.suspend:
        return [Blocked(group=key, code="SUSPENDED", reason=f"suspended: {group.revision.short()} waits")]
    if not members:
        return [Blocked(group=key, code="NO_INSTANCES", reason="no registered host matches the group's targets")]
    if not any(view.online(h) for h in members):
        reason = f"none of the {len(members)} target host(s) is online"
        return [Blocked(group=key, code="WAITING_FOR_HOSTS", reason=reason)]
    target_identity = view.identity(group.revision)
    only_outdated = group.options.update_outdated_instances_only
    pending, current = HostDeploymentState(), HostDeploymentState(status=SKIPPED, message="already runs this revision")
    hosts = {
        host: current if only_outdated and view.installed_identity(host, key) == target_identity else pending
        for host in members
    }
    effective = group_state.effective_revision
    before = effective.short() if effective else "nothing"
    after, actions = start(
        view, key, group_state, group, revision=group.revision, commit=group_state.desired_commit,
        creator="user", hosts=hosts, reason=f"desired revision changed from {before}",
    )
    settled = is_quarantined(after, group.revision) is not None or same_revision(
        group.revision, after.effective_revision
    )  # guards the recursion: the second look can never start this same deployment again
    if after.deployment_in_flight is None and after.effective_revision is not None and settled:
        # It ended in the pass that started it (HEALTH_CONSTRAINTS_INVALID quarantines the revision): decide
        # the catch-up of outdated hosts now too, or the next pass would do it with nothing new observed, and
        # a pass would not be idempotent.
        actions.extend(start_if_due(view, key, after, group))
    return actions


def _catch_up(
    view: PassView,
    key: str,
    group_state: GroupState,
    group: DesiredGroup,
    member_set: Set[str],
    *,
    effective: Revision,
    drift: bool,
) -> list[Action]:
    """Hosts that lack the effective revision get it ("outdated" deployments). While the desired revision
    is quarantined (`drift` False) only hosts with nothing installed qualify: reverting hosts that kept a
    failed revision is a rollback's job, and only when the group asks for it."""
    effective_identity = view.identity(effective)
    # `view.installed_identity` inline, and the revision's identity only worked out when it matters (`drift`):
    # asked for every member of every converged group at every pass, and every simulated pass of `plan` (issue 18).
    statuses = view.observed.statuses
    lacking: list[str] = []
    for host in member_set:
        status = statuses.get(host)
        installed = status.installed.get(key) if status is not None else None
        if installed is None or (drift and view.identity(installed.revision) != effective_identity):
            lacking.append(host)
    if not lacking:
        return []  # the common case, kept cheap: a converged group costs one look at each member's report
    attempts = view.attempts(group_state, exclude=None)
    outdated: list[str] = []
    waiting_offline: set[str] = set()
    for host in lacking:
        attempt = attempts.get(host)
        if attempt is not None and attempt.status is FAILED and attempt.revision_identity == effective_identity:
            continue  # it already failed this revision; it waits for the next change
        if view.online(host):
            outdated.append(host)
        else:
            waiting_offline.add(host)
    if not outdated:
        return []
    if group.suspend:
        return [Blocked(group=key, code="SUSPENDED", reason=f"suspended: {len(outdated)} outdated host(s) wait")]
    chosen = set(outdated)
    pending = HostDeploymentState()
    offline = HostDeploymentState(status=SKIPPED, message="offline; catches up when back")
    up_to_date = HostDeploymentState(status=SKIPPED, message="up to date")
    hosts = {
        host: pending if host in chosen else offline if host in waiting_offline else up_to_date
        for host in sorted(member_set, key=host_sort_key)
    }
    _, actions = start(
        view, key, group_state, group, revision=effective, commit=group_state.effective_commit, creator="outdated",
        hosts=hosts, reason=f"{len(outdated)} host(s) lack the effective revision {effective.short()}",
    )
    return actions


def start(
    view: PassView,
    key: str,
    group_state: GroupState,
    group: DesiredGroup,
    *,
    revision: Revision,
    commit: str | None,
    creator: str,
    hosts: dict[str, HostDeploymentState],
    reason: str,
) -> Stepped:
    """Start a deployment and step it at once; returns the group state after that first step."""
    assert creator in ("user", "outdated")
    deployment_id = new_deployment_id(key, revision, commit, creator, view.now)
    deployment = Deployment(
        deployment_id=deployment_id,
        application=group.application,
        deployment_group=group.name,
        revision=revision,
        source_commit=commit,
        deployment_config=group.config.name,
        status=DeploymentStatus.IN_PROGRESS,
        creator="user" if creator == "user" else "outdated",
        hosts=hosts,
        created_at=view.now,
        updated_at=view.now,
    )
    previous = group_state.effective_revision
    group_state = group_state.model_copy(
        update={
            "deployment_in_flight": deployment_id,
            "history": view.bounded_history([*group_state.history, deployment_id]),
            "updated_at": view.now,
        }
    )
    facts = view.facts(group_state, deployment, group.config)
    if creator == "outdated":
        waits = _catch_up_waits(view, key, deployment, facts, group)
        if waits is not None:
            return group_state, [waits]
    started = StartDeployment(
        group=key,
        deployment_id=deployment_id,
        creator="user" if creator == "user" else "outdated",
        revision_from=previous,
        revision_to=revision,
        commit=commit,
        hosts=scheduling_order((h for h, s in hosts.items() if s.status is PENDING), facts),
        reason=reason,
        deployment=deployment,
        group_state=group_state,
    )
    group_state, stepped = drive(view, key, group_state, deployment, group)
    return group_state, [started, *stepped]


def _catch_up_waits(
    view: PassView, key: str, deployment: Deployment, facts: dict[str, HostFacts], group: DesiredGroup
) -> Blocked | None:
    """A catch-up that could not start would fail on every pass (nothing is quarantined for it), so it waits
    for health to allow it instead, as a late host waits for a free slot."""
    trial = decide_step(deployment, facts, group.config, now=view.now, canary_and_bakes=False)
    if trial.outcome is not None and trial.outcome.error_code == "HEALTH_CONSTRAINTS_INVALID":
        return Blocked(group=key, code="HEALTH_CONSTRAINTS", reason=f"catch-up waits: {trial.outcome.message}")
    return None
