"""appspec.yml: parsing and checking CodeDeploy's application specification (reference sections 1.1-1.7).

First step of every deployment after the bundle is unpacked: the lifecycle runner, the installer and
`deploy-agent validate` all read the revision through `load_appspec`. Parsing is YAML 1.1 (PyYAML
`safe_load` semantics, like the reference agent's Psych), so existing bundles mean what they meant under
CodeDeploy: `version: 0.0` is a number, `mode: 0644` is the octal literal 420, `timeout: "90s"` is 90.

Unlike the reference agent, which stops at the first problem and often reports it as a Ruby traceback,
`parse_appspec` collects every problem with its line and field. Things CodeDeploy silently ignores or
silently reinterprets (unknown keys, `mode: 0644`) become warnings rather than errors, so a bundle that
deploys under CodeDeploy still deploys here.

This module holds the document's structure (hooks, files, unknown keys); the checks of single values
(version, os, timeouts, bundle paths, file_exists_behavior) are agent/lifecycle/appspec_values.py, the YAML
reading agent/lifecycle/appspec_yaml.py, the permissions agent/lifecycle/appspec_permissions.py.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import Problem, RevisionInvalid
from agent.lifecycle.appspec_permissions import PERMISSION_TYPES, Ace, Permission, SELinuxContext, parse_permissions
from agent.lifecycle.appspec_values import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TIMEOUT_SECONDS,
    bundle_relative,
    escapes,
    optional_text,
    parse_file_exists_behavior,
    parse_os,
    parse_timeout,
    parse_version,
)
from agent.lifecycle.appspec_yaml import (
    Collector,
    Located,
    Path_,
    did_you_mean_key,
    key_text,
    kind,
    load_yaml,
    path_too_long,
    shown,
)
from agent.lifecycle.hostview import resolves_inside
from contract.vocabulary import HEALTH_CHECK, LIFECYCLE_EVENTS, TRAFFIC_STEPS, FileExistsBehavior

#: Looked up in this order when no explicit name is given, in every phase (the reference agent accepted
#: appspec.yaml in Install but not in hooks, ISSUE #182).
APPSPEC_NAMES: tuple[str, ...] = ("appspec.yml", "appspec.yaml")
#: Events the agent performs itself; scripts listed under them would never run.
AGENT_EVENTS: frozenset[str] = frozenset({"DownloadBundle", "Install"})
SCRIPTABLE_EVENTS: frozenset[str] = frozenset(LIFECYCLE_EVENTS) - AGENT_EVENTS
#: Steps of a command that run no script of either revision: the load balancer steps the reconciler takes and
#: the agent's HealthCheck (agent/lifecycle/traffic_wait.py, agent/lifecycle/health_check.py).
SCRIPTLESS_STEPS: frozenset[str] = TRAFFIC_STEPS | {HEALTH_CHECK}

_TOP_LEVEL_KEYS = ("version", "os", "files", "file_exists_behavior", "permissions", "hooks")
_SCRIPT_KEYS = frozenset({"location", "timeout", "runas", "sudo"})
_FILE_KEYS = frozenset({"source", "destination"})


@dataclass(frozen=True)
class HookScript:
    """One entry under a hook: the script, its deadline and who runs it."""

    location: str
    timeout: int = DEFAULT_TIMEOUT_SECONDS
    runas: str | None = None
    sudo: bool = False
    line: int | None = None


@dataclass(frozen=True)
class FileMapping:
    """`source` is relative to the bundle root ("" for the whole bundle); `destination` is absolute."""

    source: str
    destination: str
    line: int | None = None


@dataclass(frozen=True)
class AppSpec:
    """A parsed, internally consistent appspec. Checks that need the bundle or the host live elsewhere."""

    filename: str
    version: float
    os: str
    files: tuple[FileMapping, ...] = ()
    permissions: tuple[Permission, ...] = ()
    hooks: Mapping[str, tuple[HookScript, ...]] = field(default_factory=dict)
    file_exists_behavior: FileExistsBehavior | None = None
    warnings: tuple[Problem, ...] = ()
    #: Line of each hook name under `hooks:`, so a problem with the name itself (a typo such as
    #: `AfterInstal`, found only once the command's events are known) can point at it.
    hook_lines: Mapping[str, int] = field(default_factory=dict)

    def scripts_for(self, event: str) -> tuple[HookScript, ...]:
        return self.hooks.get(event, ())


# --------------------------------------------------------------------------------------------------
# Finding and reading the file (the only I/O in this module)


def find_appspec(archive_dir: Path, filename: str | None = None) -> Path:
    """The appspec inside an unpacked revision: the given name, else appspec.yml, else appspec.yaml."""
    candidates = (filename,) if filename else APPSPEC_NAMES
    for name in candidates:
        path = archive_dir / name
        try:
            if path.is_symlink() and not resolves_inside(path, archive_dir):
                # Reading it would read a file of this host (or nothing) in place of the bundle's own appspec,
                # and could echo that file's contents in an error message.
                raise RevisionInvalid(
                    [Problem(name, None, f"is a symlink to {os.readlink(path)}, outside the bundle; the appspec "
                             "must be a file of the bundle")],
                    headline="the revision's appspec is not part of it",
                )
            if path.is_file():
                return path
        except (OSError, ValueError) as exc:
            # A name longer than the OS allows (ENAMETOOLONG), a NUL in it, a symlink loop.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RevisionInvalid(
                [Problem(name[:80], None, f"cannot look for the appspec under this name: {reason}")],
                headline="the revision's appspec cannot be read",
            ) from exc
    wanted = " or ".join(candidates)
    raise RevisionInvalid(
        [Problem("", None, f"no {wanted} at the top of the revision ({archive_dir})")],
        headline="the revision has no appspec",
    )


def load_appspec(archive_dir: Path, filename: str | None = None) -> AppSpec:
    path = find_appspec(archive_dir, filename)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RevisionInvalid([Problem(path.name, None, f"cannot read it: {exc.strerror}")]) from exc
    return parse_appspec(data, filename=path.name)


# --------------------------------------------------------------------------------------------------
# Parsing


def parse_appspec(text: bytes | str, *, filename: str = "appspec.yml") -> AppSpec:
    """Parse and check an appspec on its own (no bundle, no host). Raises `RevisionInvalid` with every
    problem found; returns warnings for what CodeDeploy would silently accept."""
    data, located = load_yaml(text, filename)
    problems = Collector(located)
    if data is None or (isinstance(data, str) and not data.strip()):
        problems.error((), "the file is empty; an appspec needs at least `version: 0.0` and `os: linux`")
        raise RevisionInvalid(problems.errors)
    if not isinstance(data, dict):
        problems.error((), f"expected a mapping of keys (version, os, files, hooks ...), found {kind(data)}")
        raise RevisionInvalid(problems.errors)

    version = parse_version(data, problems)
    os_name = parse_os(data, problems)
    hooks = _parse_hooks(data.get("hooks"), problems)
    files = _parse_files(data.get("files"), problems)
    permissions = parse_permissions(data.get("permissions"), problems)
    behavior = parse_file_exists_behavior(data.get("file_exists_behavior"), problems)
    for key in map(key_text, data):
        if key not in _TOP_LEVEL_KEYS:
            hint = did_you_mean_key(key, _TOP_LEVEL_KEYS)
            problems.warn((key,), f"unknown key, ignored (CodeDeploy ignores it too){hint}")

    if problems.errors:
        raise RevisionInvalid(problems.errors)
    return AppSpec(
        filename=filename,
        version=version,
        os=os_name,
        files=tuple(files),
        permissions=tuple(permissions),
        hooks=hooks,
        file_exists_behavior=behavior,
        warnings=tuple(problems.warnings),
        hook_lines=_hook_lines(data.get("hooks"), located),
    )


def _parse_hooks(value: Any, problems: Collector) -> dict[str, tuple[HookScript, ...]]:
    hooks: dict[str, tuple[HookScript, ...]] = {}
    if value is None:
        return hooks
    if not isinstance(value, dict):
        problems.error(("hooks",), f"must map event names to lists of scripts, found {kind(value)}")
        return hooks
    for raw_event, scripts in value.items():
        event = key_text(raw_event)
        path: Path_ = ("hooks", event)
        if event in AGENT_EVENTS:
            problems.error(path, f"{event} is performed by the agent itself; scripts cannot be attached to it")
            continue
        if event in TRAFFIC_STEPS:
            problems.error(path, f"{event} is the load balancer step itself; scripts cannot be attached to it (use "
                                 f"Before{event} or After{event})")
            continue
        if event == HEALTH_CHECK:
            problems.error(path, f"{event} is the agent's own check of the service; scripts cannot be attached to "
                                 "it (use ValidateService, which runs before it, or BeforeAllowTraffic)")
            continue
        if scripts is None or scripts == []:
            continue  # an empty hook is allowed and does nothing (reference 1.4, ISSUE #125)
        if not isinstance(scripts, list):
            problems.error(path, f"must be a list of scripts (`- location: scripts/x.sh`), found {kind(scripts)}")
            continue
        parsed: list[HookScript] = []
        for index, entry in enumerate(scripts):
            script = _parse_script(entry, (*path, index), problems)
            if script is not None:
                parsed.append(script)
        hooks[event] = tuple(parsed)
    return hooks


def _hook_lines(value: Any, located: Located) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    lines = {}
    for event in map(key_text, value):
        line = located.line(("hooks", event))
        if line is not None:
            lines[event] = line
    return lines


def _parse_script(entry: Any, path: Path_, problems: Collector) -> HookScript | None:
    if isinstance(entry, str):
        problems.error(path, f"a script is a mapping; write `- location: {entry}` instead of `- {entry}`")
        return None
    if not isinstance(entry, dict):
        problems.error(path, f"a script is a mapping with a location, found {kind(entry)}")
        return None
    ok = True
    raw_location = entry.get("location")
    location = optional_text(raw_location, (*path, "location"), problems, "a path in the bundle")
    location_text = (location or "").strip()
    if raw_location is None or (location is not None and not location_text):
        problems.error((*path, "location"), "missing; every script needs `location: <path in the bundle>`")
        ok = False
    elif location is None:
        ok = False
    elif escapes(location_text):
        problems.error((*path, "location"), f"{shown(location_text)} points outside the bundle")
        ok = False
    elif too_long := path_too_long(location_text):
        problems.error((*path, "location"), too_long)
        ok = False
    timeout: int | None = DEFAULT_TIMEOUT_SECONDS
    if entry.get("timeout") is not None:
        timeout = parse_timeout(entry["timeout"], (*path, "timeout"), problems)
    runas_text = optional_text(entry.get("runas"), (*path, "runas"), problems, "a user name")
    runas = None if runas_text is None else (runas_text.strip() or None)
    if entry.get("runas") is not None and runas_text is None:
        ok = False
    for key in map(key_text, entry):
        if key not in _SCRIPT_KEYS:
            problems.warn((*path, key), f"unknown key, ignored{did_you_mean_key(key, _SCRIPT_KEYS)}")
    if not ok or timeout is None:
        return None
    return HookScript(
        location=location_text,
        timeout=timeout,
        runas=runas,
        sudo=bool(entry.get("sudo")),
        line=problems.located.line(path),
    )


def _parse_files(value: Any, problems: Collector) -> list[FileMapping]:
    files: list[FileMapping] = []
    if value is None:
        return files
    if not isinstance(value, list):
        problems.error(("files",), f"must be a list of `- source: ... destination: ...`, found {kind(value)}")
        return files
    for index, entry in enumerate(value):
        path: Path_ = ("files", index)
        if not isinstance(entry, dict):
            problems.error(path, f"must be a mapping with source and destination, found {kind(entry)}")
            continue
        raw_source, raw_destination = entry.get("source"), entry.get("destination")
        source = optional_text(raw_source, (*path, "source"), problems, "a path in the bundle")
        destination = optional_text(raw_destination, (*path, "destination"), problems, "an absolute path")
        ok = source is not None and destination is not None
        if raw_source is None or source == "":
            problems.error((*path, "source"), "missing; name a file or folder in the bundle (`/` for all of it)")
            ok = False
        elif source is None:
            pass
        elif escapes(source):
            problems.error((*path, "source"), f"{shown(source)} points outside the bundle")
            ok = False
        elif too_long := path_too_long(source):
            problems.error((*path, "source"), too_long)
            ok = False
        if raw_destination is None or destination == "":
            problems.error((*path, "destination"), f"missing for source {shown(source or '')}; name the folder to "
                           "copy into")
            ok = False
        elif destination is None:
            pass
        elif not destination.startswith("/"):
            problems.error(
                (*path, "destination"),
                f"{shown(destination)} must be an absolute path (CodeDeploy would resolve it against the agent's "
                "working directory)",
            )
            ok = False
        elif too_long := path_too_long(destination):
            problems.error((*path, "destination"), too_long)
            ok = False
        for key in map(key_text, entry):
            if key not in _FILE_KEYS:
                problems.warn((*path, key), f"unknown key, ignored{did_you_mean_key(key, _FILE_KEYS)}")
        if ok:
            files.append(
                FileMapping(
                    source=bundle_relative(source or ""),
                    destination=posixpath.normpath(destination or "/"),
                    line=problems.located.line(path),
                )
            )
    return files


__all__ = [
    "APPSPEC_NAMES",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "PERMISSION_TYPES",
    "Ace",
    "AppSpec",
    "FileMapping",
    "HookScript",
    "Permission",
    "SELinuxContext",
    "bundle_relative",
    "find_appspec",
    "load_appspec",
    "parse_appspec",
]
