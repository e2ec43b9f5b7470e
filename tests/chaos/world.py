"""The pieces of the chaos test: bundles whose hooks log every run, real agent processes that can be killed with
SIGKILL and restarted, a TCP proxy in front of the S3 server that can refuse connections (a store outage), and
a seeded kill schedule.

Nothing here sleeps for a fixed time except the outage itself; waits poll a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
HOOK_EVENTS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")


def make_bundle(path: Path, version: str, *, failing: str | None = None) -> Path:
    """A directory bundle installing `app/` to /srv/app. Every hook appends `<event> <deployment id>` to
    $HOOK_LOG first (the proof of what ran, written by the hooks themselves, surviving an agent's SIGKILL since
    hooks run in their own process group), then sleeps a little so a kill often lands mid-hook."""
    (path / "app").mkdir(parents=True)
    (path / "app" / "VERSION").write_text(f"{version}\n")
    hooks = "\n".join(f"  {event}:\n    - location: scripts/hook.sh\n      timeout: 60" for event in HOOK_EVENTS)
    (path / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /srv/app\nhooks:\n" + hooks + "\n"
    )
    (path / "scripts").mkdir()
    fail = ""
    if failing:
        fail = f'if [ "$LIFECYCLE_EVENT" = "{failing}" ]; then echo "{version} is broken by design" >&2; exit 3; fi'
    script = path / "scripts" / "hook.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$LIFECYCLE_EVENT $DEPLOYMENT_ID" >> "$HOOK_LOG"
        sleep 0.2
        {fail}
        exit 0
        """))
    script.chmod(0o755)
    return path


@dataclass
class Host:
    """One simulated host: a real `deploy-agent run` with its own deployment root, host root and hook log."""

    host_id: str
    base: Path
    store_url: str
    env: dict[str, str] = field(default_factory=dict)
    #: More `deploy-agent run` options (`--instance-id i-...`).
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def hook_log(self) -> Path:
        return self.base / "hooks.log"

    @property
    def agent_log(self) -> Path:
        return self.base / "agent.log"

    def hook_runs(self) -> list[tuple[str, str]]:
        """(event, deployment id) for every hook run on this host, in order."""
        if not self.hook_log.exists():
            return []
        runs = []
        for line in self.hook_log.read_text().splitlines():
            event, _, deployment_id = line.partition(" ")
            runs.append((event, deployment_id))
        return runs

    def in_hook(self) -> bool:
        """Whether a hook is running under the agent right now (the agent has a child process)."""
        if not self.running:
            return False
        assert self.process is not None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return False
        return bool(children.split())

    def log_count(self, event: str) -> int:
        """How many times the agent logged `event` (JSON lines, all its runs)."""
        if not self.agent_log.exists():
            return 0
        return self.agent_log.read_text(errors="replace").count(f'"event": "{event}"')

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        (self.base / "hostroot").mkdir(parents=True, exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSHIFT_")}
        env = {**inherited, "FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": "100ms", **self.env,
               "HOOK_LOG": str(self.hook_log)}
        command = [str(BIN / "deploy-agent"), "--log-format", "json", "run", "--host-id", self.host_id,
                   "--store", self.store_url, "--root-dir", str(self.base / "root"),
                   "--host-root", str(self.base / "hostroot"), "--poll-interval", "100ms",
                   "--tag", "app=hello", *self.args]
        with self.agent_log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                            start_new_session=True)
        self.starts += 1

    def kill9(self) -> None:
        """SIGKILL the agent process alone (its hooks, in their own process groups, live on as after a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


class OutageProxy:
    """A TCP proxy in front of the S3 server. `down()` closes the listening socket and every open connection, so
    clients get connection refused/reset (the store is unreachable) until `up()` listens on the same port again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.05)
        stopped = threading.Event()
        self._listener, self._stopped = listener, stopped
        threading.Thread(target=self._accept, args=(listener, stopped), daemon=True).start()

    def down(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if stopped.is_set():
                    client.close()
                    upstream.close()
                    return
                self._connections.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(target)
            source.close()


@dataclass(frozen=True)
class Schedule:
    """Where the chaos strikes, drawn from one seed. Phases are the revisions, in order.

    - `reconciler_kills`: (phase, seconds after that phase's reconciler process started) -> SIGKILL it.
    - `agent_kills`: (phase, seconds after the phase started, host index, seconds until it is restarted).
    - `outage`: (phase, seconds after the phase started, duration), or None.
    A kill whose reconciler (or phase) ended before it was due moves to the next phase.
    """

    seed: int
    reconciler_kills: tuple[tuple[int, float], ...]
    agent_kills: tuple[tuple[int, float, int, float], ...]
    outage: tuple[int, float, float] | None

    @classmethod
    def draw(cls, seed: int, *, phases: int, hosts: int, outage: bool) -> Schedule:
        rng = random.Random(seed)
        reconciler_kills = sorted(
            (rng.randrange(phases), round(rng.uniform(0.4, 2.5), 2)) for _ in range(rng.randint(3, 5))
        )
        agent_kills = sorted(
            (rng.randrange(1, phases), round(rng.uniform(0.3, 3.0), 2), rng.randrange(hosts),
             round(rng.uniform(0.0, 1.0), 2))
            for _ in range(rng.randint(2, 3))
        )
        outage_at = (rng.randrange(phases), round(rng.uniform(0.3, 2.0), 2), 3.0) if outage else None
        return cls(seed, tuple(reconciler_kills), tuple(agent_kills), outage_at)

    def describe(self) -> str:
        return (f"seed={self.seed} reconciler_kills(phase, s after start)={list(self.reconciler_kills)} "
                f"agent_kills(phase, s after phase start, host index, restart after s)={list(self.agent_kills)} "
                f"outage(phase, s after phase start, duration)={self.outage}")
