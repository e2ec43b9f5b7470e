"""Human durations (`90s`, `5m`, `1h30m`) as used in manifests and settings files.

Kept in the shared package because both the reconciler's settings and the agent's settings accept them. The pydantic
field type the manifests and the reconciler's settings use is in reconciler/desired/durations.py: the agent does not
load pydantic (contract/wirebase.py says why).
"""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m`, `90s`, `250ms`. A bare number is refused: `timeout: 30` is ambiguous (s? m?)."""
    cleaned = text.strip().replace(" ", "")
    if not cleaned or not re.fullmatch(DURATION_PATTERN, cleaned):
        raise ValueError(f"invalid duration {text!r}: write a number and a unit, like 90s, 5m, 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(cleaned))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Shortest exact rendering, so a dumped manifest or plan reads like what a person wrote."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    if total_ms % 1000:
        return f"{total_ms}ms"
    seconds = total_ms // 1000
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
