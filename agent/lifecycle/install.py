"""The Install step: plan what the appspec's `files` and `permissions` do, then do it as one transaction.

Planning (`plan_install`) follows the reference agent's algorithm exactly (reference 1.3, 1.5, 3.2): the
previous revision's files, listed in `<group>-cleanup`, are removed first (reverse order, non-empty folders
kept); `destination` is always a folder; a folder's contents merge into it; `source: /` is the whole
bundle; missing ancestors are created; a file already at a target that the previous revision did not
install is a conflict resolved by `file_exists_behavior`. It only reads the file system, through a
`FileSystemView`, so `deploy-agent validate` and the runner's early check can use it without side effects.

Execution (`execute_install`) differs from the reference agent where its users lose: everything is checked
before the first change, and the previous revision's files are moved aside rather than deleted, so a
failure anywhere in Install (a copy, a permission, a missing tool) puts them back. A journal written
before each change lets a later run undo an Install that was cut off by a crash.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import posixpath
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TextIO

import structlog

from agent.errors import InstallError, Problem
from agent.lifecycle.appspec import AppSpec, FileMapping, Permission
from agent.lifecycle.layout import DeploymentDir, DeploymentRoot, write_atomic
from contract.models import FileExistsBehavior

log = structlog.get_logger("agent.lifecycle.install")

Kind = Literal["missing", "file", "dir", "symlink", "other"]
SEMANAGE_PREFIX = "semanage\0"
_PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
_NAME_MAX = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255


# --------------------------------------------------------------------------------------------------
# What the planner may look at


class FileSystemView(Protocol):
    """Read-only questions the planner asks about the host (and the unpacked bundle)."""

    def kind(self, path: Path) -> Kind:
        """What is at `path` itself, not following a final symlink."""
        ...

    def is_dir(self, path: Path) -> bool:
        """True for a folder or a symlink to one (an admin's `/var/www -> /data/www` is a folder)."""
        ...

    def children(self, path: Path) -> list[str]:
        ...

    def tool_exists(self, name: str) -> bool:
        ...

    def user_exists(self, name: str) -> bool:
        ...

    def group_exists(self, name: str) -> bool:
        ...


class DiskView:
    """The real host, seen as it will be once the previous revision's files are removed."""

    def __init__(self, removed: frozenset[str] = frozenset()) -> None:
        self.removed = removed

    def kind(self, path: Path) -> Kind:
        if str(path) in self.removed:
            return "missing"
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except OSError:
            return "other"
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISREG(mode):
            return "file"
        return "other"

    def is_dir(self, path: Path) -> bool:
        if str(path) in self.removed:
            return False
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            return False

    def children(self, path: Path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def tool_exists(self, name: str) -> bool:
        return shutil.which(name) is not None

    def user_exists(self, name: str) -> bool:
        return _lookup_user(name) is not None

    def group_exists(self, name: str) -> bool:
        return _lookup_group(name) is not None


def _lookup_user(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else None


def _lookup_group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return int(name) if name.isdigit() else None


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Removal:
    """One line of the previous cleanup list, and what executing it will do."""

    path: str
    kind: Kind
    removed: bool


@dataclass(frozen=True)
class MakeDir:
    target: Path
    origin: FileMapping


@dataclass(frozen=True)
class Copy:
    source: Path
    target: Path
    symlink: bool
    origin: FileMapping
    overwrite: bool = False


@dataclass(frozen=True)
class SetPermissions:
    target: Path
    is_dir: bool
    is_symlink: bool
    permission: Permission


Step = MakeDir | Copy


@dataclass(frozen=True)
class InstallPlan:
    behavior: FileExistsBehavior
    removals: tuple[Removal, ...]
    steps: tuple[Step, ...]
    permissions: tuple[SetPermissions, ...]
    #: Files at copy targets that this group did not install: what `file_exists_behavior` decides about.
    conflicts: tuple[Path, ...]
    #: Under RETAIN, the existing files kept (and, like the reference agent, not recorded for cleanup).
    retained: tuple[Path, ...]
    #: Problems nothing on the host can fix before Install: the bundle or appspec must change.
    errors: tuple[Problem, ...]
    #: Problems a hook that runs before Install could fix (a user it creates, a file it removes).
    deferred: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    selinux_removals: tuple[str, ...] = ()

    @property
    def copies(self) -> list[Copy]:
        return [step for step in self.steps if isinstance(step, Copy)]

    @property
    def mkdirs(self) -> list[MakeDir]:
        return [step for step in self.steps if isinstance(step, MakeDir)]

    def all_problems(self) -> list[Problem]:
        return [*self.errors, *self.deferred]


def host_path(destination: str, host_root: Path | None) -> Path:
    """`/srv/app` -> `<host_root>/srv/app`, so several agents on one machine (and tests) stay in a sandbox."""
    normalized = posixpath.normpath(destination)
    if host_root is None:
        return Path(normalized)
    return host_root / normalized.lstrip("/")


def simulate_cleanup(entries: list[str], view: FileSystemView) -> tuple[list[Removal], list[str]]:
    """What removing the previous revision's files will do, without doing it: files and links go, folders
    go only once empty (reference 3.2), which depends on what else is in them right now."""
    removed: set[str] = set()
    removals: list[Removal] = []
    selinux: list[str] = []
    for line in reversed(entries):
        if line.startswith(SEMANAGE_PREFIX):
            selinux.append(line.removeprefix(SEMANAGE_PREFIX))
            continue
        path = Path(line)
        kind = view.kind(path)
        if kind == "missing":
            removals.append(Removal(line, kind, False))
        elif kind == "dir":
            alive = [child for child in view.children(path) if str(path / child) not in removed]
            empty = not alive
            if empty:
                removed.add(line)
            removals.append(Removal(line, kind, empty))
        else:
            removed.add(line)
            removals.append(Removal(line, kind, True))
    return removals, selinux


def plan_install(
    spec: AppSpec,
    archive_dir: Path,
    *,
    behavior: FileExistsBehavior,
    previous_cleanup: list[str],
    host_root: Path | None = None,
    view: Callable[[frozenset[str]], FileSystemView] = DiskView,
) -> InstallPlan:
    """The complete list of changes Install would make, and every reason it would fail."""
    removals, selinux = simulate_cleanup(previous_cleanup, view(frozenset()))
    disk = view(frozenset(r.path for r in removals if r.removed))
    planner = _Planner(spec, archive_dir, behavior, host_root, disk)
    for mapping in spec.files:
        planner.add_mapping(mapping)
    planner.add_permissions()
    return InstallPlan(
        behavior=behavior,
        removals=tuple(removals),
        steps=tuple(planner.steps),
        permissions=tuple(planner.permission_steps),
        conflicts=tuple(planner.conflicts),
        retained=tuple(planner.retained),
        errors=tuple(planner.errors),
        deferred=tuple(planner.deferred),
        warnings=tuple(planner.warnings),
        selinux_removals=tuple(selinux),
    )


class _Planner:
    def __init__(
        self,
        spec: AppSpec,
        archive_dir: Path,
        behavior: FileExistsBehavior,
        host_root: Path | None,
        disk: FileSystemView,
    ) -> None:
        self.spec = spec
        self.archive = archive_dir
        self.behavior = behavior
        self.host_root = host_root
        self.disk = disk
        self.bundle = DiskView()
        self.real_archive = os.path.realpath(archive_dir)
        self.steps: list[Step] = []
        self.copy_targets: dict[Path, Copy] = {}
        self.dir_targets: dict[Path, MakeDir] = {}
        self.conflicts: list[Path] = []
        self.retained: list[Path] = []
        self.errors: list[Problem] = []
        self.deferred: list[Problem] = []
        self.warnings: list[Problem] = []
        self.permission_steps: list[SetPermissions] = []

    def _where(self, line: int | None) -> str:
        return f"{self.spec.filename}:{line}" if line else self.spec.filename

    def error(self, origin: FileMapping, message: str) -> None:
        self.errors.append(Problem(self._where(origin.line), "files", message))

    # -- files

    def add_mapping(self, mapping: FileMapping) -> None:
        source = self.archive / mapping.source if mapping.source else self.archive
        destination = host_path(mapping.destination, self.host_root)
        source_kind = self.bundle.kind(source)
        label = mapping.source or "/"
        if mapping.source and not self._inside_bundle(source.parent):
            self.error(
                mapping,
                f"source {label!r} is reached through a symlink that leads out of the bundle; a link is installed "
                "as a link, so name the link itself, not a path through it",
            )
            return
        if source_kind == "missing":
            self.error(mapping, f"source {label!r} does not exist in the bundle")
            return
        if source_kind == "other":
            self.error(mapping, f"source {label!r} is not a file, folder or symlink")
            return
        if self._too_long(destination, mapping):
            return
        if self._bundle_folder(source):
            self.fill_ancestors(destination, mapping)
            self.add_dir(destination, mapping)
            self.copy_tree(source, destination, mapping, frozenset({os.path.realpath(source)}))
        else:
            target = destination / source.name
            self.fill_ancestors(target, mapping)
            self.add_copy(source, target, mapping, symlink=source_kind == "symlink")

    def copy_tree(self, source: Path, destination: Path, mapping: FileMapping, visiting: frozenset[str]) -> None:
        for name in self.bundle.children(source):
            child = source / name
            target = destination / name
            kind = self.bundle.kind(child)
            if self._bundle_folder(child):
                # Like the reference agent, a link to a folder inside the bundle is copied as a folder.
                real = os.path.realpath(child)
                if real in visiting:
                    self.error(mapping, f"{child.relative_to(self.archive)} is a symlink loop")
                    continue
                self.add_dir(target, mapping)
                self.copy_tree(child, target, mapping, visiting | {real})
            elif kind in {"file", "symlink"}:
                self.add_copy(child, target, mapping, symlink=kind == "symlink")
            else:
                self.error(mapping, f"{child.relative_to(self.archive)} is not a file, folder or symlink")

    def _inside_bundle(self, path: Path) -> bool:
        real = os.path.realpath(path)
        return real == self.real_archive or real.startswith(self.real_archive + os.sep)

    def _bundle_folder(self, path: Path) -> bool:
        """A folder of the bundle: a real one, or a link to one inside the bundle, which is copied as a folder
        like the reference agent does. A link that leads out of the bundle (`conf -> /etc/myapp`) or nowhere
        is not: it is copied as a link, and what it points at on this host is never read or copied."""
        kind = self.bundle.kind(path)
        if kind == "dir":
            return True
        return kind == "symlink" and self._inside_bundle(path) and self.bundle.is_dir(path)

    def _exists_as_dir(self, path: Path) -> bool:
        return path in self.dir_targets or self.disk.is_dir(path)

    def _at_root(self, path: Path) -> bool:
        return path == path.parent or (self.host_root is not None and path == self.host_root)

    def fill_ancestors(self, path: Path, mapping: FileMapping) -> None:
        missing = []
        ancestor = path.parent
        while not self._at_root(ancestor) and not self._exists_as_dir(ancestor):
            missing.append(ancestor)
            ancestor = ancestor.parent
        for folder in reversed(missing):
            self.add_dir(folder, mapping)

    def _too_long(self, target: Path, mapping: FileMapping) -> bool:
        text = str(target)
        if len(text.encode()) >= _PATH_MAX or any(len(part.encode()) > _NAME_MAX for part in target.parts):
            self.error(mapping, f"{self._show(target)[:80]}... is longer than this host's file system allows")
            return True
        return False

    def add_dir(self, target: Path, mapping: FileMapping) -> None:
        if target in self.dir_targets or self._too_long(target, mapping):
            return
        clash = self.copy_targets.get(target)
        if clash is not None:
            self.error(
                mapping,
                f"{self._show(target)} must be a folder for source {mapping.source or '/'!r}, but source "
                f"{clash.origin.source or '/'!r} installs a file there",
            )
            return
        if self.disk.is_dir(target):
            return  # an existing folder is used, not recorded, and never removed (reference 3.2)
        kind = self.disk.kind(target)
        if kind != "missing":
            self.error(mapping, f"{self._show(target)} is a {kind} on the host, but a folder is needed there")
            return
        step = MakeDir(target, mapping)
        self.dir_targets[target] = step
        self.steps.append(step)

    def add_copy(self, source: Path, target: Path, mapping: FileMapping, *, symlink: bool) -> None:
        if self._too_long(target, mapping):
            return
        label = source.relative_to(self.archive).as_posix()
        previous = self.copy_targets.get(target)
        if previous is not None:
            self.error(
                mapping,
                f"two sources install {self._show(target)}: {previous.source.relative_to(self.archive)} and "
                f"{label}; remove one of them from the files section",
            )
            return
        if target in self.dir_targets:
            self.error(mapping, f"{label} would install a file at {self._show(target)}, where a folder is created")
            return
        kind = self.disk.kind(target)
        overwrite = False
        if kind != "missing":
            self.conflicts.append(target)
            if self.behavior == FileExistsBehavior.RETAIN:
                self.retained.append(target)
                return
            if kind == "dir":
                self.error(mapping, f"{self._show(target)} is a folder on the host; {label} cannot replace it")
                return
            if self.behavior == FileExistsBehavior.DISALLOW:
                self.deferred.append(
                    Problem(
                        self._where(mapping.line),
                        "files",
                        f"{self._show(target)} already exists and was not installed by this deployment group "
                        "(file_exists_behavior DISALLOW); remove it, or set file_exists_behavior to OVERWRITE "
                        "or RETAIN",
                    )
                )
                return
            overwrite = True
        step = Copy(source, target, symlink, mapping, overwrite)
        self.copy_targets[target] = step
        self.steps.append(step)

    def _show(self, path: Path) -> str:
        if self.host_root is not None:
            with contextlib.suppress(ValueError):
                return "/" + path.relative_to(self.host_root).as_posix()
        return str(path)

    # -- permissions (reference 1.5)

    def add_permissions(self) -> None:
        targets: list[tuple[Path, bool, bool]] = []
        for step in self.steps:
            if isinstance(step, Copy):
                targets.append((step.target, False, step.symlink))
            else:
                targets.append((step.target, True, False))
        assigned: dict[Path, int] = {}
        tool_users: dict[str, list[int]] = {}
        for index, permission in enumerate(self.spec.permissions):
            where = self._where(permission.line)
            field_name = f"permissions[{index}]"
            self._check_permission_accounts(permission, where, field_name)
            if permission.acls:
                tool_users.setdefault("setfacl", []).append(index)
            if permission.context is not None:
                tool_users.setdefault("semanage", []).append(index)
                tool_users.setdefault("restorecon", []).append(index)
            obj = host_path(permission.object, self.host_root)
            matched: list[tuple[Path, bool, bool]] = []
            if obj in self.copy_targets:
                if "file" not in permission.types:
                    continue
                if permission.pattern != "**":
                    self.errors.append(
                        Problem(where, field_name, f"object {permission.object} is a file, so pattern must be "
                                f"'**' (found {permission.pattern!r})")
                    )
                    continue
                if permission.excepts:
                    self.errors.append(
                        Problem(where, field_name, f"object {permission.object} is a file; `except` applies to "
                                "folders only")
                    )
                    continue
                matched.append((obj, False, self.copy_targets[obj].symlink))
            elif self._exists_as_dir(obj):
                for target, is_dir, is_link in targets:
                    if obj not in target.parents:
                        continue
                    if ("directory" if is_dir else "file") not in permission.types:
                        continue
                    relative = target.relative_to(obj).as_posix()
                    if permission.pattern != "**" and not _simple_glob(permission.pattern, relative):
                        continue
                    if any(_simple_glob(pattern, relative) for pattern in permission.excepts):
                        continue
                    matched.append((target, is_dir, is_link))
            else:
                self.warnings.append(
                    Problem(where, field_name, f"object {permission.object} is neither installed by this revision "
                            "nor an existing folder, so this entry changes nothing")
                )
                continue
            for target, is_dir, is_link in matched:
                if target in assigned:
                    self.errors.append(
                        Problem(where, field_name, f"permissions for {self._show(target)} are set more than once "
                                f"(entries {assigned[target]} and {index}); make the patterns exclusive")
                    )
                    continue
                if not is_dir and any(ace.default for ace in permission.acls):
                    self.errors.append(
                        Problem(where, field_name, f"default ACL entries (d:...) apply to folders only, and "
                                f"{self._show(target)} is a file; restrict `type` to directory")
                    )
                    continue
                assigned[target] = index
                self.permission_steps.append(SetPermissions(target, is_dir, is_link, permission))
        self._check_permission_tools(tool_users)

    def _check_permission_tools(self, tool_users: dict[str, list[int]]) -> None:
        """One problem per missing tool, naming every entry that needs it: installing the tool fixes them all
        at once, so repeating the same advice per entry would only bury it."""
        for tool, indexes in tool_users.items():
            if self.disk.tool_exists(tool):
                continue
            what, key, package = _PERMISSION_TOOLS[tool]
            users = ", ".join(
                f"permissions[{index}] ({self._where(self.spec.permissions[index].line)})" for index in indexes
            )
            field_name = f"permissions[{indexes[0]}].{key}" if len(indexes) == 1 else "permissions"
            self.errors.append(
                Problem(
                    self._where(self.spec.permissions[indexes[0]].line),
                    field_name,
                    f"{what} need the {tool} command, which is not installed on this host (install the {package} "
                    f"package); needed by {users}",
                )
            )

    def _check_permission_accounts(self, permission: Permission, where: str, field_name: str) -> None:
        if permission.owner and not self.disk.user_exists(permission.owner):
            self.deferred.append(
                Problem(where, f"{field_name}.owner", f"user {permission.owner!r} does not exist on this host")
            )
        if permission.group and not self.disk.group_exists(permission.group):
            self.deferred.append(
                Problem(where, f"{field_name}.group", f"group {permission.group!r} does not exist on this host")
            )


#: Tool -> (what needs it, the appspec key, the package that has it on Debian/Ubuntu and RHEL alike).
_PERMISSION_TOOLS: dict[str, tuple[str, str, str]] = {
    "setfacl": ("ACLs", "acls", "acl"),
    "semanage": ("SELinux contexts", "context", "policycoreutils-python-utils"),
    "restorecon": ("SELinux contexts", "context", "policycoreutils"),
}


def _simple_glob(pattern: str, name: str) -> bool:
    """The reference agent's matcher: `*` is the only wildcard, and a name with a `/` never matches, so a
    pattern other than `**` only reaches the object's immediate children."""
    if "/" in name:
        return False
    regex = "".join(".*" if char == "*" else re.escape(char) for char in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


# --------------------------------------------------------------------------------------------------
# Execution


@dataclass
class InstallResult:
    created: list[str] = field(default_factory=list)
    removed: int = 0
    kept_dirs: int = 0


class _Journal:
    """Append-only record of every change, written before the change, so it can be undone in reverse
    even by another process after a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("a", encoding="utf-8")

    def write(self, **entry: object) -> None:
        self.handle.write(json.dumps(entry) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _read_journal(path: Path) -> list[dict[str, object]]:
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return []
    for line in lines[:-1]:  # a last line without newline was cut off before the change it announces
        with contextlib.suppress(json.JSONDecodeError):
            entries.append(json.loads(line))
    return entries


def _undo(journal_path: Path) -> None:
    """Put the host back as it was before the journal's first entry."""
    for entry in reversed(_read_journal(journal_path)):
        op, path = entry.get("op"), Path(str(entry.get("path")))
        try:
            if op == "create_file":
                if path.is_symlink() or path.is_file():
                    path.unlink()
            elif op == "create_dir":
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(path)
            elif op == "move_aside":
                backup = Path(str(entry["backup"]))
                if backup.is_symlink() or backup.exists():
                    if path.is_symlink() or path.is_file():
                        path.unlink()
                    _move(backup, path)
            elif op == "remove_dir":
                if not path.exists():
                    os.mkdir(path)
                    mode, uid, gid = (int(str(entry[k])) for k in ("mode", "uid", "gid"))
                    with contextlib.suppress(PermissionError):
                        os.chown(path, uid, gid)
                    os.chmod(path, mode)
            elif op == "selinux_add":
                subprocess.run(["semanage", "fcontext", "-d", str(path)], capture_output=True, check=False)
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                log.error("install.undo_failed", op=op, path=str(path), error=str(exc))


def _move(source: Path, destination: Path) -> None:
    """rename(2), or copy-then-delete when the two sit on different file systems."""
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if source.is_symlink():
            os.symlink(os.readlink(source), destination)
        else:
            shutil.copy2(source, destination, follow_symlinks=False)
            with contextlib.suppress(OSError):
                st = source.lstat()
                os.chown(destination, st.st_uid, st.st_gid, follow_symlinks=False)
        source.unlink()


def recover_interrupted_install(layout: DeploymentRoot, group_id: str) -> bool:
    """Undo an Install that a crash cut off, leaving the previous revision in place. True if one was found."""
    journal = layout.install_journal(group_id)
    if not journal.exists():
        return False
    log.warning("install.recovering", group=group_id, journal=str(journal))
    _undo(journal)
    for leftover in layout.group_dir(group_id).glob("*/install-backup"):
        shutil.rmtree(leftover, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        layout.cleanup_file(group_id).with_suffix(".new").unlink()
    journal.unlink()
    return True


def execute_install(
    plan: InstallPlan,
    *,
    layout: DeploymentRoot,
    group_id: str,
    deployment: DeploymentDir,
) -> InstallResult:
    """Make the plan true on the host, or leave the host as it was. Raises `InstallError`."""
    if plan.errors or plan.deferred:
        raise InstallError("; ".join(str(p) for p in plan.all_problems()))
    journal_path = layout.install_journal(group_id)
    if journal_path.exists():
        recover_interrupted_install(layout, group_id)
    cleanup_new = layout.cleanup_file(group_id).with_suffix(".new")
    write_atomic(layout.install_instructions_file(group_id), _instructions_json(plan), durable=False)
    execution = _Execution(journal_path, deployment.install_backup)
    try:
        with cleanup_new.open("w", encoding="utf-8") as cleanup:
            execution.run(plan, cleanup)
            cleanup.flush()
            os.fsync(cleanup.fileno())
    except BaseException as exc:
        execution.close()
        _undo(journal_path)
        shutil.rmtree(deployment.install_backup, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            cleanup_new.unlink()
        journal_path.unlink()
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            raise InstallError(
                f"installing failed{where}: {exc.strerror or exc}; the previous revision's files were put back"
            ) from exc
        if isinstance(exc, subprocess.CalledProcessError):
            output = (exc.stderr or b"").decode(errors="replace").strip()
            raise InstallError(
                f"{' '.join(map(str, exc.cmd))} failed with exit code {exc.returncode}: {output}; the previous "
                "revision's files were put back"
            ) from exc
        if isinstance(exc, InstallError):
            raise InstallError(f"{exc}; the previous revision's files were put back") from exc
        raise
    # Commit: the new cleanup list replaces the old, the backups go, the journal goes last.
    os.replace(cleanup_new, layout.cleanup_file(group_id))
    execution.close()
    shutil.rmtree(deployment.install_backup, ignore_errors=True)
    journal_path.unlink()
    for path in plan.selinux_removals:
        subprocess.run(["semanage", "fcontext", "-d", path], capture_output=True, check=False)
    result = execution.result
    log.info(
        "install.done",
        group=group_id,
        created=len(result.created),
        removed=result.removed,
        kept_dirs=result.kept_dirs,
        retained=len(plan.retained),
    )
    return result


class _Execution:
    """One Install in progress: its journal, its backup folder and what it has done so far."""

    def __init__(self, journal_path: Path, backup_dir: Path) -> None:
        shutil.rmtree(backup_dir, ignore_errors=True)
        backup_dir.mkdir(parents=True)
        self.backup_dir = backup_dir
        self.journal = _Journal(journal_path)
        self.result = InstallResult()
        self.backups = 0

    def close(self) -> None:
        self.journal.close()

    def run(self, plan: InstallPlan, cleanup: TextIO) -> None:
        self.remove_previous(plan)
        for step in plan.steps:
            if isinstance(step, MakeDir):
                self.journal.write(op="create_dir", path=str(step.target))
                os.mkdir(step.target)
                cleanup.write(f"{step.target}\n")
            else:
                if step.overwrite:
                    self.move_aside(step.target)
                # Recorded before the copy, like the reference agent, so a half-done copy is cleaned up too.
                cleanup.write(f"{step.target}\n")
                self.journal.write(op="create_file", path=str(step.target))
                _copy(step)
            self.result.created.append(str(step.target))
        for permission_step in plan.permissions:
            _apply_permissions(permission_step, self.journal, cleanup)

    def remove_previous(self, plan: InstallPlan) -> None:
        for removal in plan.removals:
            path = Path(removal.path)
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                self.move_aside(path)
            elif path.is_dir():
                info = path.stat()
                self.journal.write(
                    op="remove_dir", path=str(path), mode=stat.S_IMODE(info.st_mode), uid=info.st_uid,
                    gid=info.st_gid,
                )
                try:
                    os.rmdir(path)
                    self.result.removed += 1
                except OSError as exc:
                    if exc.errno not in {errno.ENOTEMPTY, errno.EEXIST}:
                        raise
                    self.result.kept_dirs += 1  # not empty: kept, as the reference agent does

    def move_aside(self, path: Path) -> None:
        self.backups += 1
        backup = self.backup_dir / f"{self.backups:07d}"
        self.journal.write(op="move_aside", path=str(path), backup=str(backup))
        _move(path, backup)
        self.result.removed += 1


def _copy(step: Copy) -> None:
    """`FileUtils.copy(preserve: true)`: content, mode, owner (as root) and times; a link stays a link."""
    if step.symlink:
        os.symlink(os.readlink(step.source), step.target)
        return
    info = os.stat(step.source)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    with open(step.source, "rb") as source:
        fd = os.open(step.target, flags, 0o600)
        try:
            remaining = info.st_size
            offset = 0
            while remaining > 0:
                sent = os.sendfile(fd, source.fileno(), offset, min(remaining, 1 << 30))
                if sent == 0:
                    break
                offset += sent
                remaining -= sent
            if os.geteuid() == 0:
                os.fchown(fd, info.st_uid, info.st_gid)
            os.fchmod(fd, stat.S_IMODE(info.st_mode))
        finally:
            os.close(fd)
    os.utime(step.target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _apply_permissions(step: SetPermissions, journal: _Journal, cleanup: TextIO) -> None:
    """Owner before mode, so setuid/setgid bits the mode asks for survive (chown clears them); symlinks
    only get their owner changed, never the mode or ACL of whatever they point at."""
    permission = step.permission
    target = step.target
    if permission.owner or permission.group:
        uid = _lookup_user(permission.owner) if permission.owner else -1
        gid = _lookup_group(permission.group) if permission.group else -1
        if uid is None or gid is None:
            raise InstallError(f"user {permission.owner!r} or group {permission.group!r} vanished during Install")
        os.chown(target, uid, gid, follow_symlinks=False)
    if step.is_symlink:
        return
    if permission.mode is not None:
        os.chmod(target, permission.mode)
    if permission.acls:
        mode = stat.S_IMODE(os.stat(target).st_mode)
        base = [
            f"user::{_rwx(mode >> 6)}",
            f"group::{_rwx(mode >> 3)}",
            f"other::{_rwx(mode)}",
        ]
        if step.is_dir and any(ace.default for ace in permission.acls):
            base += [f"default:user::{_rwx(mode >> 6)}", f"default:group::{_rwx(mode >> 3)}",
                     f"default:other::{_rwx(mode)}"]
        spec = ",".join(base + [str(ace) for ace in permission.acls])
        subprocess.run(["setfacl", "--set", spec, str(target)], capture_output=True, check=True)
    if permission.context is not None:
        context = permission.context
        command = ["semanage", "fcontext", "-a"]
        if context.user:
            command += ["-s", context.user]
        command += ["-t", context.type]
        if context.range:
            command += ["-r", context.range]
        real = os.path.realpath(target)
        journal.write(op="selinux_add", path=real)
        subprocess.run([*command, real], capture_output=True, check=True)
        subprocess.run(["restorecon", "-v", real], capture_output=True, check=True)
        cleanup.write(f"{SEMANAGE_PREFIX}{real}\n")


def _rwx(bits: int) -> str:
    return ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")


def _instructions_json(plan: InstallPlan) -> str:
    """The reference agent's `<group>-install.json` shape, for people and scripts that read it."""
    instructions: list[dict[str, object]] = []
    for step in plan.steps:
        if isinstance(step, MakeDir):
            instructions.append({"type": "mkdir", "directory": str(step.target)})
        else:
            instructions.append({"type": "copy", "source": str(step.source), "destination": str(step.target)})
    for permission_step in plan.permissions:
        permission = permission_step.permission
        if permission.owner or permission.group:
            instructions.append({"type": "chown", "file": str(permission_step.target), "owner": permission.owner,
                                 "group": permission.group})
        if permission.mode is not None:
            instructions.append({"type": "chmod", "file": str(permission_step.target),
                                 "mode": permission.mode_text()})
        if permission.acls:
            instructions.append({"type": "setfacl", "file": str(permission_step.target),
                                 "acl": [str(ace) for ace in permission.acls]})
        if permission.context is not None:
            instructions.append({"type": "semanage", "file": str(permission_step.target),
                                 "context": {"user": permission.context.user, "type": permission.context.type,
                                             "range": permission.context.range}})
    return json.dumps({"instructions": instructions}, indent=1) + "\n"


def iter_plan_lines(plan: InstallPlan, show: Callable[[Path], str] = str) -> Iterator[str]:
    """A readable rendering of a plan, for `validate` and logs."""
    for removal in plan.removals:
        if removal.removed:
            yield f"remove  {show(Path(removal.path))}"
        elif removal.kind == "dir":
            yield f"keep    {show(Path(removal.path))}/ (not empty)"
    for step in plan.steps:
        if isinstance(step, MakeDir):
            yield f"mkdir   {show(step.target)}/"
        else:
            verb = "replace" if step.overwrite else "copy   "
            link = ""
            if step.symlink:
                with contextlib.suppress(OSError):
                    link = f"  (symlink to {os.readlink(step.source)})"
            yield f"{verb} {show(step.target)}  <- {step.origin.source or '/'}{link}"
    for target in plan.retained:
        yield f"retain  {show(target)} (exists; RETAIN keeps it)"
    for permission_step in plan.permissions:
        permission = permission_step.permission
        parts = []
        if permission.owner or permission.group:
            parts.append(f"owner {permission.owner or ''}:{permission.group or ''}")
        if permission.mode is not None and not permission_step.is_symlink:
            parts.append(f"mode {permission.mode_text()}")
        if permission.acls and not permission_step.is_symlink:
            parts.append("acl " + ",".join(str(ace) for ace in permission.acls))
        if permission.context is not None and not permission_step.is_symlink:
            parts.append(f"context {permission.context.type}")
        if parts:
            yield f"chmod   {show(permission_step.target)}  {' '.join(parts)}"
