"""Store keys, in one place, mirroring docs/design.md's "Store layout". Each key has exactly one writer."""

from __future__ import annotations

HOSTS_PREFIX = "hosts/"
COMMANDS_PREFIX = "commands/"
DEPLOYMENTS_PREFIX = "deployments/"
GROUPS_PREFIX = "groups/"
LEASE_KEY = "leases/reconciler.json"
#: What each host's folder under `hosts/` holds: its agent's two documents and a folder of conflict records.
REGISTRATION_NAME = "registration.json"
STATUS_NAME = "status.json"
CONFLICTS_FOLDER = "conflicts"


def registration_key(host_id: str) -> str:
    """Written by that host's agent."""
    return f"{HOSTS_PREFIX}{host_id}/{REGISTRATION_NAME}"


def status_key(host_id: str) -> str:
    """Written by that host's agent."""
    return f"{HOSTS_PREFIX}{host_id}/{STATUS_NAME}"


def conflict_key(host_id: str, installation_id: str) -> str:
    """Written by one agent installation that was refused `host_id` (one key per installation, so two losers
    never write the same object)."""
    return f"{HOSTS_PREFIX}{host_id}/{CONFLICTS_FOLDER}/{installation_id}.json"


def command_key(host_id: str) -> str:
    """Written by the reconciler, read by one agent."""
    return f"commands/{host_id}.json"


TRAFFIC_PREFIX = "traffic/"


def traffic_key(host_id: str) -> str:
    """Written by the reconciler (its traffic steps for the host), read by that host's agent."""
    return f"traffic/{host_id}.json"


ANALYSIS_PREFIX = "analysis/"


def analysis_key(deployment_id: str) -> str:
    """Written by the reconciler: what the gates of one deployment measured (docs/gates.md)."""
    return f"analysis/{deployment_id}.json"


CONFIG_PREFIX = "config/"
#: Written by the reconciler: the config commit it last applied, the start of `repository.verify: strict`'s
#: checked range (docs/trust.md).
APPLIED_CONFIG_KEY = "config/applied.json"


EVENTS_PREFIX = "events/"
#: Written by the reconciler: events that belong to no deployment (docs/events.md).
FLEET_EVENTS_KEY = "events/fleet.json"


CACHE_PREFIX = "cache/"
#: Written by the reconciler that holds the lease: the documents its last cold read of a remote store fetched that
#: seldom change, with their versions, so the next process's first pass reads only what changed since
#: (reconciler/shell/warmstart.py). Only a hint: an entry is used only where a fresh listing shows the same version.
WARM_START_KEY = "cache/warm-start.json.gz"


def deployment_key(deployment_id: str) -> str:
    return f"deployments/{deployment_id}.json"


def group_state_key(application: str, deployment_group: str) -> str:
    return f"groups/{application}/{deployment_group}.json"


def host_id_from_key(key: str) -> str | None:
    """`hosts/<id>/status.json` -> `<id>`; None for keys of another shape."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "hosts":
        return parts[1]
    return None
