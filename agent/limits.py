"""Caps on bringing a bundle onto the host: how long, how many bytes, how many entries.

They are the agent's settings (RunnerSettings), so the lifecycle runner needs them when it is built at start-up;
the fetch and unpack code that applies them (agent/fetch) is imported only when a command needs a bundle. Kept here,
apart from it, an idle agent does not load that code, nor `tarfile` through it (issue 18: 37.8 -> 37.3 MiB for an
idle agent).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FetchLimits:
    """Caps on fetching a bundle (RunnerSettings.fetch_limits)."""

    #: The budget for fetch, unpack and check when the command carries no `timeout_seconds`.
    default_timeout_seconds: float = 3600.0
    #: Bytes a download may bring; more is refused (an endless body). Unpacking has its own cap.
    max_bytes: int = 8 << 30
    #: A network download slower than this over `stall_seconds` is abandoned.
    min_bytes_per_second: float = 1024.0
    stall_seconds: float = 60.0
    #: How often the host's report is updated while fetching.
    progress_seconds: float = 2.0


@dataclass(frozen=True)
class ExtractLimits:
    """Caps that stop a zip bomb or a runaway bundle before it fills the disk."""

    max_bytes: int = 8 << 30
    max_entries: int = 250_000
