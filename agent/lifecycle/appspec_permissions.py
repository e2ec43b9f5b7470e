"""The appspec's `permissions` section (reference 1.5): owner, group, mode, ACL entries and SELinux context,
parsed and checked on their own, with every problem located; applied by agent/lifecycle/transaction.py."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal

from agent.lifecycle.appspec_yaml import (
    Collector,
    Path_,
    did_you_mean_key,
    key_text,
    kind,
    path_too_long,
    scalar_text,
    shown,
    too_big,
)

PERMISSION_TYPES: frozenset[str] = frozenset({"file", "directory"})
_PERMISSION_KEYS = frozenset({"object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context"})


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



def parse_permissions(value: Any, problems: Collector) -> list[Permission]:
    parsed: list[Permission] = []
    if value is None:
        return parsed
    if not isinstance(value, list):
        problems.error(("permissions",), f"must be a list of `- object: ...` entries, found {kind(value)}")
        return parsed
    for index, entry in enumerate(value):
        permission = _parse_permission(entry, ("permissions", index), problems)
        if permission is not None:
            parsed.append(permission)
    return parsed


def _string_list(value: Any, path: Path_, problems: Collector, what: str) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        texts = [scalar_text(item, (*path, index), problems, what) for index, item in enumerate(value)]
        return None if None in texts else tuple(text for text in texts if text is not None)
    problems.error(path, f"must be a list of {what}, like [{what.split(maxsplit=1)[0]}], found {kind(value)}")
    return None


def _text(entry: dict[Any, Any], key: str, path: Path_, problems: Collector, what: str) -> str | None:
    value = entry.get(key)
    return None if value is None else scalar_text(value, (*path, key), problems, what)


def _parse_permission(entry: Any, path: Path_, problems: Collector) -> Permission | None:
    if not isinstance(entry, dict):
        problems.error(path, f"must be a mapping with at least an object, found {kind(entry)}")
        return None
    errors_before = len(problems.errors)
    obj = _text(entry, "object", path, problems, "an absolute path")
    object_text = "" if obj is None else obj.strip()
    if obj is None and entry.get("object") is not None:
        pass  # already reported
    elif not object_text:
        problems.error((*path, "object"), "missing; name the installed file or folder the permission applies to")
    elif not object_text.startswith("/"):
        problems.error((*path, "object"), f"{shown(object_text)} must be an absolute path on the host")
    elif too_long := path_too_long(object_text):
        problems.error((*path, "object"), too_long)
    pattern = _text(entry, "pattern", path, problems, "a name pattern")
    pattern_text = "**" if pattern is None else pattern
    excepts = _string_list(entry.get("except"), (*path, "except"), problems, "name patterns")
    types_raw = _string_list(entry.get("type"), (*path, "type"), problems, "file or directory")
    types: frozenset[str] = PERMISSION_TYPES
    if types_raw:
        unknown = [t for t in types_raw if t not in PERMISSION_TYPES]
        if unknown:
            problems.error((*path, "type"), f"only file and directory are allowed, found {', '.join(unknown)}")
        types = frozenset(types_raw)
    owner = (_text(entry, "owner", path, problems, "a user name") or "").strip() or None
    group = (_text(entry, "group", path, problems, "a group name") or "").strip() or None
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
    for key in map(key_text, entry):
        if key not in _PERMISSION_KEYS:
            problems.warn((*path, key), f"unknown key, ignored{did_you_mean_key(key, _PERMISSION_KEYS)}")
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


def _parse_mode(value: Any, path: Path_, problems: Collector) -> int | None:
    """Reference 1.5: `to_s`, left-padded to three digits, one to four octal digits."""
    if too_big(value) or not isinstance(value, str | int | float) or isinstance(value, bool):
        problems.error(path, f"must be one to four octal digits, like 644 or 2755, found {kind(value)}")
        return None
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
        problems.error(path, f"{kind(value)} is too long: a mode has one to four octal digits, like 644 or 2755")
        return None
    bad = [c for c in text if c not in "01234567"]
    if bad:
        problems.error(path, f"{kind(value)} contains {bad[0]!r}: a mode has only the digits 0-7, like 644")
        return None
    return int(text, 8)


_ACE_KINDS: dict[str, Literal["user", "group", "mask", "other"]] = {
    "u": "user", "user": "user", "g": "group", "group": "group",
    "m": "mask", "mask": "mask", "o": "other", "other": "other",
}


def _parse_ace(text: str, path: Path_, problems: Collector) -> Ace | None:
    parts = text.strip().split(":")
    default = False
    if parts and parts[0] in {"d", "default"}:
        default, parts = True, parts[1:]
    if len(parts) == 2:
        kind_text, name, perms_text = parts[0], "", parts[1]
    elif len(parts) == 3:
        kind_text, name, perms_text = parts
    else:
        problems.error(path, f"{shown(text)} is not an ACL entry; write [d:]u|g|m:name:rwx, like u:deploy:rwx")
        return None
    kind = _ACE_KINDS.get(kind_text)
    if kind is None:
        problems.error(path, f"{shown(text)}: {kind_text!r} is not u, g, m or o")
        return None
    if kind in {"user", "group"} and not name:
        problems.error(path, f"{shown(text)} sets a base entry; use `mode` for the owner's and group's own bits")
        return None
    if kind == "other":
        problems.error(path, f"{shown(text)} sets the `other` entry; use `mode` for it")
        return None
    if kind == "mask" and name:
        problems.error(path, f"{shown(text)}: a mask entry takes no name, write m::rwx")
        return None
    if re.fullmatch(r"[0-7]", perms_text):
        bits = int(perms_text)
        perms = ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
    else:
        bad = [c for c in perms_text if c not in "rwx-"]
        if bad or not perms_text:
            found = bad[0] if bad else "nothing"
            problems.error(path, f"{shown(text)} contains {found!r}: use r, w, x, - or one digit")
            return None
        perms = ("r" if "r" in perms_text else "-") + ("w" if "w" in perms_text else "-")
        perms += "x" if "x" in perms_text else "-"
    return Ace(default=default, kind=kind, name=name, perms=perms)


def _parse_context(value: Any, path: Path_, problems: Collector) -> SELinuxContext | None:
    if not isinstance(value, dict) or not value.get("type"):
        problems.error((*path, "type"), "an SELinux context needs at least `type`, like type: httpd_sys_content_t")
        return None
    errors_before = len(problems.errors)
    type_text = _text(value, "type", path, problems, "an SELinux type")
    # The reference agent reads the SELinux user from `name` (its docs say `user`): accept both.
    user_key = "name" if "name" in value else "user"
    user = _text(value, user_key, path, problems, "an SELinux user")
    if "user" in value and "name" not in value:
        problems.warn((*path, "user"), "CodeDeploy ignores `user` here and reads `name`; both are accepted")
    role = value.get("role")
    if role is not None:
        problems.error((*path, "role"), "SELinux roles cannot be set on files; remove `role`")
        return None
    range_text = _text(value, "range", path, problems, "an SELinux range like s0-s0:c0.c1023")
    if range_text is not None:
        problem = _check_selinux_range(range_text)
        if problem:
            problems.error((*path, "range"), problem)
            return None
    if type_text is None or len(problems.errors) > errors_before:
        return None
    return SELinuxContext(type=type_text, user=user, range=range_text)


def _check_selinux_range(text: str) -> str | None:
    """Reference 1.5: `s#[-s#][:c#[.c#](,c#[.c#])*]`, categories up to 1023, no duplicates."""
    levels, _, categories = text.partition(":")
    if ":" in text and not categories:
        return f"invalid range part {text}: nothing after ':'"
    low_text, dash, high_text = levels.partition("-")
    sensitivities = []
    for part in (low_text, high_text) if dash else (low_text,):
        match = re.fullmatch(r"s([0-9]{1,9})", part)
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
                match = re.fullmatch(r"c([0-9]{1,9})", part)
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
