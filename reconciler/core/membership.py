"""Which hosts belong to a deployment group, and in which zone each one sits.

Membership is CodeDeploy's: in every tag set at least one filter matches the host's registered tags
(OR within a set, AND across sets), plus the group's explicit host ids, registered or not. A fleet of
10,000 hosts and 1,000 groups would cost ten million filter checks per pass if every group scanned every
host, so hosts are indexed once per pass by tag key, tag value and key=value pair, and a group's members
are unions (within a set) and intersections (across sets) of those index entries.

EC2 membership (`ec2TagFilters`, `ec2TagSet`, `autoScalingGroups`) comes from AWS, read by the shell
(`Observed.ec2`): every expected instance (pending or running, not leaving its Auto Scaling group) is a member,
as the registered host whose registration names that instance id, else as a host whose id is the instance id.
One with no registered agent is a **missing** host: a member that never registered, so offline, and failed when
its turn comes like any offline target (CodeDeploy: an instance whose agent does not answer fails).
When the read failed (or was not made) EC2 membership is unknown: the members are then the registered hosts
whose agents report an instance id and tags that match (the tags an agent reads from instance metadata, the Auto
Scaling group from `aws:autoscaling:groupName`), so a pass goes on with the agents it has and invents no missing
host (docs/aws-fleet.md).
"""

from __future__ import annotations

from collections import defaultdict

from reconciler.core.observed import Ec2Instance, Ec2Membership, Observed
from reconciler.core.rollout import host_sort_key
from reconciler.desired.manifests import DesiredGroup, TagFilter, TargetsSpec, ZonalSpec


class MembershipIndex:
    """Registered hosts indexed by their tags; build once per pass, query per group."""

    def __init__(self, observed: Observed) -> None:
        self._by_pair: dict[tuple[str, str], set[str]] = defaultdict(set)
        for host_id, registration in observed.registrations.items():
            for pair in registration.tags.items():
                self._by_pair[pair].add(host_id)
        # KEY_ONLY and VALUE_ONLY filters are rarer; their indexes are derived from the pairs on first use.
        self._by_key: dict[str, set[str]] | None = None
        self._by_value: dict[str, set[str]] | None = None
        self._observed = observed
        self._by_instance: dict[str, str] | None = None

    def indexes(self, observed: Observed) -> bool:
        """Built over what `observed` says of membership: the same registrations and the same EC2 read (the
        objects, not equal copies). `plan`'s simulated passes change only statuses, so one index serves them all."""
        return observed.registrations is self._observed.registrations and observed.ec2 is self._observed.ec2

    @property
    def by_instance(self) -> dict[str, str]:
        """Instance id -> the registered host that reported it (the first by host id, should two claim one).
        Built on first use: only groups with EC2 targets need it, and a pass over a fleet without them must not
        pay for it (sorting every host by its natural key each pass cost a 10,000-host pass a third of its time)."""
        if self._by_instance is None:
            found: dict[str, str] = {}
            for host_id, registration in self._observed.registrations.items():
                instance_id = registration.instance_id
                if instance_id:
                    other = found.get(instance_id)
                    if other is None or host_sort_key(host_id) < host_sort_key(other):
                        found[instance_id] = host_id
            self._by_instance = found
        return self._by_instance

    def _derive(self, position: int) -> dict[str, set[str]]:
        index: dict[str, set[str]] = defaultdict(set)
        for pair, hosts in self._by_pair.items():
            index[pair[position]] |= hosts
        return index

    def _matching_filter(self, tag_filter: TagFilter) -> set[str]:
        if tag_filter.type == "KEY_ONLY":
            if self._by_key is None:
                self._by_key = self._derive(0)
            return self._by_key.get(tag_filter.key or "", set())
        if tag_filter.type == "VALUE_ONLY":
            if self._by_value is None:
                self._by_value = self._derive(1)
            return self._by_value.get(tag_filter.value or "", set())
        return self._by_pair.get((tag_filter.key or "", tag_filter.value or ""), set())

    def host_for(self, instance_id: str) -> str:
        """The host an EC2 instance is: the registered host that reported its id, else the id itself."""
        return self.by_instance.get(instance_id, instance_id)

    def members(self, targets: TargetsSpec, group: str | None = None) -> set[str]:
        """Same answer as `targets.matches(host, tags)` over every registered host, plus explicit hosts, plus (for
        `group`, a group key) the EC2 members of `ec2_members`."""
        found = self.registered_members(targets)
        if targets.uses_aws and group is not None:
            found |= self.ec2_members(targets, self._observed.ec2.get(group))
        return found

    def ec2_members(self, targets: TargetsSpec, read: Ec2Membership | None) -> set[str]:
        """The hosts of the expected instances, or, while membership is unknown, the registered agents that
        claim to be such instances."""
        if read is None or not read.known:
            return self.claimed_ec2_members(targets)
        return {self.host_for(instance.instance_id) for instance in read.instances if instance.expected}

    def claimed_ec2_members(self, targets: TargetsSpec) -> set[str]:
        """Registered hosts reporting an instance id whose reported tags match the EC2 tag groups, or name one of
        the Auto Scaling groups in `aws:autoscaling:groupName` (what EC2 tags its instances with)."""
        claimed: set[str] = set()
        groups = targets.ec2_tag_groups()
        for host_id, registration in self._observed.registrations.items():
            if not registration.instance_id:
                continue
            tags = registration.tags
            by_tags = bool(groups) and all(any(f.matches(tags) for f in group) for group in groups)
            if by_tags or tags.get(ASG_NAME_TAG) in targets.auto_scaling_groups:
                claimed.add(host_id)
        return claimed

    def registered_members(self, targets: TargetsSpec) -> set[str]:
        selected: set[str] | None = None
        for tag_set in targets.tag_sets:
            in_set: set[str] = set()
            for tag_filter in tag_set:
                in_set |= self._matching_filter(tag_filter)
            selected = in_set if selected is None else selected & in_set
            if not selected:
                break
        result = set(selected) if selected else set()
        result.update(targets.hosts)
        return result


#: The tag EC2 puts on every instance an Auto Scaling group launches.
ASG_NAME_TAG = "aws:autoscaling:groupName"


def group_members(group: DesiredGroup, observed: Observed, index: MembershipIndex | None = None) -> list[str]:
    """The group's hosts, sorted; explicit hosts are included even if they never registered, and so are expected
    EC2 instances with no agent (missing hosts): both count as offline targets, like a stopped EC2 instance does
    in CodeDeploy."""
    return sorted((index or MembershipIndex(observed)).members(group.targets, group.key), key=host_sort_key)


def missing_hosts(group: DesiredGroup, observed: Observed, index: MembershipIndex | None = None) -> list[Ec2Instance]:
    """Expected instances of the group with no registered agent, by instance id (empty while unknown)."""
    read = observed.ec2.get(group.key)
    if read is None or not read.known or not group.targets.uses_aws:
        return []
    index = index or MembershipIndex(observed)
    found = [
        instance
        for instance in read.instances
        if instance.expected and index.host_for(instance.instance_id) not in observed.registrations
    ]
    return sorted(found, key=lambda instance: instance.instance_id)


def instance_of(host_id: str, observed: Observed) -> str | None:
    """The EC2 instance id a host is: the one its agent registered with, else its id when that is in a read."""
    registration = observed.registrations.get(host_id)
    if registration is not None and registration.instance_id:
        return registration.instance_id
    return host_id if host_id.startswith("i-") else None


def gone_reason(host_id: str, group_key: str, observed: Observed) -> str | None:
    """Why a host has left the group for good while a deployment runs: its instance is terminating, terminated or
    leaving its Auto Scaling group (scale-in), as this pass read it. None when it has not, or when EC2 membership
    is unknown (a failed read never makes a host go)."""
    read = observed.ec2.get(group_key)
    if read is None or not read.known:  # first: most groups have no EC2 read, and this runs per host per pass
        return None
    instance_id = instance_of(host_id, observed)
    if instance_id is None:
        return None
    instance = read.instance(instance_id)
    if instance is None or not instance.gone:
        return None
    return f"instance {instance_id} {instance.describe()}: left the group (scale-in), not a failure"


def flagged_agents(group: DesiredGroup, observed: Observed, index: MembershipIndex | None = None) -> dict[str, str]:
    """Registered agents that claim an EC2 instance of this group (an instance id, and reported tags that match
    its EC2 targets or name one of its Auto Scaling groups) which EC2 does not list as expected for it: terminated,
    another account or
    region, a wrong instanceId in agent.yaml. Host -> why. Shown by `status`; no decision depends on it."""
    read = observed.ec2.get(group.key)
    if read is None or not read.known or not group.targets.uses_aws:
        return {}
    index = index or MembershipIndex(observed)
    claimants = index.claimed_ec2_members(group.targets)
    flagged: dict[str, str] = {}
    for host_id in sorted(claimants, key=host_sort_key):
        instance_id = observed.registrations[host_id].instance_id
        if not instance_id:
            continue
        instance = read.instance(instance_id)
        if instance is not None and instance.expected:
            continue
        region = f" in {read.region}" if read.region else ""
        if instance is None:
            flagged[host_id] = (
                f"registered as instance {instance_id}, which EC2 does not list for this group{region} (another "
                "account or region, tags that do not match, or a wrong instanceId)"
            )
        else:
            flagged[host_id] = f"registered as instance {instance_id}, which EC2 lists as {instance.describe()}"
    return flagged


def zone_of(host_id: str, observed: Observed, zonal: ZonalSpec) -> str | None:
    """The zone a host registered with, or the value of the tag `zonal.tagKey` names; None if unknown."""
    registration = observed.registrations.get(host_id)
    if registration is None:
        return None
    if zonal.tag_key:
        return registration.tags.get(zonal.tag_key)
    return registration.zone
