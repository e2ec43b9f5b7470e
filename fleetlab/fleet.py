"""A local fleet of the hello app behind a real HAProxy, driven by `reconcile --once`: what the end-to-end traffic
tests, `bench/bench_traffic.py` and the demo share.

Each host is a real `deploy-agent run` process (agent/local_fleet.py) serving the hello app
(examples/apps/hello) on its own loopback port; HAProxy (fleetlab/haproxy.py) has one server per host, named
like the host id, with health checks on `/healthz`. The app repo has four versions: v2 a new greeting, v3 a
bug that only host-1's environment triggers (ValidateService fails there), v4 the fix; and on request a fifth,
v5, a bad revision that passes every hook but answers 20 % of `GET /` with 500 (etc/faults.conf; `/healthz`
stays 200), which only a metric gate catches (issue 14: `/metrics`, fleetlab/prometheus.py). With `abrupt_stop`,
ApplicationStop kills the app with SIGKILL at once, so any request still sent to a stopping host fails: the
case traffic control exists for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.local_fleet import LocalAgent, stop_all
from fleetlab.haproxy import LocalHAProxy
from fleetlab.service import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent

#: Added to server.py in v3: a disk cache whose folder cannot be created where a file stands in the way.
V3_SERVER_PATCH = '''
# New in v3: a response cache on disk. The folder comes from the host's environment.
CACHE = Path(os.environ.get("HELLO_CACHE_DIR", HOME / "cache"))
CACHE.mkdir(parents=True, exist_ok=True)  # fails where something else already stands at that path
'''

#: v4 fixes v3: a file in the way of the configured cache folder no longer stops the service.
V4_SERVER_FIX = '''
# v4: a file where the configured cache folder should be is not fatal any more: use our own folder.
CACHE = Path(os.environ.get("HELLO_CACHE_DIR", HOME / "cache"))
if CACHE.exists() and not CACHE.is_dir():
    CACHE = HOME / "cache"
CACHE.mkdir(parents=True, exist_ok=True)
'''

#: v5's etc/faults.conf: every 5th GET / answers 500; /healthz (ValidateService, HAProxy) still answers 200.
V5_FAULTS = """\
# v5: a bad revision that passes ValidateService; only its error rate (GET /metrics) shows it.
error_rate=0.2
"""

#: ApplicationStop that gives the app no chance to finish its requests.
ABRUPT_STOP = """#!/usr/bin/env bash
# ApplicationStop, abrupt on purpose: SIGKILL, no graceful shutdown. Requests in flight on this host fail.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ -f "$PIDFILE" ]]; then
  kill -9 "$(cat "$PIDFILE")" 2>/dev/null || true
  log "killed hello (pid $(cat "$PIDFILE")) with SIGKILL"
fi
rm -f "$PIDFILE"
"""

GROUP = """\
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: {name}
spec:
  application: hello
  revision:
    git:
      repository: {repository}
      commit: {commit}
  targets:
    tagSets:
      - - key: app
          value: hello
  deploymentConfig: {config}
  autoRollback:
    enabled: {rollback}
    events: [DEPLOYMENT_FAILURE]
  options:
    fileExistsBehavior: OVERWRITE
"""

TRAFFIC = """\
  trafficControl:
    drainTimeout: {drain}
    healthyTimeout: 1m
    loadBalancers:
      - haproxy:
          runtimeApi: "{runtime_api}"
          backend: {backend}
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "fleetlab", "GIT_AUTHOR_EMAIL": "fleetlab@fleetshift.invalid",
           "GIT_COMMITTER_NAME": "fleetlab", "GIT_COMMITTER_EMAIL": "fleetlab@fleetshift.invalid"}
    done = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_app_repo(repo: Path, *, abrupt_stop: bool = False, with_v5: bool = False) -> dict[str, str]:
    """The hello app at v1 to v4, and v5 with `with_v5` (see the module docstring); returns version -> commit.

    v5 is asked for, not made by default: callers that expect HEAD to be v4 (the demo's three rollouts and
    tests/test_demo.py) keep working until they deploy v5 themselves.
    """
    shutil.copytree(EXAMPLES / "apps" / "hello", repo)
    if abrupt_stop:
        (repo / "scripts" / "stop.sh").write_text(ABRUPT_STOP)
    git(repo, "init", "-q", "-b", "main")
    commits = {"v1": commit_all(repo, "hello v1")}
    (repo / "app" / "VERSION").write_text("2\n")
    (repo / "config" / "hello.conf").write_text("hello again, fleet\n")
    commits["v2"] = commit_all(repo, "hello v2: new greeting")
    (repo / "app" / "VERSION").write_text("3\n")
    server = repo / "app" / "server.py"
    marker = 'GREETING = (HOME / "etc" / "hello.conf").read_text().strip()\n'
    server.write_text(server.read_text().replace(marker, marker + V3_SERVER_PATCH))
    commits["v3"] = commit_all(repo, "hello v3: add a disk cache")
    (repo / "app" / "VERSION").write_text("4\n")
    server.write_text(server.read_text().replace(V3_SERVER_PATCH, V4_SERVER_FIX))
    commits["v4"] = commit_all(repo, "hello v4: a file in the cache folder's way is not fatal")
    if not with_v5:
        return commits
    (repo / "app" / "VERSION").write_text("5\n")
    (repo / "config" / "faults.conf").write_text(V5_FAULTS)
    commits["v5"] = commit_all(repo, "hello v5: 20 % of requests answer 500, health check still 200")
    return commits


@dataclass
class Host(LocalAgent):
    """A simulated host running the hello service on its own loopback port."""

    port: int = 0

    @property
    def home(self) -> Path:
        return self.host_root / "srv" / "hello"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"


@dataclass
class TrafficFleet:
    """`count` hosts behind one HAProxy backend, a config repo, and `reconcile --once` to drive them."""

    workdir: Path
    count: int = 4
    #: The host whose environment breaks v3 (a file where v3's cache folder goes).
    faulty: str = "host-1"
    abrupt_stop: bool = True
    #: Agents' poll interval: short, so a test's rollouts are quick.
    poll_interval: str = "200ms"
    hosts: list[Host] = field(default_factory=list)
    haproxy: LocalHAProxy | None = None
    commits: dict[str, str] = field(default_factory=dict)
    group: str = "hello-lb"
    #: Host id -> EC2 instance id given to its agent (`--instance-id`), for ELBv2 target groups of type instance.
    instance_ids: dict[str, str] = field(default_factory=dict)
    #: Also commit v5 to the app repo (the bad revision only metrics catch; see `make_app_repo`).
    with_v5: bool = False

    @property
    def store_url(self) -> str:
        return f"file://{self.workdir / 'store'}"

    @property
    def config_repo(self) -> Path:
        return self.workdir / "config-repo"

    @property
    def app_repo(self) -> Path:
        return self.workdir / "app-repo"

    @property
    def url(self) -> str:
        assert self.haproxy is not None
        return self.haproxy.url

    def start(self) -> TrafficFleet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.commits = make_app_repo(self.app_repo, abrupt_stop=self.abrupt_stop, with_v5=self.with_v5)
        manifests = self.config_repo / "manifests"
        manifests.mkdir(parents=True)
        shutil.copy(EXAMPLES / "config-repo" / "manifests" / "application.yaml", manifests / "application.yaml")
        git(self.config_repo, "init", "-q", "-b", "main")
        commit_all(self.config_repo, "the application")
        for index in range(1, self.count + 1):
            base = self.workdir / f"host-{index}"
            base.mkdir(parents=True)
            host_id = f"host-{index}"
            host = Host(host_id, base, tags={"app": "hello"}, poll_interval=self.poll_interval, port=free_port(),
                        address="127.0.0.1", instance_id=self.instance_ids.get(host_id))
            cache = base / "cache"
            if host.host_id == self.faulty:
                cache.write_text("not a folder\n")
            host.env = {"HELLO_HOME": str(host.home), "HELLO_PORT": str(host.port), "HELLO_HOST": host.host_id,
                        "HELLO_RUN": str(host.run_dir), "HELLO_CACHE_DIR": str(cache)}
            self.hosts.append(host)  # before it starts: `stop()` then reaches it whatever happens next
            host.start(self.store_url)
        self._wait_registered()
        servers = [(h.host_id, "127.0.0.1", h.port) for h in self.hosts]
        self.haproxy = LocalHAProxy(self.workdir / "haproxy", servers, wait_up=False)
        self.haproxy.start()
        return self

    def _wait_registered(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        store = self.workdir / "store"
        while time.monotonic() < deadline:
            if all((store / "hosts" / h.host_id / "status.json").exists() for h in self.hosts):
                return
            for host in self.hosts:
                if host.process is not None and not host.running:
                    raise RuntimeError(f"agent {host.host_id} exited early; see {host.log}")
            time.sleep(0.1)
        raise RuntimeError("agents did not register in time")

    def manifest(self, version: str, *, config: str, traffic: bool | str, rollback: bool = True,
                 drain: str = "10s") -> str:
        """The group's manifest. `traffic`: True for this fleet's HAProxy, False for none, or a string: the
        whole `trafficControl:` block (indented two spaces, as under `spec:`), for other load balancers."""
        text = GROUP.format(name=self.group, repository=self.app_repo, commit=self.commits[version], config=config,
                            rollback="true" if rollback else "false")
        if isinstance(traffic, str):
            text += traffic
        elif traffic:
            assert self.haproxy is not None
            text += TRAFFIC.format(drain=drain, runtime_api=self.haproxy.runtime_api, backend=self.haproxy.backend)
        return text

    def commit(self, version: str, *, config: str = "CodeDeployDefault.OneAtATime", traffic: bool | str = True,
               rollback: bool = True, drain: str = "10s") -> str:
        path = self.config_repo / "manifests" / f"{self.group}.yaml"
        path.write_text(self.manifest(version, config=config, traffic=traffic, rollback=rollback, drain=drain))
        return commit_all(self.config_repo, f"deploy hello {version} ({config}, traffic control {traffic})")

    def reconcile_command(self, *args: str, **settings: str) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of `reconcile ARGS` against this fleet (settings: FLEETSHIFT_RECONCILE_*)."""
        command = [str(BIN / "reconcile"), "--repo", str(self.config_repo), "--ref", "main", "--path",
                   "manifests", "--store", self.store_url, "--log-format", "json", *(args or ("--once",))]
        env = {**os.environ, "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "200ms"}
        env.update({f"FLEETSHIFT_RECONCILE_{name.upper()}": value for name, value in settings.items()})
        return command, env

    def reconcile(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """`reconcile ARGS` against this fleet's config repo and store (`--once` by default)."""
        command, env = self.reconcile_command(*args)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        with (self.workdir / "reconcile.log").open("a") as log:
            log.write(f"$ reconcile {' '.join(args)}  -> exit {done.returncode}\n{done.stdout}\n{done.stderr}\n")
        return done

    def deploy(self, version: str, **options: object) -> subprocess.CompletedProcess[str]:
        self.commit(version, **options)  # type: ignore[arg-type]
        return self.reconcile("--once")

    def stop(self) -> None:
        stop_all(list(self.hosts))
        for host in self.hosts:
            pidfile = host.run_dir / "hello.pid"
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        if self.haproxy is not None:
            self.haproxy.stop()

    def __enter__(self) -> TrafficFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
