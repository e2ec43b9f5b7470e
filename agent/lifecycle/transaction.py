"""Install as one transaction: carry out an install plan on the host, or leave the host as it was.

This differs from the reference agent where its users lose: everything is checked before the first change
(the plan, agent/lifecycle/install.py), and the previous revision's files are moved aside rather than
deleted, so a failure anywhere in Install (a copy, a permission, a missing tool) puts them back. A journal
written before each change lets a later run undo an Install that was cut off by a crash.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, cast

import structlog

from agent.errors import InstallError
from agent.lifecycle.hostview import lookup_group, lookup_user
from agent.lifecycle.layout import DeploymentDir, DeploymentRoot
from agent.lifecycle.steps import SEMANAGE_PREFIX, Copy, InstallPlan, MakeDir, SetPermissions

log = structlog.get_logger("agent.lifecycle.transaction")

#: A JSON string as `json.dumps` writes it (ASCII, escaped), without `dumps`'s per-call set-up.
_quote = cast(Callable[[object], str], json.encoder.encode_basestring_ascii)


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

    def write_move(self, path: str, backup: str) -> None:
        """`write(op="move_aside", path=path, backup=backup)`, the same line, without the general encoder."""
        self.handle.write(f'{{"op": "move_aside", "path": {_quote(path)}, "backup": {_quote(backup)}}}\n')
        self.handle.flush()

    def write_path(self, op: str, path: str) -> None:
        """`write(op=op, path=path)`, the same line, without the general encoder: one per installed file."""
        self.handle.write(f'{{"op": "{op}", "path": {_quote(path)}}}\n')
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


def _move(source: Path | str, destination: Path | str) -> None:
    """rename(2), or copy-then-delete when the two sit on different file systems."""
    try:
        os.rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        source, destination = Path(source), Path(destination)
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
    group = layout.group(group_id)
    journal = group.install_journal
    if not journal.exists():
        return False
    log.warning("install.recovering", group=group_id, journal=str(journal))
    _undo(journal)
    for leftover in group.path.glob("*/install-backup"):
        shutil.rmtree(leftover, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        group.cleanup_file.with_suffix(".new").unlink()
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
    group = layout.group(group_id)
    journal_path = group.install_journal
    if journal_path.exists():
        recover_interrupted_install(layout, group_id)
    cleanup_new = group.cleanup_file.with_suffix(".new")
    group.write_install_instructions(_instructions_json(plan))
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
        rolled_back = _rolled_back(exc)
        if rolled_back is None:
            raise
        raise rolled_back from exc
    # Commit: the new cleanup list replaces the old, the backups go, the journal goes last.
    os.replace(cleanup_new, group.cleanup_file)
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


def _rolled_back(exc: BaseException) -> InstallError | None:
    """The error that says Install failed and was undone, or None to let `exc` (a bug, a signal) through."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return InstallError(
            f"installing failed{where}: {exc.strerror or exc}; the previous revision's files were put back"
        )
    if isinstance(exc, subprocess.CalledProcessError):
        output = (exc.stderr or b"").decode(errors="replace").strip()
        return InstallError(
            f"{' '.join(map(str, exc.cmd))} failed with exit code {exc.returncode}: {output}; the previous "
            "revision's files were put back"
        )
    if isinstance(exc, InstallError):
        return InstallError(f"{exc}; the previous revision's files were put back")
    return None


class _Execution:
    """One Install in progress: its journal, its backup folder and what it has done so far."""

    def __init__(self, journal_path: Path, backup_dir: Path) -> None:
        shutil.rmtree(backup_dir, ignore_errors=True)
        backup_dir.mkdir(parents=True)
        self.backup_dir = backup_dir
        self.backup_text = str(backup_dir)
        self.journal = _Journal(journal_path)
        self.result = InstallResult()
        self.backups = 0

    def close(self) -> None:
        self.journal.close()

    def run(self, plan: InstallPlan, cleanup: TextIO) -> None:
        self.remove_previous(plan)
        for step in plan.steps:
            target = step.target_path
            if isinstance(step, MakeDir):
                self.journal.write_path("create_dir", target)
                os.mkdir(target)
                cleanup.write(f"{target}\n")
            else:
                if step.overwrite:
                    self.move_aside(Path(target))
                # Recorded before the copy, like the reference agent, so a half-done copy is cleaned up too.
                cleanup.write(f"{target}\n")
                self.journal.write_path("create_file", target)
                _copy(step)
            self.result.created.append(target)
        for permission_step in plan.permissions:
            _apply_permissions(permission_step, self.journal, cleanup)

    def remove_previous(self, plan: InstallPlan) -> None:
        for removal in plan.removals:
            path = removal.path
            try:
                info = os.lstat(path)  # one look: a link or a file is moved aside, a folder removed if empty
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISDIR(info.st_mode):
                self.move_aside(path)
                continue
            self.journal.write(
                op="remove_dir", path=path, mode=stat.S_IMODE(info.st_mode), uid=info.st_uid, gid=info.st_gid,
            )
            try:
                os.rmdir(path)
                self.result.removed += 1
            except OSError as exc:
                if exc.errno not in {errno.ENOTEMPTY, errno.EEXIST}:
                    raise
                self.result.kept_dirs += 1  # not empty: kept, as the reference agent does

    def move_aside(self, path: Path | str) -> None:
        self.backups += 1
        backup = f"{self.backup_text}/{self.backups:07d}"
        self.journal.write_move(str(path), backup)
        _move(path, backup)
        self.result.removed += 1


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_AS_ROOT = os.geteuid() == 0


def _copy(step: Copy) -> None:
    """`FileUtils.copy(preserve: true)`: content, mode, owner (as root) and times; a link stays a link."""
    source_path, target_path = step.source_path, step.target_path
    if step.symlink:
        os.symlink(os.readlink(source_path), target_path)
        return
    with open(source_path, "rb") as source:
        info = os.fstat(source.fileno())
        fd = os.open(target_path, _CREATE, 0o600)
        try:
            remaining = info.st_size
            offset = 0
            while remaining > 0:
                sent = os.sendfile(fd, source.fileno(), offset, min(remaining, 1 << 30))
                if sent == 0:
                    break
                offset += sent
                remaining -= sent
            if _AS_ROOT:
                os.fchown(fd, info.st_uid, info.st_gid)
            os.fchmod(fd, stat.S_IMODE(info.st_mode))
            os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(fd)


def _apply_permissions(step: SetPermissions, journal: _Journal, cleanup: TextIO) -> None:
    """Owner before mode, so setuid/setgid bits the mode asks for survive (chown clears them); symlinks
    only get their owner changed, never the mode or ACL of whatever they point at."""
    permission = step.permission
    target = step.target
    if permission.owner or permission.group:
        uid = lookup_user(permission.owner) if permission.owner else -1
        gid = lookup_group(permission.group) if permission.group else -1
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
            instructions.append({"type": "mkdir", "directory": step.target_path})
        else:
            instructions.append({"type": "copy", "source": step.source_path, "destination": step.target_path})
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
    return _indented_json(instructions)


def _indented_json(instructions: list[dict[str, object]]) -> str:
    """`json.dumps({"instructions": instructions}, indent=1) + "\\n"`, byte for byte. With `indent` the standard
    library encodes in pure Python (a quarter of a second for 10,000 files); here every string goes through the C
    encoder and the indentation is written once per field."""
    quote = _quote
    parts = []
    for instruction in instructions:
        kind = instruction.get("type")
        if kind == "copy" and len(instruction) == 3:
            parts.append(f'  {{\n   "type": "copy",\n   "source": {quote(instruction["source"])},\n   "destination": '
                         f'{quote(instruction["destination"])}\n  }}')
        elif kind == "mkdir" and len(instruction) == 2:
            parts.append(f'  {{\n   "type": "mkdir",\n   "directory": {quote(instruction["directory"])}\n  }}')
        elif all(isinstance(value, str) for value in instruction.values()):
            fields = ",\n".join(f"   {quote(key)}: {quote(value)}" for key, value in instruction.items())
            parts.append(f"  {{\n{fields}\n  }}")
        else:
            parts.append("\n".join("  " + line for line in json.dumps(instruction, indent=1).split("\n")))
    if not parts:
        return '{\n "instructions": []\n}\n'
    return '{\n "instructions": [\n' + ",\n".join(parts) + "\n ]\n}\n"
