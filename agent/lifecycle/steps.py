"""The install plan's vocabulary: what Install will remove, create, copy and chmod, as plain data.

Made by the planner (agent/lifecycle/install.py, agent/lifecycle/permission_plan.py), shown by
`deploy-agent validate`, carried out by the transaction (agent/lifecycle/transaction.py).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from agent.errors import Problem
from agent.lifecycle.appspec import FileMapping, Permission
from agent.lifecycle.hostview import Kind
from contract.vocabulary import FileExistsBehavior

#: Cleanup-list lines that record an SELinux file context rule rather than a path.
SEMANAGE_PREFIX = "semanage\0"


@dataclass(frozen=True)
class Removal:
    """One line of the previous cleanup list, and what executing it will do."""

    path: str
    kind: Kind
    removed: bool


@dataclass(frozen=True)
class MakeDir:
    #: The folder to create, as a string: a plan of 10,000 files made and carried out through `pathlib` spent
    #: most of its time building `Path` objects (issue 18), so the planner and the transaction use strings and
    #: `target` makes a `Path` for whoever wants one.
    target_path: str
    origin: FileMapping

    @property
    def target(self) -> Path:
        return Path(self.target_path)


@dataclass(frozen=True)
class Copy:
    #: Where the file is in the unpacked bundle, and where it goes, as strings (see `MakeDir`).
    source_path: str
    target_path: str
    symlink: bool
    origin: FileMapping
    overwrite: bool = False

    @property
    def source(self) -> Path:
        return Path(self.source_path)

    @property
    def target(self) -> Path:
        return Path(self.target_path)


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
