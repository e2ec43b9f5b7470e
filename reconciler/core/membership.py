"""Which hosts belong to a deployment group, and in which zone each one sits.

Membership is CodeDeploy's: in every tag set at least one filter matches the host's registered tags
(OR within a set, AND across sets), plus the group's explicit host ids, registered or not. A fleet of
10,000 hosts and 1,000 groups would cost ten million filter checks per pass if every group scanned every
host, so hosts are indexed once per pass by tag key, tag value and key=value pair, and a group's members
are unions (within a set) and intersections (across sets) of those index entries.
"""

from __future__ import annotations

from collections import defaultdict

from reconciler.core.observed import Observed
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

    def members(self, targets: TargetsSpec) -> set[str]:
        """Same answer as `targets.matches(host, tags)` over every registered host, plus explicit hosts."""
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


def group_members(group: DesiredGroup, observed: Observed, index: MembershipIndex | None = None) -> list[str]:
    """The group's hosts, sorted; explicit hosts are included even if they never registered (they then
    count as offline targets, like a stopped EC2 instance does in CodeDeploy)."""
    return sorted((index or MembershipIndex(observed)).members(group.targets), key=host_sort_key)


def zone_of(host_id: str, observed: Observed, zonal: ZonalSpec) -> str | None:
    """The zone a host registered with, or the value of the tag `zonal.tagKey` names; None if unknown."""
    registration = observed.registrations.get(host_id)
    if registration is None:
        return None
    if zonal.tag_key:
        return registration.tags.get(zonal.tag_key)
    return registration.zone
