"""The deployment root on disk: one folder per deployment, the instruction files, retention.

Same shape and file names as the reference agent (reference 3.1), so people who know where CodeDeploy keeps
things find them here, and so an operator's scripts that read `<group>_last_successful_install` still work:

```
<root>/
  <deployment-group-id>/<deployment-id>/
      bundle.tar                  the fetched bundle (a symlink for a local file; absent for a directory)
      deployment-archive/         the unpacked revision; hooks run with it as working directory
      logs/scripts.log            every hook's output, timestamped, [stdout]/[stderr]
      install-backup/             only while Install runs: the previous revision's files, moved aside
  deployment-instructions/
      <group>-cleanup             paths the last Install created, removed before the next one
      <group>-install.json        the last Install's instructions (copy, mkdir, permissions)
      <group>_last_successful_install   folder of the last deployment whose Install finished
      <group>_most_recent_install       folder of the last deployment that fetched its bundle
      <group>_installed_revision.json  fleetshift: the last deployment that succeeded end to end
      <group>-install-journal     fleetshift: only while Install runs, to undo it after a crash
  deployment-logs/codedeploy-agent-deployments.log   every deployment's script output, one file
  git-cache/                      bare clones of Git revision sources
```
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from agent.errors import HostStateError, UsageError
from contract.atomic import write_atomic
from contract.vocabulary import group_key
from contract.wire import InstalledRevision

log = structlog.get_logger("agent.lifecycle.layout")

INSTRUCTIONS_DIR = "deployment-instructions"
DEPLOYMENT_LOGS_DIR = "deployment-logs"
GIT_CACHE_DIR = "git-cache"
_RESERVED = frozenset({INSTRUCTIONS_DIR, DEPLOYMENT_LOGS_DIR, GIT_CACHE_DIR, "ongoing-deployment"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=,-]{0,254}$")


def check_path_id(value: str, what: str) -> str:
    """Group and deployment ids become folder names: refuse anything that could climb or collide."""
    if not _SAFE_ID.fullmatch(value) or value in _RESERVED or ".." in value:
        raise UsageError(
            f"{what} {value!r} cannot be used as a folder name: use letters, digits and . _ - @ + = , "
            f"(not {', '.join(sorted(_RESERVED))})"
        )
    return value


@dataclass(frozen=True)
class DeploymentDir:
    """One deployment's folder and what lives in it."""

    path: Path

    @property
    def bundle(self) -> Path:
        return self.path / "bundle.tar"

    @property
    def archive(self) -> Path:
        return self.path / "deployment-archive"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def script_log(self) -> Path:
        return self.logs / "scripts.log"

    @property
    def install_backup(self) -> Path:
        return self.path / "install-backup"


class DeploymentRoot:
    """Paths and records under one agent's deployment root. Several agents on one machine each have their
    own root; nothing here is shared between roots."""

    def __init__(self, root_dir: Path) -> None:
        self.root = root_dir

    def ensure(self) -> None:
        try:
            for folder in (self.root, self.instructions, self.root / DEPLOYMENT_LOGS_DIR):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostStateError(f"cannot create the deployment root {self.root}: {exc.strerror}") from exc

    # -- locations

    @property
    def instructions(self) -> Path:
        return self.root / INSTRUCTIONS_DIR

    @property
    def deployments_log(self) -> Path:
        return self.root / DEPLOYMENT_LOGS_DIR / "codedeploy-agent-deployments.log"

    @property
    def git_cache(self) -> Path:
        return self.root / GIT_CACHE_DIR

    def group(self, group_id: str) -> GroupRoot:
        """Everything of one deployment group under this root; refuses an id that cannot be a folder name."""
        return GroupRoot(self, check_path_id(group_id, "deployment group id"))

    # Shorthands for callers that hold a group id, not a group (agent/cli/local.py, the daemon, tests).

    def deployment(self, group_id: str, deployment_id: str) -> DeploymentDir:
        return self.group(group_id).deployment(deployment_id)

    def read_cleanup(self, group_id: str) -> list[str]:
        return self.group(group_id).read_cleanup()

    def installed(self, group_id: str) -> InstalledRevision | None:
        return self.group(group_id).installed()

    def installed_revisions(self) -> dict[str, InstalledRevision]:
        """The newest installed-revision record per `<application>/<group>` (contract's `group_key`): what this
        host runs, whatever the store says. The daemon reports it; `find_installed` looks one group up."""
        newest: dict[str, InstalledRevision] = {}
        for path in sorted(self.instructions.glob("*_installed_revision.json")):
            record = self.installed(path.name.removesuffix("_installed_revision.json"))
            if record is None:
                continue
            key = group_key(record.application, record.deployment_group)
            if key not in newest or record.installed_at > newest[key].installed_at:
                newest[key] = record
        return newest

    def find_installed(self, application: str, deployment_group: str) -> InstalledRevision | None:
        """By names rather than group id: the reconciler asks about `<application>/<group>`."""
        return self.installed_revisions().get(group_key(application, deployment_group))


@dataclass(frozen=True)
class GroupRoot:
    """One deployment group under a root: its deployment folders and its instruction files."""

    root: DeploymentRoot
    group_id: str

    # -- locations

    @property
    def path(self) -> Path:
        return self.root.root / self.group_id

    def deployment(self, deployment_id: str) -> DeploymentDir:
        return DeploymentDir(self.path / check_path_id(deployment_id, "deployment id"))

    def _instruction(self, suffix: str) -> Path:
        return self.root.instructions / f"{self.group_id}{suffix}"

    def _write(self, suffix: str, data: bytes | str, *, durable: bool = True) -> None:
        """Instruction files are replaced atomically (contract/atomic.py), readable by root only as before."""
        path = self._instruction(suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, durable=durable, mode=0o600)

    def write_install_instructions(self, text: str) -> None:
        """`<group>-install.json`: informs people, so not fsynced."""
        self._write("-install.json", text, durable=False)

    @property
    def cleanup_file(self) -> Path:
        return self._instruction("-cleanup")

    @property
    def install_journal(self) -> Path:
        return self._instruction("-install-journal")

    # -- instruction files

    def last_successful_install(self) -> DeploymentDir | None:
        """The deployment whose Install step last finished for this group (reference 2.2): its scripts run
        ApplicationStop and the traffic-blocking hooks of the next deployment."""
        return _read_pointer(self._instruction("_last_successful_install"))

    def most_recent_install(self) -> DeploymentDir | None:
        return _read_pointer(self._instruction("_most_recent_install"))

    def set_last_successful_install(self, deployment: DeploymentDir) -> None:
        self._write("_last_successful_install", str(deployment.path))

    def set_most_recent_install(self, deployment: DeploymentDir) -> None:
        self._write("_most_recent_install", str(deployment.path), durable=False)

    def read_cleanup(self) -> list[str]:
        """Paths the previous Install created, in creation order. A last line without its newline was cut
        off mid-write and is dropped, as the reference agent does (reference 7.3 case 29)."""
        try:
            text = self.cleanup_file.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostStateError(f"cannot read the cleanup list {self.cleanup_file}: {exc}") from exc
        lines = text.split("\n")
        return [line for line in lines[:-1] if line]

    # -- the revision the group has installed, for the daemon's status and for `last_successful`

    def record_installed(self, installed: InstalledRevision) -> None:
        self._write("_installed_revision.json", installed.to_json())

    def installed(self) -> InstalledRevision | None:
        path = self._instruction("_installed_revision.json")
        try:
            return InstalledRevision.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("layout.installed_record_unreadable", path=str(path), error=str(exc))
            return None

    # -- retention

    def prune_revisions(self, current: DeploymentDir, keep: int) -> list[Path]:
        """Keep at most `keep` deployment folders in the group, the current one included, never deleting
        the last successful install (reference 3.4). Oldest first, by modification time (the runner stamps
        each deployment folder with its clock when the command ends)."""
        if keep < 1:
            raise UsageError(f"max_revisions must be at least 1 (found {keep})")
        try:
            others = [entry for entry in self.path.iterdir() if entry.is_dir() and entry != current.path]
        except FileNotFoundError:
            return []
        extra = len(others) - keep + 1
        if extra <= 0:
            return []
        protected = self.last_successful_install()
        candidates = [entry for entry in others if protected is None or entry != protected.path]
        candidates.sort(key=lambda entry: entry.stat().st_mtime)
        removed = []
        for entry in candidates[:extra]:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        if removed:
            log.info("layout.pruned_revisions", group=self.group_id, removed=[p.name for p in removed], keep=keep)
        return removed


def _read_pointer(path: Path) -> DeploymentDir | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostStateError(f"cannot read {path}: {exc.strerror}") from exc
    return DeploymentDir(Path(text)) if text else None
