"""Reading golden scenarios: `desired.yaml`, `observed.json`, `state.json` -> (Desired, Observed, State, now).

The JSON files are the store's documents with a few shorthands so a scenario stays readable (see
scenarios/README.md): a revision written as a string is a local zip bundle at that path, a time written as
"-30s" is relative to the pass's `now`, and documents sit in maps keyed by their id so boilerplate (ids,
application and group names, timestamps) is filled in.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from contract.durations import parse_duration
from contract.models import (
    CommandProgress,
    Deployment,
    GroupState,
    HostCommand,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
)
from reconciler.core import (
    CoreSettings,
    Ec2Instance,
    Ec2Membership,
    HeldLaunch,
    Observed,
    State,
    deployment_group_id,
)
from reconciler.desired.loader import load_files
from reconciler.desired.manifests import ONE_AT_A_TIME, Desired
from reconciler.desired.sources import ManifestFile

REVISION_FIELDS = {"revision", "desiredRevision", "effectiveRevision"}


def revision(value: Any) -> Any:
    if isinstance(value, str):
        return {"local": {"path": value, "bundleType": "zip"}}
    return value


def when(value: Any, now: datetime) -> Any:
    if isinstance(value, str) and value[:1] in "+-":
        delta = parse_duration(value[1:])
        return now - delta if value[0] == "-" else now + delta
    return value


def _expand(value: Any, now: datetime) -> Any:
    """Recursively apply the shorthands to a document."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            expanded = revision(item) if key in REVISION_FIELDS else item
            if isinstance(expanded, str) and (key.endswith("At") or key == "since"):
                expanded = when(expanded, now)
            out[key] = _expand(expanded, now)
        return out
    if isinstance(value, list):
        return [_expand(item, now) for item in value]
    return value


def _split(group: str) -> tuple[str, str]:
    application, name = group.split("/", 1)
    return application, name


def load_state(data: dict[str, Any], now: datetime) -> State:
    groups: dict[str, GroupState] = {}
    for key, raw in data.get("groups", {}).items():
        application, name = _split(key)
        doc = {"application": application, "deploymentGroup": name, "updatedAt": now, **_expand(raw, now)}
        groups[key] = GroupState.model_validate(doc)
    deployments: dict[str, Deployment] = {}
    for deployment_id, given in data.get("deployments", {}).items():
        raw = dict(given)
        application, name = _split(raw.pop("group"))
        hosts = {
            host: ({"status": value} if isinstance(value, str) else value)
            for host, value in raw.pop("hosts", {}).items()
        }
        doc = {
            "deploymentId": deployment_id,
            "application": application,
            "deploymentGroup": name,
            "deploymentConfig": ONE_AT_A_TIME,
            "createdAt": now,
            "updatedAt": now,
            "status": "InProgress",
            **_expand({**raw, "hosts": hosts}, now),
        }
        deployments[deployment_id] = Deployment.model_validate(doc)
    commands: dict[str, HostCommand] = {}
    for host, given in data.get("commands", {}).items():
        raw = dict(given)
        group = raw.pop("group")
        application, name = _split(group)
        revision_value = raw.pop("revision", None)
        if revision_value is None:
            # Defaults to its deployment's revision; a command of a deployment not in the state must say it.
            revision_value = deployments[raw["deploymentId"]].revision.model_dump(by_alias=True, exclude_none=True)
        doc = {
            "hostId": host,
            "application": application,
            "deploymentGroup": name,
            "deploymentGroupId": deployment_group_id(group),
            "createdAt": now,
            "revision": revision(revision_value),
            **_expand(raw, now),
        }
        commands[host] = HostCommand.model_validate(doc)
    return State(groups=groups, deployments=deployments, commands=commands)


def load_observed(data: dict[str, Any], now: datetime) -> Observed:
    registrations: dict[str, HostRegistration] = {}
    statuses: dict[str, HostStatus] = {}
    for host, raw in data.get("hosts", {}).items():
        if raw.get("registered", True):
            registrations[host] = HostRegistration(
                host_id=host,
                tags=raw.get("tags", {}),
                zone=raw.get("zone"),
                platform="linux",
                hostname=host,
                agent_version="test",
                registered_at=now - timedelta(days=1),
                instance_id=raw.get("instanceId"),
            )
        heartbeat = raw.get("heartbeat", "-5s")
        if heartbeat is None:
            continue
        installed = {
            group: InstalledRevision(
                application=_split(group)[0],
                deployment_group=_split(group)[1],
                revision=Revision.model_validate(revision(value)),
                deployment_id="d-earlier",
                installed_at=now - timedelta(hours=1),
            )
            for group, value in raw.get("installed", {}).items()
        }
        command = None
        if "command" in raw:
            c = dict(raw["command"])
            application, name = _split(c.pop("group"))
            command = CommandProgress.model_validate(
                _expand(
                    {
                        "application": application,
                        "deploymentGroup": name,
                        "startedAt": c.pop("startedAt", "-1m"),
                        **c,
                    },
                    now,
                )
            )
        statuses[host] = HostStatus(
            host_id=host,
            heartbeat_at=when(heartbeat, now),
            agent_version="test",
            installed=installed,
            command=command,
            heartbeat_interval_seconds=raw.get("heartbeatIntervalSeconds", 60.0),
        )
    return Observed(
        registrations=registrations,
        statuses=statuses,
        ec2=load_ec2(data.get("ec2", {}), now),
        launches=load_launches(data.get("launches", {}), now),
    )


def load_ec2(data: dict[str, Any], now: datetime) -> dict[str, Ec2Membership]:
    """`{"app/group": {"instances": {"i-1": {"state": "running", ...}}, "error": ..., "region": ...}}`."""
    reads: dict[str, Ec2Membership] = {}
    for key, raw in data.items():
        instances = tuple(
            Ec2Instance(
                instance_id=instance_id,
                state=item.get("state", "running"),
                zone=item.get("zone"),
                private_ip=item.get("privateIp"),
                launched_at=when(item.get("launchedAt", "-1d"), now),
                tags=item.get("tags", {}),
                auto_scaling_group=item.get("autoScalingGroup"),
                lifecycle_state=item.get("lifecycleState"),
            )
            for instance_id, item in raw.get("instances", {}).items()
        )
        reads[key] = Ec2Membership(read_at=now, instances=instances, error=raw.get("error"), region=raw.get("region"))
    return reads


def load_launches(data: dict[str, Any], now: datetime) -> dict[str, tuple[HeldLaunch, ...]]:
    """`{"app/group": {"i-6": {"autoScalingGroup", "hook", "since", "lastHeartbeatAt"}}}`: held in Pending:Wait."""
    return {
        key: tuple(
            HeldLaunch(
                instance_id=instance_id,
                auto_scaling_group=item["autoScalingGroup"],
                hook=item["hook"],
                since=when(item["since"], now) if item.get("since") is not None else None,
                last_heartbeat=when(item["lastHeartbeatAt"], now) if item.get("lastHeartbeatAt") else None,
            )
            for instance_id, item in raw.items()
        )
        for key, raw in data.items()
    }


def load_desired(text: bytes, commit: str | None) -> Desired:
    return load_files([ManifestFile("desired.yaml", text)], commit=commit)


def load_scenario(folder: Path) -> tuple[Desired, Observed, State, datetime, CoreSettings]:
    state_data = json.loads((folder / "state.json").read_text())
    now = datetime.fromisoformat(state_data["now"])
    settings = CoreSettings(**{
        k: (parse_duration(v) if k == "heartbeat_timeout" else v)
        for k, v in state_data.get("settings", {}).items()
    })
    desired = load_desired((folder / "desired.yaml").read_bytes(), state_data.get("commit"))
    observed = load_observed(json.loads((folder / "observed.json").read_text()), now)
    state = load_state(state_data, now)
    return desired, observed, state, now, settings
