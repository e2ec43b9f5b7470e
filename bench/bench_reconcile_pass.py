"""One pure `reconcile()` pass over a large fleet: time and memory.

A synthetic fleet: `--groups` deployment groups of `--hosts-per-group` hosts each (selected by a tag), every
host also carrying a couple of unrelated tags; `--in-flight` groups have a deployment in flight (a new
desired revision, a third of the hosts done, a third reporting now, a third pending), the others are
converged (desired = effective, every host reports it). Each group's history names 5 older deployments,
which the pass reads for host health. Building the inputs is not measured; the pass is run `--rounds`
times and the best time is printed, plus the tracemalloc peak of one more pass.

Targets (issue 5): 10,000 hosts / 1,000 groups / 50 in flight under 0.5 s and 300 MB. The default run also
does 100,000 hosts / 10,000 groups / 500 in flight to show how it grows.

    .venv/bin/python bench/bench_reconcile_pass.py [--groups N --hosts-per-group N --in-flight N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int)
    parser.add_argument("--hosts-per-group", type=int, default=10)
    parser.add_argument("--in-flight", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.groups:
        in_flight = args.in_flight if args.in_flight is not None else max(1, args.groups // 20)
        measure("custom", args.groups, args.hosts_per_group, in_flight, args.rounds)
        return
    measure("reconcile_10k", 1_000, 10, 50, args.rounds)
    measure("reconcile_100k", 10_000, 10, 500, max(1, args.rounds - 1))


if __name__ == "__main__":
    main()
