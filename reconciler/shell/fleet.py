"""The shell's side of EC2 and Auto Scaling membership (issue 16): before each decision, read the instances of the
groups whose targets name `ec2TagFilters`, `ec2TagSet` or `autoScalingGroups`, and hand them to the core as
observed data (`Observed.ec2`), as `shell/gates.py` does for alarms.

Reads are kept for `MEMBERSHIP_MAX_AGE` (15 s) and shared by groups with the same targets. Why a cache at all:
`--once` and `watch` pass every poll interval (a second or two while a rollout runs), and `DescribeInstances` is
throttled per account; why so short: what the reads decide (a missing host failing at its turn, a terminated host
leaving a deployment) must be seen well before a silent host counts offline (`heartbeatTimeout`, 3 minutes by
default). A failed read is kept as long, so an outage is not hammered, and is logged at each read: the group's
AWS membership is then unknown and the core goes on with the registered agents only (reconciler/core/membership.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from reconciler.core import Observed, State
from reconciler.core.membership import instance_of
from reconciler.core.observed import Ec2Membership
from reconciler.desired.manifests import Desired, TargetsSpec
from reconciler.fleet.ec2 import Ec2FleetReader

log = structlog.get_logger(__name__)

MEMBERSHIP_MAX_AGE = timedelta(seconds=15)

ReaderFactory = Callable[[str | None], Ec2FleetReader]


class FleetShell:
    """EC2 readers per region and the last read per set of targets."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime],
        reader: ReaderFactory = Ec2FleetReader,
        max_age: timedelta = MEMBERSHIP_MAX_AGE,
    ) -> None:
        self._clock = clock
        self._reader_factory = reader
        self._max_age = max_age
        self._readers: dict[str | None, Ec2FleetReader] = {}
        self._reads: dict[str, Ec2Membership] = {}

    def observe(self, desired: Desired, observed: Observed, state: State | None = None) -> Observed:
        """`observed` with `ec2` filled for every group with EC2 or Auto Scaling targets. With `state`, the hosts of
        each group's deployment in flight that the read does not list are looked up by instance id, so that one
        terminated by a scale-in is known gone."""
        reads: dict[str, Ec2Membership] = {}
        wanted: set[str] = set()
        for key, group in desired.desired_groups().items():
            if not group.targets.uses_aws:
                continue
            fingerprint = _fingerprint(group.targets)
            wanted.add(fingerprint)
            reads[key] = self._read(fingerprint, group.targets)
            if state is not None:
                reads[key] = self._look_up(key, group.targets, reads[key], observed, state)
            if reads[key].error is not None:
                log.warning("fleet.membership_unknown", group=key, error=reads[key].error)
        for fingerprint in [f for f in self._reads if f not in wanted]:
            del self._reads[fingerprint]
        if not reads and not observed.ec2:
            return observed
        return dataclasses.replace(observed, ec2=reads)

    def _read(self, fingerprint: str, targets: TargetsSpec) -> Ec2Membership:
        now = self._clock()
        last = self._reads.get(fingerprint)
        if last is not None and now - last.read_at < self._max_age:
            return last
        found = self._reads[fingerprint] = self._reader(targets.region).read(targets, now)
        return found

    def _look_up(
        self, key: str, targets: TargetsSpec, read: Ec2Membership, observed: Observed, state: State
    ) -> Ec2Membership:
        group_state = state.groups.get(key)
        deployment = state.deployments.get(group_state.deployment_in_flight or "") if group_state else None
        if deployment is None or deployment.status.finished or not read.known:
            return read
        wanted = [
            instance_id
            for host, host_state in deployment.hosts.items()
            if host_state.left_group is None and (instance_id := instance_of(host, observed)) is not None
        ]
        return self._reader(targets.region).look_up(read, wanted)

    def _reader(self, region: str | None) -> Ec2FleetReader:
        reader = self._readers.get(region)
        if reader is None:
            reader = self._readers[region] = self._reader_factory(region)
        return reader

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _fingerprint(targets: TargetsSpec) -> str:
    aws = targets.model_dump(mode="json", include={"ec2_tag_filters", "ec2_tag_set", "auto_scaling_groups", "region"})
    return json.dumps(aws, sort_keys=True)


def read_memberships(desired: Desired, observed: Observed, now: datetime, state: State | None = None) -> Observed:
    """One read for every group with EC2 targets, for commands that read once (`status`, `plan`)."""
    shell = FleetShell(clock=lambda: now)
    try:
        return shell.observe(desired, observed, state)
    finally:
        shell.close()


__all__ = ["MEMBERSHIP_MAX_AGE", "FleetShell", "read_memberships"]
