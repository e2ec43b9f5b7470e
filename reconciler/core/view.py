"""One pass's working memory and what it knows about hosts.

`PassView` is built once per pass: membership indexed, deployments as this pass has changed them so far,
hosts booked by an earlier group in the same pass, the generation each host was last given. Every other module
of the pass asks it the facts a rollout step needs (online, command slot free, healthy before this deployment,
which revision it runs) rather than judging them again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from contract.models import (
    CommandStatus,
    Deployment,
    GroupState,
    HostDeploymentStatus,
    Revision,
    group_key,
)
from reconciler.core.membership import MembershipIndex, zone_of
from reconciler.core.observed import Observed, TargetState, is_online
from reconciler.core.rollout import (
    FAILED,
    REVISION_CURRENT,
    REVISION_OLD,
    REVISION_UNKNOWN,
    SUCCEEDED,
    HostFacts,
)
from reconciler.core.state import CoreSettings, State
from reconciler.desired.manifests import BUILTIN_CONFIGS, ONE_AT_A_TIME, Desired, DesiredGroup, EffectiveConfig


@dataclass(frozen=True, slots=True)
class Attempt:
    """A host's last real attempt in a group: a command was sent and it ended."""

    status: HostDeploymentStatus
    revision_identity: str
    deployment_id: str


class PassView:
    """One pass's inputs, indexes built once, and what the pass has decided so far."""

    def __init__(
        self,
        desired: Desired,
        observed: Observed,
        state: State,
        now: datetime,
        settings: CoreSettings,
        *,
        index: MembershipIndex | None = None,
    ) -> None:
        self.desired = desired
        self.observed = observed
        self.state = state
        self.now = now
        self.settings = settings
        #: An index of an earlier pass is taken only when it indexes this pass's registrations and EC2 read.
        self.index = index if index is not None and index.indexes(observed) else MembershipIndex(observed)
        self.desired_groups = desired.desired_groups()
        #: Hosts given a command by a group earlier in this pass.
        self.booked: set[str] = set()
        #: Deployments as this pass has changed them so far: later decisions in the same pass (a rollback's
        #: host health, a catch-up right after a success) must see this pass's results, not the last one's.
        self.deployments: dict[str, Deployment] = dict(state.deployments)
        #: The highest generation each host was given, whether or not its command write happened.
        self.generation: dict[str, int] = {h: c.generation for h, c in state.commands.items()}
        #: Agents' results per deployment in flight, recorded before any group decides (`results.py`).
        self.results: dict[str, tuple[Deployment, list[str], list[str], list[str]]] = {}
        #: Hosts in flight whose command write a crash lost: busy, their command is re-written this pass.
        self.unwritten: set[str] = set()
        self._online: dict[str, bool] = {}
        self._identity: dict[int, str] = {}
        self._attempts: dict[tuple[str, str | None], dict[str, Attempt]] = {}

    def remember(self, deployment: Deployment) -> None:
        self.deployments[deployment.deployment_id] = deployment
        self._attempts.clear()

    def identity(self, revision: Revision) -> str:
        key = id(revision)
        found = self._identity.get(key)
        if found is None:
            found = self._identity[key] = revision.identity()
        return found

    def config_for(self, deployment: Deployment, group: DesiredGroup | None) -> EffectiveConfig:
        return deployment_config(self.desired, deployment, group)

    def bounded_history(self, history: list[str]) -> list[str]:
        """The last `history_limit` ids, and never fewer than two: a failed deployment ends in the same pass its
        rollback starts, and dropping it then would delete its record before anyone read its end (its events,
        docs/events.md) with `historyLimit: 1`."""
        return history[-max(self.settings.history_limit, 2) :]

    # Hosts -----------------------------------------------------------------------------------------

    def online(self, host: str) -> bool:
        found = self._online.get(host)
        if found is None:
            timeout = self.settings.heartbeat_timeout
            found = self._online[host] = is_online(self.observed, host, now=self.now, heartbeat_timeout=timeout)
        return found

    def offline_reason(self, host: str) -> str:
        status = self.observed.statuses.get(host)
        if status is not None:
            return f"host offline: no heartbeat since {status.heartbeat_at.isoformat()}"
        if host in self.observed.registrations:
            return "host offline: registered but never reported a heartbeat"
        return "host offline: never registered"

    def slot_free(self, host: str) -> bool:
        """Free when the command written for the host (if any) is reported finished, nothing is running,
        no command write is pending for it, and no other group took it earlier in this pass."""
        if host in self.booked or host in self.unwritten:
            return False
        last = self.observed.last_command(host)
        if last is not None and last.status is CommandStatus.IN_PROGRESS:
            return False
        written = self.state.commands.get(host)
        if written is None:
            return True
        return last is not None and last.generation >= written.generation

    def next_generation(self, host: str) -> int:
        last = self.observed.last_command(host)
        reported = last.generation if last is not None else 0
        return max(self.generation.get(host, 0), reported) + 1

    def installed_identity(self, host: str, key: str) -> str | None:
        status = self.observed.statuses.get(host)
        if status is None:
            return None
        installed = status.installed.get(key)
        return self.identity(installed.revision) if installed is not None else None

    # Health ----------------------------------------------------------------------------------------

    def attempts(self, group_state: GroupState, exclude: str | None) -> dict[str, Attempt]:
        """Each host's last real attempt in this group (a command was sent), newest deployment first."""
        cache_key = (group_key(group_state.application, group_state.deployment_group), exclude)
        found = self._attempts.get(cache_key)
        if found is None:
            found = self._attempts[cache_key] = last_attempts(group_state, self.deployments, exclude, self.identity)
        return found

    def prior_health(self, host: str, key: str, attempts: Mapping[str, Attempt]) -> bool:
        """CodeDeploy's instance health: the last deployment to it succeeded; never deployed is unhealthy."""
        return self.online(host) and healthy_before(host, key, attempts, self.observed)

    def serving_unknown(self, host: str, key: str, attempts: Mapping[str, Attempt]) -> bool:
        """A host this group never deployed to (no attempt, nothing installed) that all of the group's load
        balancers have in service: it serves customers, so for the minimum of healthy hosts it counts as
        healthy. Without this, adopting a fleet that already serves behind a load balancer would take every
        host out in the first batch (CodeDeploy's rule makes never-deployed hosts unhealthy, so free to take)."""
        if host in attempts or not self.online(host):
            return False
        status = self.observed.statuses.get(host)
        if status is not None and key in status.installed:
            return False
        found = self.observed.traffic.get(key, {}).get(host)
        return found is not None and bool(found) and all(o.state is TargetState.IN_SERVICE for o in found)

    def facts(self, group_state: GroupState, deployment: Deployment, config: EffectiveConfig) -> dict[str, HostFacts]:
        """Every host's facts for one step of `deployment`: asked for every host of every deployment in flight at each
        pass, and at every simulated pass of `plan`'s dry run (issue 18), so the installed record is looked up once per
        host here rather than by `installed_identity`."""
        key = group_key(group_state.application, group_state.deployment_group)
        attempts = self.attempts(group_state, exclude=deployment.deployment_id)
        target = self.identity(deployment.revision)
        statuses = self.observed.statuses
        zonal = config.zonal
        facts: dict[str, HostFacts] = {}
        for host, host_state in deployment.hosts.items():
            status = statuses.get(host)
            installed = status.installed.get(key) if status is not None else None
            if installed is None:
                rank = REVISION_UNKNOWN
            else:
                rank = REVISION_CURRENT if self.identity(installed.revision) == target else REVISION_OLD
            online = self.online(host)
            facts[host] = HostFacts(
                online=online,
                free=self.slot_free(host),
                healthy=self.prior_health(host, key, attempts) or self.serving_unknown(host, key, attempts),
                revision_rank=rank,
                zone=zone_of(host, self.observed, zonal) if zonal is not None else None,
                offline_reason="" if online else self.offline_reason(host),
                recovered=host_state.status is FAILED
                and installed_by(self.observed, host, key, deployment.deployment_id),
            )
        return facts


def last_attempts(
    group_state: GroupState,
    deployments: Mapping[str, Deployment],
    exclude: str | None = None,
    identity: Callable[[Revision], str] = Revision.identity,
) -> dict[str, Attempt]:
    """Each host's last real attempt in the group (a command was sent and it ended), newest deployment first,
    from the deployments the group's history names (skipping `exclude`)."""
    found: dict[str, Attempt] = {}
    for deployment_id in reversed(group_state.history):
        if deployment_id == exclude:
            continue
        deployment = deployments.get(deployment_id)
        if deployment is None:
            continue
        revision_identity = identity(deployment.revision)
        for host, host_state in deployment.hosts.items():
            if host not in found and host_state.generation is not None and host_state.status in (SUCCEEDED, FAILED):
                found[host] = Attempt(host_state.status, revision_identity, deployment_id)
    return found


def healthy_before(host: str, key: str, attempts: Mapping[str, Attempt], observed: Observed) -> bool:
    """CodeDeploy's instance health, online aside: the last attempt in the group succeeded (or the agent
    installed that deployment after it was counted failed); never attempted: healthy iff it reports the
    group's revision installed. The one rule `reconcile` and `plan` both judge health by."""
    attempt = attempts.get(host)
    if attempt is not None:
        return attempt.status is SUCCEEDED or installed_by(observed, host, key, attempt.deployment_id)
    status = observed.statuses.get(host)
    return status is not None and key in status.installed


def installed_by(observed: Observed, host: str, key: str, deployment_id: str) -> bool:
    """The agent installed this deployment's revision after all (it reported after the deployment had
    counted it failed: timed out, or offline for a while): its health is what the agent says."""
    status = observed.statuses.get(host)
    installed = status.installed.get(key) if status is not None else None
    return installed is not None and installed.deployment_id == deployment_id


def deployment_config(desired: Desired, deployment: Deployment, group: DesiredGroup | None) -> EffectiveConfig:
    """The config a deployment runs under: the one it was created with, while the manifests still define it."""
    try:
        return desired.effective_config(deployment.deployment_config)
    except KeyError:
        return group.config if group is not None else BUILTIN_CONFIGS[ONE_AT_A_TIME]
