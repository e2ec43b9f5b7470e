"""The Install step: plan what the appspec's `files` and `permissions` do, then do it as one transaction.

Planning (`plan_install`) follows the reference agent's algorithm exactly (reference 1.3, 1.5, 3.2): the
previous revision's files, listed in `<group>-cleanup`, are removed first (reverse order, non-empty folders
kept); `destination` is always a folder; a folder's contents merge into it; `source: /` is the whole
bundle; missing ancestors are created; a file already at a target that the previous revision did not
install is a conflict resolved by `file_exists_behavior`. It only reads the file system, through a
`FileSystemView`, so `deploy-agent validate` and the runner's early check can use it without side effects.

The plan is data (agent/lifecycle/steps.py); `permissions` are planned in agent/lifecycle/permission_plan.py;
the plan is carried out as one journaled transaction by agent/lifecycle/transaction.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.errors import Problem
from agent.lifecycle.appspec import AppSpec, FileMapping
from agent.lifecycle.hostview import DiskView, FileSystemView, Kind, resolves_inside
from agent.lifecycle.permission_plan import plan_permissions
from agent.lifecycle.steps import (
    SEMANAGE_PREFIX,
    Copy,
    InstallPlan,
    MakeDir,
    Removal,
    SetPermissions,
    Step,
    host_path,
)
from contract.vocabulary import FileExistsBehavior

_PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
_NAME_MAX = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255


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
        # The lines are the transaction's own, already in `Path`'s spelling; only an odd one is re-spelled.
        path = line if _plain(line) else str(Path(line))
        kind = view.kind(path)
        if kind == "missing":
            removals.append(Removal(line, kind, False))
        elif kind == "dir":
            alive = [child for child in view.children(path) if _join(path, child) not in removed]
            empty = not alive
            if empty:
                removed.add(line)
            removals.append(Removal(line, kind, empty))
        else:
            removed.add(line)
            removals.append(Removal(line, kind, True))
    return removals, selinux


def _plain(path: str) -> bool:
    """True only if `str(Path(path)) == path`, told without making a `Path` (False may be over-careful)."""
    return "//" not in path and "/./" not in path and not path.endswith(("/", "/.")) and not path.startswith("./")


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
    planner = Planner(spec, archive_dir, behavior, host_root, disk)
    for mapping in spec.files:
        planner.add_mapping(mapping)
    plan_permissions(planner)
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


def _join(folder: str, name: str) -> str:
    return folder + name if folder.endswith("/") else f"{folder}/{name}"


class Planner:
    """Works out the `files` section's steps and problems; `plan_permissions` adds the permissions'.

    Paths are strings here, and a bundle folder is read with one `os.scandir` (names and kinds together): at
    10,000 files, `pathlib` joins, `relative_to` and a `stat` per entry were most of a plan's 1.2 s (issue 18).
    The plan's steps keep strings too (agent/lifecycle/steps.py)."""

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
        self.archive_text = str(archive_dir)
        self.behavior = behavior
        self.host_root = host_root
        self.host_root_text = str(host_root) if host_root is not None else None
        self.disk = disk
        self.bundle = DiskView()
        self.steps: list[Step] = []
        #: By target path (a string).
        self.copy_targets: dict[str, Copy] = {}
        self.dir_targets: dict[str, MakeDir] = {}
        self.conflicts: list[Path] = []
        self.retained: list[Path] = []
        self.errors: list[Problem] = []
        self.deferred: list[Problem] = []
        self.warnings: list[Problem] = []
        self.permission_steps: list[SetPermissions] = []

    def where(self, line: int | None) -> str:
        return f"{self.spec.filename}:{line}" if line else self.spec.filename

    def host_path(self, destination: str) -> Path:
        return host_path(destination, self.host_root)

    def error(self, origin: FileMapping, message: str) -> None:
        self.errors.append(Problem(self.where(origin.line), "files", message))

    def _in_bundle(self, path: str) -> str:
        """`path` relative to the unpacked bundle, for messages."""
        return path[len(self.archive_text) + 1:]

    # -- files

    def add_mapping(self, mapping: FileMapping) -> None:
        source = _join(self.archive_text, mapping.source) if mapping.source else self.archive_text
        destination = str(self.host_path(mapping.destination))
        source_kind = self.bundle.kind(source)
        label = mapping.source or "/"
        if mapping.source and not self._inside_bundle(os.path.dirname(source)):
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
        if self._bundle_folder(source, source_kind):
            self.fill_ancestors(destination, mapping)
            self.add_dir(destination, mapping)
            self.copy_tree(source, destination, mapping, frozenset({os.path.realpath(source)}))
        else:
            name = os.path.basename(source)
            target = _join(destination, name)
            if self._name_too_long(target, name, mapping):
                return
            self.fill_ancestors(target, mapping)
            self.add_copy(source, target, mapping, symlink=source_kind == "symlink")

    def copy_tree(self, source: str, destination: str, mapping: FileMapping, visiting: frozenset[str]) -> None:
        try:
            with os.scandir(source) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            entries = []
        for entry in entries:
            name, child = entry.name, entry.path
            target = _join(destination, name)
            kind = _entry_kind(entry)
            if self._bundle_folder(child, kind):
                # Like the reference agent, a link to a folder inside the bundle is copied as a folder.
                real = os.path.realpath(child)
                if real in visiting:
                    self.error(mapping, f"{self._in_bundle(child)} is a symlink loop")
                    continue
                if self._name_too_long(target, name, mapping):
                    continue
                self.add_dir(target, mapping, checked=True)
                self.copy_tree(child, target, mapping, visiting | {real})
            elif kind in {"file", "symlink"}:
                if self._name_too_long(target, name, mapping):
                    continue
                self.add_copy(child, target, mapping, symlink=kind == "symlink")
            else:
                self.error(mapping, f"{self._in_bundle(child)} is not a file, folder or symlink")

    def _inside_bundle(self, path: str) -> bool:
        return resolves_inside(path, self.archive_text)

    def _bundle_folder(self, path: str, kind: Kind) -> bool:
        """A folder of the bundle: a real one, or a link to one inside the bundle, which is copied as a folder
        like the reference agent does. A link that leads out of the bundle (`conf -> /etc/myapp`) or nowhere
        is not: it is copied as a link, and what it points at on this host is never read or copied."""
        if kind == "dir":
            return True
        return kind == "symlink" and self._inside_bundle(path) and self.bundle.is_dir(path)

    def exists_as_dir(self, path: Path | str) -> bool:
        text = str(path)
        return text in self.dir_targets or self.disk.is_dir(text)

    def _at_root(self, path: str) -> bool:
        return path == os.path.dirname(path) or path == self.host_root_text

    def fill_ancestors(self, path: str, mapping: FileMapping) -> None:
        missing = []
        ancestor = os.path.dirname(path)
        while not self._at_root(ancestor) and not self.exists_as_dir(ancestor):
            missing.append(ancestor)
            ancestor = os.path.dirname(ancestor)
        for folder in reversed(missing):
            self.add_dir(folder, mapping)

    def _too_long(self, target: str, mapping: FileMapping) -> bool:
        if len(target.encode()) >= _PATH_MAX or any(len(part.encode()) > _NAME_MAX for part in target.split("/")):
            self.error(mapping, f"{self.show(target)[:80]}... is longer than this host's file system allows")
            return True
        return False

    def _name_too_long(self, target: str, name: str, mapping: FileMapping) -> bool:
        """`_too_long` for a path whose folder was checked already: only its last name and its length are new.
        Most paths are far below the limits even at four bytes a character, and skip the encoding."""
        if len(target) * 4 < _PATH_MAX and len(name) * 4 <= _NAME_MAX:
            return False
        if len(target.encode()) >= _PATH_MAX or len(name.encode()) > _NAME_MAX:
            self.error(mapping, f"{self.show(target)[:80]}... is longer than this host's file system allows")
            return True
        return False

    def add_dir(self, target: str, mapping: FileMapping, *, checked: bool = False) -> None:
        if target in self.dir_targets or (not checked and self._too_long(target, mapping)):
            return
        clash = self.copy_targets.get(target)
        if clash is not None:
            self.error(
                mapping,
                f"{self.show(target)} must be a folder for source {mapping.source or '/'!r}, but source "
                f"{clash.origin.source or '/'!r} installs a file there",
            )
            return
        if self.disk.is_dir(target):
            return  # an existing folder is used, not recorded, and never removed (reference 3.2)
        kind = self.disk.kind(target)
        if kind != "missing":
            self.error(mapping, f"{self.show(target)} is a {kind} on the host, but a folder is needed there")
            return
        step = MakeDir(target, mapping)
        self.dir_targets[target] = step
        self.steps.append(step)

    def add_copy(self, source: str, target: str, mapping: FileMapping, *, symlink: bool) -> None:
        label = self._in_bundle(source)
        previous = self.copy_targets.get(target)
        if previous is not None:
            self.error(
                mapping,
                f"two sources install {self.show(target)}: {self._in_bundle(previous.source_path)} and "
                f"{label}; remove one of them from the files section",
            )
            return
        if target in self.dir_targets:
            self.error(mapping, f"{label} would install a file at {self.show(target)}, where a folder is created")
            return
        kind = self.disk.kind(target)
        overwrite = False
        if kind != "missing":
            self.conflicts.append(Path(target))
            if self.behavior == FileExistsBehavior.RETAIN:
                self.retained.append(Path(target))
                return
            if kind == "dir":
                self.error(mapping, f"{self.show(target)} is a folder on the host; {label} cannot replace it")
                return
            if self.behavior == FileExistsBehavior.DISALLOW:
                self.deferred.append(
                    Problem(
                        self.where(mapping.line),
                        "files",
                        f"{self.show(target)} already exists and was not installed by this deployment group "
                        "(file_exists_behavior DISALLOW); remove it, or set file_exists_behavior to OVERWRITE "
                        "or RETAIN",
                    )
                )
                return
            overwrite = True
        step = Copy(source, target, symlink, mapping, overwrite)
        self.copy_targets[target] = step
        self.steps.append(step)

    def show(self, path: Path | str) -> str:
        text = str(path)
        root = self.host_root_text
        if root is not None and (text == root or text.startswith(root.rstrip("/") + "/")):
            return "/" + text[len(root.rstrip("/")):].lstrip("/")
        return text


def _entry_kind(entry: os.DirEntry[str]) -> Kind:
    """What `DiskView.kind` says of the entry, from the folder listing (no `stat` on most file systems)."""
    try:
        if entry.is_symlink():
            return "symlink"
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        if entry.is_file(follow_symlinks=False):
            return "file"
    except OSError:
        return "other"
    return "other"


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


__all__ = [
    "Copy",
    "InstallPlan",
    "MakeDir",
    "Removal",
    "SetPermissions",
    "iter_plan_lines",
    "plan_install",
    "simulate_cleanup",
]
