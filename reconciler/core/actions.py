"""The decisions of a pass, as data. `reconcile()` returns a list of these; an executor applies them.

Contract with the executor:
- Apply actions in list order, and within an action the `writes()` in their order. Each write is a whole
  document (`put`, never a patch), so applying an action twice is the same as applying it once.
- Writes are ordered so that a crash between any two of them leaves a state the next pass completes
  correctly: a Deployment is written before the GroupState that points at it (an unreferenced deployment
  is ignored), and a Deployment that marks hosts dispatched with a generation is written before those
  hosts' commands (the next pass sees the dispatch and emits `RewriteCommands` with the same generation
  instead of dispatching again; agents run a generation once).
- `Blocked` writes nothing: it says why a group does not move, for `plan`, `status` and logs.

Besides the documents, every action carries semantic fields (group, hosts, batch, revisions, reason) so
`plan` and progress output can render it without diffing documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from contract.keys import FLEET_EVENTS_KEY, command_key, deployment_key, group_state_key, traffic_key
from contract.models import (
    Deployment,
    DeploymentStatus,
    Document,
    FleetEventLog,
    GroupState,
    HostCommand,
    HostTraffic,
    Model,
    Revision,
)


@dataclass(frozen=True)
class StoreWrite:
    """One unconditional `put` of a whole document."""

    key: str
    document: Document

    def data(self) -> bytes:
        return self.document.to_json()


def _deployment_write(deployment: Deployment) -> StoreWrite:
    return StoreWrite(deployment_key(deployment.deployment_id), deployment)


def _group_write(group_state: GroupState) -> StoreWrite:
    return StoreWrite(group_state_key(group_state.application, group_state.deployment_group), group_state)


def _command_writes(commands: list[HostCommand]) -> list[StoreWrite]:
    return [StoreWrite(command_key(command.host_id), command) for command in commands]


class _Action(Model):
    #: `<application>/<deploymentGroup>`
    group: str

    def writes(self) -> list[StoreWrite]:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs and progress output."""
        raise NotImplementedError


class RecordDesired(_Action):
    """The manifests ask for another revision than last recorded (or the group is new or back after
    removal). `desired_commit` moves to this commit, which is what quarantine is keyed on."""

    kind: Literal["RecordDesired"] = "RecordDesired"
    revision_from: Revision | None = None
    revision_to: Revision
    commit: str | None = None
    group_state: GroupState

    def writes(self) -> list[StoreWrite]:
        return [_group_write(self.group_state)]

    def describe(self) -> str:
        before = self.revision_from.short() if self.revision_from else "nothing"
        return f"{self.group}: desired revision {before} -> {self.revision_to.short()}"


class StartDeployment(_Action):
    """A new deployment (creator "user" for a manifest change, "outdated" for hosts catching up with the
    effective revision). The first batch, if any can go now, follows as a `DispatchBatch`."""

    kind: Literal["StartDeployment"] = "StartDeployment"
    deployment_id: str
    creator: Literal["user", "outdated"]
    revision_from: Revision | None = None
    revision_to: Revision
    commit: str | None = None
    #: Hosts that will receive the revision (the deployment's non-skipped hosts), in scheduling order.
    hosts: list[str]
    reason: str
    deployment: Deployment
    group_state: GroupState

    def writes(self) -> list[StoreWrite]:
        return [_deployment_write(self.deployment), _group_write(self.group_state)]

    def describe(self) -> str:
        before = self.revision_from.short() if self.revision_from else "nothing"
        return (
            f"{self.group}: start {self.deployment_id} ({self.creator}) {before} -> {self.revision_to.short()}"
            f" on {len(self.hosts)} host(s): {self.reason}"
        )


class StartRollback(_Action):
    """Redeploy the effective (last good) revision to every host a failed or stopped deployment touched."""

    kind: Literal["StartRollback"] = "StartRollback"
    deployment_id: str
    rollback_of: str
    revision_from: Revision
    revision_to: Revision
    hosts: list[str]
    reason: str
    deployment: Deployment
    group_state: GroupState

    def writes(self) -> list[StoreWrite]:
        return [_deployment_write(self.deployment), _group_write(self.group_state)]

    def describe(self) -> str:
        return (
            f"{self.group}: roll back {self.rollback_of} with {self.deployment_id}: "
            f"{self.revision_from.short()} -> {self.revision_to.short()} on {len(self.hosts)} host(s)"
        )


class DispatchBatch(_Action):
    """Send the revision to `hosts`. The Deployment (hosts InProgress with their generation) is written
    before the commands, see the module docstring."""

    kind: Literal["DispatchBatch"] = "DispatchBatch"
    deployment_id: str
    #: 0-based index into `Deployment.batches`.
    batch: int
    hosts: list[str]
    revision: Revision
    zone: str | None = None
    canary: bool = False
    deployment: Deployment
    commands: list[HostCommand]

    def writes(self) -> list[StoreWrite]:
        return [_deployment_write(self.deployment), *_command_writes(self.commands)]

    def describe(self) -> str:
        label = "canary batch" if self.canary else f"batch {self.batch + 1}"
        zone = f" in zone {self.zone}" if self.zone else ""
        return f"{self.group}: {self.deployment_id} {label}{zone}: {', '.join(self.hosts)}"


class RewriteCommands(_Action):
    """A previous pass recorded a dispatch but stopped before writing these commands; write them again,
    same generation, so each host runs the command exactly once."""

    kind: Literal["RewriteCommands"] = "RewriteCommands"
    deployment_id: str
    hosts: list[str]
    commands: list[HostCommand]

    def writes(self) -> list[StoreWrite]:
        return _command_writes(self.commands)

    def describe(self) -> str:
        return f"{self.group}: {self.deployment_id} re-write interrupted commands for {', '.join(self.hosts)}"


class RecordHostResults(_Action):
    """Hosts finished (as reported by their agents), timed out, went offline, or left the group: `skipped` are
    the hosts whose EC2 instance went away (scale-in), Skipped if they had not finished, no longer counted."""

    kind: Literal["RecordHostResults"] = "RecordHostResults"
    deployment_id: str
    succeeded: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    deployment: Deployment

    def writes(self) -> list[StoreWrite]:
        return [_deployment_write(self.deployment)]

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(hosts)}"
            for label, hosts in (
                ("succeeded", self.succeeded), ("failed", self.failed), ("left the group (scale-in)", self.skipped)
            )
            if hosts
        ]
        return f"{self.group}: {self.deployment_id} " + "; ".join(parts)


class UpdateDeploymentStatus(_Action):
    """A status change that is not an end: InProgress -> Baking (canary or zone bake) and back."""

    kind: Literal["UpdateDeploymentStatus"] = "UpdateDeploymentStatus"
    deployment_id: str
    status_from: DeploymentStatus
    status_to: DeploymentStatus
    reason: str
    deployment: Deployment

    def writes(self) -> list[StoreWrite]:
        return [_deployment_write(self.deployment)]

    def describe(self) -> str:
        return f"{self.group}: {self.deployment_id} {self.status_from} -> {self.status_to}: {self.reason}"


class FinishDeployment(_Action):
    """The deployment ended. The GroupState carries the consequences: the effective revision on success,
    the quarantined revision on failure or stop, the cleared in-flight slot and stop request."""

    kind: Literal["FinishDeployment"] = "FinishDeployment"
    deployment_id: str
    status: DeploymentStatus
    error_code: str | None = None
    reason: str
    revision: Revision
    #: True when this pass added the revision to the group's quarantine list.
    quarantined: bool = False
    deployment: Deployment
    group_state: GroupState

    def writes(self) -> list[StoreWrite]:
        return [_deployment_write(self.deployment), _group_write(self.group_state)]

    def describe(self) -> str:
        code = f" [{self.error_code}]" if self.error_code else ""
        return f"{self.group}: {self.deployment_id} {self.status}{code}: {self.reason}"


class MarkGroupRemoved(_Action):
    """The group left the manifests: no more deployments, nothing uninstalled, records kept until cleaned."""

    kind: Literal["MarkGroupRemoved"] = "MarkGroupRemoved"
    group_state: GroupState

    def writes(self) -> list[StoreWrite]:
        return [_group_write(self.group_state)]

    def describe(self) -> str:
        return f"{self.group}: removed from the manifests"


class ClearStopRequest(_Action):
    """A stop request that has nothing (left) to stop is dropped so it cannot stop a later deployment."""

    kind: Literal["ClearStopRequest"] = "ClearStopRequest"
    reason: str
    group_state: GroupState

    def writes(self) -> list[StoreWrite]:
        return [_group_write(self.group_state)]

    def describe(self) -> str:
        return f"{self.group}: stop request cleared: {self.reason}"


class TrafficStep(_Action):
    """A traffic step for one host (docs/traffic.md): when `call` is set, make that call on every load balancer
    of the group; then record the step in `traffic/<host>.json`, which the agent waiting at BlockTraffic or
    AllowTraffic reads. The call comes first so an agent never reads "out of rotation" before the load
    balancer was told; every call is idempotent, so a crash between the call and the write repeats the call
    on the next pass. If a call fails, the shell writes the record as Failed with the load balancer's answer
    instead, which fails the agent's step."""

    kind: Literal["TrafficStep"] = "TrafficStep"
    host: str
    call: Literal["block", "finish", "allow"] | None = None
    reason: str
    traffic: HostTraffic

    def writes(self) -> list[StoreWrite]:
        return [StoreWrite(traffic_key(self.host), self.traffic)]

    def describe(self) -> str:
        call = f" ({self.call})" if self.call else ""
        return f"{self.group}: {self.host} {self.traffic.step} {self.traffic.state.value}{call}: {self.reason}"


class CompleteLifecycleAction(_Action):
    """End the launch lifecycle action that holds a new Auto Scaling instance (docs/aws-fleet.md, "Auto Scaling
    lifecycle hooks"): CONTINUE once its agent runs the group's effective revision and is healthy, ABANDON when
    that deployment failed on it or the group's `autoScaling.timeout` passed. Writes nothing to the store: the shell
    calls `autoscaling:CompleteLifecycleAction`; completing twice is answered "No active Lifecycle Action", which
    the shell takes as done, so a crash anywhere repeats the call at most once."""

    kind: Literal["CompleteLifecycleAction"] = "CompleteLifecycleAction"
    instance_id: str
    #: The host the instance is (its registered agent's id, else the instance id).
    host: str
    auto_scaling_group: str
    lifecycle_hook: str
    result: Literal["CONTINUE", "ABANDON"]
    region: str | None = None
    reason: str

    def writes(self) -> list[StoreWrite]:
        return []

    def describe(self) -> str:
        return (
            f"{self.group}: {self.result} instance {self.instance_id} held by {self.auto_scaling_group}/"
            f"{self.lifecycle_hook}: {self.reason}"
        )


class RecordLifecycleHeartbeat(_Action):
    """Keep a held instance waiting: `autoscaling:RecordLifecycleActionHeartbeat`, so the hook's own heartbeat
    timeout does not apply its default result (ABANDON) to a slow install. Writes nothing; a lost one is harmless."""

    kind: Literal["RecordLifecycleHeartbeat"] = "RecordLifecycleHeartbeat"
    instance_id: str
    host: str
    auto_scaling_group: str
    lifecycle_hook: str
    region: str | None = None
    reason: str

    def writes(self) -> list[StoreWrite]:
        return []

    def describe(self) -> str:
        return (
            f"{self.group}: heartbeat for instance {self.instance_id} held by {self.auto_scaling_group}/"
            f"{self.lifecycle_hook}: {self.reason}"
        )


class RecordFleetEvents(_Action):
    """Record events that belong to no deployment (hosts that refused a command) in the fleet event log,
    `events/fleet.json` (reconciler/core/events.py). `group` is "fleet"."""

    kind: Literal["RecordFleetEvents"] = "RecordFleetEvents"
    #: How many events this write adds.
    events: int
    log: FleetEventLog

    def writes(self) -> list[StoreWrite]:
        return [StoreWrite(FLEET_EVENTS_KEY, self.log)]

    def describe(self) -> str:
        text = "; ".join(event.message for event in self.log.events[-self.events:])
        return f"fleet: {self.events} event(s) recorded: " + (text if len(text) <= 1000 else text[:999] + "…")


LifecycleCall = CompleteLifecycleAction | RecordLifecycleHeartbeat


BlockedCode = Literal[
    "NO_INSTANCES", "SUSPENDED", "QUARANTINED", "WAITING_FOR_HOSTS", "HEALTH_CONSTRAINTS", "STOPPING", "BAKING",
    "WAITING_FOR_TRAFFIC", "WAITING_FOR_ANALYSIS", "WAITING_FOR_ALARMS", "HOLDING_LAUNCH",
]


class Blocked(_Action):
    """Why a group that is not converged does not move this pass. Writes nothing."""

    kind: Literal["Blocked"] = "Blocked"
    code: BlockedCode
    reason: str
    deployment_id: str | None = None
    #: When waiting ends by itself (end of a bake), so callers can sleep until then.
    until: datetime | None = None

    def writes(self) -> list[StoreWrite]:
        return []

    def describe(self) -> str:
        return f"{self.group}: {self.code}: {self.reason}"


Action = Annotated[
    RecordDesired
    | StartDeployment
    | StartRollback
    | DispatchBatch
    | RewriteCommands
    | RecordHostResults
    | UpdateDeploymentStatus
    | FinishDeployment
    | MarkGroupRemoved
    | ClearStopRequest
    | TrafficStep
    | CompleteLifecycleAction
    | RecordLifecycleHeartbeat
    | RecordFleetEvents
    | Blocked,
    Field(discriminator="kind"),
]

ACTIONS_ADAPTER: TypeAdapter[list[Action]] = TypeAdapter(list[Action])


def actions_to_json(actions: list[Action]) -> list[dict[str, Any]]:
    """camelCase JSON, as in the store; the golden files and `plan --json` use this shape."""
    dumped: list[dict[str, Any]] = ACTIONS_ADAPTER.dump_python(actions, mode="json", by_alias=True, exclude_none=True)
    # The kind first: a reader scanning a golden file or `plan --json` sees what each action is at once.
    return [{"kind": item.pop("kind"), **item} for item in dumped]


def actions_from_json(data: Any) -> list[Action]:
    return ACTIONS_ADAPTER.validate_python(data)


def writes_of(actions: list[Action]) -> list[StoreWrite]:
    return [write for action in actions for write in action.writes()]
