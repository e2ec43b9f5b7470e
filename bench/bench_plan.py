"""`reconcile plan` at fleet scale: how long a reviewer waits for the plan of a change.

A config repo with G deployment groups of H hosts each (tag-selected, HalfAtATime, half of the groups with a
canary), every group already deployed once; the change bumps every group's revision. Figures:

- plan_compute: the pure planner (semantic diff + the engine's dry run of every rollout) on an in-memory
  fleet, median of the rounds;
- plan_end_to_end: `make_plan` as the CLI runs it: two refs from a real Git repo, the fleet read from a real
  file store, the plan computed;
- render_markdown / render_text: rendering that plan;
- verify_saved_plan: the stale-plan check `reconcile --once --plan` runs before writing.

With `--curve`, the scaling curve of issue 18 instead: 100, 1,000 and 10,000 hosts in groups of 50 (and
100,000 with `--large`, a few minutes to set up), each with plan_compute, the parts of plan_end_to_end
(loading both refs, reading the store) and the whole `reconcile plan` process (interpreter start and imports
included, JSON to /dev/null), plus milliseconds per host, which stay flat when the plan grows linearly.

    .venv/bin/python bench/bench_plan.py [--groups 20] [--hosts 50] [--rounds 3] [--one-at-a-time]
    .venv/bin/python bench/bench_plan.py --curve [--large] [--rounds 3]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
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
from reconciler.cli.plan import PlanRequest, load_ref, make_plan, read_fleet
from reconciler.core import Observed, State
from reconciler.desired.loader import load_git
from reconciler.desired.sources import GitSource
from reconciler.plan.engine import Fleet, LoadedRef, compute_plan
from reconciler.plan.render import render_markdown, render_text
from reconciler.plan.saved import saved_plan, verify_saved_plan, write_saved_plan
from tests.gitrepo import ConfigRepo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
#: Hosts per group in the scaling curves.
CURVE_GROUP_SIZE = 50
#: Seconds between heartbeats of a fleet measured by whole processes: online for three times that.
LIVE_HEARTBEAT_INTERVAL = 3600.0
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


def fleet_documents(groups: int, hosts: int, *, now: datetime = NOW,
                    heartbeat_interval: float = 60.0) -> tuple[Observed, State]:
    """Every group deployed once (OLD), every host online at `now`. A whole-process run reads the real clock:
    give its fleet `now` at set-up and an interval long enough that no host goes offline while it is measured."""
    registrations, statuses, group_states = {}, {}, {}
    for n in range(groups):
        revision = Revision.model_validate(
            {"git": {"repository": f"https://git.example.com/shop/g{n}.git", "commit": OLD}})
        key = f"shop/group-{n:03d}"
        group_states[key] = GroupState(application="shop", deployment_group=f"group-{n:03d}",
                                       desired_revision=revision, desired_commit="1" * 40,
                                       effective_revision=revision, effective_commit="1" * 40, updated_at=now)
        for h in range(hosts):
            host = f"g{n}-host-{h:04d}"
            registrations[host] = HostRegistration(host_id=host, tags={"group": f"g{n}"}, zone=f"z{h % 3}",
                                                   platform="linux", hostname=host, agent_version="0.1.0",
                                                   registered_at=now - timedelta(days=1))
            installed = InstalledRevision(application="shop", deployment_group=f"group-{n:03d}", revision=revision,
                                          deployment_id="d-0", installed_at=now - timedelta(days=1))
            statuses[host] = HostStatus(host_id=host, heartbeat_at=now - timedelta(seconds=10),
                                        heartbeat_interval_seconds=heartbeat_interval, agent_version="0.1.0",
                                        installed={key: installed})
    return Observed(registrations=registrations, statuses=statuses), State(groups=group_states)


def timed(rounds: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def config_repo(path: Path, groups: int, *, one_at_a_time: bool = False) -> ConfigRepo:
    """`main` with every group at OLD, and `bump` on top of it with every group at NEW."""
    os.environ.update({"GIT_AUTHOR_DATE": "1740830400 +0000", "GIT_COMMITTER_DATE": "1740830400 +0000"})
    repo = ConfigRepo(path)
    for name, text in manifests(groups, OLD, one_at_a_time=one_at_a_time).items():
        repo.write(name, text)
    repo.commit("base")
    repo.repo.git.checkout("-b", "bump")
    for name, text in manifests(groups, NEW, one_at_a_time=one_at_a_time).items():
        repo.write(name, text)
    repo.commit("bump every group")
    repo.repo.git.checkout("main")
    return repo


def write_fleet(store_url: str, observed: Observed, state: State) -> None:
    """The fleet's documents in a file store. Written as the store lays them out (one file per key under its
    folder) without fsync, not through `put`: its fsync of every file and folder made 100,000 hosts take many
    minutes to set up, and the reads measured here do not care how the files were written."""
    store = open_store(store_url)  # creates the folder and its marker
    store_root = Path(store_url.removeprefix("file://"))
    documents = [(registration_key(host), registration.to_json())
                 for host, registration in observed.registrations.items()]
    documents += [(status_key(host), status.to_json()) for host, status in observed.statuses.items()]
    documents += [(group_state_key(group.application, group.deployment_group), group.to_json())
                  for group in state.groups.values()]
    for key, data in documents:
        path = store_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert store.get(documents[0][0]) is not None


def process_env() -> dict[str, str]:
    """For a `reconcile` process that runs this tree's code (the venv's scripts may point at another checkout),
    started in a folder without a deploy.yaml, with its bytecode cached as an installed program has it.

    Why the bytecode: `pip install` compiles every module, so a user's `reconcile` never compiles its own source.
    A checkout run with PYTHONDONTWRITEBYTECODE set (some sandboxes and CI images set it) compiles ~100 modules
    at every start, ~0.25 s that no installed copy pays. So the variable is dropped here and the tree compiled
    once (`compile_tree`), and the figures are those of an installed program."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "FLEETSHIFT_LOGGING_LEVEL": "warning"}
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    compile_tree()
    return environment


def compile_tree() -> None:
    """The project's modules compiled to bytecode next to their source, as `pip install` does (see `process_env`)."""
    for package in ("contract", "reconciler", "agent"):
        compileall.compile_dir(ROOT / package, quiet=1)


def curve_point(root: Path, hosts: int, rounds: int) -> None:
    """One size of the scaling curve: every figure for `hosts` hosts in groups of CURVE_GROUP_SIZE."""
    groups = max(1, hosts // CURVE_GROUP_SIZE)
    label = f"{hosts}_hosts"
    repo = config_repo(root / "config", groups)
    observed, state = fleet_documents(groups, CURVE_GROUP_SIZE)
    store_url = f"file://{root / 'store'}"
    # Read by the real clock (the process cannot be given one), so alive then; the in-memory one is the same at NOW.
    write_fleet(store_url, *fleet_documents(groups, CURVE_GROUP_SIZE, now=datetime.now(UTC),
                                            heartbeat_interval=LIVE_HEARTBEAT_INTERVAL))
    base = load_git(GitSource(str(repo.path), "main", "manifests"))
    head = load_git(GitSource(str(repo.path), "bump", "manifests"))
    fleet = Fleet(store="memory", observed=observed, state=state)

    def compute() -> object:
        return compute_plan(LoadedRef("main", base.commit, base), LoadedRef("bump", head.commit, head),
                            fleet=fleet, now=NOW, repository="config", path="manifests")

    def end_to_end() -> None:
        request = PlanRequest(repository=str(repo.path), manifest_path="manifests", head="bump", base="main",
                              configured_ref="main", store=store_url)
        plan = make_plan(request, now=datetime.now(UTC)).plan
        assert sum(1 for rollout in plan.rollouts if rollout.batches) == groups  # every host online, batched

    command = [str(BIN / "reconcile"), "plan", "--repo", str(repo.path), "--path", "manifests", "--store", store_url,
               "--base", "main", "--head", "bump", "--format", "json"]

    def whole_process() -> None:
        done = subprocess.run(command, cwd=root, env=process_env(), capture_output=True, check=False)
        assert done.returncode == 2, done.stderr.decode()[-2000:]  # 2: the plan has changes
        rollouts = json.loads(done.stdout)["rollouts"]
        assert sum(1 for rollout in rollouts if rollout.get("batches")) == groups

    figures = {
        "plan_compute": timed(rounds, compute),
        "plan_load_refs": timed(rounds, lambda: [load_ref(str(repo.path), ref, commit, "manifests", side=side)
                                                 for ref, commit, side in (("bump", head.commit, "head"),
                                                                           ("main", base.commit, "base"))]),
        "plan_read_store": timed(rounds, lambda: read_fleet(store_url)),
        "plan_end_to_end": timed(rounds, end_to_end),
    }
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["plan_process"] = timed(rounds, whole_process)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["plan_process_cpu"] = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / rounds
    for name, seconds in figures.items():
        print(f"{name}_{label}: {seconds:.3f} s")
    for name in ("plan_compute", "plan_end_to_end", "plan_process"):
        print(f"{name}_{label}_per_host: {figures[name] / hosts * 1000:.3f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=50, help="hosts per group")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="every group OneAtATime: one batch per host, the most passes for the dry run")
    parser.add_argument("--curve", action="store_true",
                        help=f"the scaling curve: 100, 1,000, 10,000 hosts in groups of {CURVE_GROUP_SIZE}")
    parser.add_argument("--large", action="store_true", help="with --curve: 100,000 hosts too (minutes)")
    args = parser.parse_args()
    configure_logging("warning", json_lines=True)
    os.environ.update({"GIT_AUTHOR_DATE": "1740830400 +0000", "GIT_COMMITTER_DATE": "1740830400 +0000"})
    if args.curve:
        for hosts in (100, 1_000, 10_000, *((100_000,) if args.large else ())):
            with tempfile.TemporaryDirectory() as tmp:
                curve_point(Path(tmp), hosts, args.rounds if hosts < 100_000 else 1)
        return
    total_hosts = args.groups * args.hosts
    label = f"{args.groups}x{args.hosts}" + ("_one_at_a_time" if args.one_at_a_time else "")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = config_repo(root / "config", args.groups, one_at_a_time=args.one_at_a_time)
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
        write_fleet(store_url, observed, state)
        request = PlanRequest(repository=str(repo.path), manifest_path="manifests", head="bump",
                              configured_ref="main", store=store_url)
        print(f"plan_end_to_end_{label}: {timed(args.rounds, lambda: make_plan(request, now=NOW)):.3f} s")

        saved = root / "plan.json"
        write_saved_plan(saved, saved_plan(plan, head, fleet))
        print(f"verify_saved_plan_{label}: "
              f"{timed(args.rounds, lambda: verify_saved_plan(saved, head, observed, state)) * 1000:.1f} ms")
        print(f"saved_plan_size_{label}: {saved.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
