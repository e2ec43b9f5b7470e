"""Single values of an appspec for the parser (agent/lifecycle/appspec.py): `version`, `os`,
`file_exists_behavior`, a script's `timeout`, and the bundle paths of `location` and `source`.

Each check reads one value, reports what is wrong with it at its line through the `Collector`, and returns
what the parser keeps; the structure around the values (hooks, files, unknown keys) stays in appspec.py.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any

from agent.lifecycle.appspec_yaml import Collector, Path_, kind, scalar_text
from contract.vocabulary import FileExistsBehavior

DEFAULT_TIMEOUT_SECONDS = 3600
#: The longest a script may be given: a week. Longer is surely a typo, and a deadline must stay a number the
#: clocks and waits downstream can hold (`timeout: .inf` or `1e300` cannot be one).
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600


def parse_version(data: dict[Any, Any], problems: Collector) -> float:
    value = data.get("version")
    # Ruby's `[0.0].include?(v)`: numbers equal to zero pass, the string "0.0" does not.
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return float(value)
    if value is None:
        problems.error(("version",), "missing; write `version: 0.0`")
    elif isinstance(value, str) and value.strip() in {"0.0", "0"}:
        problems.error(("version",), f"must be the number 0.0, not the quoted text {value!r}: remove the quotes")
    else:
        problems.error(("version",), f"must be 0.0, found {kind(value)}")
    return 0.0


def parse_os(data: dict[Any, Any], problems: Collector) -> str:
    value = data.get("os")
    if value == "linux":
        return "linux"
    if value is None:
        problems.error(("os",), "missing; write `os: linux`")
    elif value == "windows":
        problems.error(("os",), "the bundle is for Windows (`os: windows`); this agent deploys Linux bundles")
    elif isinstance(value, str) and value.strip().lower() == "linux":
        problems.error(("os",), f"{value!r} is not accepted: the value is case-sensitive, write `os: linux`")
    else:
        problems.error(("os",), f"must be linux, found {kind(value)}")
    return "linux"


def ruby_to_i(value: Any) -> int | None:
    """The reference agent coerces timeouts with Ruby's `to_i`: "90s" -> 90, 30.5 -> 30, "foo" -> 0. None for
    what has no whole number (a boolean, a list, `.inf`, `.nan`). Text with more digits than any timeout
    needs is read as the number just above the limit rather than converted (Python refuses to convert more
    than 4300 digits)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        match = re.match(r"\s*([+-]?)(\d+(?:_\d+)*)", value)
        if not match:
            return 0
        digits = match.group(2).replace("_", "").lstrip("0") or "0"
        number = int(digits) if len(digits) <= 18 else MAX_TIMEOUT_SECONDS + 1
        return -number if match.group(1) == "-" else number
    return None


def parse_timeout(raw: Any, path: Path_, problems: Collector) -> int | None:
    coerced = ruby_to_i(raw)
    if coerced is None or coerced <= 0:
        problems.error(path, f"must be a whole number of seconds above 0, found {kind(raw)}")
        return None
    if coerced > MAX_TIMEOUT_SECONDS:
        shown = kind(raw) if isinstance(raw, str) or coerced > MAX_TIMEOUT_SECONDS * 1000 else f"{coerced} seconds"
        problems.error(path, f"must be at most {MAX_TIMEOUT_SECONDS} seconds (7 days), found {shown}")
        return None
    if not isinstance(raw, int):
        problems.warn(path, f"{kind(raw)} is read as {coerced} seconds (as CodeDeploy does)")
    return coerced


def optional_text(value: Any, path: Path_, problems: Collector, what: str) -> str | None:
    """`scalar_text` for a field that may be absent: None when it is, or after a located error."""
    return None if value is None else scalar_text(value, path, problems, what)


def escapes(relative: str) -> bool:
    """True if a bundle-relative path climbs above the bundle root (a leading `/` is still relative)."""
    normalized = posixpath.normpath(relative.lstrip("/") or ".")
    return normalized == ".." or normalized.startswith("../")


def bundle_relative(path: str) -> str:
    """`/app/x` and `app/x/` -> `app/x`; `/` -> `` (the whole bundle), like `File.join(archive, source)`."""
    normalized = posixpath.normpath("/" + path)
    return normalized.lstrip("/")


def parse_file_exists_behavior(value: Any, problems: Collector) -> FileExistsBehavior | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)  # not even looked up: the enum's own error would print the whole value
        return FileExistsBehavior(value)
    except ValueError:
        hint = ""
        if isinstance(value, str) and value.upper() in FileExistsBehavior.__members__:
            hint = f" (the value is case-sensitive: write {value.upper()})"
        problems.error(("file_exists_behavior",), f"must be DISALLOW, OVERWRITE or RETAIN, found {kind(value)}{hint}")
        return None
