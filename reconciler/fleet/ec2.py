"""Expected hosts from EC2 and Auto Scaling (issue 16): list the instances a group's `ec2TagFilters`,
`ec2TagSet` and `autoScalingGroups` select, as CodeDeploy does, so that an instance whose agent never registered
is still known.

Where it sits: at the layer of the gate readers. `reconciler.shell.fleet` calls `Ec2FleetReader.read` once per
group per pass (at most every few seconds) and hands the answer to the core as `Observed.ec2`; the core maps
instances to hosts and decides.

The calls, all read-only, all paginated:
- `ec2:DescribeInstances` once per filter of the first tag group, with server-side filters (`tag:<key>` for
  KEY_AND_VALUE, `tag-key` for KEY_ONLY, `tag-value` for VALUE_ONLY, and `instance-state-name` pending, running,
  shutting-down, terminated). Every group of an ec2TagSet is then checked here, exactly (EC2's filters take `*`
  and `?` as wildcards; CodeDeploy's values are literal).
- `autoscaling:DescribeAutoScalingGroups` for the named groups: their instances and each one's lifecycle state
  (Pending:Wait, InService, Terminating:Wait, ...), so no `DescribeAutoScalingInstances` call is needed.
- `ec2:DescribeInstances` filtered by `tag:aws:autoscaling:groupName`: the groups' instances with their state,
  zone and address, including those that already left the group terminated (so a scale-in is recognised).
Terminated instances are listed on purpose: a host in flight whose instance terminated leaves the deployment
instead of failing it. Hosts of a deployment in flight that the read does not list (Auto Scaling drops an instance
from the group once it is terminated, and moto drops its tags too) are looked up by instance id (`look_up`).
Stopped ones are not asked for: they are not expected, and nothing depends on them.

Any failure (throttling past botocore's retries, access denied, no credentials or region, an Auto Scaling group
that does not exist) makes the whole read an `Ec2Membership` with `error` set, in AWS's words: membership
unknown, never "everyone is missing" or "everyone is gone".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import structlog

from contract.aws import failure_words
from reconciler.core.membership import ASG_NAME_TAG
from reconciler.core.observed import Ec2Instance, Ec2Membership
from reconciler.desired.manifests import TagFilter, TargetsSpec

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
TOTAL_ATTEMPTS = 3
#: Instance states asked for: the expected ones and the leaving ones.
LISTED_STATES = ["pending", "running", "shutting-down", "terminated"]
#: At most this many values in one EC2 filter (the API's limit is 200).
FILTER_VALUES = 200
#: Instances per DescribeInstances page (the API allows 5 to 1000).
PAGE_SIZE = 1000


class Ec2ReadError(Exception):
    """A read that cannot be completed for a reason of our own finding (an Auto Scaling group that does not
    exist); AWS's own failures keep their botocore type."""


def ec2_filter(tag_filter: TagFilter) -> dict[str, Any]:
    """One CodeDeploy tag filter as an EC2 server-side filter (wildcards in values escaped)."""
    if tag_filter.type == "KEY_ONLY":
        return {"Name": "tag-key", "Values": [_literal(tag_filter.key or "")]}
    if tag_filter.type == "VALUE_ONLY":
        return {"Name": "tag-value", "Values": [_literal(tag_filter.value or "")]}
    return {"Name": f"tag:{tag_filter.key}", "Values": [_literal(tag_filter.value or "")]}


def _literal(value: str) -> str:
    return value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


class Ec2FleetReader:
    """The instances one region's targets select. Owns its clients (built on first use, so a missing region or
    bad endpoint is a read error, not a crash)."""

    def __init__(self, region: str | None, *, ec2: Any | None = None, autoscaling: Any | None = None) -> None:
        self.region = region
        self._ec2 = ec2
        self._autoscaling = autoscaling

    def read(self, targets: TargetsSpec, now: datetime) -> Ec2Membership:
        call = "ec2 DescribeInstances"
        try:
            found: dict[str, Ec2Instance] = {}
            groups = targets.ec2_tag_groups()
            if groups:
                for tag_filter in groups[0]:
                    for raw in self._instances([ec2_filter(tag_filter)]):
                        instance = _instance(raw)
                        if all(any(f.matches(dict(instance.tags)) for f in group) for group in groups):
                            found[instance.instance_id] = instance
            if targets.auto_scaling_groups:
                call = "autoscaling DescribeAutoScalingGroups"
                lifecycle = self._asg_members(targets.auto_scaling_groups)
                call = "ec2 DescribeInstances"
                by_tag = {"Name": f"tag:{ASG_NAME_TAG}", "Values": list(targets.auto_scaling_groups)}
                seen: set[str] = set()
                for raw in self._instances([by_tag]):
                    seen.add(raw["InstanceId"])
                    found[raw["InstanceId"]] = _instance(raw, lifecycle.get(raw["InstanceId"]))
                unseen = sorted(set(lifecycle) - seen)
                for start in range(0, len(unseen), FILTER_VALUES):
                    chunk = unseen[start : start + FILTER_VALUES]
                    for raw in self._instances([{"Name": "instance-id", "Values": chunk}]):
                        found[raw["InstanceId"]] = _instance(raw, lifecycle.get(raw["InstanceId"]))
        except Exception as exc:
            words = _words(exc)
            log.warning("fleet.ec2.read_failed", region=self.region, call=call, error=words)
            return Ec2Membership(read_at=now, error=f"{call}: {words}", region=self._region_name())
        instances = tuple(sorted(found.values(), key=lambda i: i.instance_id))
        return Ec2Membership(read_at=now, instances=instances, region=self._region_name())

    def look_up(self, read: Ec2Membership, instance_ids: Iterable[str]) -> Ec2Membership:
        """`read` with the state of instances it does not list (hosts of a deployment in flight whose instance
        the targets no longer select, typically terminated by a scale-in and gone from its Auto Scaling group),
        each marked not selected. A failed look-up leaves `read` as it is: those hosts keep the usual rules."""
        wanted = sorted(set(instance_ids) - {i.instance_id for i in read.instances})
        if not wanted or not read.known:
            return read
        extra: list[Ec2Instance] = []
        try:
            for start in range(0, len(wanted), FILTER_VALUES):
                chunk = wanted[start : start + FILTER_VALUES]
                for raw in self._instances([{"Name": "instance-id", "Values": chunk}]):
                    extra.append(dataclasses.replace(_instance(raw), selected=False))
        except Exception as exc:
            log.warning("fleet.ec2.look_up_failed", region=self.region, instances=wanted, error=_words(exc))
            return read
        instances = tuple(sorted([*read.instances, *extra], key=lambda i: i.instance_id))
        return dataclasses.replace(read, instances=instances)

    def _instances(self, filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        paginator = self._client("ec2").get_paginator("describe_instances")
        state = {"Name": "instance-state-name", "Values": LISTED_STATES}
        for page in paginator.paginate(Filters=[*filters, state], PaginationConfig={"PageSize": PAGE_SIZE}):
            for reservation in page.get("Reservations", []):
                yield from reservation.get("Instances", [])

    def _asg_members(self, names: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Instance id -> (Auto Scaling group, lifecycle state)."""
        wanted = list(names)
        paginator = self._client("autoscaling").get_paginator("describe_auto_scaling_groups")
        members: dict[str, tuple[str, str]] = {}
        listed: set[str] = set()
        for page in paginator.paginate(AutoScalingGroupNames=wanted):
            for group in page.get("AutoScalingGroups", []):
                listed.add(group["AutoScalingGroupName"])
                for instance in group.get("Instances", []):
                    members[instance["InstanceId"]] = (group["AutoScalingGroupName"], instance["LifecycleState"])
        unknown = [name for name in wanted if name not in listed]
        if unknown:
            where = self._region_name() or "the default region"
            raise Ec2ReadError(f"no Auto Scaling group named {', '.join(unknown)} in {where}")
        return members

    def _client(self, service: str) -> Any:
        attribute = "_ec2" if service == "ec2" else "_autoscaling"
        client = getattr(self, attribute)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": TOTAL_ATTEMPTS, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
            )
            session = boto3.session.Session(region_name=self.region) if self.region else boto3.session.Session()
            client = session.client(service, config=config)  # type: ignore[call-overload]
            setattr(self, attribute, client)
        return client

    def _region_name(self) -> str | None:
        if self.region:
            return self.region
        client = self._ec2 or self._autoscaling
        return getattr(getattr(client, "meta", None), "region_name", None)

    def close(self) -> None:
        for attribute in ("_ec2", "_autoscaling"):
            client = getattr(self, attribute)
            setattr(self, attribute, None)
            if client is not None and hasattr(client, "close"):
                client.close()


def _instance(raw: dict[str, Any], lifecycle: tuple[str, str] | None = None) -> Ec2Instance:
    tags = {tag["Key"]: tag.get("Value", "") for tag in raw.get("Tags", []) or []}
    asg = lifecycle[0] if lifecycle is not None else tags.get(ASG_NAME_TAG)
    return Ec2Instance(
        instance_id=raw["InstanceId"],
        state=raw.get("State", {}).get("Name", "unknown"),
        zone=raw.get("Placement", {}).get("AvailabilityZone"),
        private_ip=raw.get("PrivateIpAddress"),
        launched_at=raw.get("LaunchTime"),
        tags=tags,
        auto_scaling_group=asg,
        lifecycle_state=lifecycle[1] if lifecycle is not None else None,
    )


def _words(exc: BaseException) -> str:
    if isinstance(exc, Ec2ReadError):
        return str(exc)
    if isinstance(exc, ValueError):  # botocore refuses a malformed endpoint URL with ValueError
        return f"invalid endpoint: {exc}"
    try:
        return failure_words(exc)
    except Exception:
        # No region, an unknown profile: botocore's own words, whatever its exception class.
        return f"{type(exc).__name__}: {exc}"


__all__ = ["Ec2FleetReader", "ec2_filter"]
