"""Planning the appspec's `permissions` (reference 1.5): which installed paths each entry reaches, and every
reason it cannot work (a pattern on a file, a path set twice, a default ACL on a file, a missing account
or tool). Pure like the rest of the plan: it reads the `Planner`'s results and the host view, and adds
`SetPermissions` steps and problems to the planner.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import Problem
from agent.lifecycle.appspec import Permission
from agent.lifecycle.steps import Copy, SetPermissions

if TYPE_CHECKING:
    from agent.lifecycle.install import Planner

#: An installed path: (target, is a folder, is a symlink); strings, like the planner's (agent/lifecycle/install.py).
_Target = tuple[str, bool, bool]

#: Tool -> (what needs it, the appspec key, the package that has it on Debian/Ubuntu and RHEL alike).
_PERMISSION_TOOLS: dict[str, tuple[str, str, str]] = {
    "setfacl": ("ACLs", "acls", "acl"),
    "semanage": ("SELinux contexts", "context", "policycoreutils-python-utils"),
    "restorecon": ("SELinux contexts", "context", "policycoreutils"),
}


def plan_permissions(planner: Planner) -> None:
    """Add a `SetPermissions` step for every installed path an entry reaches, in appspec order."""
    targets = _installed_targets(planner)
    assigned: dict[str, int] = {}
    tool_users: dict[str, list[int]] = {}
    for index, permission in enumerate(planner.spec.permissions):
        where = planner.where(permission.line)
        field_name = f"permissions[{index}]"
        _check_accounts(planner, permission, where, field_name)
        for tool in _tools_needed(permission):
            tool_users.setdefault(tool, []).append(index)
        for target, is_dir, is_link in _matched_targets(planner, permission, targets, where, field_name):
            if target in assigned:
                planner.errors.append(
                    Problem(where, field_name, f"permissions for {planner.show(target)} are set more than once "
                            f"(entries {assigned[target]} and {index}); make the patterns exclusive")
                )
                continue
            if not is_dir and any(ace.default for ace in permission.acls):
                planner.errors.append(
                    Problem(where, field_name, f"default ACL entries (d:...) apply to folders only, and "
                            f"{planner.show(target)} is a file; restrict `type` to directory")
                )
                continue
            assigned[target] = index
            planner.permission_steps.append(SetPermissions(Path(target), is_dir, is_link, permission))
    _check_tools(planner, tool_users)


def _installed_targets(planner: Planner) -> list[_Target]:
    return [
        (step.target_path, False, step.symlink) if isinstance(step, Copy) else (step.target_path, True, False)
        for step in planner.steps
    ]


def _tools_needed(permission: Permission) -> list[str]:
    tools = ["setfacl"] if permission.acls else []
    if permission.context is not None:
        tools += ["semanage", "restorecon"]
    return tools


def _matched_targets(
    planner: Planner, permission: Permission, targets: list[_Target], where: str, field_name: str
) -> list[_Target]:
    """The installed paths the entry reaches: its object itself when that is an installed file, else what
    the revision installs below the object folder that `type`, `pattern` and `except` let through."""
    obj = str(planner.host_path(permission.object))
    if obj in planner.copy_targets:
        return _file_object(planner, permission, obj, where, field_name)
    if not planner.exists_as_dir(obj):
        planner.warnings.append(
            Problem(where, field_name, f"object {permission.object} is neither installed by this revision "
                    "nor an existing folder, so this entry changes nothing")
        )
        return []
    below = obj if obj.endswith("/") else obj + "/"
    matched = []
    for target, is_dir, is_link in targets:
        if not target.startswith(below):
            continue
        if ("directory" if is_dir else "file") not in permission.types:
            continue
        relative = target[len(below):]
        if permission.pattern != "**" and not _simple_glob(permission.pattern, relative):
            continue
        if any(_simple_glob(pattern, relative) for pattern in permission.excepts):
            continue
        matched.append((target, is_dir, is_link))
    return matched


def _file_object(planner: Planner, permission: Permission, obj: str, where: str, field_name: str) -> list[_Target]:
    if "file" not in permission.types:
        return []
    if permission.pattern != "**":
        planner.errors.append(
            Problem(where, field_name, f"object {permission.object} is a file, so pattern must be "
                    f"'**' (found {permission.pattern!r})")
        )
        return []
    if permission.excepts:
        planner.errors.append(
            Problem(where, field_name, f"object {permission.object} is a file; `except` applies to "
                    "folders only")
        )
        return []
    return [(obj, False, planner.copy_targets[obj].symlink)]


def _check_tools(planner: Planner, tool_users: dict[str, list[int]]) -> None:
    """One problem per missing tool, naming every entry that needs it: installing the tool fixes them all
    at once, so repeating the same advice per entry would only bury it."""
    permissions = planner.spec.permissions
    for tool, indexes in tool_users.items():
        if planner.disk.tool_exists(tool):
            continue
        what, key, package = _PERMISSION_TOOLS[tool]
        users = ", ".join(f"permissions[{index}] ({planner.where(permissions[index].line)})" for index in indexes)
        field_name = f"permissions[{indexes[0]}].{key}" if len(indexes) == 1 else "permissions"
        planner.errors.append(
            Problem(
                planner.where(permissions[indexes[0]].line),
                field_name,
                f"{what} need the {tool} command, which is not installed on this host (install the {package} "
                f"package); needed by {users}",
            )
        )


def _check_accounts(planner: Planner, permission: Permission, where: str, field_name: str) -> None:
    if permission.owner and not planner.disk.user_exists(permission.owner):
        planner.deferred.append(
            Problem(where, f"{field_name}.owner", f"user {permission.owner!r} does not exist on this host")
        )
    if permission.group and not planner.disk.group_exists(permission.group):
        planner.deferred.append(
            Problem(where, f"{field_name}.group", f"group {permission.group!r} does not exist on this host")
        )


def _simple_glob(pattern: str, name: str) -> bool:
    """The reference agent's matcher: `*` is the only wildcard, and a name with a `/` never matches, so a
    pattern other than `**` only reaches the object's immediate children."""
    if "/" in name:
        return False
    regex = "".join(".*" if char == "*" else re.escape(char) for char in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None
