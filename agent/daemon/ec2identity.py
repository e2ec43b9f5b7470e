"""The agent's identity on EC2 (issue 16): which identity settings the instance metadata service fills in,
and when not getting an answer must stop the agent from starting.

Where it sits: `deploy-agent run` (agent/daemon/cli.py) calls `resolve_identity` once, after agent.yaml, the
environment and the flags are read and before the agent registers. The agent itself only ever sees settings.
`metadata_plan` (whether and where to ask) and `apply_metadata` (what the answer fills in) are pure; only
`resolve_identity` reads the machine and the network, and logs.

The rules, for an operator coming from CodeDeploy on EC2 (docs/aws-fleet.md, "The agent on EC2"):
- `ec2.metadata: auto` (the default) asks IMDSv2 wherever this may be an EC2 instance, with one-second
  timeouts. A machine whose firmware names another vendor (DMI) is not asked at all, so on-premises hosts
  make no AWS call. `required` refuses to start without an answer; `disabled` never asks.
  `AWS_EC2_METADATA_DISABLED=true`, the AWS SDKs' switch, counts as `disabled`.
- The answer fills only what the settings leave unset: `zone` (the availability zone, so zonal rollouts
  need no configuration), `instanceId`, `address` (the private IPv4), `region`; instance-metadata tags go
  under agent.yaml's tags, which win key by key. A value set anywhere, even to null, is kept.
- `hostId: auto` is the instance id on EC2 (how CodeDeploy names EC2 instances) and the short host name
  elsewhere. An unset hostId stays the short host name, also on EC2: switching an upgraded agent's id
  would leave its registration behind as an offline host, make its deployment root refuse to start (it
  belongs to the old id), and break S3 policies keyed on the host id (examples/iam). `hostId: auto` never
  falls back to the host name on a machine known to be an EC2 instance: that would give the host another
  id for as long as IMDS did not answer, so the agent refuses to start instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from agent.daemon.imds import (
    DEFAULT_ENDPOINT,
    ImdsClient,
    InstanceMetadata,
    MetadataError,
    MetadataUnreachable,
    endpoint_from_environment,
    endpoint_problem,
)
from agent.settings import AUTO_HOST_ID, AgentSettings, default_host_id

log = structlog.get_logger("agent.daemon.ec2identity")

#: Firmware facts (DMI, world-readable, also inside containers) that tell an EC2 instance from other machines
#: without any network: Nitro instances say "Amazon EC2", Xen-based ones carry "amazon" in the BIOS version
#: and an "ec2" hypervisor UUID (the checks cloud-init's ds-identify makes).
DMI_FILES: Mapping[str, Path] = {
    "sys_vendor": Path("/sys/devices/virtual/dmi/id/sys_vendor"),
    "bios_version": Path("/sys/devices/virtual/dmi/id/bios_version"),
    "hypervisor_uuid": Path("/sys/hypervisor/uuid"),
}


class Platform(StrEnum):
    EC2 = "ec2"
    #: The firmware names another vendor: a server, a VM elsewhere, another cloud.
    OTHER = "other"
    #: No firmware facts (some containers, non-Linux systems): only asking IMDS can tell.
    UNKNOWN = "unknown"


class IdentityError(Exception):
    """The agent must not start with this identity; the message says why and what to change."""


@dataclass(frozen=True)
class MetadataPlan:
    """Whether to ask IMDS, where, and whether no answer stops the start-up; `why` is for the log."""

    ask: bool
    endpoint: str
    must_answer: bool
    why: str


def platform_from_dmi(facts: Mapping[str, str | None]) -> Platform:
    """EC2, another machine, or unknown, from the DMI_FILES texts (None: unreadable)."""
    vendor = (facts.get("sys_vendor") or "").strip()
    if (vendor == "Amazon EC2" or "amazon" in (facts.get("bios_version") or "").lower()
            or (facts.get("hypervisor_uuid") or "").strip().lower().startswith("ec2")):
        return Platform.EC2
    # A Xen guest without the other facts may be an older EC2 instance: let IMDS tell.
    if vendor and vendor.lower() != "xen":
        return Platform.OTHER
    return Platform.UNKNOWN


def read_platform() -> Platform:
    facts: dict[str, str | None] = {}
    for name, path in DMI_FILES.items():
        try:
            facts[name] = path.read_text(encoding="utf-8", errors="replace")[:256]
        except OSError:
            facts[name] = None
    return platform_from_dmi(facts)


def metadata_disabled_by_environment(environ: Mapping[str, str]) -> bool:
    """AWS_EC2_METADATA_DISABLED=true, as the AWS SDKs read it."""
    return environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true"


def metadata_plan(settings: AgentSettings, environ: Mapping[str, str], platform: Platform) -> MetadataPlan:
    """Whether to ask IMDS (see the module's rules). Raises IdentityError for settings that contradict."""
    mode = settings.ec2.metadata
    from_environment = endpoint_from_environment(environ)
    endpoint = settings.ec2.endpoint or from_environment or DEFAULT_ENDPOINT
    configured = settings.ec2.endpoint is not None or from_environment is not None
    if metadata_disabled_by_environment(environ):
        if mode == "required":
            raise IdentityError(
                "ec2.metadata is required, but AWS_EC2_METADATA_DISABLED=true turns the instance metadata service "
                "off for this process: unset the variable or set ec2.metadata to auto or disabled")
        return MetadataPlan(False, endpoint, False, "AWS_EC2_METADATA_DISABLED=true")
    if mode == "disabled":
        return MetadataPlan(False, endpoint, False, "ec2.metadata: disabled")
    # The SDKs' variable is checked where it is used; agent.yaml's endpoint was checked with the settings.
    problem = endpoint_problem(endpoint) if settings.ec2.endpoint is None and from_environment else None
    if problem is not None:
        raise IdentityError(f"AWS_EC2_METADATA_SERVICE_ENDPOINT: {problem}")
    if mode == "required":
        return MetadataPlan(True, endpoint, True, "ec2.metadata: required")
    if platform is Platform.OTHER and not configured:
        return MetadataPlan(False, endpoint, False, "not an EC2 instance (its firmware names another vendor)")
    must = platform is Platform.EC2 and settings.host_id == AUTO_HOST_ID
    why = "an EC2 instance (DMI)" if platform is Platform.EC2 else "may be an EC2 instance"
    return MetadataPlan(True, endpoint, must, why)


def apply_metadata(settings: AgentSettings, metadata: InstanceMetadata | None, *, hostname: str) -> AgentSettings:
    """The settings with what IMDS said filled in where they leave it unset, and `hostId: auto` replaced
    (the instance id, or `hostname` without metadata)."""
    explicit = settings.given_fields
    update: dict[str, object] = {}
    if settings.host_id == AUTO_HOST_ID:
        update["host_id"] = metadata.instance_id if metadata is not None else hostname
    if metadata is not None:
        found = {"zone": metadata.availability_zone, "instance_id": metadata.instance_id,
                 "address": metadata.local_ipv4, "region": metadata.region}
        update |= {name: value for name, value in found.items() if name not in explicit and value is not None}
        if metadata.tags:
            update["tags"] = {**metadata.tags, **settings.tags}
    return settings.model_copy(update=update)


def resolve_identity(settings: AgentSettings, environ: Mapping[str, str], platform: Platform) -> AgentSettings:
    """Ask IMDS when the plan says so and return the settings the agent runs with. Raises IdentityError when
    the agent must not start (metadata required but unavailable, hostId: auto without an answer on EC2)."""
    plan = metadata_plan(settings, environ, platform)
    hostname = default_host_id()
    metadata: InstanceMetadata | None = None
    if plan.ask:
        try:
            metadata = ImdsClient(plan.endpoint).read()
        except MetadataError as exc:
            if plan.must_answer:
                raise IdentityError(_refusal(settings, plan, exc)) from None
            if platform is Platform.EC2:
                log.warning("ec2.metadata_unavailable", endpoint=plan.endpoint, error=str(exc),
                            hint="zone, instanceId, address, region and EC2 tags are not filled in; set them in "
                            "agent.yaml, fix the metadata service, or set ec2.metadata: disabled")
            elif isinstance(exc, MetadataUnreachable):
                log.info("ec2.not_an_instance", endpoint=plan.endpoint, reason=str(exc))
            else:  # something answers, but not as IMDSv2: worth a look, not a stop
                log.warning("ec2.metadata_refused", endpoint=plan.endpoint, error=str(exc))
    else:
        log.debug("ec2.metadata_not_asked", why=plan.why)
    if metadata is None and settings.host_id == AUTO_HOST_ID and platform is Platform.EC2:
        raise IdentityError(
            f"hostId is auto, which is the instance id on EC2, but this EC2 instance's metadata is not read "
            f"({plan.why}); the host name {hostname!r} would give it another id. Let the agent ask "
            "(ec2.metadata: auto, AWS_EC2_METADATA_DISABLED unset) or set hostId explicitly")
    resolved = apply_metadata(settings, metadata, hostname=hostname)
    if metadata is not None:
        log.info("ec2.identity", endpoint=plan.endpoint, instance_id=metadata.instance_id,
                 zone=metadata.availability_zone, region=metadata.region, address=metadata.local_ipv4,
                 tags=sorted(metadata.tags) if metadata.tags is not None else "not enabled",
                 host_id=resolved.host_id)
        if "host_id" not in settings.given_fields and resolved.host_id != metadata.instance_id:
            log.info("ec2.host_name_kept", host_id=resolved.host_id, instance_id=metadata.instance_id,
                     hint="hostId is unset, so this host keeps its host name as its id; set hostId: auto to use the "
                     "instance id as CodeDeploy does (a new id: see docs/aws-fleet.md)")
    return resolved


def _refusal(settings: AgentSettings, plan: MetadataPlan, error: MetadataError) -> str:
    if settings.ec2.metadata == "required":
        why = "ec2.metadata is required"
    else:
        why = "hostId is auto on an EC2 instance, and its id comes from the instance metadata"
    return (f"{why}, but it could not be read: {error}. Set ec2.metadata: disabled and give hostId, zone "
            "and instanceId in agent.yaml to run without it")
