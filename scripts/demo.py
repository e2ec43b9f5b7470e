#!/usr/bin/env python3
"""The fleetshift demo: a real rollout to local agents, a failure and an automatic rollback, in about a minute.

Everything here is the product used as a person would use it: a real Git config repo, a real Git app repo,
`deploy-agent run` processes (one per simulated host, each with its own deployment root and install folder),
and `reconcile --once` / `reconcile status` as commands. Nothing is faked; host-4's "bad disk" in v3 is a
real file standing where v3 expects a folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agent.local_fleet import LocalAgent, stop_all

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLES = ROOT / "examples"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"\033[1m==> {title}\033[0m" if sys.stdout.isatty() else f"==> {title}")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@fleetshift.invalid",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@fleetshift.invalid"}
    done = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# The app repository: v1, v2 and a v3 with a bug that only one host's environment triggers


V3_SERVER_PATCH = '''
# New in v3: a response cache on disk. The folder comes from the host's environment.
CACHE = Path(os.environ.get("HELLO_CACHE_DIR", HOME / "cache"))
CACHE.mkdir(parents=True, exist_ok=True)  # fails where something else already stands at that path
'''


def make_app_repo(workdir: Path) -> dict[str, str]:
    repo = workdir / "app-repo"
    shutil.copytree(EXAMPLES / "apps" / "hello", repo)
    git(repo, "init", "-q", "-b", "main")
    commits = {"v1": commit_all(repo, "hello v1")}
    (repo / "app" / "VERSION").write_text("2\n")
    (repo / "config" / "hello.conf").write_text("hello again, fleet\n")
    commits["v2"] = commit_all(repo, "hello v2: new greeting")
    (repo / "app" / "VERSION").write_text("3\n")
    server = repo / "app" / "server.py"
    text = server.read_text()
    marker = 'GREETING = (HOME / "etc" / "hello.conf").read_text().strip()\n'
    server.write_text(text.replace(marker, marker + V3_SERVER_PATCH))
    commits["v3"] = commit_all(repo, "hello v3: add a disk cache")
    return commits


# --------------------------------------------------------------------------------------------------
# The config repository: the example manifests plus a demo deployment group


GROUP = """\
# yaml-language-server: $schema=../../../schemas/manifest.json
apiVersion: deploy/v1
kind: DeploymentGroup
metadata:
  name: hello-demo
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
      - - key: env
          value: demo
  deploymentConfig: canary-then-half
  autoRollback:
    enabled: true
    events: [DEPLOYMENT_FAILURE]
  options:
    fileExistsBehavior: OVERWRITE
"""


STORY = {
    "v1": "config canary-then-half: one canary host and a 3 s bake, then zone a, a 2 s bake, then zone b, "
          "never below half the fleet healthy",
    "v2": "a new greeting; same rollout rules, ApplicationStop now runs v1's stop script on each host",
    "v3": "v3 adds a disk cache; on host-1 (the canary) a file stands where the cache folder goes, so v3 "
          "crashes there and ValidateService fails",
}


def make_config_repo(workdir: Path, app_repo: Path, commit: str) -> Path:
    repo = workdir / "config-repo"
    manifests = repo / "manifests"
    manifests.mkdir(parents=True)
    for name in ("application.yaml", "deployment-configs.yaml"):
        shutil.copy(EXAMPLES / "config-repo" / "manifests" / name, manifests / name)
    (manifests / "hello-demo.yaml").write_text(GROUP.format(repository=app_repo, commit=commit))
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "deploy hello v1")
    return repo


def set_revision(config_repo: Path, app_repo: Path, commit: str, message: str) -> str:
    (config_repo / "manifests" / "hello-demo.yaml").write_text(GROUP.format(repository=app_repo, commit=commit))
    return commit_all(config_repo, message)


# --------------------------------------------------------------------------------------------------
# Agents


@dataclass
class Host(LocalAgent):
    """A simulated host running the hello service on its own loopback port."""

    port: int = 0

    @property
    def home(self) -> Path:
        return self.host_root / "srv" / "hello"


def start_agents(workdir: Path, store: str, count: int, faulty: str) -> list[Host]:
    hosts = []
    for index in range(1, count + 1):
        base = workdir / f"host-{index}"
        base.mkdir(parents=True)
        cache = base / "cache"
        host = Host(f"host-{index}", base, tags={"app": "hello", "env": "demo"},
                    zone="a" if index <= (count + 1) // 2 else "b", port=free_port())
        if host.host_id == faulty:
            cache.write_text("not a folder\n")  # the "bad disk": v3's cache folder cannot be created here
        host.env = {
            "HELLO_HOME": str(host.home),
            "HELLO_PORT": str(host.port),
            "HELLO_HOST": host.host_id,
            "HELLO_RUN": str(base / "run"),
            "HELLO_CACHE_DIR": str(cache),
        }
        host.start(store)
        hosts.append(host)
    return hosts


def wait_registered(store_dir: Path, hosts: list[Host], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((store_dir / "hosts" / h.host_id / "status.json").exists() for h in hosts):
            return
        for host in hosts:
            if host.process and not host.running:
                raise SystemExit(f"agent {host.host_id} exited early; see {host.log}")
        time.sleep(0.1)
    raise SystemExit("agents did not register in time")


def stop_everything(hosts: list[Host]) -> None:
    stop_all(list(hosts))
    for host in hosts:
        pidfile = host.base / "run" / "hello.pid"  # the services the hooks started
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


# --------------------------------------------------------------------------------------------------


def reconcile(*args: str, config_repo: Path, store: str, check: bool = False) -> int:
    command = [str(BIN / "reconcile"), "--repo", str(config_repo), "--ref", "main", "--path", "manifests",
               "--store", store, "--log-format", "console", *args]
    if sys.stdout.isatty():
        # On a terminal the live table shows the rollout; keep only warnings above it.
        command[1:1] = ["--log-level", "warning"]
    say(f"$ reconcile {' '.join(args)}")
    # Re-read agent reports often: the demo's hooks take about a second.
    env = {**os.environ, "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "250ms"}
    return subprocess.run(command, check=check, env=env).returncode


def host_answer(host: Host) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/", timeout=1) as response:
            return "v" + str(json.load(response)["version"])
    except OSError:
        return "down"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=ROOT / "demo-output")
    args = parser.parse_args(argv)
    started = time.monotonic()
    workdir: Path = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    store_dir = workdir / "store"
    store = f"file://{store_dir}"
    faulty = "host-1"  # the canary: v3 fails there, so nobody else gets v3
    hosts: list[Host] = []
    timings: dict[str, float] = {}
    codes: dict[str, int] = {}
    try:
        step("Creating an app repo (hello v1, v2, v3) and a config repo from examples/config-repo")
        commits = make_app_repo(workdir)
        config_repo = make_config_repo(workdir, workdir / "app-repo", commits["v1"])
        for name, sha in commits.items():
            say(f"  app {name}: {sha[:12]}")

        step(f"Starting {args.hosts} agents (deploy-agent run), tags app=hello env=demo, zones a and b")
        hosts = start_agents(workdir, store, args.hosts, faulty)
        wait_registered(store_dir, hosts)
        say("  " + ", ".join(f"{h.host_id} (zone {h.zone}, port {h.port})" for h in hosts))

        for version, message in (("v1", None), ("v2", "deploy hello v2"), ("v3", "deploy hello v3")):
            if message:
                step(f"Committing {version} to the config repo")
                sha = set_revision(config_repo, workdir / "app-repo", commits[version], message)
                say(f"  config repo now at {sha[:12]}: {message}")
            step(f"Rolling out {version}")
            say(f"  {STORY[version]}")
            begin = time.monotonic()
            codes[version] = reconcile("--once", config_repo=config_repo, store=store)
            timings[version] = time.monotonic() - begin
            say(f"  exit code {codes[version]} after {timings[version]:.1f}s")

        step("Status: v3 failed, the touched hosts went back to v2, and v3 is quarantined")
        reconcile("status", config_repo=config_repo, store=store)

        step("Summary")
        say(f"  {'host':<8} {'zone':<5} {'answers':<8}")
        for host in hosts:
            say(f"  {host.host_id:<8} {host.zone:<5} {host_answer(host):<8}")
        for version, seconds in timings.items():
            say(f"  rollout {version}: {seconds:.1f}s, exit code {codes[version]}")
        say(f"  total: {time.monotonic() - started:.1f}s")
        say()
        say(f"Everything is left in {workdir} for you to look at:")
        say(f"  config repo  {config_repo}  (git log -p manifests/)")
        say(f"  store        {store_dir}  (hosts/*/status.json, deployments/, groups/)")
        say(f"  a host       {hosts[0].base}  (deployment-root/, root/srv/hello/, agent.log)")
        say(f"  try          .venv/bin/reconcile --repo {config_repo} --path manifests --store {store} status")
        expected = {"v1": 0, "v2": 0, "v3": 3}
        return 0 if codes == expected else 1
    except KeyboardInterrupt:
        say("\ninterrupted: stopping agents and services")
        return 130
    finally:
        stop_everything(hosts)


if __name__ == "__main__":
    sys.exit(main())
