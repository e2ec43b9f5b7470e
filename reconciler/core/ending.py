"""Ending a deployment: the deployment's final status, the group's side (effective revision, quarantine,
stop request, history) and, when wanted, the rollback that starts in its place."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from contract.models import Deployment, DeploymentStatus, GroupState
from reconciler.core.actions import Action, FinishDeployment
from reconciler.core.identity import rollback_deployment_id
from reconciler.core.quarantine import quarantine_after
from reconciler.core.rollback import rollback_deployment, rollback_wanted, start_rollback_action, why_no_rollback
from reconciler.core.rollout import Outcome
from reconciler.core.view import PassView
from reconciler.desired.manifests import DesiredGroup


@dataclass(frozen=True)
class Ended:
    """The group after the end, the actions that record it, and the rollback that started (to be stepped)."""

    group_state: GroupState
    actions: list[Action]
    rollback: Deployment | None = None


def finish(
    view: PassView,
    key: str,
    group_state: GroupState,
    deployment: Deployment,
    *,
    outcome: Outcome | None,
    group: DesiredGroup | None,
) -> Ended:
    """End `deployment` with `outcome` (None: it already ended, only the group side is missing)."""
    if outcome is not None:
        deployment = _with_outcome(deployment, outcome, view.now)
    view.remember(deployment)
    update = _group_update(group_state, deployment, view.now)
    start_rollback = False
    if rollback_wanted(deployment, group, group_state.stop_request):
        note = why_no_rollback(group_state, deployment)
        start_rollback = note is None
        if note is not None and outcome is not None:
            deployment = deployment.model_copy(update={"error_message": f"{deployment.error_message}; {note}"})
            view.remember(deployment)
    if start_rollback:
        rollback_id = rollback_deployment_id(deployment.deployment_id)
        update["deployment_in_flight"] = rollback_id
        update["history"] = view.bounded_history([*group_state.history, rollback_id])
    group_state = group_state.model_copy(update=update)
    reason = deployment.error_message or (
        outcome.message if outcome is not None else "ended in an earlier pass; the group is updated now"
    )
    finished = FinishDeployment(
        group=key,
        deployment_id=deployment.deployment_id,
        status=deployment.status,
        error_code=deployment.error_code,
        reason=reason,
        revision=deployment.revision,
        quarantined="quarantined" in update,
        deployment=deployment,
        group_state=group_state,
    )
    if not start_rollback:
        return Ended(group_state, [finished])
    rollback = rollback_deployment(group_state, deployment, group, now=view.now)
    return Ended(group_state, [finished, start_rollback_action(key, group_state, deployment, rollback)], rollback)


def _with_outcome(deployment: Deployment, outcome: Outcome, now: datetime) -> Deployment:
    return deployment.model_copy(
        update={
            "status": outcome.status,
            "error_code": outcome.error_code,
            "error_message": outcome.message if outcome.status is not DeploymentStatus.SUCCEEDED else None,
            "ended_at": now,
            "updated_at": now,
        }
    )


def _group_update(group_state: GroupState, deployment: Deployment, now: datetime) -> dict[str, object]:
    """The group's fields once `deployment` has ended (before any rollback is pointed at)."""
    update: dict[str, object] = {"deployment_in_flight": None, "updated_at": now}
    if deployment.status is DeploymentStatus.SUCCEEDED and deployment.creator == "user":
        update["effective_revision"] = deployment.revision
        update["effective_commit"] = deployment.source_commit
    quarantined = quarantine_after(group_state, deployment, now)
    if quarantined is not None:
        update["quarantined"] = quarantined
    request = group_state.stop_request
    if request is not None and request.deployment_id in (None, deployment.deployment_id):
        update["stop_request"] = None
    return update
