"""The pure decision core of the reconciler: `reconcile(desired, observed, state, *, now) -> list[Action]`.

Everything here is computation over plain data (no I/O, no logging, no clock). The shell (executor, lease,
`reconcile --once`, `watch`) feeds it and applies its actions; `reconcile plan` reuses its membership and
rollout simulation so a plan shows exactly what a pass would do.
"""

from reconciler.core.actions import (
    Action,
    Blocked,
    ClearStopRequest,
    CompleteLifecycleAction,
    DispatchBatch,
    FinishDeployment,
    MarkGroupRemoved,
    RecordDesired,
    RecordFleetEvents,
    RecordHostResults,
    RecordLifecycleHeartbeat,
    RewriteCommands,
    StartDeployment,
    StartRollback,
    StoreWrite,
    TrafficStep,
    UpdateDeploymentStatus,
    actions_from_json,
    actions_to_json,
    writes_of,
)
from reconciler.core.identity import deployment_group_id, same_revision
from reconciler.core.membership import (
    MembershipIndex,
    flagged_agents,
    gone_reason,
    group_members,
    missing_hosts,
    zone_of,
)
from reconciler.core.observed import Ec2Instance, Ec2Membership, HeldLaunch, Observed, is_online
from reconciler.core.quarantine import is_quarantined
from reconciler.core.reconcile import reconcile
from reconciler.core.simulate import (
    PreviewBatch,
    PreviewDeployment,
    RolloutPreview,
    apply_actions,
    preview_rollout,
    run_agents,
)
from reconciler.core.state import CoreSettings, State

__all__ = [
    "Action",
    "Blocked",
    "ClearStopRequest",
    "CompleteLifecycleAction",
    "CoreSettings",
    "DispatchBatch",
    "Ec2Instance",
    "Ec2Membership",
    "FinishDeployment",
    "HeldLaunch",
    "MarkGroupRemoved",
    "MembershipIndex",
    "Observed",
    "PreviewBatch",
    "PreviewDeployment",
    "RecordDesired",
    "RecordFleetEvents",
    "RecordHostResults",
    "RecordLifecycleHeartbeat",
    "RewriteCommands",
    "RolloutPreview",
    "StartDeployment",
    "StartRollback",
    "State",
    "StoreWrite",
    "TrafficStep",
    "UpdateDeploymentStatus",
    "actions_from_json",
    "actions_to_json",
    "apply_actions",
    "deployment_group_id",
    "flagged_agents",
    "gone_reason",
    "group_members",
    "is_online",
    "is_quarantined",
    "missing_hosts",
    "preview_rollout",
    "reconcile",
    "run_agents",
    "same_revision",
    "writes_of",
    "zone_of",
]
