"""What the reconciler wrote before: the `State` side of a pass, and the few settings the core needs.

The shell reads `groups/**`, the deployments those groups reference and `commands/*` from the store and
hands them over as plain data; the core never reads settings files or the store itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from contract.models import Deployment, FleetEventLog, GroupState, HostCommand, HostTraffic, group_key

#: The defaults of deploy.yaml's `heartbeatTimeout` and `historyLimit`, kept here so the core imports no
#: settings (and through them the YAML loader); `reconciler.settings` can take its defaults from these.
DEFAULT_HEARTBEAT_TIMEOUT = timedelta(minutes=3)
DEFAULT_HISTORY_LIMIT = 20


@dataclass(frozen=True)
class State:
    """The reconciler's own records.

    - `groups`: every `groups/<app>/<group>.json`, keyed `<app>/<group>` (including removed groups).
    - `deployments`: at least every deployment a group names in `deployment_in_flight` or `history`. The
      history is what host health is judged from ("the last deployment to this host in this group failed"),
      so loading only the in-flight ones makes every host look as if it was never deployed to.
    - `commands`: every `commands/<host>.json`, keyed by host id: the one command slot of each host, whose
      generation decides the next one and whether the host is still busy.
    - `traffic`: every `traffic/<host>.json`, keyed by host id: the last traffic step taken for the host.
    - `fleet_events`: `events/fleet.json`, the log of events that belong to no deployment (None: none yet).
    """

    groups: Mapping[str, GroupState] = field(default_factory=dict)
    deployments: Mapping[str, Deployment] = field(default_factory=dict)
    commands: Mapping[str, HostCommand] = field(default_factory=dict)
    traffic: Mapping[str, HostTraffic] = field(default_factory=dict)
    fleet_events: FleetEventLog | None = None
    #: `events/fleet.json` exists but could not be read (corrupt, forged, too big): never overwritten by a pass.
    fleet_events_unreadable: bool = False

    def with_documents(self, documents: Iterable[object]) -> State:
        """This state with these documents written over it, each replacing the one under its key, as an
        executor's writes do: how a pass carries its own writes into progress and the next decision without a
        re-read, and how a simulation (plan) applies actions in memory. Other documents are ignored."""
        groups = dict(self.groups)
        deployments = dict(self.deployments)
        commands = dict(self.commands)
        traffic = dict(self.traffic)
        fleet_events = self.fleet_events
        for document in documents:
            if isinstance(document, GroupState):
                groups[group_key(document.application, document.deployment_group)] = document
            elif isinstance(document, Deployment):
                deployments[document.deployment_id] = document
            elif isinstance(document, HostCommand):
                commands[document.host_id] = document
            elif isinstance(document, HostTraffic):
                traffic[document.host_id] = document
            elif isinstance(document, FleetEventLog):
                fleet_events = document
        return State(
            groups=groups, deployments=deployments, commands=commands, traffic=traffic, fleet_events=fleet_events,
            fleet_events_unreadable=self.fleet_events_unreadable and fleet_events is self.fleet_events,
        )


class _HasCoreSettings(Protocol):
    """What `CoreSettings.from_settings` reads: `reconciler.settings.ReconcileSettings` has both."""

    @property
    def heartbeat_timeout(self) -> timedelta: ...

    @property
    def history_limit(self) -> int: ...


@dataclass(frozen=True)
class CoreSettings:
    """The knobs of `reconcile()`; built from `ReconcileSettings` by the shell, defaults match deploy.yaml's."""

    heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT
    #: Deployment ids kept in `GroupState.history`, oldest dropped first.
    history_limit: int = DEFAULT_HISTORY_LIMIT

    @classmethod
    def from_settings(cls, settings: _HasCoreSettings) -> CoreSettings:
        return cls(heartbeat_timeout=settings.heartbeat_timeout, history_limit=settings.history_limit)


DEFAULT_SETTINGS = CoreSettings()
