"""The agent's records: msgspec structs made from contract/models.py by contract/wiregen.py. Do not edit.

Each reads and writes the same JSON as the pydantic model of the same name; what each field means is documented
there. Regenerate with `python -m contract.wiregen` (tests/store/test_wire.py fails while this file is stale).
"""

# ruff: noqa: E501
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from contract.vocabulary import (
    CommandStatus,
    CommandTargetsBehaviour,
    ConflictReason,
    EventStatus,
    FileExistsBehavior,
    LifecycleErrorCode,
    RevisionBehaviour,
    TagMatchBehaviour,
    TrafficStepState,
)
from contract.wirebase import WireDocument, WireRecord


class S3Location(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bucket: Annotated[str, msgspec.Meta(min_length=3, max_length=63)]
    key: Annotated[str, msgspec.Meta(min_length=1)]
    bundle_type: Literal['zip', 'tar', 'tgz'] = msgspec.field(name='bundleType')
    version: str | None = None
    e_tag: str | None = msgspec.field(default=None, name='eTag')


class GitLocation(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    repository: Annotated[str, msgspec.Meta(min_length=1)]
    commit: Annotated[str, msgspec.Meta(pattern='^[0-9a-f]{40}\\Z')]


class LocalLocation(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: Annotated[str, msgspec.Meta(min_length=1)]
    bundle_type: Literal['zip', 'tar', 'tgz', 'directory'] = msgspec.field(name='bundleType')


class Revision(RevisionBehaviour, WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    s3: S3Location | None = None
    git: GitLocation | None = None
    local: LocalLocation | None = None
    sha256: Annotated[str, msgspec.Meta(pattern='^[0-9a-f]{64}\\Z')] | None = None

    def __post_init__(self) -> None:
        self.check_sources()


class HostHealthCheck(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str
    expected_status: list[int] = msgspec.field(default_factory=lambda: [200], name='expectedStatus')
    body_match: str | None = msgspec.field(default=None, name='bodyMatch')
    interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = msgspec.field(default=2.0, name='intervalSeconds')
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = msgspec.field(default=2.0, name='timeoutSeconds')
    min_healthy_seconds: Annotated[float, msgspec.Meta(ge=0)] = msgspec.field(default=10.0, name='minHealthySeconds')
    healthy_deadline_seconds: Annotated[float, msgspec.Meta(gt=0)] = msgspec.field(default=300.0, name='healthyDeadlineSeconds')


class TagMatch(TagMatchBehaviour, WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: str | None = None
    value: str | None = None
    type: Literal['KEY_ONLY', 'VALUE_ONLY', 'KEY_AND_VALUE'] = 'KEY_AND_VALUE'


class CommandTargets(CommandTargetsBehaviour, WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tag_sets: list[list[TagMatch]] = msgspec.field(default_factory=list, name='tagSets')
    hosts: list[str] = msgspec.field(default_factory=list)
    instance_id: str | None = msgspec.field(default=None, name='instanceId')


class HostCommand(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host_id: str = msgspec.field(name='hostId')
    generation: int
    deployment_id: str = msgspec.field(name='deploymentId')
    application: str
    deployment_group: str = msgspec.field(name='deploymentGroup')
    deployment_group_id: str = msgspec.field(name='deploymentGroupId')
    revision: Revision
    events: list[str] = msgspec.field(default_factory=lambda: ['ApplicationStop', 'DownloadBundle', 'BeforeInstall', 'Install', 'AfterInstall', 'ApplicationStart', 'ValidateService'])
    file_exists_behavior: FileExistsBehavior | None = msgspec.field(default=None, name='fileExistsBehavior')
    ignore_application_stop_failures: bool = msgspec.field(default=False, name='ignoreApplicationStopFailures')
    is_rollback: bool = msgspec.field(default=False, name='isRollback')
    timeout_seconds: float | None = msgspec.field(default=None, name='timeoutSeconds')
    health_check: HostHealthCheck | None = msgspec.field(default=None, name='healthCheck')
    targets: CommandTargets | None = None
    traffic_address: str | None = msgspec.field(default=None, name='trafficAddress')
    traffic_instance_id: str | None = msgspec.field(default=None, name='trafficInstanceId')
    created_at: datetime = msgspec.field(name='createdAt')


class InstalledRevision(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    application: str
    deployment_group: str = msgspec.field(name='deploymentGroup')
    revision: Revision
    deployment_id: str = msgspec.field(name='deploymentId')
    installed_at: datetime = msgspec.field(name='installedAt')


class EventReport(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    status: EventStatus = EventStatus.PENDING
    started_at: datetime | None = msgspec.field(default=None, name='startedAt')
    ended_at: datetime | None = msgspec.field(default=None, name='endedAt')
    exit_code: int | None = msgspec.field(default=None, name='exitCode')
    error_code: LifecycleErrorCode | None = msgspec.field(default=None, name='errorCode')
    message: str | None = None
    log_tail: str | None = msgspec.field(default=None, name='logTail')


class CommandProgress(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    deployment_id: str = msgspec.field(name='deploymentId')
    generation: int
    application: str
    deployment_group: str = msgspec.field(name='deploymentGroup')
    status: CommandStatus
    events: list[EventReport] = msgspec.field(default_factory=list)
    started_at: datetime = msgspec.field(name='startedAt')
    ended_at: datetime | None = msgspec.field(default=None, name='endedAt')
    message: str | None = None


class CommandRefusal(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True):
    at: datetime
    key: str
    version: str
    reason: str


class HostStatus(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host_id: str = msgspec.field(name='hostId')
    heartbeat_at: datetime = msgspec.field(name='heartbeatAt')
    agent_version: str = msgspec.field(name='agentVersion')
    installation_id: str | None = msgspec.field(default=None, name='installationId')
    started_at: datetime | None = msgspec.field(default=None, name='startedAt')
    installed: dict[str, InstalledRevision] = msgspec.field(default_factory=dict)
    command: CommandProgress | None = None
    heartbeat_interval_seconds: float = msgspec.field(default=60.0, name='heartbeatIntervalSeconds')
    refusals: Annotated[list[CommandRefusal], msgspec.Meta(max_length=5)] = msgspec.field(default_factory=list)
    refused_total: int = msgspec.field(default=0, name='refusedTotal')
    verifies_signatures: bool = msgspec.field(default=False, name='verifiesSignatures')


class HostRegistration(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host_id: str = msgspec.field(name='hostId')
    installation_id: str | None = msgspec.field(default=None, name='installationId')
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    zone: str | None = None
    address: str | None = None
    instance_id: str | None = msgspec.field(default=None, name='instanceId')
    region: str | None = None
    platform: str
    hostname: str
    agent_version: str = msgspec.field(name='agentVersion')
    registered_at: datetime = msgspec.field(name='registeredAt')


class HostConflict(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host_id: str = msgspec.field(name='hostId')
    installation_id: str = msgspec.field(name='installationId')
    hostname: str
    reason: ConflictReason
    detected_at: datetime = msgspec.field(name='detectedAt')
    other_installation_id: str | None = msgspec.field(default=None, name='otherInstallationId')
    other_hostname: str | None = msgspec.field(default=None, name='otherHostname')
    message: str
    resolved_at: datetime | None = msgspec.field(default=None, name='resolvedAt')


class HostTraffic(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host_id: str = msgspec.field(name='hostId')
    generation: int
    deployment_id: str = msgspec.field(name='deploymentId')
    group: str
    step: Literal['BlockTraffic', 'AllowTraffic']
    state: TrafficStepState
    started_at: datetime = msgspec.field(name='startedAt')
    ended_at: datetime | None = msgspec.field(default=None, name='endedAt')
    message: str | None = None
    repair: bool = False
