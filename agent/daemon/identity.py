"""This agent installation's identity: `<rootDir>/installation-id`, so two installations configured with the same
host id (cloned VMs, containers whose host names collide) are told apart in the store.

The daemon stamps it on the host's registration and status and claims the host id with it (agent/daemon/claim.py);
this module only keeps the file: created once, atomically (contract/atomic.py: a kill -9 leaves it absent or
whole), and replaced when the deployment root turns out to come from another machine.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from datetime import datetime
from pathlib import Path

import msgspec

from contract.atomic import write_atomic
from contract.clock import utc_now
from contract.wire import HostRegistration, HostStatus
from contract.wirebase import WireDocument

INSTALLATION_FILE = "installation-id"
#: Files holding this machine's systemd/D-Bus machine id (machine-id(5)): the identity of a machine, which a
#: properly prepared clone (cloud-init, virt-sysprep, systemd-firstboot) gets anew.
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


class StateError(Exception):
    """The deployment root cannot be used by this agent (unreadable state, another agent, another host)."""


class Installation(WireDocument, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`<root>/installation-id`: who this agent installation is, so two installations configured with the
    same host id (cloned VMs, containers whose host names collide) are told apart in the store.

    Created once, at the first start, and kept across restarts and upgrades. `machine` fingerprints the machine
    it was created on (a salted hash of machine-id(5), never the id itself, which is meant to stay private):
    a deployment root copied to another machine (a cloned VM image, a restored backup) is detected by it and
    gets a new identity, with a warning, instead of impersonating the original. The host name is recorded
    for people only; it changes legitimately (renames, containers re-created on a kept volume), so it never
    causes a new identity. Where no machine id exists (many containers) a copy keeps the identity; two copies
    running at once are then caught by the running check (the status is written by compare-and-swap).
    """

    installation_id: str
    created_at: datetime
    hostname: str
    machine: str | None = None
    #: The identity this one replaced, when it was created because the root came from another machine.
    replaces: str | None = None


def machine_fingerprint(files: tuple[Path, ...] = MACHINE_ID_FILES) -> str | None:
    """A stable, non-reversible fingerprint of this machine, or None where there is no machine id."""
    for path in files:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value and value != "uninitialized":
            return hashlib.sha256(f"fleetshift-installation:{value}".encode()).hexdigest()[:32]
    return None


def load_installation(root: Path, *, machine: str | None = None) -> tuple[Installation, str | None]:
    """This root's identity, created on first use; with a warning (second item) when the root was found to
    come from another machine and a new identity replaced the copied one. Call under `root_lock`."""
    path = root / INSTALLATION_FILE
    for leftover in root.glob(f".{INSTALLATION_FILE}.*.tmp"):  # from a kill -9 mid-write; never linked
        leftover.unlink(missing_ok=True)
    hostname = socket.gethostname()
    existing: Installation | None = None
    try:
        existing = Installation.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateError(f"cannot read this agent's identity {path}: {exc.strerror}") from exc
    except msgspec.DecodeError as exc:
        raise StateError(
            f"this agent's identity {path} is unreadable ({exc}). Remove it to give this "
            "installation a new identity; until its old registration's heartbeat goes stale the agent will then "
            "see its own earlier self as another installation (or start it once with --take-over)"
        ) from None
    if existing is not None and (existing.machine is None or machine is None or existing.machine == machine):
        return existing, None
    fresh = Installation(
        installation_id=uuid.uuid4().hex,
        created_at=utc_now(),
        hostname=hostname,
        machine=machine,
        replaces=existing.installation_id if existing is not None else None,
    )
    if existing is None:
        if not write_atomic(path, fresh.to_json(), create_only=True):
            return load_installation(root, machine=machine)  # created meanwhile (only without root_lock)
        return fresh, None
    write_atomic(path, fresh.to_json())
    warning = (
        f"{path} was created on another machine (host name {existing.hostname!r}; its machine id differs from "
        f"this one's), so this deployment root is a copy, e.g. from a cloned VM image: this agent is now "
        f"installation {fresh.installation_id}, not {existing.installation_id}"
    )
    return fresh, warning


def describe_installation(registration: HostRegistration | None, status: HostStatus | None = None) -> str:
    """The other installation, for people: its id, machine, version and when it started."""
    installation = (registration.installation_id if registration is not None else None) or (
        status.installation_id if status is not None else None)
    parts = [f"installation {installation}" if installation else "an agent older than installation ids"]
    if registration is not None:
        parts.append(f"on host name {registration.hostname!r}")
    version = status.agent_version if status is not None else registration.agent_version if registration else None
    if version:
        parts.append(f"agent {version}")
    if status is not None and status.started_at is not None:
        parts.append(f"running since {status.started_at.isoformat(timespec='seconds')}")
    elif registration is not None:
        parts.append(f"registered at {registration.registered_at.isoformat(timespec='seconds')}")
    return ", ".join(parts)


class HostIdInUse(Exception):
    """Another agent installation owns this host id: this agent must not run its commands or write its
    documents. The message says who holds it and how to fix it."""
