#!/usr/bin/env python3
"""The fleetshift demo: rollouts to local agents behind a real HAProxy under steady traffic, a revision that
fails a hook and one that only its metrics show to be bad, both stopped at the canary and rolled back
automatically, in about a minute and a half.

Everything here is the product used as a person would use it: a real Git config repo, a real Git app repo,
`deploy-agent run` processes (one per simulated host, each with its own deployment root and install folder),
a real HAProxy in front of them (docs/traffic.md), a real Prometheus scraping every host's `/metrics`, and
`reconcile --once` / `reconcile status` as commands. Nothing is faked: host-1's "bad disk" in v3 is a real file
standing where v3 expects a folder, and v5 really answers every 5th `GET /` with 500 (while its health checks
pass), so the canary serves real 500s until the error-rate gate fails the deployment (issue 14, "Monitoring
gates"). Those 500s are counted and reported; apart from them, not one request fails.

Without HAProxy (`apt-get install haproxy`) the demo says so and runs v1 to v4 without traffic control or load
(and without v5: a gate needs traffic to measure); without Prometheus (`apt-get install prometheus`) it says so
and skips only v5 and its gate.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.local_fleet import LocalAgent, stop_all
from contract.models import HostCommand, LocalLocation, Revision
from contract.signing import unwrap
from fleetlab.fleet import TRAFFIC, commit_all, git, make_app_repo
from fleetlab.haproxy import HAProxyError, LocalHAProxy, free_port, haproxy_path
from fleetlab.loadgen import LoadGenerator
from fleetlab.prometheus import LocalPrometheus, PrometheusError, prometheus_path
from fleetlab.receiver import Receiver, receiver

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

#: The canary batch's share of `GET /` answered with a 5xx, over the last 5 s (Prometheus scrapes every second).
#: `{{ batchHosts }}` is filled in by the reconciler with the batch's host ids (docs/gates.md).
ERROR_RATIO = (
    'sum(rate(hello_http_requests_total{code=~"5..", host=~"{{ batchHosts }}"}[5s]))'
    ' / sum(rate(hello_http_requests_total{host=~"{{ batchHosts }}"}[5s]))'
)

#: The gate on the canary: two measurements 2 s apart, the first 6 s after the canary host is back in HAProxy (so
#: the 5 s window holds only the new revision's answers); one above 5 % fails the deployment.
ANALYSIS = """\
  analysis:
    - name: error-rate
      prometheus:
        address: {address}
        query: '{query}'
      successCondition: result < 0.05
      initialDelay: 6s
      interval: 2s
      count: 2
      failureLimit: 0
      at: [canary]
"""

STORY = {
    "v1": "config canary-then-half: one canary host and a 3 s bake, then zone a, a 2 s bake, then zone b, "
          "never below half the fleet healthy",
    "v2": "a new greeting; same rollout rules, ApplicationStop now runs v1's stop script on each host",
    "v3": "v3 adds a disk cache; on host-1 (the canary) a file stands where the cache folder goes, so v3 "
          "crashes there and ValidateService fails",
    "v4": "v4 fixes v3 (a file in the cache folder's way is not fatal); a new revision, so the quarantine of v3 "
          "no longer holds anything back",
    "v5": "v5 answers 20 % of requests with 500 but passes every hook; the error-rate gate on the canary catches "
          "it: failed, rolled back to v4, quarantined, no other host touched",
}
GATED = ("the group now has an analysis gate: after the canary batch, Prometheus' error ratio of the canary host "
         "must stay below 5 % (measured twice, 6 s and 8 s after it is back in HAProxy)")


def group_manifest(app_repo: Path, commit: str, haproxy: LocalHAProxy | None, gate: str | None = None) -> str:
    """The group at `commit`; with `gate` (a Prometheus URL), the error-rate gate on the canary."""
    text = GROUP.format(repository=app_repo, commit=commit)
    if haproxy is not None:
        # Each host leaves HAProxy before it deploys and comes back once healthy (docs/traffic.md).
        text += TRAFFIC.format(drain="10s", runtime_api=haproxy.runtime_api, backend=haproxy.backend)
    if gate is not None:
        text += ANALYSIS.format(address=gate, query=ERROR_RATIO)
    return text


#: The demo's on-call webhook (docs/notifications.md): every event, signed with a secret the reconciler reads from
#: its environment, never from the config repo.
NOTIFICATION = """\
apiVersion: deploy/v1
kind: Notification
metadata:
  name: demo-webhook
spec:
  webhook:
    url: {url}
    secretFrom: {{env: DEMO_WEBHOOK_SECRET}}
"""
WEBHOOK_SECRET = "demo-secret-" + os.urandom(8).hex()


def make_config_repo(workdir: Path, app_repo: Path, commit: str, haproxy: LocalHAProxy | None,
                     webhook_url: str) -> Path:
    repo = workdir / "config-repo"
    manifests = repo / "manifests"
    manifests.mkdir(parents=True)
    for name in ("application.yaml", "deployment-configs.yaml"):
        shutil.copy(EXAMPLES / "config-repo" / "manifests" / name, manifests / name)
    (manifests / "hello-demo.yaml").write_text(group_manifest(app_repo, commit, haproxy))
    (manifests / "notifications.yaml").write_text(NOTIFICATION.format(url=webhook_url))
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "deploy hello v1")
    return repo


def set_revision(
    config_repo: Path, app_repo: Path, commit: str, message: str, haproxy: LocalHAProxy | None, *, gate: str | None
) -> str:
    (config_repo / "manifests" / "hello-demo.yaml").write_text(group_manifest(app_repo, commit, haproxy, gate))
    return commit_all(config_repo, message)


# --------------------------------------------------------------------------------------------------
# Traffic: HAProxy in front of the hosts, and a steady load through it


def start_haproxy(workdir: Path, hosts: list[Host]) -> LocalHAProxy | None:
    """HAProxy with one server per host, or None (said in one line) when it is not installed."""
    try:
        haproxy_path()
    except HAProxyError:
        say("  HAProxy is not installed (apt-get install haproxy, or ./scripts/demo as root installs it): "
            "running without traffic control, without load, and without v5 (a metric gate needs traffic to measure)")
        return None
    haproxy = LocalHAProxy(workdir / "haproxy", [(h.host_id, "127.0.0.1", h.port) for h in hosts], wait_up=False)
    haproxy.start()
    say(f"  HAProxy at {haproxy.url}, backend {haproxy.backend}: one server per host, health checks on /healthz")
    return haproxy


def start_prometheus(workdir: Path, hosts: list[Host], reconciler_port: int) -> LocalPrometheus | None:
    """Prometheus scraping every host's /metrics each second, or None (said in one line) when it is not installed.
    Started early: it lists its targets only ~5 s after it starts (fleetlab/prometheus.py), time v1 takes anyway.
    It also scrapes fleetshift itself: each agent's own metrics (job fleetshift-agent) and the reconciler's
    (job fleetshift-reconcile, served by the `reconcile watch` the demo starts at the end)."""
    try:
        prometheus_path()
    except PrometheusError:
        say("  Prometheus is not installed (apt-get install prometheus, or ./scripts/demo as root installs it): "
            "skipping v5, the bad revision only a metric gate catches")
        return None
    prometheus = LocalPrometheus(
        workdir / "prometheus",
        [(h.host_id, "127.0.0.1", h.port) for h in hosts],
        extra_jobs=[
            ("fleetshift-agent", [(h.host_id, "127.0.0.1", h.metrics_port) for h in hosts]),
            ("fleetshift-reconcile", [("reconciler", "127.0.0.1", reconciler_port)]),
        ],
    )
    try:
        prometheus.start()
    except PrometheusError as exc:
        say(f"  Prometheus would not start ({exc}): skipping v5, the bad revision only a metric gate catches")
        return None
    say(f"  Prometheus at {prometheus.url}: scrapes every host's /metrics each second, label host=<host id>, and "
        "fleetshift's own metrics (every agent's, and the reconciler's)")
    return prometheus


# --------------------------------------------------------------------------------------------------
# Observability: the event stream and fleetshift's own metrics (docs/events.md, docs/metrics.md)


def signed_ids(webhook: Receiver) -> tuple[list[str], list[str]]:
    """The event ids the webhook received with a valid HMAC-SHA256 signature, and the deliveries without one."""
    good: list[str] = []
    bad: list[str] = []
    for request in webhook.received():
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, request.header("X-Fleetshift-Signature-256") or ""):
            good.append(request.json()["id"])
        else:
            bad.append(request.header("X-Fleetshift-Delivery") or "?")
    return good, bad


def follow_events(workdir: Path, store: str) -> subprocess.Popen[bytes]:
    """`reconcile events --follow --format json` for the whole demo, as an on-call engineer's second terminal or a
    log shipper would run it: every event, once, as passes record it."""
    return subprocess.Popen(
        [str(BIN / "reconcile"), "events", "--follow", "--interval", "250ms", "--format", "json", "--store", store],
        stdout=(workdir / "events.jsonl").open("wb"), stderr=(workdir / "events-follow.log").open("wb"),
        start_new_session=True,
    )


def stop_follow(follow: subprocess.Popen[bytes]) -> None:
    if follow.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(follow.pid, signal.SIGINT)
        try:
            follow.wait(timeout=10)
        except subprocess.TimeoutExpired:
            follow.kill()
            follow.wait()


def show_events(workdir: Path, config_repo: Path, store: str, webhook: Receiver) -> tuple[dict[str, int], bool]:
    """What `--follow` streamed, by type, what the webhook received, and the warnings and worse as
    `reconcile events` prints them."""
    streamed = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines() if line.strip()]
    by_type: dict[str, int] = {}
    for event in streamed:
        by_type[event["type"]] = by_type.get(event["type"], 0) + 1
    ids = [event["id"] for event in streamed]
    say(f"  `reconcile events --follow` streamed {len(streamed)} events live ({len(set(ids))} distinct ids) into "
        f"{workdir / 'events.jsonl'}:")
    say("    " + ", ".join(f"{kind} x{n}" for kind, n in sorted(by_type.items())))
    received, bad = signed_ids(webhook)
    same = sorted(received) == sorted(ids)
    say(f"  the demo-webhook notification delivered {len(received)} events ({len(set(received))} "
        f"distinct ids, every signature valid: {not bad}); the same events as the stream: {same}")
    reconcile("events", "--min-severity", "warning", config_repo=config_repo, store=store)
    return by_type, same and not bad and len(set(received)) == len(received)


def show_metrics(workdir: Path, config_repo: Path, store: str, prometheus: LocalPrometheus, port: int) -> bool:
    """Start `reconcile watch --metrics-address` (the fleet is converged: it only reads), let the real Prometheus
    scrape it and the agents, and show what PromQL answers. True when both were scraped."""
    command = [str(BIN / "reconcile"), "--repo", str(config_repo), "--ref", "main", "--path", "manifests",
               "--store", store, "--log-format", "json", "watch", "--metrics-address", f"127.0.0.1:{port}"]
    env = {**os.environ, "FLEETSHIFT_SIGNING_KEY_FILE": str(config_repo.parent / "signing.pem"),
           "DEMO_WEBHOOK_SECRET": WEBHOOK_SECRET}
    say(f"$ reconcile watch --metrics-address 127.0.0.1:{port}   (in the background; Prometheus scrapes it)")
    watch = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=(workdir / "reconcile-watch.log").open("wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        hosts: dict[str, float] = {}
        while time.monotonic() < deadline and not hosts.get("online"):
            time.sleep(0.5)
            with contextlib.suppress(PrometheusError):
                hosts = prometheus.values("sum by (state) (fleetshift_group_hosts)", by="state")
        if not hosts.get("online"):
            say("  Prometheus did not scrape the reconciler in 30 s (see reconcile-watch.log)")
            return False
        queries = [
            ("sum by (state) (fleetshift_group_hosts)", "state", "hosts of hello-demo by state"),
            ("sum by (group) (fleetshift_group_quarantined_revisions)", "group", "quarantined revisions"),
            ("sum by (outcome) (fleetshift_agent_commands_total)", "outcome", "commands the agents ran, by outcome"),
            ("sum by (outcome) (fleetshift_agent_lifecycle_events_total)", "outcome", "lifecycle events, by outcome"),
            ("sum by (host) (fleetshift_agent_command_refusals_total) > 0", "host", "commands refused"),
        ]
        for promql, label, what in queries:
            found = prometheus.values(promql, by=label)
            shown = ", ".join(f"{key or '-'}={value:g}" for key, value in sorted(found.items())) or "none"
            say(f"  {what}: {shown}")
            say(f"      PromQL: {promql}")
        return True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(watch.pid, signal.SIGTERM)
        try:
            watch.wait(timeout=15)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.wait()


def errors_by_host(prometheus: LocalPrometheus, seconds: float) -> dict[str, int]:
    """How many 500s each host's service counted over the last `seconds`, from Prometheus: the highest value of
    each host's error counter (only v5 answers 500, and each v5 process started from 0)."""
    window = f"{max(int(seconds) + 1, 1)}s"
    found = prometheus.values(f'max by (host) (max_over_time(hello_http_errors_total{{code="500"}}[{window}]))')
    return {host: int(value) for host, value in sorted(found.items()) if value > 0}


def failure_reasons(reasons: dict[str, int]) -> str:
    """` (51 answered 500, 2 timeout)`, or "" when nothing failed."""
    if not reasons:
        return ""
    said = (f"{n:,} answered {reason}" if reason.isdigit() else f"{n:,} {reason}" for reason, n in reasons.items())
    return f" ({', '.join(said)})"


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

    def since_mark(self) -> tuple[int, int, dict[str, int]]:
        """The requests served and failed since the last call, and the failures by reason ("500", "timeout")."""
        seen = self.load.snapshot()
        served, failed = seen.ok - self.mark.ok, seen.failed - self.mark.failed
        reasons = {reason: count - self.mark.by_reason.get(reason, 0) for reason, count in seen.by_reason.items()}
        self.mark = seen
        return served, failed, {reason: count for reason, count in reasons.items() if count}

    def stop(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------------------------------
# Agents


@dataclass
class Host(LocalAgent):
    """A simulated host running the hello service on its own loopback port."""

    port: int = 0
    #: Where the agent serves its own metrics (agent.yaml `metrics.address`, docs/agent.md "Metrics").
    metrics_port: int = 0

    @property
    def home(self) -> Path:
        return self.host_root / "srv" / "hello"


def start_agents(workdir: Path, store: str, count: int, faulty: str, trusted_key: str) -> list[Host]:
    hosts = []
    for index in range(1, count + 1):
        base = workdir / f"host-{index}"
        base.mkdir(parents=True)
        cache = base / "cache"
        host = Host(f"host-{index}", base, tags={"app": "hello", "env": "demo"},
                    zone="a" if index <= (count + 1) // 2 else "b", port=free_port(), metrics_port=free_port())
        if host.host_id == faulty:
            cache.write_text("not a folder\n")  # the "bad disk": v3's cache folder cannot be created here
        host.env = {
            "HELLO_HOME": str(host.home),
            "HELLO_PORT": str(host.port),
            "HELLO_HOST": host.host_id,
            "HELLO_RUN": str(base / "run"),
            "HELLO_CACHE_DIR": str(cache),
            # The reconciler's public key: this agent refuses any command not signed with it (docs/trust.md).
            "FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS": trusted_key,
            "FLEETSHIFT_AGENT_METRICS_ADDRESS": f"127.0.0.1:{host.metrics_port}",
        }
        host.start(store)
        hosts.append(host)
    return hosts


def generate_key(path: Path) -> str:
    """`reconcile keys generate`: the private key for the reconciler, the public key line for the agents."""
    done = subprocess.run([str(BIN / "reconcile"), "keys", "generate", "--out", str(path)], capture_output=True,
                          text=True, check=True)
    public = next(line.split(":", 1)[1].strip() for line in done.stdout.splitlines() if line.startswith("public key:"))
    say(f"  $ reconcile keys generate --out {path.name}")
    say(f"  public key (pinned in every agent's commandSigning.trustedKeys): {public[:40]}...")
    return public


def forge_command(store_dir: Path, host: Host, timeout: float = 10.0) -> str | None:
    """Write an unsigned command for `host` straight into the store, as anyone with write access could, and wait
    for the agent's refusal in its status. Returns the reason it gave (None: no refusal seen in time)."""
    status_path = store_dir / "hosts" / host.host_id / "status.json"
    generation = int(json.loads(unwrap(status_path.read_bytes())).get("command", {}).get("generation", 0)) + 100
    forged = HostCommand(host_id=host.host_id, generation=generation, deployment_id="forged-1", application="hello",
                         deployment_group="hello-demo", deployment_group_id="dg-forged",
                         revision=Revision(local=LocalLocation(path="/tmp/not-a-bundle", bundle_type="directory")),
                         created_at=datetime.now(UTC))
    (store_dir / "commands" / f"{host.host_id}.json").write_bytes(forged.to_json())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refusals = json.loads(unwrap(status_path.read_bytes())).get("refusals") or []
        if refusals:
            return str(refusals[-1]["reason"])
        time.sleep(0.1)
    return None


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
    # Re-read agent reports often: the demo's hooks take about a second. Sign with the demo's key.
    env = {**os.environ, "FLEETSHIFT_RECONCILE_POLL_INTERVAL": "250ms",
           "FLEETSHIFT_SIGNING_KEY_FILE": str(config_repo.parent / "signing.pem"),
           "DEMO_WEBHOOK_SECRET": WEBHOOK_SECRET}
    return subprocess.run(command, check=check, env=env).returncode


def host_answer(host: Host) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{host.port}/", timeout=1) as response:
            return "v" + str(json.load(response)["version"])
    except OSError:
        return "down"


def store_document(store_dir: Path, key: str) -> dict[str, Any]:
    # Signed records are envelopes (docs/trust.md); the demo reads what is inside without checking.
    document = json.loads(unwrap((store_dir / key).read_bytes()))
    if not isinstance(document, dict):
        raise SystemExit(f"{store_dir / key} is not a JSON object")
    return document


def show_measurements(store_dir: Path, deployment_id: str | None = None) -> None:
    """One line per gate measurement of a deployment (default: the group's latest), from `analysis/<id>.json`."""
    if deployment_id is None:
        deployment_id = store_document(store_dir, "groups/hello/hello-demo.json")["history"][-1]
    if not (store_dir / "analysis" / f"{deployment_id}.json").exists():
        say(f"  no gate measurements for {deployment_id}")
        return
    for measurement in store_document(store_dir, f"analysis/{deployment_id}.json").get("measurements", []):
        value = measurement.get("value")
        shown = "no value" if value is None else f"{value:.3f}"
        say(f"    gate {measurement.get('gate')} at {measurement.get('checkpoint')}, measurement "
            f"{measurement.get('index', 0) + 1}: the canary's error ratio {shown}: {measurement.get('result')} "
            "(needs result < 0.05)")


def show_gate_failure(store_dir: Path) -> bool:
    """Print what the gate measured on the quarantined deployment and which hosts it reached; True when the
    deployment failed on its analysis gate (ANALYSIS_FAILED) and reached no host outside its canary batch."""
    group = store_document(store_dir, "groups/hello/hello-demo.json")
    if not group.get("quarantined"):
        say("  no quarantined revision: the gate did not stop v5")
        return False
    failed_id = group["quarantined"][-1]["deploymentId"]
    failed = store_document(store_dir, f"deployments/{failed_id}.json")
    say(f"  deployment {failed_id}: {failed.get('status')}, {failed.get('errorCode')}")
    say(f"    {failed.get('errorMessage')}")
    show_measurements(store_dir, failed_id)
    canary = failed["batches"][0] if failed.get("batches") else []
    reached = sorted(h for h, state in failed["hosts"].items() if state.get("generation") is not None)
    untouched = sorted(h for h in failed["hosts"] if h not in reached)
    say(f"  hosts that ever got a command for v5: {', '.join(reached) or 'none'} (the canary batch: "
        f"{', '.join(canary)}); never: {', '.join(untouched)}")
    return failed.get("errorCode") == "ANALYSIS_FAILED" and set(reached) <= set(canary)


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
    prometheus: LocalPrometheus | None = None
    load: LoadGenerator | None = None
    ticker: LoadTicker | None = None
    timings: dict[str, float] = {}
    codes: dict[str, int] = {}
    requests: dict[str, tuple[int, int, dict[str, int]]] = {}
    caught = False
    refused: str | None = None
    follow: subprocess.Popen[bytes] | None = None
    events_seen: dict[str, int] = {}
    webhook_ok = False
    scraped = False
    reconciler_metrics_port = free_port()
    services = contextlib.ExitStack()
    webhook = services.enter_context(receiver())
    try:
        step("Generating the reconciler's signing key; the agents will run only commands signed with it")
        trusted_key = generate_key(workdir / "signing.pem")
        step("Starting " + str(args.hosts) + " agents (deploy-agent run), tags app=hello env=demo, zones a and b")
        hosts = start_agents(workdir, store, args.hosts, faulty, trusted_key)
        wait_registered(store_dir, hosts)
        say("  " + ", ".join(f"{h.host_id} (zone {h.zone}, port {h.port})" for h in hosts))
        follow = follow_events(workdir, store)
        say("  $ reconcile events --follow --format json > events.jsonl   (in the background, until the end)")
        haproxy = start_haproxy(workdir, hosts)
        if haproxy is not None:
            prometheus = start_prometheus(workdir, hosts, reconciler_metrics_port)

        step("Creating an app repo (hello v1 to v5) and a config repo from examples/config-repo")
        commits = make_app_repo(workdir / "app-repo", with_v5=True)
        config_repo = make_config_repo(workdir, workdir / "app-repo", commits["v1"], haproxy, webhook.url)
        for name, sha in commits.items():
            say(f"  app {name}: {sha[:12]}")
        if haproxy is not None:
            say("  the group has trafficControl: each host leaves HAProxy before it deploys, comes back when healthy")
        say(f"  a Notification sends every event to a webhook at {webhook.url}, signed (HMAC-SHA256)")

        step("Installing v1 on every host (before any traffic)")
        say(f"  {STORY['v1']}")
        begin = time.monotonic()
        codes["v1"] = reconcile("--once", config_repo=config_repo, store=store)
        timings["v1"] = time.monotonic() - begin
        say(f"  exit code {codes['v1']} after {timings['v1']:.1f}s")

        if prometheus is not None:
            # The gates that follow measure from their first query on only if every host is scraped already.
            try:
                prometheus.wait_for_targets_up(timeout=30)
                prometheus.wait_for_samples("hello_http_requests_total", timeout=30, count=2)
            except PrometheusError as exc:
                say(f"  Prometheus does not scrape every host ({exc}): skipping v5 and the gate")
                prometheus.stop()
                prometheus = None
            else:
                say(f"  Prometheus scrapes all {len(hosts)} hosts")

        step("A forged command: written into the store without the key, for host-2")
        refused = forge_command(store_dir, hosts[1])
        say(f"  host-2 refused it and ran nothing: {refused}" if refused else "  host-2 did not report a refusal")
        say("  (reconcile status shows it; the next rollout replaces the forged command with a signed one)")

        if haproxy is not None:
            step(f"Sending {args.rate:.0f} requests a second through HAProxy, from now until the end")
            load = LoadGenerator(haproxy.url, rate=args.rate)
            load.start()
            ticker = LoadTicker(load)

        # The gate comes with v2, not v1: v1 is installed before any traffic, so its canary would have no
        # requests to measure (an inconclusive gate, which fails the deployment).
        gate = prometheus.url if prometheus is not None else None
        versions = ["v2", "v3", "v4"] + (["v5"] if gate is not None else [])
        for version in versions:
            message = f"deploy hello {version}"
            if version == "v2" and gate is not None:
                message += ", with an error-rate gate on the canary"
            step(f"Committing {version} to the config repo")
            sha = set_revision(config_repo, workdir / "app-repo", commits[version], message, haproxy, gate=gate)
            say(f"  config repo now at {sha[:12]}: {message}")
            if version == "v2" and gate is not None:
                say(f"  {GATED}")
            step(f"Rolling out {version}")
            say(f"  {STORY[version]}")
            begin = time.monotonic()
            codes[version] = reconcile("--once", config_repo=config_repo, store=store)
            timings[version] = time.monotonic() - begin
            say(f"  exit code {codes[version]} after {timings[version]:.1f}s")
            if ticker is not None:
                served, failed, reasons = ticker.since_mark()
                requests[version] = (served, failed, reasons)
                say(f"  requests through HAProxy during this rollout: {served:,} served, {failed:,} failed"
                    f"{failure_reasons(reasons)}")
            if gate is not None and codes[version] == 0:
                say("  the canary's gate measured (analysis/<deployment id>.json in the store):")
                show_measurements(store_dir)
            if version == "v3":
                step("Status: v3 failed, the touched hosts went back to v2, and v3 is quarantined")
                reconcile("status", config_repo=config_repo, store=store)

        answered_500 = requests["v5"][2].get("500", 0) if "v5" in requests else 0
        if "v5" in codes:
            step("Status: v5 failed its gate at the canary, the canary went back to v4, and v5 is quarantined")
            reconcile("status", config_repo=config_repo, store=store)
            caught = show_gate_failure(store_dir)
            if prometheus is not None:
                seen = errors_by_host(prometheus, timings["v5"] + 5)
                # Prometheus may miss the last second of v5's 500s (it scrapes each second; a drain takes less).
                where = ", ".join(seen) or "no host"
                counted = ", ".join(f"{n:,} on {host}" for host, n in seen.items())
                say(f"  {answered_500:,} requests answered 500 by the canary while v5 was measured; Prometheus saw "
                    f"500s on {where} only ({counted} at its last scrape of v5; it scrapes each second)")
        else:
            step("Status: v4 everywhere")
            reconcile("status", config_repo=config_repo, store=store)
        other_failures = 0
        if load is not None and ticker is not None:
            ticker.stop()
            final = load.stop()
            load = None
            other_failures = final.failed - answered_500
            by_reason = f" ({dict(final.by_reason)})" if final.failed else ""
            say(f"  load: {final.sent:,} requests in {final.elapsed:.0f}s ({final.achieved_rate:.0f} req/s), "
                f"{final.ok:,} served, {final.failed:,} failed{by_reason}")
            for sample in [s for s in final.samples if s.reason != "500"][:5]:
                say(f"    failed at {sample.when.isoformat(timespec='milliseconds')}: {sample.detail}")

        step("What an on-call engineer saw: the event stream")
        stop_follow(follow)
        events_seen, webhook_ok = show_events(workdir, config_repo, store, webhook)
        if prometheus is not None:
            step("fleetshift's own metrics, scraped by the real Prometheus")
            scraped = show_metrics(workdir, config_repo, store, prometheus, reconciler_metrics_port)

        step("Summary")
        say(f"  {'host':<8} {'zone':<5} {'answers':<8}")
        for host in hosts:
            say(f"  {host.host_id:<8} {host.zone:<5} {host_answer(host):<8}")
        for version, seconds in timings.items():
            counts = ""
            if version in requests:
                served, failed, reasons = requests[version]
                counts = f", {served:,} requests served, {failed:,} failed{failure_reasons(reasons)}"
            say(f"  rollout {version}: {seconds:.1f}s, exit code {codes[version]}{counts}")
        if haproxy is not None and "v5" in codes:
            say("  four rollouts under load, two stopped at the canary and rolled back (v3 by a hook, v5 by its "
                "error-rate gate)")
            say(f"  {answered_500:,} requests answered 500 by the canary while v5 was measured; "
                f"{other_failures} dropped connections or other failed requests")
        elif haproxy is not None:
            say(f"  three rollouts under load, one failure and rollback, {other_failures} failed requests")
        say(f"  1 forged command written into the store, refused by host-2: {refused or 'NOT refused'}")
        say(f"  events: {sum(events_seen.values())} streamed live, {events_seen.get('deployment.failed', 0)} "
            f"deployment.failed, {events_seen.get('rollback.succeeded', 0)} rollback.succeeded, "
            f"{events_seen.get('command.refused', 0)} command.refused; the webhook got each once: {webhook_ok}")
        say(f"  total: {time.monotonic() - started:.1f}s")
        say()
        say(f"Everything is left in {workdir} for you to look at:")
        say(f"  config repo  {config_repo}  (git log -p manifests/)")
        say(f"  store        {store_dir}  (hosts/*/status.json, deployments/, groups/, traffic/, analysis/)")
        say(f"  a host       {hosts[0].base}  (deployment-root/, root/srv/hello/, agent.log)")
        if haproxy is not None:
            say(f"  HAProxy      {haproxy.config_path}  (and {haproxy.log_path})")
        if prometheus is not None:
            say(f"  Prometheus   {prometheus.config_path}  (its data is in {prometheus.data_path})")
        say(f"  try          .venv/bin/reconcile --repo {config_repo} --path manifests --store {store} history "
            "hello-demo")
        expected = {"v1": 0, "v2": 0, "v3": 3, "v4": 0} | ({"v5": 3} if "v5" in codes else {})
        # v5's 500s are the point of its step (the canary really served them until the gate failed it); any
        # other failed request, in any rollout, is a failure of the demo.
        gate_ok = caught if "v5" in codes else True
        failures = sum(1 for code in expected.values() if code == 3)
        events_ok = (events_seen.get("deployment.failed", 0) == failures and events_seen.get("command.refused", 0) == 1
                     and webhook_ok)
        metrics_ok = scraped or prometheus is None
        ok = codes == expected and other_failures == 0 and gate_ok and refused and events_ok and metrics_ok
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted: stopping agents and services")
        return 130
    finally:
        services.close()
        if follow is not None:
            stop_follow(follow)
        if ticker is not None:
            ticker.stop()
        if load is not None:
            load.stop()
        stop_everything(hosts)
        if haproxy is not None:
            haproxy.stop()
        if prometheus is not None:
            prometheus.stop()


if __name__ == "__main__":
    sys.exit(main())
