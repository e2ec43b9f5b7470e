#!/usr/bin/env python3
"""The fleetshift demo: rollouts to local agents behind a real HAProxy under steady traffic, a failure and an
automatic rollback, and not one failed request, in about a minute.

Everything here is the product used as a person would use it: a real Git config repo, a real Git app repo,
`deploy-agent run` processes (one per simulated host, each with its own deployment root and install folder),
a real HAProxy in front of them (docs/traffic.md), and `reconcile --once` / `reconcile status` as commands.
Nothing is faked; host-1's "bad disk" in v3 is a real file standing where v3 expects a folder. Without HAProxy
(`apt-get install haproxy`) the demo says so and runs the same rollouts without traffic control or load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.local_fleet import LocalAgent, stop_all
from fleetlab.fleet import TRAFFIC, commit_all, free_port, git, make_app_repo
from fleetlab.haproxy import HAProxyError, LocalHAProxy, haproxy_path
from fleetlab.loadgen import LoadGenerator, LoadSnapshot

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLES = ROOT / "examples"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"\033[1m==> {title}\033[0m" if sys.stdout.isatty() else f"==> {title}")


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
    "v4": "v4 fixes v3 (a file in the cache folder's way is not fatal); a new revision, so the quarantine of v3 "
          "no longer holds anything back",
}


def group_manifest(app_repo: Path, commit: str, haproxy: LocalHAProxy | None) -> str:
    text = GROUP.format(repository=app_repo, commit=commit)
    if haproxy is not None:
        # Each host leaves HAProxy before it deploys and comes back once healthy (docs/traffic.md).
        text += TRAFFIC.format(drain="10s", runtime_api=haproxy.runtime_api, backend=haproxy.backend)
    return text


def make_config_repo(workdir: Path, app_repo: Path, commit: str, haproxy: LocalHAProxy | None) -> Path:
    repo = workdir / "config-repo"
    manifests = repo / "manifests"
    manifests.mkdir(parents=True)
    for name in ("application.yaml", "deployment-configs.yaml"):
        shutil.copy(EXAMPLES / "config-repo" / "manifests" / name, manifests / name)
    (manifests / "hello-demo.yaml").write_text(group_manifest(app_repo, commit, haproxy))
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "deploy hello v1")
    return repo


def set_revision(config_repo: Path, app_repo: Path, commit: str, message: str, haproxy: LocalHAProxy | None) -> str:
    (config_repo / "manifests" / "hello-demo.yaml").write_text(group_manifest(app_repo, commit, haproxy))
    return commit_all(config_repo, message)


# --------------------------------------------------------------------------------------------------
# Traffic: HAProxy in front of the hosts, and a steady load through it


def start_haproxy(workdir: Path, hosts: list[Host]) -> LocalHAProxy | None:
    """HAProxy with one server per host, or None (said in one line) when it is not installed."""
    try:
        haproxy_path()
    except HAProxyError:
        say("  HAProxy is not installed (apt-get install haproxy, or ./scripts/test as root installs it): "
            "running without traffic control and without load")
        return None
    haproxy = LocalHAProxy(workdir / "haproxy", [(h.host_id, "127.0.0.1", h.port) for h in hosts], wait_up=False)
    haproxy.start()
    say(f"  HAProxy at {haproxy.url}, backend {haproxy.backend}: one server per host, health checks on /healthz")
    return haproxy


class LoadTicker:
    """Counts per rollout, and (when the output is not a terminal, where reconcile draws its live table) a line
    every few seconds with the requests served and failed so far."""

    def __init__(self, load: LoadGenerator, every: float = 3.0) -> None:
        self.load = load
        self.every = every
        self.mark = load.snapshot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        if not sys.stdout.isatty():
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            seen = self.load.snapshot()
            say(f"  [load] {seen.ok:,} served, {seen.failed:,} failed, {seen.achieved_rate:.0f} req/s")

    def since_mark(self) -> tuple[LoadSnapshot, int, int]:
        """The counts now, and the requests served and failed since the last call."""
        seen = self.load.snapshot()
        served, failed = seen.ok - self.mark.ok, seen.failed - self.mark.failed
        self.mark = seen
        return seen, served, failed

    def stop(self) -> None:
        self._stop.set()


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
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second through HAProxy")
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
    haproxy: LocalHAProxy | None = None
    load: LoadGenerator | None = None
    ticker: LoadTicker | None = None
    timings: dict[str, float] = {}
    codes: dict[str, int] = {}
    requests: dict[str, tuple[int, int]] = {}
    try:
        step("Starting " + str(args.hosts) + " agents (deploy-agent run), tags app=hello env=demo, zones a and b")
        hosts = start_agents(workdir, store, args.hosts, faulty)
        wait_registered(store_dir, hosts)
        say("  " + ", ".join(f"{h.host_id} (zone {h.zone}, port {h.port})" for h in hosts))
        haproxy = start_haproxy(workdir, hosts)

        step("Creating an app repo (hello v1 to v4) and a config repo from examples/config-repo")
        commits = make_app_repo(workdir / "app-repo")
        config_repo = make_config_repo(workdir, workdir / "app-repo", commits["v1"], haproxy)
        for name, sha in commits.items():
            say(f"  app {name}: {sha[:12]}")
        if haproxy is not None:
            say("  the group has trafficControl: each host leaves HAProxy before it deploys, comes back when healthy")

        step("Installing v1 on every host (before any traffic)")
        say(f"  {STORY['v1']}")
        begin = time.monotonic()
        codes["v1"] = reconcile("--once", config_repo=config_repo, store=store)
        timings["v1"] = time.monotonic() - begin
        say(f"  exit code {codes['v1']} after {timings['v1']:.1f}s")

        if haproxy is not None:
            step(f"Sending {args.rate:.0f} requests a second through HAProxy, from now until the end")
            load = LoadGenerator(haproxy.url, rate=args.rate)
            load.start()
            ticker = LoadTicker(load)

        for version, message in (("v2", "deploy hello v2"), ("v3", "deploy hello v3"), ("v4", "deploy hello v4")):
            step(f"Committing {version} to the config repo")
            sha = set_revision(config_repo, workdir / "app-repo", commits[version], message, haproxy)
            say(f"  config repo now at {sha[:12]}: {message}")
            step(f"Rolling out {version}")
            say(f"  {STORY[version]}")
            begin = time.monotonic()
            codes[version] = reconcile("--once", config_repo=config_repo, store=store)
            timings[version] = time.monotonic() - begin
            say(f"  exit code {codes[version]} after {timings[version]:.1f}s")
            if ticker is not None:
                _, served, failed = ticker.since_mark()
                requests[version] = (served, failed)
                say(f"  requests through HAProxy during this rollout: {served:,} served, {failed:,} failed")
            if version == "v3":
                step("Status: v3 failed, the touched hosts went back to v2, and v3 is quarantined")
                reconcile("status", config_repo=config_repo, store=store)

        step("Status: v4 everywhere")
        reconcile("status", config_repo=config_repo, store=store)
        failed_total = 0
        if load is not None and ticker is not None:
            ticker.stop()
            final = load.stop()
            load = None
            failed_total = final.failed
            reasons = f" ({dict(final.by_reason)})" if final.failed else ""
            say(f"  load: {final.sent:,} requests in {final.elapsed:.0f}s ({final.achieved_rate:.0f} req/s), "
                f"{final.ok:,} served, {final.failed:,} failed{reasons}")
            for sample in final.samples[:5]:
                say(f"    failed at {sample.when.isoformat(timespec='milliseconds')}: {sample.detail}")

        step("Summary")
        say(f"  {'host':<8} {'zone':<5} {'answers':<8}")
        for host in hosts:
            say(f"  {host.host_id:<8} {host.zone:<5} {host_answer(host):<8}")
        for version, seconds in timings.items():
            served = (f", {requests[version][0]:,} requests served, {requests[version][1]:,} failed"
                      if version in requests else "")
            say(f"  rollout {version}: {seconds:.1f}s, exit code {codes[version]}{served}")
        if haproxy is not None:
            say(f"  three rollouts under load, one failure and rollback, {failed_total} failed requests")
        say(f"  total: {time.monotonic() - started:.1f}s")
        say()
        say(f"Everything is left in {workdir} for you to look at:")
        say(f"  config repo  {config_repo}  (git log -p manifests/)")
        say(f"  store        {store_dir}  (hosts/*/status.json, deployments/, groups/, traffic/)")
        say(f"  a host       {hosts[0].base}  (deployment-root/, root/srv/hello/, agent.log)")
        if haproxy is not None:
            say(f"  HAProxy      {haproxy.config_path}  (and {haproxy.log_path})")
        say(f"  try          .venv/bin/reconcile --repo {config_repo} --path manifests --store {store} history "
            "hello-demo")
        expected = {"v1": 0, "v2": 0, "v3": 3, "v4": 0}
        return 0 if codes == expected and failed_total == 0 else 1
    except KeyboardInterrupt:
        say("\ninterrupted: stopping agents and services")
        return 130
    finally:
        if ticker is not None:
            ticker.stop()
        if load is not None:
            load.stop()
        stop_everything(hosts)
        if haproxy is not None:
            haproxy.stop()


if __name__ == "__main__":
    sys.exit(main())
