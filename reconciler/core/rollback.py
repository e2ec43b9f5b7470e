"""Rollback: after a user deployment fails (or is stopped on request), redeploy the group's last good
revision to every host the failed deployment touched, when the group's `autoRollback` (or the stop request)
asks for it. The rollback's id derives from the failed deployment, so a crash between writes re-creates it."""

from __future__ import annotations

from datetime import datetime

from contract.models import Deployment, DeploymentStatus, GroupState, HostDeploymentState, StopRequest
from reconciler.core.actions import StartRollback
from reconciler.core.identity import rollback_deployment_id, same_revision
from reconciler.core.quarantine import stopped_on_alarm, stopped_on_request
from reconciler.core.rollout import PENDING, SKIPPED
from reconciler.core.view import PassView
from reconciler.desired.manifests import DesiredGroup


def rollback_wanted(deployment: Deployment, group: DesiredGroup | None, request: StopRequest | None) -> bool:
    """The group asks for a rollback on this ending (or the stop request does)."""
    if group is None or deployment.creator != "user":
        return False
    auto = group.auto_rollback
    if deployment.status is DeploymentStatus.FAILED:
        return auto.enabled and "DEPLOYMENT_FAILURE" in auto.events
    if stopped_on_alarm(deployment):
        return auto.enabled and "DEPLOYMENT_STOP_ON_ALARM" in auto.events
    if stopped_on_request(deployment):
        return (request is not None and request.rollback) or (
            auto.enabled and "DEPLOYMENT_STOP_ON_REQUEST" in auto.events
        )
    return False


def why_no_rollback(group_state: GroupState, deployment: Deployment) -> str | None:
    """None when a wanted rollback can start; otherwise the note added to the failed deployment's message."""
    if group_state.effective_revision is None:
        return "no rollback: the group has no last good revision yet"
    if same_revision(group_state.effective_revision, deployment.revision):
        return "no rollback: the last good revision is the one that failed"
    if not any(s.generation is not None for s in deployment.hosts.values()):
        return "no rollback needed: no host received the revision"
    return None


def rollback_deployment(
    group_state: GroupState, failed: Deployment, group: DesiredGroup | None, *, now: datetime
) -> Deployment:
    """The last good revision to every host `failed` touched; the others are skipped."""
    assert group_state.effective_revision is not None
    pending = HostDeploymentState()
    untouched = HostDeploymentState(status=SKIPPED, message=f"not touched by {failed.deployment_id}")
    hosts = {host: pending if state.generation is not None else untouched for host, state in failed.hosts.items()}
    return Deployment(
        deployment_id=rollback_deployment_id(failed.deployment_id),
        application=failed.application,
        deployment_group=failed.deployment_group,
        revision=group_state.effective_revision,
        source_commit=group_state.effective_commit,
        deployment_config=group.config.name if group is not None else failed.deployment_config,
        status=DeploymentStatus.IN_PROGRESS,
        creator="rollback",
        rollback_of=failed.deployment_id,
        hosts=hosts,
        created_at=now,
        updated_at=now,
    )


def start_rollback_action(key: str, group_state: GroupState, failed: Deployment, rollback: Deployment) -> StartRollback:
    return StartRollback(
        group=key,
        deployment_id=rollback.deployment_id,
        rollback_of=failed.deployment_id,
        revision_from=failed.revision,
        revision_to=rollback.revision,
        hosts=[h for h, s in rollback.hosts.items() if s.status is PENDING],
        reason=f"{failed.deployment_id} {failed.status.value.lower()}: {failed.error_message}",
        deployment=rollback,
        group_state=group_state,
    )


def recover_lost_rollback(
    view: PassView, key: str, group_state: GroupState, group: DesiredGroup | None
) -> tuple[Deployment, StartRollback] | None:
    """The group points at a rollback whose document a crash never wrote: build it again from the failed
    deployment in the history (its id is derived from that one)."""
    deployment_id = group_state.deployment_in_flight
    for earlier_id in reversed(group_state.history):
        earlier = view.deployments.get(earlier_id)
        if (
            earlier is not None
            and earlier.status.finished
            and rollback_deployment_id(earlier_id) == deployment_id
            and group_state.effective_revision is not None
        ):
            rollback = rollback_deployment(group_state, earlier, group, now=view.now)
            return rollback, start_rollback_action(key, group_state, earlier, rollback)
    return None
