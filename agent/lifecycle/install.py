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
from agent.lifecycle.hostview import DiskView, FileSystemView, resolves_inside
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
from contract.models import FileExistsBehavior

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


class Planner:
    """Works out the `files` section's steps and problems; `plan_permissions` adds the permissions'."""

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
        self.steps: list[Step] = []
        self.copy_targets: dict[Path, Copy] = {}
        self.dir_targets: dict[Path, MakeDir] = {}
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

    # -- files

    def add_mapping(self, mapping: FileMapping) -> None:
        source = self.archive / mapping.source if mapping.source else self.archive
        destination = self.host_path(mapping.destination)
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
        return resolves_inside(path, self.archive)

    def _bundle_folder(self, path: Path) -> bool:
        """A folder of the bundle: a real one, or a link to one inside the bundle, which is copied as a folder
        like the reference agent does. A link that leads out of the bundle (`conf -> /etc/myapp`) or nowhere
        is not: it is copied as a link, and what it points at on this host is never read or copied."""
        kind = self.bundle.kind(path)
        if kind == "dir":
            return True
        return kind == "symlink" and self._inside_bundle(path) and self.bundle.is_dir(path)

    def exists_as_dir(self, path: Path) -> bool:
        return path in self.dir_targets or self.disk.is_dir(path)

    def _at_root(self, path: Path) -> bool:
        return path == path.parent or (self.host_root is not None and path == self.host_root)

    def fill_ancestors(self, path: Path, mapping: FileMapping) -> None:
        missing = []
        ancestor = path.parent
        while not self._at_root(ancestor) and not self.exists_as_dir(ancestor):
            missing.append(ancestor)
            ancestor = ancestor.parent
        for folder in reversed(missing):
            self.add_dir(folder, mapping)

    def _too_long(self, target: Path, mapping: FileMapping) -> bool:
        text = str(target)
        if len(text.encode()) >= _PATH_MAX or any(len(part.encode()) > _NAME_MAX for part in target.parts):
            self.error(mapping, f"{self.show(target)[:80]}... is longer than this host's file system allows")
            return True
        return False

    def add_dir(self, target: Path, mapping: FileMapping) -> None:
        if target in self.dir_targets or self._too_long(target, mapping):
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

    def add_copy(self, source: Path, target: Path, mapping: FileMapping, *, symlink: bool) -> None:
        if self._too_long(target, mapping):
            return
        label = source.relative_to(self.archive).as_posix()
        previous = self.copy_targets.get(target)
        if previous is not None:
            self.error(
                mapping,
                f"two sources install {self.show(target)}: {previous.source.relative_to(self.archive)} and "
                f"{label}; remove one of them from the files section",
            )
            return
        if target in self.dir_targets:
            self.error(mapping, f"{label} would install a file at {self.show(target)}, where a folder is created")
            return
        kind = self.disk.kind(target)
        overwrite = False
        if kind != "missing":
            self.conflicts.append(target)
            if self.behavior == FileExistsBehavior.RETAIN:
                self.retained.append(target)
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

    def show(self, path: Path) -> str:
        if self.host_root is not None:
            with contextlib.suppress(ValueError):
                return "/" + path.relative_to(self.host_root).as_posix()
        return str(path)


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
