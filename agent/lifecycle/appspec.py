"""appspec.yml: parsing and checking CodeDeploy's application specification (reference sections 1.1-1.7).

First step of every deployment after the bundle is unpacked: the lifecycle runner, the installer and
`deploy-agent validate` all read the revision through `load_appspec`. Parsing is YAML 1.1 (PyYAML
`safe_load` semantics, like the reference agent's Psych), so existing bundles mean what they meant under
CodeDeploy: `version: 0.0` is a number, `mode: 0644` is the octal literal 420, `timeout: "90s"` is 90.

Unlike the reference agent, which stops at the first problem and often reports it as a Ruby traceback,
`parse_appspec` collects every problem with its line and field. Things CodeDeploy silently ignores or
silently reinterprets (unknown keys, `mode: 0644`) become warnings rather than errors, so a bundle that
deploys under CodeDeploy still deploys here.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agent.errors import Problem, RevisionInvalid
from contract.models import LIFECYCLE_EVENTS, FileExistsBehavior

#: Looked up in this order when no explicit name is given, in every phase (the reference agent accepted
#: appspec.yaml in Install but not in hooks, ISSUE #182).
APPSPEC_NAMES: tuple[str, ...] = ("appspec.yml", "appspec.yaml")
DEFAULT_TIMEOUT_SECONDS = 3600
#: Events the agent performs itself; scripts listed under them would never run.
AGENT_EVENTS: frozenset[str] = frozenset({"DownloadBundle", "Install"})
SCRIPTABLE_EVENTS: frozenset[str] = frozenset(LIFECYCLE_EVENTS) - AGENT_EVENTS
PERMISSION_TYPES: frozenset[str] = frozenset({"file", "directory"})

_TOP_LEVEL_KEYS = ("version", "os", "files", "file_exists_behavior", "permissions", "hooks")
_SCRIPT_KEYS = frozenset({"location", "timeout", "runas", "sudo"})
_FILE_KEYS = frozenset({"source", "destination"})
_PERMISSION_KEYS = frozenset({"object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context"})

Path_ = tuple[str | int, ...]


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
class Ace:
    """One POSIX ACL entry, already checked (reference 1.5); rendered in setfacl's long form."""

    default: bool
    kind: Literal["user", "group", "mask"]
    name: str
    perms: str  # "rwx" with "-" for missing bits

    def __str__(self) -> str:
        prefix = "default:" if self.default else ""
        return f"{prefix}{self.kind}:{self.name}:{self.perms}"


@dataclass(frozen=True)
class SELinuxContext:
    type: str
    user: str | None = None
    role: str | None = None
    range: str | None = None


@dataclass(frozen=True)
class Permission:
    """A `permissions:` entry. `pattern` and `excepts` follow the reference agent's matching rules."""

    object: str
    pattern: str = "**"
    excepts: tuple[str, ...] = ()
    types: frozenset[str] = PERMISSION_TYPES
    owner: str | None = None
    group: str | None = None
    mode: int | None = None
    acls: tuple[Ace, ...] = ()
    context: SELinuxContext | None = None
    line: int | None = None

    def mode_text(self) -> str | None:
        return None if self.mode is None else f"{self.mode:04o}"


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
        if path.is_symlink() and not _resolves_inside(path, archive_dir):
            # Reading it would read a file of this host (or nothing) in place of the bundle's own appspec, and
            # could echo that file's contents in an error message.
            raise RevisionInvalid(
                [Problem(name, None, f"is a symlink to {os.readlink(path)}, outside the bundle; the appspec must "
                         "be a file of the bundle")],
                headline="the revision's appspec is not part of it",
            )
        if path.is_file():
            return path
    wanted = " or ".join(candidates)
    raise RevisionInvalid(
        [Problem("", None, f"no {wanted} at the top of the revision ({archive_dir})")],
        headline="the revision has no appspec",
    )


def _resolves_inside(path: Path, folder: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root + os.sep)


def load_appspec(archive_dir: Path, filename: str | None = None) -> AppSpec:
    path = find_appspec(archive_dir, filename)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RevisionInvalid([Problem(path.name, None, f"cannot read it: {exc.strerror}")]) from exc
    return parse_appspec(data, filename=path.name)


# --------------------------------------------------------------------------------------------------
# Parsing


class _Located:
    """The YAML node tree beside the constructed data, so every problem can name its line."""

    def __init__(self, filename: str, root: yaml.Node | None) -> None:
        self.filename = filename
        self.lines: dict[Path_, int] = {}
        self.raw: dict[Path_, yaml.ScalarNode] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: Path_, line: int | None = None) -> None:
        # A mapping value is located at its key: that is the line a person looks for.
        self.lines[path] = line or node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            self.raw[path] = node
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                self._walk(value_node, (*path, str(key_node.value)), key_node.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def where(self, path: Path_) -> str:
        probe = path
        while probe not in self.lines and probe:
            probe = probe[:-1]
        line = self.lines.get(probe)
        return f"{self.filename}:{line}" if line else self.filename

    def line(self, path: Path_) -> int | None:
        return self.lines.get(path)


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _Collector:
    def __init__(self, located: _Located) -> None:
        self.located = located
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: Path_, message: str) -> None:
        self.errors.append(Problem(self.located.where(path), _dotted(path) or None, message))

    def warn(self, path: Path_, message: str) -> None:
        self.warnings.append(Problem(self.located.where(path), _dotted(path) or None, message))


#: libyaml's loader when PyYAML was built with it: same YAML 1.1 results, several times faster.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: bytes | str, filename: str) -> tuple[Any, _Located]:
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        reason = exc.problem or exc.context or "invalid YAML"
        raise RevisionInvalid([Problem(where, None, f"not valid YAML: {reason}")]) from exc
    except yaml.YAMLError as exc:
        raise RevisionInvalid([Problem(filename, None, f"not valid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    return data, _Located(filename, node)


def parse_appspec(text: bytes | str, *, filename: str = "appspec.yml") -> AppSpec:
    """Parse and check an appspec on its own (no bundle, no host). Raises `RevisionInvalid` with every
    problem found; returns warnings for what CodeDeploy would silently accept."""
    data, located = _load_yaml(text, filename)
    problems = _Collector(located)
    if data is None or (isinstance(data, str) and not data.strip()):
        problems.error((), "the file is empty; an appspec needs at least `version: 0.0` and `os: linux`")
        raise RevisionInvalid(problems.errors)
    if not isinstance(data, dict):
        problems.error((), f"expected a mapping of keys (version, os, files, hooks ...), found {_kind(data)}")
        raise RevisionInvalid(problems.errors)

    version = _parse_version(data, problems)
    os_name = _parse_os(data, problems)
    hooks = _parse_hooks(data.get("hooks"), problems)
    files = _parse_files(data.get("files"), problems)
    permissions = _parse_permissions(data.get("permissions"), problems)
    behavior = _parse_file_exists_behavior(data.get("file_exists_behavior"), problems)
    for key in data:
        if str(key) not in _TOP_LEVEL_KEYS:
            hint = _did_you_mean(str(key), _TOP_LEVEL_KEYS)
            problems.warn((str(key),), f"unknown key, ignored (CodeDeploy ignores it too){hint}")

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


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _did_you_mean(key: str, known: tuple[str, ...] | frozenset[str]) -> str:
    for candidate in known:
        if candidate.lower() == key.lower().replace("-", "_"):
            return f"; did you mean `{candidate}`? (keys are case-sensitive)"
    return ""


def _parse_version(data: dict[Any, Any], problems: _Collector) -> float:
    value = data.get("version")
    # Ruby's `[0.0].include?(v)`: numbers equal to zero pass, the string "0.0" does not.
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return float(value)
    if value is None:
        problems.error(("version",), "missing; write `version: 0.0`")
    elif isinstance(value, str) and value.strip() in {"0.0", "0"}:
        problems.error(("version",), f"must be the number 0.0, not the quoted text {value!r}: remove the quotes")
    else:
        problems.error(("version",), f"must be 0.0, found {_kind(value)}")
    return 0.0


def _parse_os(data: dict[Any, Any], problems: _Collector) -> str:
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
        problems.error(("os",), f"must be linux, found {_kind(value)}")
    return "linux"


def _ruby_to_i(value: Any) -> int | None:
    """The reference agent coerces timeouts with Ruby's `to_i`: "90s" -> 90, 30.5 -> 30, "foo" -> 0."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        match = re.match(r"\s*([+-]?\d+(?:_\d+)*)", value)
        return int(match.group(1).replace("_", "")) if match else 0
    return None


def _parse_hooks(value: Any, problems: _Collector) -> dict[str, tuple[HookScript, ...]]:
    hooks: dict[str, tuple[HookScript, ...]] = {}
    if value is None:
        return hooks
    if not isinstance(value, dict):
        problems.error(("hooks",), f"must map event names to lists of scripts, found {_kind(value)}")
        return hooks
    for raw_event, scripts in value.items():
        event = str(raw_event)
        path: Path_ = ("hooks", event)
        if event in AGENT_EVENTS:
            problems.error(path, f"{event} is performed by the agent itself; scripts cannot be attached to it")
            continue
        if scripts is None or scripts == []:
            continue  # an empty hook is allowed and does nothing (reference 1.4, ISSUE #125)
        if not isinstance(scripts, list):
            problems.error(path, f"must be a list of scripts (`- location: scripts/x.sh`), found {_kind(scripts)}")
            continue
        parsed: list[HookScript] = []
        for index, entry in enumerate(scripts):
            script = _parse_script(entry, (*path, index), problems)
            if script is not None:
                parsed.append(script)
        hooks[event] = tuple(parsed)
    return hooks


def _hook_lines(value: Any, located: _Located) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    lines = {}
    for raw_event in value:
        line = located.line(("hooks", str(raw_event)))
        if line is not None:
            lines[str(raw_event)] = line
    return lines


def _parse_script(entry: Any, path: Path_, problems: _Collector) -> HookScript | None:
    if isinstance(entry, str):
        problems.error(path, f"a script is a mapping; write `- location: {entry}` instead of `- {entry}`")
        return None
    if not isinstance(entry, dict):
        problems.error(path, f"a script is a mapping with a location, found {_kind(entry)}")
        return None
    ok = True
    location = entry.get("location")
    location_text = "" if location is None else str(location).strip()
    if not location_text:
        problems.error((*path, "location"), "missing; every script needs `location: <path in the bundle>`")
        ok = False
    elif _escapes(location_text):
        problems.error((*path, "location"), f"{location_text!r} points outside the bundle")
        ok = False
    timeout = DEFAULT_TIMEOUT_SECONDS
    if entry.get("timeout") is not None:
        raw = entry["timeout"]
        coerced = _ruby_to_i(raw)
        if coerced is None or coerced <= 0:
            problems.error((*path, "timeout"), f"must be a whole number of seconds above 0, found {_kind(raw)}")
            ok = False
        else:
            timeout = coerced
            if not isinstance(raw, int):
                problems.warn((*path, "timeout"), f"{raw!r} is read as {coerced} seconds (as CodeDeploy does)")
    runas_raw = entry.get("runas")
    runas = None if runas_raw is None else (str(runas_raw).strip() or None)
    for key in entry:
        if str(key) not in _SCRIPT_KEYS:
            problems.warn((*path, str(key)), f"unknown key, ignored{_did_you_mean(str(key), _SCRIPT_KEYS)}")
    if not ok:
        return None
    return HookScript(
        location=location_text,
        timeout=timeout,
        runas=runas,
        sudo=bool(entry.get("sudo")),
        line=problems.located.line(path),
    )


def _escapes(relative: str) -> bool:
    """True if a bundle-relative path climbs above the bundle root (a leading `/` is still relative)."""
    normalized = posixpath.normpath(relative.lstrip("/") or ".")
    return normalized == ".." or normalized.startswith("../")


def bundle_relative(path: str) -> str:
    """`/app/x` and `app/x/` -> `app/x`; `/` -> `` (the whole bundle), like `File.join(archive, source)`."""
    normalized = posixpath.normpath("/" + path)
    return normalized.lstrip("/")


def _parse_files(value: Any, problems: _Collector) -> list[FileMapping]:
    files: list[FileMapping] = []
    if value is None:
        return files
    if not isinstance(value, list):
        problems.error(("files",), f"must be a list of `- source: ... destination: ...`, found {_kind(value)}")
        return files
    for index, entry in enumerate(value):
        path: Path_ = ("files", index)
        if not isinstance(entry, dict):
            problems.error(path, f"must be a mapping with source and destination, found {_kind(entry)}")
            continue
        source, destination = entry.get("source"), entry.get("destination")
        ok = True
        if source is None or str(source) == "":
            problems.error((*path, "source"), "missing; name a file or folder in the bundle (`/` for all of it)")
            ok = False
        elif _escapes(str(source)):
            problems.error((*path, "source"), f"{source!r} points outside the bundle")
            ok = False
        if destination is None or str(destination) == "":
            problems.error((*path, "destination"), f"missing for source {source!r}; name the folder to copy into")
            ok = False
        elif not str(destination).startswith("/"):
            problems.error(
                (*path, "destination"),
                f"{destination!r} must be an absolute path (CodeDeploy would resolve it against the agent's "
                "working directory)",
            )
            ok = False
        for key in entry:
            if str(key) not in _FILE_KEYS:
                problems.warn((*path, str(key)), f"unknown key, ignored{_did_you_mean(str(key), _FILE_KEYS)}")
        if ok:
            files.append(
                FileMapping(
                    source=bundle_relative(str(source)),
                    destination=posixpath.normpath(str(destination)),
                    line=problems.located.line(path),
                )
            )
    return files


def _parse_file_exists_behavior(value: Any, problems: _Collector) -> FileExistsBehavior | None:
    if value is None:
        return None
    try:
        return FileExistsBehavior(value)
    except ValueError:
        hint = ""
        if isinstance(value, str) and value.upper() in FileExistsBehavior.__members__:
            hint = f" (the value is case-sensitive: write {value.upper()})"
        problems.error(("file_exists_behavior",), f"must be DISALLOW, OVERWRITE or RETAIN, found {_kind(value)}{hint}")
        return None


# --------------------------------------------------------------------------------------------------
# permissions


def _parse_permissions(value: Any, problems: _Collector) -> list[Permission]:
    parsed: list[Permission] = []
    if value is None:
        return parsed
    if not isinstance(value, list):
        problems.error(("permissions",), f"must be a list of `- object: ...` entries, found {_kind(value)}")
        return parsed
    for index, entry in enumerate(value):
        permission = _parse_permission(entry, ("permissions", index), problems)
        if permission is not None:
            parsed.append(permission)
    return parsed


def _string_list(value: Any, path: Path_, problems: _Collector, what: str) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return tuple(str(item) for item in value)
    problems.error(path, f"must be a list of {what}, like [{what.split(maxsplit=1)[0]}], found {_kind(value)}")
    return None


def _parse_permission(entry: Any, path: Path_, problems: _Collector) -> Permission | None:
    if not isinstance(entry, dict):
        problems.error(path, f"must be a mapping with at least an object, found {_kind(entry)}")
        return None
    errors_before = len(problems.errors)
    obj = entry.get("object")
    object_text = "" if obj is None else str(obj).strip()
    if not object_text:
        problems.error((*path, "object"), "missing; name the installed file or folder the permission applies to")
    elif not object_text.startswith("/"):
        problems.error((*path, "object"), f"{object_text!r} must be an absolute path on the host")
    pattern = entry.get("pattern")
    pattern_text = "**" if pattern is None else str(pattern)
    excepts = _string_list(entry.get("except"), (*path, "except"), problems, "name patterns")
    types_raw = _string_list(entry.get("type"), (*path, "type"), problems, "file or directory")
    types: frozenset[str] = PERMISSION_TYPES
    if types_raw:
        unknown = [t for t in types_raw if t not in PERMISSION_TYPES]
        if unknown:
            problems.error((*path, "type"), f"only file and directory are allowed, found {', '.join(unknown)}")
        types = frozenset(types_raw)
    owner = None if entry.get("owner") is None else str(entry["owner"]).strip() or None
    group = None if entry.get("group") is None else str(entry["group"]).strip() or None
    mode = None
    if entry.get("mode") is not None:
        mode = _parse_mode(entry["mode"], (*path, "mode"), problems)
    acls: tuple[Ace, ...] = ()
    if entry.get("acls") is not None:
        acl_texts = _string_list(entry["acls"], (*path, "acls"), problems, "ACL entries")
        if acl_texts is not None:
            parsed_acls = [_parse_ace(text, (*path, "acls", i), problems) for i, text in enumerate(acl_texts)]
            acls = tuple(a for a in parsed_acls if a is not None)
    context = None
    if entry.get("context") is not None:
        context = _parse_context(entry["context"], (*path, "context"), problems)
    for key in entry:
        if str(key) not in _PERMISSION_KEYS:
            problems.warn((*path, str(key)), f"unknown key, ignored{_did_you_mean(str(key), _PERMISSION_KEYS)}")
    if len(problems.errors) > errors_before:
        return None
    return Permission(
        object=posixpath.normpath(object_text),
        pattern=pattern_text,
        excepts=excepts or (),
        types=types,
        owner=owner,
        group=group,
        mode=mode,
        acls=acls,
        context=context,
        line=problems.located.line(path),
    )


def _parse_mode(value: Any, path: Path_, problems: _Collector) -> int | None:
    """Reference 1.5: `to_s`, left-padded to three digits, one to four octal digits."""
    text = str(value)
    raw = problems.located.raw.get(path)
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and raw is not None
        and not raw.style  # plain scalar: None from PyYAML, "" from libyaml
        and re.fullmatch(r"0[0-7]+", raw.value)
    ):
        problems.warn(
            path,
            f"`mode: {raw.value}` is an octal number in YAML 1.1, read as {value}, so the mode set is "
            f"{text.rjust(3, '0')} (as under CodeDeploy); write `mode: {raw.value.lstrip('0') or '0'}` or "
            f'`mode: "{raw.value}"` if you meant {raw.value}',
        )
    text = text.rjust(3, "0")
    if len(text) > 4:
        problems.error(path, f"{value!r} is too long: a mode has one to four octal digits, like 644 or 2755")
        return None
    bad = [c for c in text if c not in "01234567"]
    if bad:
        problems.error(path, f"{value!r} contains {bad[0]!r}: a mode has only the digits 0-7, like 644")
        return None
    return int(text, 8)


_ACE_KINDS: dict[str, Literal["user", "group", "mask", "other"]] = {
    "u": "user", "user": "user", "g": "group", "group": "group",
    "m": "mask", "mask": "mask", "o": "other", "other": "other",
}


def _parse_ace(text: str, path: Path_, problems: _Collector) -> Ace | None:
    parts = text.strip().split(":")
    default = False
    if parts and parts[0] in {"d", "default"}:
        default, parts = True, parts[1:]
    if len(parts) == 2:
        kind_text, name, perms_text = parts[0], "", parts[1]
    elif len(parts) == 3:
        kind_text, name, perms_text = parts
    else:
        problems.error(path, f"{text!r} is not an ACL entry; write [d:]u|g|m:name:rwx, like u:deploy:rwx")
        return None
    kind = _ACE_KINDS.get(kind_text)
    if kind is None:
        problems.error(path, f"{text!r}: {kind_text!r} is not u, g, m or o")
        return None
    if kind in {"user", "group"} and not name:
        problems.error(path, f"{text!r} sets a base entry; use `mode` for the owner's and group's own bits")
        return None
    if kind == "other":
        problems.error(path, f"{text!r} sets the `other` entry; use `mode` for it")
        return None
    if kind == "mask" and name:
        problems.error(path, f"{text!r}: a mask entry takes no name, write m::rwx")
        return None
    if re.fullmatch(r"[0-7]", perms_text):
        bits = int(perms_text)
        perms = ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
    else:
        bad = [c for c in perms_text if c not in "rwx-"]
        if bad or not perms_text:
            problems.error(path, f"{text!r} contains {bad[0] if bad else 'nothing'!r}: use r, w, x, - or one digit")
            return None
        perms = ("r" if "r" in perms_text else "-") + ("w" if "w" in perms_text else "-")
        perms += "x" if "x" in perms_text else "-"
    return Ace(default=default, kind=kind, name=name, perms=perms)


def _parse_context(value: Any, path: Path_, problems: _Collector) -> SELinuxContext | None:
    if not isinstance(value, dict) or not value.get("type"):
        problems.error((*path, "type"), "an SELinux context needs at least `type`, like type: httpd_sys_content_t")
        return None
    # The reference agent reads the SELinux user from `name` (its docs say `user`): accept both.
    user = value.get("name", value.get("user"))
    if "user" in value and "name" not in value:
        problems.warn((*path, "user"), "CodeDeploy ignores `user` here and reads `name`; both are accepted")
    role = value.get("role")
    if role is not None:
        problems.error((*path, "role"), "SELinux roles cannot be set on files; remove `role`")
        return None
    range_text = value.get("range")
    if range_text is not None:
        problem = _check_selinux_range(str(range_text))
        if problem:
            problems.error((*path, "range"), problem)
            return None
    return SELinuxContext(
        type=str(value["type"]),
        user=None if user is None else str(user),
        range=None if range_text is None else str(range_text),
    )


def _check_selinux_range(text: str) -> str | None:
    """Reference 1.5: `s#[-s#][:c#[.c#](,c#[.c#])*]`, categories up to 1023, no duplicates."""
    levels, _, categories = text.partition(":")
    if ":" in text and not categories:
        return f"invalid range part {text}: nothing after ':'"
    low_text, dash, high_text = levels.partition("-")
    sensitivities = []
    for part in (low_text, high_text) if dash else (low_text,):
        match = re.fullmatch(r"s(\d+)", part)
        if not match:
            return f"invalid range part {text}: {part!r} is not a sensitivity like s0"
        sensitivities.append(int(match.group(1)))
    if len(sensitivities) == 2 and sensitivities[1] < sensitivities[0]:
        return f"invalid range {text}: the high sensitivity is below the low one"
    seen: set[int] = set()
    if categories:
        for item in categories.split(","):
            first, dot, last = item.partition(".")
            numbers = []
            for part in (first, last) if dot else (first,):
                match = re.fullmatch(r"c(\d+)", part)
                if not match or int(match.group(1)) > 1023:
                    return f"invalid category {part!r} in {text}: use c0 to c1023"
                numbers.append(int(match.group(1)))
            span = range(numbers[0], numbers[-1] + 1)
            if dot and numbers[1] <= numbers[0]:
                return f"invalid category range {item} in {text}"
            if seen.intersection(span):
                return f"duplicate categories in {text}"
            seen.update(span)
    return None


# --------------------------------------------------------------------------------------------------
# Checks that need the command's event list


def unknown_hook_problems(spec: AppSpec, events: list[str] | tuple[str, ...]) -> list[Problem]:
    """Hook names that will never run: not a lifecycle event and not a custom event of this command.

    The reference agent accepts any name and silently never runs a typo such as `AfterInstal`.
    """
    known = set(SCRIPTABLE_EVENTS) | set(events)
    problems = []
    for event in spec.hooks:
        if event not in known:
            hint = ""
            for candidate in sorted(SCRIPTABLE_EVENTS):
                if _close(event, candidate):
                    hint = f"; did you mean {candidate}?"
                    break
            message = f"{event} is not a lifecycle event, so it would never run{hint}"
            line = spec.hook_lines.get(event)
            where = f"{spec.filename}:{line}" if line else spec.filename
            problems.append(Problem(where, f"hooks.{event}", message))
    return problems


def _close(a: str, b: str) -> bool:
    """Edit distance at most 2, or equal ignoring case: enough to catch typos in event names."""
    if a.lower() == b.lower():
        return True
    if abs(len(a) - len(b)) > 2:
        return False
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1] <= 2
