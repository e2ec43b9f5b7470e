"""The documents that travel through the store, and the revision sources shared with the manifests.

One home for every object in the store layout table of docs/design.md, so the reconciler (writer of commands,
deployments, groups, leases) and the agents (writers of registrations and status) can never drift apart. All
JSON is camelCase and carries `schemaVersion`; unknown fields are rejected so a typo in a hand-edited document
is an error rather than silently ignored.

Longer than this project's ~400-line guide on purpose: it is a catalogue of flat field declarations (no logic
beyond small validators), and one file is what keeps the two sides reading the same definitions.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from contract.vocabulary import (
    ALLOW_TRAFFIC,
    BLOCK_TRAFFIC,
    DEFAULT_EVENTS,
    HEALTH_CHECK,
    LIFECYCLE_EVENTS,
    MAX_REFUSALS,
    PREVIOUS_REVISION_EVENTS,
    SCHEMA_VERSION,
    TRAFFIC_CONTROL_EVENTS,
    TRAFFIC_STEPS,
    CommandStatus,
    CommandTargetsBehaviour,
    ConflictReason,
    EventStatus,
    FileExistsBehavior,
    LifecycleErrorCode,
    RevisionBehaviour,
    TagMatchBehaviour,
    TrafficStepState,
    group_key,
)

SHA1 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
SHA256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


#: Public names, including the vocabulary re-exported from contract/vocabulary.py (the reconciler imports
#: those from here, next to the records that use them).
__all__ = [
    "ALLOW_TRAFFIC",
    "BLOCK_TRAFFIC",
    "DEFAULT_EVENTS",
    "FLEET_EVENTS_KEPT",
    "HEALTH_CHECK",
    "LIFECYCLE_EVENTS",
    "MAX_REFUSALS",
    "PREVIOUS_REVISION_EVENTS",
    "SCHEMA_VERSION",
    "SHA1",
    "SHA256",
    "TRAFFIC_CONTROL_EVENTS",
    "TRAFFIC_STEPS",
    "AlarmCheck",
    "AppliedConfig",
    "CommandProgress",
    "CommandRefusal",
    "CommandStatus",
    "CommandTargets",
    "ConflictReason",
    "Deployment",
    "DeploymentAnalysis",
    "DeploymentStatus",
    "Document",
    "EventReport",
    "EventSeverity",
    "EventStatus",
    "EventType",
    "FileExistsBehavior",
    "FleetEventLog",
    "GateMeasurement",
    "GateResult",
    "GitLocation",
    "GroupState",
    "HostCommand",
    "HostConflict",
    "HostDeploymentState",
    "HostDeploymentStatus",
    "HostHealthCheck",
    "HostRegistration",
    "HostStatus",
    "HostTraffic",
    "InstalledRevision",
    "Lease",
    "LifecycleErrorCode",
    "LocalLocation",
    "MinimumHealthyHosts",
    "Model",
    "QuarantinedRevision",
    "RecordedEvent",
    "Revision",
    "S3Location",
    "StopRequest",
    "TagMatch",
    "TrafficStepState",
    "group_key",
]


class Model(BaseModel):
    """Base for every wire and manifest object: camelCase on the wire, strict about unknown fields."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode()


class Document(Model):
    """A top-level object stored under a key; `schemaVersion` lets either side refuse what it can't read."""

    schema_version: int = SCHEMA_VERSION


# --------------------------------------------------------------------------------------------------
# Revisions (shared by manifests, commands and reports)


class S3Location(Model):
    bucket: Annotated[str, StringConstraints(min_length=3, max_length=63)]
    key: Annotated[str, StringConstraints(min_length=1)]
    bundle_type: Literal["zip", "tar", "tgz"]
    version: str | None = None
    e_tag: str | None = Field(default=None, alias="eTag")


class GitLocation(Model):
    repository: Annotated[str, StringConstraints(min_length=1)]
    commit: SHA1 = Field(description="Full 40-character commit SHA; branches and tags are not reproducible.")


class LocalLocation(Model):
    path: Annotated[str, StringConstraints(min_length=1)]
    bundle_type: Literal["zip", "tar", "tgz", "directory"]


class Revision(RevisionBehaviour, Model):
    """Exactly one source. Identity is the location tuple, as in CodeDeploy (reference §6)."""

    s3: S3Location | None = None
    git: GitLocation | None = None
    local: LocalLocation | None = None
    sha256: SHA256 | None = Field(
        default=None, description="SHA-256 of the bundle file, checked before anything is extracted."
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        self.check_sources()
        return self


# --------------------------------------------------------------------------------------------------
# Written by agents: hosts/<host>/registration.json and hosts/<host>/status.json


class HostRegistration(Document):
    host_id: str
    #: The agent installation that owns this host id (random, kept in `<rootDir>/installation-id`). Two
    #: installations configured with one host id would otherwise overwrite each other's documents; the owner
    #: is who wrote this. None: written by an agent older than installation ids (still readable).
    installation_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    zone: str | None = None
    #: Where a load balancer reaches this host (agent.yaml `address`): IP targets, HAProxy servers, the
    #: traffic command provider. None: not given.
    address: str | None = None
    #: The EC2 instance id (agent.yaml `instanceId`), for ELBv2 target groups of target type `instance`.
    instance_id: str | None = None
    #: The AWS region the host runs in (agent.yaml `region`, on EC2 from the instance metadata), so EC2 is asked
    #: about an instance id in the right region. None: not given. A reconciler older than this field refuses
    #: registrations that carry it: upgrade the reconciler before the agents.
    region: str | None = None
    platform: str
    hostname: str
    agent_version: str
    registered_at: datetime


class EventReport(Model):
    name: str
    status: EventStatus = EventStatus.PENDING
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    error_code: LifecycleErrorCode | None = None
    message: str | None = None
    #: Last ~2 KB of script output, like CodeDeploy's console "log tail".
    log_tail: str | None = None


class CommandProgress(Model):
    """One command as the agent sees it, updated as each lifecycle event starts and ends."""

    deployment_id: str
    generation: int
    application: str
    deployment_group: str
    status: CommandStatus
    events: list[EventReport] = Field(default_factory=list)
    started_at: datetime
    ended_at: datetime | None = None
    message: str | None = None


class InstalledRevision(Model):
    """What a deployment group last installed successfully on this host."""

    application: str
    deployment_group: str
    revision: Revision
    deployment_id: str
    installed_at: datetime


class CommandRefusal(Model):
    """A signed document this agent would not act on (docs/trust.md): what it was and why. Nothing of its
    content is repeated here, since none of it can be believed."""

    at: datetime
    #: The store key and the version of the object refused.
    key: str
    version: str
    reason: str


class HostStatus(Document):
    host_id: str
    heartbeat_at: datetime
    agent_version: str
    #: The installation that wrote this status; differing from the registration's means two installations
    #: share the host id. None: written by an agent older than installation ids.
    installation_id: str | None = None
    #: When the agent process writing this status started (names it in a host-id conflict message).
    started_at: datetime | None = None
    #: Key `<application>/<deploymentGroup>`: the last successful install of each group on this host.
    installed: dict[str, InstalledRevision] = Field(default_factory=dict)
    #: The command in progress, or the last one finished (so the reconciler can read its result).
    command: CommandProgress | None = None
    #: Seconds between heartbeats while idle, so the reconciler can judge liveness per host.
    heartbeat_interval_seconds: float = 60.0
    #: Commands and traffic records refused since the agent started (forged, altered, replayed), newest last.
    refusals: list[CommandRefusal] = Field(default_factory=list, max_length=MAX_REFUSALS)
    refused_total: int = 0
    #: Whether this agent checks signatures (agent.yaml `commandSigning`): a fleet can see which hosts still
    #: run anything the store says.
    verifies_signatures: bool = False


class HostConflict(Document):
    """`hosts/<host>/conflicts/<installation>.json`, written only by that installation: it could not use the
    host id because another installation owns it. The agent that lost exits and never writes the host's
    registration or status, so without this record nothing in the store would show that a machine is not
    being deployed to; `reconcile status` reads it. Rewritten with `resolvedAt` when that installation later
    owns the host id (agents are not allowed to delete objects, see examples/iam/agent-policy.json)."""

    host_id: str
    installation_id: str
    hostname: str
    reason: ConflictReason
    detected_at: datetime
    #: The installation that owns the host id (None: an agent older than installation ids).
    other_installation_id: str | None = None
    other_hostname: str | None = None
    message: str
    resolved_at: datetime | None = None


# --------------------------------------------------------------------------------------------------
# Written by the reconciler: commands/<host>.json


class HostHealthCheck(Model):
    """The group's `healthCheck` as one host runs it (docs/gates.md): the URL already resolved for this host.

    From the end of ValidateService, a GET every `interval_seconds`: failures are tolerated until the first check
    passes (the service may still be warming up); from then on every check must pass for `min_healthy_seconds`
    (one failure in that window fails the host: it flapped). Not healthy for `min_healthy_seconds` by
    `healthy_deadline_seconds` after ValidateService: failed. The agent's side (redirects not followed, the
    body read up to 64 KiB, what is reported): agent/lifecycle/health_check.py and docs/agent.md."""

    url: str
    #: A check passes when the status is one of these and, if set, the body matches `body_match` (a regex).
    expected_status: list[int] = Field(default_factory=lambda: [200])
    body_match: str | None = None
    interval_seconds: float = Field(default=2.0, gt=0)
    timeout_seconds: float = Field(default=2.0, gt=0)
    min_healthy_seconds: float = Field(default=10.0, ge=0)
    healthy_deadline_seconds: float = Field(default=300.0, gt=0)


class TagMatch(TagMatchBehaviour, Model):
    """One of a group's tag filters, as a command carries it (the manifest's `TagFilter`, in the contract)."""

    key: str | None = None
    value: str | None = None
    type: Literal["KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE"] = "KEY_AND_VALUE"


class CommandTargets(CommandTargetsBehaviour, Model):
    """Why the reconciler counts the host in the group, for the agent to check against its own settings.

    Group membership is decided from what hosts registered in the store, which agents do not sign: without this,
    somebody who can write the store could rewrite a host's registration (its tags) into another group, and the
    reconciler would sign that group's deployment for it (docs/trust.md, "Membership"). The agent refuses a
    command whose targets its own host id, tags and instance id do not match."""

    tag_sets: list[list[TagMatch]] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    #: The EC2 instance the reconciler deploys to when AWS decided the membership (ec2 tags, Auto Scaling).
    instance_id: str | None = None


class HostCommand(Document):
    """What one host must do next. A new `generation` (strictly increasing per host) is a new command."""

    host_id: str
    generation: int
    deployment_id: str
    application: str
    deployment_group: str
    deployment_group_id: str
    revision: Revision
    events: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENTS))
    file_exists_behavior: FileExistsBehavior | None = None
    ignore_application_stop_failures: bool = False
    is_rollback: bool = False
    #: The agent fails the command itself past this, as a backstop to the reconciler's per-host timeout.
    timeout_seconds: float | None = None
    #: Set when the group has a `healthCheck`; then `events` includes HEALTH_CHECK after ValidateService.
    health_check: HostHealthCheck | None = None
    #: Why the host is in the group (see CommandTargets); None: written by a reconciler older than this field.
    targets: CommandTargets | None = None
    #: For groups with trafficControl: the address and instance id the reconciler takes out of (and puts back into)
    #: the load balancers, as registered; the agent refuses the command when they are not its own, since it is
    #: about to stop a service that would then still be in rotation.
    traffic_address: str | None = None
    traffic_instance_id: str | None = None
    created_at: datetime


class HostTraffic(Document):
    """`traffic/<host>.json`, written by the reconciler: the last traffic step it took for the host, read by the
    agent while its command waits at BlockTraffic or AllowTraffic (docs/traffic.md).

    A step belongs to one command `generation`, so the agent never takes a step recorded for an older command
    as done for its own. `repair` marks an AllowTraffic the reconciler took on its own to put a healthy, idle
    host back after a crash or a stop left it out of its load balancers."""

    host_id: str
    generation: int
    deployment_id: str
    group: str
    step: Literal["BlockTraffic", "AllowTraffic"]
    state: TrafficStepState
    started_at: datetime
    ended_at: datetime | None = None
    #: What the load balancers said, in their own terms ("haproxy web/host-1: drained, 0 sessions, in 1.2 s").
    message: str | None = None
    repair: bool = False


class AppliedConfig(Document):
    """`config/applied.json`, written by the reconciler after a pass applied a config commit: where
    `repository.verify: strict` starts checking the next one (docs/trust.md, "Verified commits")."""

    commit: str
    ref: str
    applied_at: datetime
    #: The verification mode the commit passed ("none" when none was asked for).
    verified: str = "none"


# --------------------------------------------------------------------------------------------------
# Written by the reconciler: deployments/<id>.json, groups/<app>/<group>.json, leases/reconciler.json


class DeploymentStatus(StrEnum):
    CREATED = "Created"
    IN_PROGRESS = "InProgress"
    BAKING = "Baking"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"
    SUPERSEDED = "Superseded"

    @property
    def finished(self) -> bool:
        return self in {
            DeploymentStatus.SUCCEEDED,
            DeploymentStatus.FAILED,
            DeploymentStatus.STOPPED,
            DeploymentStatus.SUPERSEDED,
        }


class HostDeploymentStatus(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class HostDeploymentState(Model):
    status: HostDeploymentStatus = HostDeploymentStatus.PENDING
    batch: int | None = None
    generation: int | None = None
    dispatched_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    #: With traffic control: how long the host was out of its load balancers (BlockTraffic's start to
    #: AllowTraffic's end, or to the end of its command when it failed in between), as its agent reported.
    out_of_service_seconds: float | None = None
    #: Why the host left the deployment for good (its EC2 instance terminated: scale-in). Such a host is Skipped
    #: and no longer counted in the deployment's size, so a scale-in never fails a deployment (docs/aws-fleet.md).
    left_group: str | None = None


class EventSeverity(StrEnum):
    """How much an on-call engineer should care, lowest first (notifications filter on `minSeverity`)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(EventSeverity).index(self)


class EventType(StrEnum):
    """Every kind of event in the stream (docs/events.md has the table). The names are a public interface:
    notification triggers and users' tooling match on them, so one is never renamed or removed."""

    DEPLOYMENT_STARTED = "deployment.started"
    ROLLBACK_STARTED = "rollback.started"
    BATCH_STARTED = "batch.started"
    HOST_SUCCEEDED = "host.succeeded"
    HOST_FAILED = "host.failed"
    HOST_LEFT = "host.left"
    HOST_MISSING = "host.missing"
    GATE_PASSED = "gate.passed"
    GATE_FAILED = "gate.failed"
    GATE_INCONCLUSIVE = "gate.inconclusive"
    DEPLOYMENT_BAKING = "deployment.baking"
    DEPLOYMENT_SUCCEEDED = "deployment.succeeded"
    DEPLOYMENT_FAILED = "deployment.failed"
    DEPLOYMENT_STOPPED = "deployment.stopped"
    DEPLOYMENT_SUPERSEDED = "deployment.superseded"
    ROLLBACK_SUCCEEDED = "rollback.succeeded"
    ROLLBACK_FAILED = "rollback.failed"
    REVISION_QUARANTINED = "revision.quarantined"
    COMMAND_REFUSED = "command.refused"


class RecordedEvent(Model):
    """One event as the reconciler records it, inside the document whose change it reports (the deployment's own
    record, or the fleet event log): written by the same compare-and-swap as that change, so it exists exactly
    when the change does (docs/events.md, "Exactly once"). What the document already says (group, revision,
    commit) is not repeated here; `reconcile events` and notifications add it back."""

    #: 1, 2, 3 … within its document, never reused: the event's id is `<document id>.<seq>`.
    seq: int = Field(ge=1)
    type: EventType
    severity: EventSeverity
    #: When the reconciler recorded it (the pass's time).
    at: datetime
    #: Its place among the events the same pass recorded (0, 1, 2 … across every document of the pass), so events
    #: that share `at` sort in the order the pass decided them: a deployment's failure before its rollback's start.
    order: int = Field(default=0, ge=0)
    host: str | None = None
    #: For `batch.started`: the batch's hosts.
    hosts: list[str] | None = None
    #: 0-based batch index, for batch and host events.
    batch: int | None = None
    gate: str | None = None
    checkpoint: str | None = None
    #: When what it reports happened, where that differs from `at` (a host's end as its agent reported it, a
    #: gate's measurement time, a refusal's time on the host).
    occurred_at: datetime | None = None
    message: str


class MinimumHealthyHosts(Model):
    type: Literal["HOST_COUNT", "FLEET_PERCENT"]
    value: int = Field(ge=0)


class Deployment(Document):
    deployment_id: str
    application: str
    deployment_group: str
    revision: Revision
    #: Config-repo commit the desired revision came from; ties a deployment to a reviewable change.
    source_commit: str | None = None
    deployment_config: str
    status: DeploymentStatus = DeploymentStatus.CREATED
    #: "user" (a manifest change), "rollback", or "outdated" (catch-up of hosts that joined later).
    creator: Literal["user", "rollback", "outdated"] = "user"
    rollback_of: str | None = None
    hosts: dict[str, HostDeploymentState] = Field(default_factory=dict)
    batches: list[list[str]] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: What happened to this deployment, in order, each written with the change it reports (docs/events.md).
    events: list[RecordedEvent] = Field(default_factory=list)


class QuarantinedRevision(Model):
    revision: Revision
    source_commit: str | None = None
    deployment_id: str
    reason: str
    since: datetime


class StopRequest(Model):
    """Set by `reconcile stop GROUP [--rollback]`; the next pass stops the deployment in flight."""

    rollback: bool = False
    requested_at: datetime
    deployment_id: str | None = None


class GroupState(Document):
    application: str
    deployment_group: str
    desired_revision: Revision | None = None
    desired_commit: str | None = None
    #: Last good revision: what a rollback goes back to and what late-joining hosts receive.
    effective_revision: Revision | None = None
    effective_commit: str | None = None
    deployment_in_flight: str | None = None
    quarantined: list[QuarantinedRevision] = Field(default_factory=list)
    history: list[str] = Field(default_factory=list)
    removed: bool = False
    stop_request: StopRequest | None = None
    updated_at: datetime


# --------------------------------------------------------------------------------------------------
# Written by the reconciler: analysis/<deployment id>.json (docs/gates.md)


class GateResult(StrEnum):
    """One measurement of an analysis gate, in Argo Rollouts' words."""

    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    #: The query could not be run, returned no data or a value that is not a number: nothing is known about
    #: the service, so it counts apart from Failed and the gate's `onInconclusive` policy decides.
    INCONCLUSIVE = "Inconclusive"


class GateMeasurement(Model):
    """One query of one gate at one checkpoint of a deployment: observed data, recorded so that a run of `count`
    measurements spans passes (and `reconcile --once` processes)."""

    gate: str
    #: `batch-<n>`: the checkpoint after batch n (n = 0 is the canary batch when the config has a canary).
    checkpoint: str
    index: int = Field(ge=0)
    due_at: datetime
    measured_at: datetime
    result: GateResult
    #: The value the condition was judged on (the worst series' value); None when there was none.
    value: float | None = None
    #: What was measured and why it is that result, in the user's words ("error rate 0.213 is not < 0.01 on
    #: web-1"; "the query could not be run: connection refused").
    message: str
    #: The query as sent (variables filled in), bounded.
    query: str | None = None


class AlarmCheck(Model):
    """The last read of a group's CloudWatch alarms while its deployment ran."""

    checked_at: datetime
    state: Literal["OK", "ALARM", "ERROR"]
    #: Names of the alarms in ALARM (state ALARM), or that could not be read (state ERROR).
    alarms: list[str] = Field(default_factory=list)
    message: str


class DeploymentAnalysis(Document):
    """Everything the gates of one deployment measured: read back as observed data by every later pass, shown by
    `reconcile status` and `history`. One writer: the reconciler holding the lease."""

    deployment_id: str
    application: str
    deployment_group: str
    measurements: list[GateMeasurement] = Field(default_factory=list)
    alarms: AlarmCheck | None = None
    updated_at: datetime


class Lease(Document):
    holder: str
    acquired_at: datetime
    expires_at: datetime


# --------------------------------------------------------------------------------------------------
# Written by the reconciler: events/fleet.json (docs/events.md)

#: How many events the fleet event log keeps; older ones are dropped (a notification that fell further behind
#: reports how many it missed).
FLEET_EVENTS_KEPT = 500


class FleetEventLog(Document):
    """Events that belong to no deployment (a host that refused a command): the one log of them, bounded to the
    last `FLEET_EVENTS_KEPT`. One writer: the reconciler holding the lease, by compare-and-swap."""

    #: The seq of the last event ever recorded (events keep their seq when older ones are dropped).
    last_seq: int = 0
    events: list[RecordedEvent] = Field(default_factory=list)
    #: Host -> the refusals it reports now that are already recorded (`<at>|<key>|<version>` each, at most its last
    #: `MAX_REFUSALS`): a refusal is recorded once, although the host keeps reporting its last few in every status.
    #: Keyed on the refusal itself, not on the host's clock, which may jump back. Hosts that report none are dropped.
    refusals_seen: dict[str, list[str]] = Field(default_factory=dict)
    #: Host -> its `refusedTotal` when last read: more refusals than it lists between two reads are counted.
    refused_totals: dict[str, int] = Field(default_factory=dict)
    updated_at: datetime
