"""Default locations shared by both sides, so an agent and a reconciler started with no settings on the same
machine meet in the same store."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """/var/lib/fleetshift for root (a real host); $XDG_STATE_HOME/fleetshift (or ~/.local/state/fleetshift)
    for anyone else, so trying things as a user works without sudo."""
    if os.geteuid() == 0:
        return Path("/var/lib/fleetshift")
    # The XDG spec says a relative $XDG_STATE_HOME is invalid and must be ignored; it would also make the
    # default store URL file://relative/..., which the file store refuses as a host name.
    configured = os.environ.get("XDG_STATE_HOME")
    base = Path(configured) if configured and Path(configured).is_absolute() else Path.home() / ".local" / "state"
    return base / "fleetshift"


def default_store() -> str:
    """An embedded store on this machine: right for a single host or a demo; fleets set an s3:// URL."""
    return f"file://{state_dir() / 'store'}"
