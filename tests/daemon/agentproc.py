"""Real `deploy-agent run` processes for the daemon's end-to-end tests, and the bundles they deploy.

Every hook script appends `<event> <deployment id>` to a log file (to count runs) and can be held at a
gate: it waits until the test creates `<gates>/<event>`, so a test can watch the store while an event is in
progress instead of racing a fast script.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from contract.keys import command_key, status_key
from contract.store import Store
from contract.store.docs import read_document, write_document
from contract.wire import HostCommand, HostStatus, LocalLocation, Revision

AGENT = [sys.executable, "-m", "agent"]
HOOK_EVENTS = ("BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
T = TypeVar("T")


def make_bundle(path: Path, *, failing: str | None = None) -> Path:
    """A directory bundle installing app/ to /srv/app, with one hook script per event."""
    (path / "app").mkdir(parents=True)
    (path / "app" / "index.html").write_text(f"revision {path.name}\n")
    hooks = "\n".join(f"  {event}:\n    - location: scripts/hook.sh\n      timeout: 60" for event in HOOK_EVENTS)
    (path / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /srv/app\nhooks:\n" + hooks + "\n"
    )
    (path / "scripts").mkdir()
    fail = ""
    if failing:
        fail = f'if [ "$LIFECYCLE_EVENT" = "{failing}" ]; then echo "{failing} is broken" >&2; exit 3; fi'
    script = path / "scripts" / "hook.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$LIFECYCLE_EVENT $DEPLOYMENT_ID" >> "$HOOK_LOG"
        echo $$ > "$HOOK_PIDS/$LIFECYCLE_EVENT"
        if [ -n "$HOOK_GATES" ]; then
          while [ ! -e "$HOOK_GATES/$LIFECYCLE_EVENT" ]; do sleep 0.02; done
        fi
        echo "ran $LIFECYCLE_EVENT of $DEPLOYMENT_ID"
        {fail}
        """))
    script.chmod(0o755)
    return path


def make_command(host_id: str, generation: int, bundle: Path, deployment_id: str | None = None) -> HostCommand:
    return HostCommand(
        host_id=host_id,
        generation=generation,
        deployment_id=deployment_id or f"d-{generation:09d}",
        application="hello",
        deployment_group="production",
        deployment_group_id="dg-production",
        revision=Revision(local=LocalLocation(path=str(bundle), bundle_type="directory")),
        created_at=datetime.now(UTC),
    )


def wait_for(check: Callable[[], T | None], what: str, *, timeout: float = 20.0,
             process: subprocess.Popen[bytes] | None = None) -> T:
    """Poll with a deadline; fail with `what` (and the agent's output if it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the agent exited with {process.returncode} while waiting for {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class AgentHost:
    """One simulated host: its own deployment root, host root, hook log and gates."""

    host_id: str
    base: Path
    store: Store
    env: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    #: The URL the agent is given, when it differs from the test's (S3: the agent finds the server through
    #: AWS_ENDPOINT_URL, the test through ?endpoint=).
    agent_store_url: str | None = None

    def __post_init__(self) -> None:
        for folder in (self.root_dir, self.host_root, self.gates, self.pids):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def root_dir(self) -> Path:
        return self.base / "root"

    @property
    def host_root(self) -> Path:
        return self.base / "hostroot"

    @property
    def gates(self) -> Path:
        return self.base / "gates"

    @property
    def pids(self) -> Path:
        return self.base / "pids"

    @property
    def hook_log(self) -> Path:
        return self.base / "hooks.log"

    def hook_runs(self) -> list[str]:
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []

    def open_gate(self, event: str) -> None:
        (self.gates / event).touch()

    def arguments(self, *extra: str) -> list[str]:
        return [*AGENT, "--log-format", "json", "run", "--host-id", self.host_id,
                "--store", self.agent_store_url or self.store.url,
                "--root-dir", str(self.root_dir), "--host-root", str(self.host_root), "--tag", "app=hello",
                "--poll-interval", "100ms", *extra]

    def environment(self) -> dict[str, str]:
        # FLEETSHIFT_AGENT_* from the developer's shell must not leak into the agents under test.
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("FLEETSHIFT_AGENT_")}
        return {**inherited, "FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": "100ms", **self.env,
                "HOOK_LOG": str(self.hook_log), "HOOK_PIDS": str(self.pids),
                "HOOK_GATES": str(self.gates) if self.gated else ""}

    @property
    def agent_log(self) -> Path:
        return self.base / "agent.log"

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        """A long-running agent; its JSON log lines go to `agent_log`, readable while it runs."""
        with self.agent_log.open("ab") as output:
            return subprocess.Popen(self.arguments(*extra), env=self.environment(), stdout=output,
                                    stderr=subprocess.STDOUT)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.agent_log.read_text().splitlines() if self.agent_log.exists() else []:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def once(self, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.arguments("--once", *extra), env=self.environment(), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def once_in_process(self, *extra: str, now: Callable[[], datetime]) -> int:
        """`--once` in this process, with the agent's wall clock given: for tests about time (stale heartbeats)
        that would otherwise wait it out. The agent uses `self.store`, so this is for file stores."""
        from agent.cli.main import build_parser
        from agent.daemon.cli import make_runner, settings_from_args
        from agent.daemon.loop import Agent
        from agent.daemon.statefile import root_lock

        args = build_parser().parse_args(self.arguments("--once", *extra)[len(AGENT):])
        environ = {name: value for name, value in self.environment().items() if name.startswith("FLEETSHIFT_AGENT_")}
        settings = settings_from_args(args, environ=environ)
        with root_lock(settings.root_dir):
            agent = Agent(settings, self.store, make_runner(settings), threading.Event(), take_over=args.take_over,
                          now=now)
            return int(agent.run_once())

    def send(self, command: HostCommand) -> None:
        write_document(self.store, command_key(self.host_id), command)

    def status(self) -> HostStatus | None:
        found = read_document(self.store, status_key(self.host_id), HostStatus)
        return found.document if found is not None else None

    def kill_hooks(self) -> None:
        """Hooks run in their own process group, so killing the agent leaves a gated hook waiting."""
        for pid_file in self.pids.iterdir():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)


def stop_agent(process: subprocess.Popen[bytes], *, timeout: float = 20) -> int:
    """SIGTERM, then wait for the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("the agent did not exit on SIGTERM") from None
