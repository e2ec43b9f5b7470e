"""The plan model: what `compute_plan` returns and every renderer reads, serialised as camelCase JSON."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.alias_generators import to_camel

from contract.models import Revision

FORMAT_VERSION = 1

Kind = Literal["Application", "DeploymentGroup", "DeploymentConfig", "Notification"]
KIND_ORDER: dict[str, int] = {"Application": 0, "DeploymentConfig": 1, "DeploymentGroup": 2, "Notification": 3}


class PlanModel(BaseModel):
    """camelCase JSON like every other fleetshift document, frozen, strict about unknown fields.

    Not `contract.models.Model`: plans keep explicit nulls (an object added has `before: null`), which
    `Model.to_json` drops."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


# --------------------------------------------------------------------------------------------------
# The plan model


class RefInfo(PlanModel):
    ref: str
    commit: str | None = None
    #: Why this ref was chosen when it was not given ("merge base of HEAD and origin/main").
    note: str | None = None
    valid: bool = True
    errors: list[str] = []


class FieldChange(PlanModel):
    """One changed field; `path` is dotted from the object's spec (`revision.git.commit`), or starts with
    `metadata.` for labels and annotations. `before`/`after` are null when the field is absent on that side."""

    path: str
    before: JsonValue = None
    after: JsonValue = None


class ObjectChange(PlanModel):
    kind: Kind
    name: str
    change: Literal["added", "removed", "changed"]
    #: `file:line` of the document (at head; at base for a removed object).
    source: str | None = None
    fields: list[FieldChange] = []


class Batch(PlanModel):
    number: int
    hosts: list[str]
    zone: str | None = None
    canary: bool = False
    #: Quiet time the engine waits after this batch (canary bake, zone bake), when it waits.
    bake_after_seconds: float | None = None


class Quarantine(PlanModel):
    revision: str
    deployment_id: str
    reason: str


class InFlight(PlanModel):
    deployment_id: str
    status: str
    revision: str


class Estimate(PlanModel):
    seconds: float
    basis: str
    #: True when only the bake times are known (no history to time batches from): "at least".
    lower_bound: bool = False


class HealthCheckPlan(PlanModel):
    """The group's `healthCheck`: what each host GETs after ValidateService before it counts as succeeded."""

    #: As written, with {address} and {hostId} still in it (each host fills in its own).
    url: str
    expected_status: list[int]
    body_match: str | None = None
    interval_seconds: float
    min_healthy_seconds: float
    healthy_deadline_seconds: float


class AlarmsPlan(PlanModel):
    """The group's `alarmConfiguration`: the CloudWatch alarms a deployment watches."""

    alarms: list[str]
    enabled: bool
    ignore_poll_alarm_failure: bool
    #: autoRollback has DEPLOYMENT_STOP_ON_ALARM: a deployment stopped by an alarm is rolled back.
    rolls_back: bool


class AnalysisGatePlan(PlanModel):
    """One analysis gate and where this deployment meets it."""

    name: str
    address: str
    query: str
    success_condition: str
    count: int
    interval_seconds: float
    initial_delay_seconds: float
    failure_limit: int
    inconclusive_limit: int
    on_inconclusive: str
    #: As written: canary, batch, final.
    at: list[str]
    #: One run when every measurement is on time: initialDelay + (count - 1) x interval.
    run_seconds: float
    #: The checkpoints of this deployment it runs at ("after the canary batch", ...), from the engine's dry run;
    #: None when the plan has no batches to place them after.
    checkpoints: list[str] | None = None


class GateCheckpoint(PlanModel):
    """Where the engine's dry run stopped for gates: after batch `batch`, which gates, and how long it waited for
    them beyond any bake running meanwhile (gates and bakes overlap)."""

    batch: int
    where: str
    gates: list[str]
    wait_seconds: float


class MissingHost(PlanModel):
    """An instance EC2 lists for the group with no agent registered: a deployment counts it failed at its turn."""

    instance_id: str
    #: What EC2 says of it: "running since 2025-03-01T11:00:00+00:00 in eu-west-1a".
    description: str


class Ec2Plan(PlanModel):
    """EC2 membership of a group whose targets name ec2TagFilters, ec2TagSet or autoScalingGroups (issue 16)."""

    #: False offline (no store to match instances with agents) or when AWS could not be read (`error` says why).
    read: bool
    region: str | None = None
    error: str | None = None
    #: Instances expected to run an agent (pending or running, not leaving their Auto Scaling group), when read.
    expected: int | None = None
    missing: list[MissingHost] = []


def _absent(value: object) -> bool:
    return value is None


class GroupRollout(PlanModel):
    """What happens to one deployment group once the head commit is applied."""

    group: str
    #: deploy: a deployment starts; remove: the group leaves the manifests; settings: it changed but no
    #: deployment starts (rollback policy, config, options); blocked: a deployment is due but cannot start.
    action: Literal["deploy", "remove", "settings", "blocked"]
    #: True when the manifest change in this plan causes it (false: already pending in the store).
    from_change: bool = True
    reason: str
    revision_from: Revision | None = None
    revision_to: Revision | None = None
    deployment_config: str | None = None
    config_description: str | None = None
    minimum_healthy_hosts: int | None = None
    rollback_enabled: bool = False
    rollback_events: list[str] = []
    suspended: bool = False
    selector: str | None = None
    #: "store": hosts and batches from the registered fleet; "selectors": offline, from the manifests alone.
    basis: Literal["store", "selectors"] = "selectors"
    #: Every host the group targets (None offline when tag sets make the set unknowable).
    target_hosts: list[str] | None = None
    #: Hosts that will receive the revision, in scheduling order (a subset with updateOutdatedInstancesOnly).
    deploy_hosts: list[str] | None = None
    batches: list[Batch] | None = None
    offline_hosts: list[str] = []
    unhealthy_hosts: list[str] = []
    quarantined: list[Quarantine] = []
    in_flight: InFlight | None = None
    blocked: str | None = None
    #: How the engine's dry run ends when every online host succeeds: a failure here is a warning too.
    simulated_status: str | None = None
    simulated_error: str | None = None
    estimate: Estimate | None = None
    #: With trafficControl: each load balancer and how hosts map to its targets (reconciler/plan/traffic.py).
    traffic: list[str] | None = None
    #: Monitoring gates (docs/gates.md): the hosts' health check, the alarms watched, the analysis gates and the
    #: checkpoints where the dry run met them (reconciler/plan/gates.py).
    health_check: HealthCheckPlan | None = None
    alarms: AlarmsPlan | None = None
    analysis: list[AnalysisGatePlan] | None = None
    gate_checkpoints: list[GateCheckpoint] | None = None
    #: EC2 membership (missing hosts, or why it was not read); left out of the JSON for groups without EC2 targets,
    #: so their plans read exactly as before.
    ec2: Ec2Plan | None = Field(default=None, exclude_if=_absent)


WarningCode = Literal[
    "INVALID_BASE",
    "STORE_UNREACHABLE",
    "NO_HOSTS",
    "MINIMUM_HEALTHY_UNMET",
    "UNPINNED_REVISION",
    "IN_FLIGHT",
    "ROLLBACK_DISABLED",
    "QUARANTINED",
    "SUSPENDED",
    "MISSING_HOSTS",
    "EC2_NOT_READ",
]


class PlanWarning(PlanModel):
    code: WarningCode
    group: str | None = None
    message: str


class Plan(PlanModel):
    format_version: int = FORMAT_VERSION
    repository: str
    path: str
    base: RefInfo
    head: RefInfo
    #: "store": concrete hosts and batches; "offline": from selectors alone.
    fleet: Literal["store", "offline"]
    store: str | None = None
    fleet_note: str | None = None
    registered_hosts: int | None = None
    computed_at: datetime
    has_changes: bool
    changes: list[ObjectChange] = []
    rollouts: list[GroupRollout] = []
    warnings: list[PlanWarning] = []

    def counts(self) -> dict[str, int]:
        tally = Counter(change.change for change in self.changes)
        return {
            "added": tally["added"],
            "changed": tally["changed"],
            "removed": tally["removed"],
            "deployments": sum(1 for r in self.rollouts if r.action == "deploy"),
        }
