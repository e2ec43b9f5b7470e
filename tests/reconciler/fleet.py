"""Test helpers for the reconciler shell: manifests in a real Git config repo, and in-process agents.

`ScriptedAgents` speak the real store protocol (registration, status with heartbeats, reading
`commands/<host>.json`, reporting the command's result) without running hooks, so the executor, lease and
pass-loop tests can drive whole rollouts in milliseconds. The end-to-end tests use real `deploy-agent run`
processes instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from contract.keys import command_key, registration_key, status_key
from contract.models import (
    CommandProgress,
    CommandStatus,
    HostCommand,
    HostRegistration,
    HostStatus,
    InstalledRevision,
)
from contract.store import Store
from reconciler.desired.loader import load_git
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import GitSource
from tests.gitrepo import ConfigRepo

APPLICATION = """\
apiVersion: deploy/v1
kind: Application
metadata:
  name: hello
"""

GROUP = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: {name}
spec:
  application: hello
  revision:
{revision}
  targets:
    tagSets:
      - - key: app
          value: {tag}
  deploymentConfig: {config}
  autoRollback:
    enabled: {rollback}
    events: [DEPLOYMENT_FAILURE]
"""


def local_revision(version: int) -> str:
    return f"    local:\n      path: bundles/v{version}.zip\n      bundleType: zip"


def git_revision(repository: Path | str, commit: str) -> str:
    return f"    git:\n      repository: {repository}\n      commit: {commit}"


def group_manifest(
    name: str = "web",
    *,
    revision: str | None = None,
    config: str = "CodeDeployDefault.OneAtATime",
    rollback: bool = True,
    tag: str = "hello",
) -> str:
    return GROUP.format(
        name=name,
        revision=revision or local_revision(1),
        config=config,
        rollback="true" if rollback else "false",
        tag=tag,
    )


class Config:
    """A real Git config repo with manifests under `manifests/`."""

    def __init__(self, path: Path) -> None:
        self.repo = ConfigRepo(path)
        self.path = path
        self.repo.write("manifests/application.yaml", APPLICATION)

    def set_group(self, manifest: str, name: str = "web", message: str = "update") -> str:
        self.repo.write(f"manifests/{name}.yaml", manifest)
        return self.repo.commit(message)

    def remove_group(self, name: str, message: str = "remove") -> str:
        self.repo.remove(f"manifests/{name}.yaml")
        return self.repo.commit(message)

    def desired(self, ref: str = "main") -> Desired:
        return load_git(GitSource(str(self.path), ref, "manifests"))

    def args(self) -> list[str]:
        return ["--repo", str(self.path), "--ref", "main", "--path", "manifests"]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ScriptedAgents:
    """Agents as the store sees them. `answer()` plays one poll of every agent: a new command generation is
    run "instantly" and reported Succeeded, or Failed when `failing` maps the host to a fragment of the
    command's revision identity (like a ValidateService that fails only with that revision)."""

    store: Store
    hosts: list[str]
    tags: dict[str, str] = field(default_factory=lambda: {"app": "hello"})
    failing: dict[str, str] = field(default_factory=dict)
    #: Every command each host ran: (deployment id, generation, revision identity).
    runs: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)
    _status: dict[str, HostStatus] = field(default_factory=dict)

    def register(self) -> None:
        when = now()
        for host in self.hosts:
            registration = HostRegistration(
                host_id=host, tags=self.tags, platform="linux", hostname=host, agent_version="test",
                registered_at=when,
            )
            self.store.put(registration_key(host), registration.to_json())
            status = HostStatus(host_id=host, heartbeat_at=when, agent_version="test", heartbeat_interval_seconds=1)
            self._status[host] = status
            self.store.put(status_key(host), status.to_json())
            self.runs.setdefault(host, [])

    def heartbeat(self, at: datetime | None = None) -> None:
        when = at or now()
        for host in self.hosts:
            status = self._status[host].model_copy(update={"heartbeat_at": when})
            self._status[host] = status
            self.store.put(status_key(host), status.to_json())

    def command(self, host: str) -> HostCommand | None:
        stored = self.store.get(command_key(host))
        return HostCommand.model_validate_json(stored.data) if stored else None

    def answer(self) -> list[str]:
        """Run every new command once; returns the hosts that ran one."""
        ran = []
        for host in self.hosts:
            command = self.command(host)
            status = self._status[host]
            last = status.command
            if command is None or (last is not None and last.generation >= command.generation):
                continue
            when = now()
            ok = host not in self.failing or self.failing[host] not in command.revision.identity()
            self.runs[host].append((command.deployment_id, command.generation, command.revision.identity()))
            installed = dict(status.installed)
            key = f"{command.application}/{command.deployment_group}"
            if ok:
                installed[key] = InstalledRevision(
                    application=command.application, deployment_group=command.deployment_group,
                    revision=command.revision, deployment_id=command.deployment_id, installed_at=when,
                )
            progress = CommandProgress(
                deployment_id=command.deployment_id, generation=command.generation,
                application=command.application, deployment_group=command.deployment_group,
                status=CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED,
                started_at=when, ended_at=when, message=None if ok else "ValidateService failed",
            )
            status = status.model_copy(update={"heartbeat_at": when, "command": progress, "installed": installed})
            self._status[host] = status
            self.store.put(status_key(host), status.to_json())
            ran.append(host)
        return ran

    def dispatched_twice(self) -> dict[str, list[tuple[str, int, str]]]:
        """Hosts that ran one deployment more than once (the thing crash safety must rule out)."""
        twice = {}
        for host, runs in self.runs.items():
            ids = [deployment_id for deployment_id, _, _ in runs]
            if len(ids) != len(set(ids)):
                twice[host] = runs
        return twice


def settings_overrides(poll: str = "50ms", lease: str = "10s", timeout: str = "60s") -> dict[str, str]:
    return {"pollInterval": poll, "leaseDuration": lease, "timeout": timeout, "heartbeatTimeout": "30s"}


__all__ = ["Config", "ScriptedAgents", "git_revision", "group_manifest", "local_revision", "now"]


@contextmanager
def answering(agents: ScriptedAgents, every: float = 0.02) -> Iterator[None]:
    """The agents answer their commands from a thread, every `every` seconds, while the block runs: what a
    `--once` that waits for its rollout to settle needs of them."""
    stop = threading.Event()

    def answer() -> None:
        while not stop.wait(every):
            agents.answer()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
