"""Quarantine: a revision whose user deployment failed (or was stopped on request or by an alarm) is not retried
until the manifest changes it again, or `reconcile retry` empties the list."""

from __future__ import annotations

from datetime import datetime

from contract.models import Deployment, DeploymentStatus, GroupState, QuarantinedRevision, Revision

STOPPED_ON_REQUEST = "STOPPED_ON_REQUEST"
#: CodeDeploy's error code for a deployment stopped by a CloudWatch alarm (reconciler/core/gates.py).
ALARM_ACTIVE = "ALARM_ACTIVE"


def is_quarantined(group_state: GroupState, revision: Revision) -> QuarantinedRevision | None:
    """Quarantine is keyed on the revision and the commit at which the group's desired revision last
    changed, so it lifts when the manifest changes again; an empty list (after `retry`) lifts it too."""
    identity = revision.identity()
    for entry in group_state.quarantined:
        if entry.source_commit == group_state.desired_commit and entry.revision.identity() == identity:
            return entry
    return None


def stopped_on_request(deployment: Deployment) -> bool:
    return deployment.status is DeploymentStatus.STOPPED and deployment.error_code == STOPPED_ON_REQUEST


def stopped_on_alarm(deployment: Deployment) -> bool:
    return deployment.status is DeploymentStatus.STOPPED and deployment.error_code == ALARM_ACTIVE


def quarantine_after(
    group_state: GroupState, deployment: Deployment, now: datetime
) -> list[QuarantinedRevision] | None:
    """The group's quarantine list once `deployment` has ended, or None when its end quarantines nothing."""
    stopped = stopped_on_request(deployment)
    alarmed = stopped_on_alarm(deployment)
    if deployment.creator != "user" or not (deployment.status is DeploymentStatus.FAILED or stopped or alarmed):
        return None
    entries = list(group_state.quarantined)
    identity = deployment.revision.identity()
    if any(e.revision.identity() == identity and e.source_commit == deployment.source_commit for e in entries):
        return entries
    reason = (
        "stopped on request"
        if stopped
        else (deployment.error_message or "stopped on alarm")
        if alarmed
        else f"failed: {deployment.error_message}"
    )
    entry = QuarantinedRevision(
        revision=deployment.revision,
        source_commit=deployment.source_commit,
        deployment_id=deployment.deployment_id,
        reason=reason,
        since=deployment.ended_at or now,
    )
    return [*entries, entry]
