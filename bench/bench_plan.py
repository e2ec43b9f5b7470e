"""`reconcile plan` at fleet scale: how long a reviewer waits for the plan of a change.

A config repo with G deployment groups of H hosts each (tag-selected, HalfAtATime, half of the groups with a
canary), every group already deployed once; the change bumps every group's revision. Figures:

- plan_compute: the pure planner (semantic diff + the engine's dry run of every rollout) on an in-memory
  fleet, median of the rounds;
- plan_end_to_end: `make_plan` as the CLI runs it: two refs from a real Git repo, the fleet read from a real
  file store, the plan computed;
- render_markdown / render_text: rendering that plan;
- verify_saved_plan: the stale-plan check `reconcile --once --plan` runs before writing.

    .venv/bin/python bench/bench_plan.py [--groups 20] [--hosts 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.keys import group_state_key, registration_key, status_key
from contract.logs import configure_logging
from contract.models import (
    GroupState,
    HostRegistration,
    HostStatus,
    InstalledRevision,
    Revision,
)
from contract.store import open_store
from reconciler.cli.plan import PlanRequest, make_plan
from reconciler.core import Observed, State
from reconciler.desired.loader import load_git
from reconciler.desired.sources import GitSource
from reconciler.plan.engine import Fleet, LoadedRef, compute_plan
from reconciler.plan.render import render_markdown, render_text
from reconciler.plan.saved import saved_plan, verify_saved_plan, write_saved_plan
from tests.gitrepo import ConfigRepo

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OLD = "3f2c9e1b7d5a4c8e9f0a1b2c3d4e5f6a7b8c9d0e"
NEW = "8a01d2f4c3b2a1908f7e6d5c4b3a29180f7e6d5c"


def manifests(groups: int, commit: str, *, one_at_a_time: bool = False) -> dict[str, str]:
    files = {
        "manifests/app.yaml": "apiVersion: deploy/v1\nkind: Application\nmetadata: {name: shop}\n",
        "manifests/config.yaml": ("apiVersion: deploy/v1\nkind: DeploymentConfig\nmetadata: {name: canary-half}\n"
                                  "spec:\n  minimumHealthyHosts: {type: FLEET_PERCENT, value: 50}\n"
                                  "  canary: {hosts: 1, bakeTime: 2m}\n"),
    }
    for n in range(groups):
        config = "canary-half" if n % 2 else "CodeDeployDefault.HalfAtATime"
        if one_at_a_time:
            config = "CodeDeployDefault.OneAtATime"
        files[f"manifests/group-{n:03d}.yaml"] = (
            f"apiVersion: deploy/v1\nkind: DeploymentGroup\nmetadata: {{name: group-{n:03d}}}\nspec:\n"
            f"  application: shop\n"
            f"  revision: {{git: {{repository: https://git.example.com/shop/g{n}.git, commit: {commit}}}}}\n"
            f"  targets: {{tagSets: [[{{key: group, value: g{n}}}]]}}\n"
            f"  deploymentConfig: {config}\n  autoRollback: {{enabled: true}}\n")
    return files


def fleet_documents(groups: int, hosts: int) -> tuple[Observed, State]:
    registrations, statuses, group_states = {}, {}, {}
    for n in range(groups):
        revision = Revision.model_validate(
            {"git": {"repository": f"https://git.example.com/shop/g{n}.git", "commit": OLD}})
        key = f"shop/group-{n:03d}"
        group_states[key] = GroupState(application="shop", deployment_group=f"group-{n:03d}",
                                       desired_revision=revision, desired_commit="1" * 40,
                                       effective_revision=revision, effective_commit="1" * 40, updated_at=NOW)
        for h in range(hosts):
            host = f"g{n}-host-{h:04d}"
            registrations[host] = HostRegistration(host_id=host, tags={"group": f"g{n}"}, zone=f"z{h % 3}",
                                                   platform="linux", hostname=host, agent_version="0.1.0",
                                                   registered_at=NOW - timedelta(days=1))
            installed = InstalledRevision(application="shop", deployment_group=f"group-{n:03d}", revision=revision,
                                          deployment_id="d-0", installed_at=NOW - timedelta(days=1))
            statuses[host] = HostStatus(host_id=host, heartbeat_at=NOW - timedelta(seconds=10),
                                        agent_version="0.1.0", installed={key: installed})
    return Observed(registrations=registrations, statuses=statuses), State(groups=group_states)


def timed(rounds: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=50, help="hosts per group")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="every group OneAtATime: one batch per host, the most passes for the dry run")
    args = parser.parse_args()
    configure_logging("warning", json_lines=True)
    os.environ.update({"GIT_AUTHOR_DATE": "1740830400 +0000", "GIT_COMMITTER_DATE": "1740830400 +0000"})
    total_hosts = args.groups * args.hosts
    label = f"{args.groups}x{args.hosts}" + ("_one_at_a_time" if args.one_at_a_time else "")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = ConfigRepo(root / "config")
        for path, text in manifests(args.groups, OLD, one_at_a_time=args.one_at_a_time).items():
            repo.write(path, text)
        repo.commit("base")
        repo.repo.git.checkout("-b", "bump")
        for path, text in manifests(args.groups, NEW, one_at_a_time=args.one_at_a_time).items():
            repo.write(path, text)
        repo.commit("bump every group")
        base = load_git(GitSource(str(repo.path), "main", "manifests"))
        head = load_git(GitSource(str(repo.path), "bump", "manifests"))
        observed, state = fleet_documents(args.groups, args.hosts)
        fleet = Fleet(store="memory", observed=observed, state=state)

        def compute() -> object:
            return compute_plan(LoadedRef("main", base.commit, base), LoadedRef("bump", head.commit, head),
                                fleet=fleet, now=NOW, repository="config", path="manifests")

        plan = compute_plan(LoadedRef("main", base.commit, base), LoadedRef("bump", head.commit, head),
                            fleet=fleet, now=NOW, repository="config", path="manifests")
        batches = sum(len(r.batches or []) for r in plan.rollouts)
        assert len(plan.rollouts) == args.groups and batches > 0
        print(f"# {total_hosts} hosts, {len(plan.rollouts)} rollouts, {batches} batches", file=sys.stderr)
        print(f"plan_compute_{label}: {timed(args.rounds, compute):.3f} s")
        markdown_seconds = timed(args.rounds, lambda: render_markdown(plan, mermaid=True))
        print(f"render_markdown_{label}: {markdown_seconds * 1000:.1f} ms")
        print(f"render_text_{label}: {timed(args.rounds, lambda: render_text(plan)) * 1000:.1f} ms")

        store_url = f"file://{root / 'store'}"
        store = open_store(store_url)
        for host, registration in observed.registrations.items():
            store.put(registration_key(host), registration.to_json())
            store.put(status_key(host), observed.statuses[host].to_json())
        for group in state.groups.values():
            store.put(group_state_key(group.application, group.deployment_group), group.to_json())
        request = PlanRequest(repository=str(repo.path), manifest_path="manifests", configured_ref="main",
                              store=store_url)
        print(f"plan_end_to_end_{label}: {timed(args.rounds, lambda: make_plan(request, now=NOW)):.3f} s")

        saved = root / "plan.json"
        write_saved_plan(saved, saved_plan(plan, head, fleet))
        print(f"verify_saved_plan_{label}: "
              f"{timed(args.rounds, lambda: verify_saved_plan(saved, head, observed, state)) * 1000:.1f} ms")
        print(f"saved_plan_size_{label}: {saved.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
