"""One pure `reconcile()` pass over a large fleet: time and memory; and `reconcile --once` as a whole process.

A synthetic fleet: `--groups` deployment groups of `--hosts-per-group` hosts each (selected by a tag), every
host also carrying a couple of unrelated tags; `--in-flight` groups have a deployment in flight (a new
desired revision, a third of the hosts done, a third reporting now, a third pending), the others are
converged (desired = effective, every host reports it). Each group's history names 5 older deployments,
which the pass reads for host health. Building the inputs is not measured; the pass is run `--rounds`
times and the best time is printed, plus the tracemalloc peak of one more pass.

Targets (issue 5): 10,000 hosts / 1,000 groups / 50 in flight under 0.5 s and 300 MB. The default run also
does 100,000 hosts / 10,000 groups / 500 in flight to show how it grows.

With `--curve`, the scaling curve of `reconcile --once` instead (issue 18: 10,000 hosts under 1 s, 100,000 under
8 s): the whole process (interpreter start, imports, manifests from a real Git repo, the fleet from a real file
store, the lease, one pass, the summary) over a converged fleet of 100, 1,000 and 10,000 hosts in groups of 50
(100,000 with `--large`), median wall time and the process's CPU time, milliseconds per host, and the fixed
and per-host parts of a least-squares line through the points; and `reconcile status` over the same fleet.

    .venv/bin/python bench/bench_reconcile_pass.py [--groups N --hosts-per-group N --in-flight N] [--rounds 3]
    .venv/bin/python bench/bench_reconcile_pass.py --curve [--large] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_plan import (  # the same config repo and fleet as the plan's curve
    BIN,
    CURVE_GROUP_SIZE,
    LIVE_HEARTBEAT_INTERVAL,
    config_repo,
    fleet_documents,
    process_env,
    write_fleet,
)
from contract.logs import configure_logging
from contract.models import (
    CommandProgress,
    CommandStatus,
    Deployment,
    DeploymentStatus,
    GroupState,
    HostCommand,
    HostDeploymentState,
    HostDeploymentStatus,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
)
from reconciler.core import Observed, State, deployment_group_id, reconcile
from reconciler.desired.manifests import (
    ApplicationManifest,
    DeploymentGroupManifest,
    Desired,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def revision(app: int, version: int) -> Revision:
    return Revision.model_validate(
        {"s3": {"bucket": "releases", "key": f"app{app}/v{version}.zip", "bundleType": "zip", "version": f"v{version}"}}
    )


def build(groups: int, per_group: int, in_flight: int) -> tuple[Desired, Observed, State]:
    applications = {
        "fleet": ApplicationManifest.model_validate(
            {"apiVersion": "deploy/v1", "kind": "Application", "metadata": {"name": "fleet"}}
        )
    }
    manifests: dict[str, DeploymentGroupManifest] = {}
    registrations: dict[str, HostRegistration] = {}
    statuses: dict[str, HostStatus] = {}
    group_states: dict[str, GroupState] = {}
    deployments: dict[str, Deployment] = {}
    commands: dict[str, HostCommand] = {}
    for g in range(groups):
        name = f"svc{g}"
        key = f"fleet/{name}"
        rolling = g < in_flight
        current, wanted = revision(g, 1), revision(g, 2 if rolling else 1)
        manifests[name] = DeploymentGroupManifest.model_validate(
            {
                "apiVersion": "deploy/v1",
                "kind": "DeploymentGroup",
                "metadata": {"name": name},
                "spec": {
                    "application": "fleet",
                    "revision": wanted.model_dump(by_alias=True, exclude_none=True),
                    "targets": {"tagSets": [[{"key": "service", "value": name}]]},
                    "deploymentConfig": "CodeDeployDefault.HalfAtATime",
                },
            }
        )
        history = [f"d-{g}-old{i}" for i in range(5)]
        hosts = [f"h{g}-{i}" for i in range(per_group)]
        for old in history:
            deployments[old] = Deployment(
                deployment_id=old, application="fleet", deployment_group=name, revision=current,
                deployment_config="CodeDeployDefault.HalfAtATime", status=DeploymentStatus.SUCCEEDED,
                hosts={h: HostDeploymentState(status=HostDeploymentStatus.SUCCEEDED, generation=1) for h in hosts},
                created_at=NOW - timedelta(days=1), updated_at=NOW - timedelta(days=1),
            )
        host_states: dict[str, HostDeploymentState] = {}
        for i, host in enumerate(hosts):
            registrations[host] = HostRegistration(
                host_id=host, tags={"service": name, "rack": f"r{i % 40}", "env": "prod"}, zone=f"z{i % 3}",
                platform="linux", hostname=host, agent_version="bench", registered_at=NOW - timedelta(days=2),
            )
            installed = current
            command = None
            if rolling:
                third = i * 3 // per_group
                deployment_id = f"d-{g}-new"
                generation = 2
                if third == 0:  # done earlier
                    installed = wanted
                    host_states[host] = HostDeploymentState(
                        status=HostDeploymentStatus.SUCCEEDED, generation=generation, batch=0,
                        dispatched_at=NOW - timedelta(minutes=5), finished_at=NOW - timedelta(minutes=4),
                    )
                elif third == 1:  # reporting now
                    installed = wanted
                    host_states[host] = HostDeploymentState(
                        status=HostDeploymentStatus.IN_PROGRESS, generation=generation, batch=1,
                        dispatched_at=NOW - timedelta(minutes=1),
                    )
                else:
                    host_states[host] = HostDeploymentState()
                if third < 2:
                    commands[host] = HostCommand(
                        host_id=host, generation=generation, deployment_id=deployment_id, application="fleet",
                        deployment_group=name, deployment_group_id=deployment_group_id(key), revision=wanted,
                        created_at=NOW - timedelta(minutes=5),
                    )
                    command = CommandProgress(
                        deployment_id=deployment_id, generation=generation, application="fleet",
                        deployment_group=name, status=CommandStatus.SUCCEEDED,
                        started_at=NOW - timedelta(minutes=2), ended_at=NOW - timedelta(seconds=10),
                    )
            statuses[host] = HostStatus(
                host_id=host, heartbeat_at=NOW - timedelta(seconds=20), agent_version="bench", command=command,
                installed={
                    key: InstalledRevision(
                        application="fleet", deployment_group=name, revision=installed,
                        deployment_id="d-x", installed_at=NOW - timedelta(hours=1),
                    )
                },
            )
        in_flight_id = None
        if rolling:
            in_flight_id = f"d-{g}-new"
            deployments[in_flight_id] = Deployment(
                deployment_id=in_flight_id, application="fleet", deployment_group=name, revision=wanted,
                source_commit="c2", deployment_config="CodeDeployDefault.HalfAtATime",
                status=DeploymentStatus.IN_PROGRESS, hosts=host_states,
                batches=[[h for h, s in host_states.items() if s.batch == b] for b in (0, 1)],
                created_at=NOW - timedelta(minutes=6), updated_at=NOW - timedelta(minutes=1),
            )
            history.append(in_flight_id)
        group_states[key] = GroupState(
            application="fleet", deployment_group=name, desired_revision=wanted,
            desired_commit="c2" if rolling else "c1",
            effective_revision=current, effective_commit="c1", deployment_in_flight=in_flight_id, history=history,
            updated_at=NOW - timedelta(minutes=6),
        )
    desired = Desired(commit="c2", applications=applications, groups=manifests)
    return (
        desired,
        Observed(registrations=registrations, statuses=statuses),
        State(groups=group_states, deployments=deployments, commands=commands),
    )


def measure(label: str, groups: int, per_group: int, in_flight: int, rounds: int) -> None:
    desired, observed, state = build(groups, per_group, in_flight)
    hosts = groups * per_group
    best = float("inf")
    actions = []
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        actions = reconcile(desired, observed, state, now=NOW)
        best = min(best, time.perf_counter() - start)
    gc.collect()
    tracemalloc.start()
    reconcile(desired, observed, state, now=NOW)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{label}_hosts: {hosts} hosts")
    print(f"{label}_actions: {len(actions)} actions")
    print(f"{label}_pass_time: {best:.3f} s")
    print(f"{label}_pass_peak_memory: {peak / 1e6:.1f} MB")


def once_point(root: Path, hosts: int, rounds: int) -> tuple[float, float, float]:
    """`reconcile --once` over a converged fleet of `hosts` hosts: (median wall seconds, CPU seconds per run), and the
    median wall seconds of `reconcile status --format json` over the same fleet afterwards (it reads the whole fleet
    too, and reports every host)."""
    groups = max(1, hosts // CURVE_GROUP_SIZE)
    repo = config_repo(root / "config", groups)
    store_url = f"file://{root / 'store'}"
    write_fleet(store_url, *fleet_documents(groups, CURVE_GROUP_SIZE, now=datetime.now(UTC),
                                            heartbeat_interval=LIVE_HEARTBEAT_INTERVAL))
    command = [str(BIN / "reconcile"), "--repo", str(repo.path), "--ref", "main", "--path", "manifests",
               "--store", store_url, "--once"]

    def run() -> None:
        done = subprocess.run(command, cwd=root, env=process_env(), capture_output=True, check=False)
        assert done.returncode == 0 and b"converged" in done.stdout, (done.stdout + done.stderr).decode()[-2000:]

    run()  # the first run records the applied commit; a converged fleet's passes after it are what is measured
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / rounds
    status = [*command[:-1], "status", "--format", "json"]
    statuses = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(status, cwd=root, env=process_env(), capture_output=True, check=False)
        statuses.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert sum(len(group["hosts"]) for group in json.loads(done.stdout)["groups"]) == hosts
    return statistics.median(samples), cpu, statistics.median(statuses)


def once_curve(sizes: tuple[int, ...], rounds: int) -> None:
    points = []
    for hosts in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu, status = once_point(Path(tmp), hosts, rounds if hosts < 100_000 else 1)
        points.append((hosts, wall))
        print(f"once_process_{hosts}_hosts: {wall:.3f} s")
        print(f"once_process_cpu_{hosts}_hosts: {cpu:.3f} s")
        print(f"once_process_{hosts}_hosts_per_host: {wall / hosts * 1000:.3f} ms")
        print(f"status_process_{hosts}_hosts: {status:.3f} s", flush=True)
    slope, fixed = least_squares(points)
    print(f"once_process_fixed: {fixed:.3f} s")
    print(f"once_process_per_host_slope: {slope * 1000:.4f} ms")


def least_squares(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Slope and intercept of the line through (hosts, seconds): a flat slope across the sizes is linear growth."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return slope, mean_y - slope * mean_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int)
    parser.add_argument("--hosts-per-group", type=int, default=10)
    parser.add_argument("--in-flight", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--curve", action="store_true",
                        help="`reconcile --once`, whole process, converged: 100, 1,000 and 10,000 hosts")
    parser.add_argument("--large", action="store_true", help="with --curve: 100,000 hosts too (minutes)")
    args = parser.parse_args()
    if args.curve:
        configure_logging("warning", json_lines=True)
        once_curve((100, 1_000, 10_000, *((100_000,) if args.large else ())), args.rounds)
        return
    if args.groups:
        in_flight = args.in_flight if args.in_flight is not None else max(1, args.groups // 20)
        measure("custom", args.groups, args.hosts_per_group, in_flight, args.rounds)
        return
    measure("reconcile_10k", 1_000, 10, 50, args.rounds)
    measure("reconcile_100k", 10_000, 10, 500, max(1, args.rounds - 1))


if __name__ == "__main__":
    main()
