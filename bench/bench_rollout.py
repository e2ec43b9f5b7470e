#!/usr/bin/env python3
"""Benchmark: a 50-host OneAtATime rollout of a bundle with no-op hooks to real local agents.

Every host is a real `deploy-agent run` process (own host id, deployment root and host root) on one file
store; the bundle is a directory of 100 small files with five `exit 0` hooks (ApplicationStop, BeforeInstall,
AfterInstall, ApplicationStart, ValidateService). The fleet is first brought to v1 (every host is new, so
CodeDeploy's rules send it everywhere at once), then `reconcile --once` rolls v2 out one host at a time; that
second rollout is what is timed, from the command starting to its exit.

With `--ansible PATH` (an `ansible-playbook` executable; found on PATH or in $ANSIBLE_PLAYBOOK otherwise), the
same work is timed with Ansible for comparison: a 50-host inventory with `ansible_connection=local`,
`serial: 1`, no fact gathering, a play that unpacks the same 100 files (one archive) and runs the same five scripts.

`--agent-poll default` and `--reconcile-poll default` leave each program's own intervals alone (the agent's
10 s idle and 1 s busy polls, the reconciler's 1 s poll): the "default settings" row of issue 18. The agent's
side of each host's turn is printed too: from the reconciler's command write (the command file's mtime) to the
agent's `command.received` log line, the median and the worst over the timed rollout's hosts.

Prints `name: value unit` lines. Usage:
    .venv/bin/python bench/bench_rollout.py [--hosts 50] [--agent-poll 100ms|default]
        [--reconcile-poll 100ms|default] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from agent.local_fleet import LocalAgent, stop_all  # noqa: E402
from contract.store import open_store  # noqa: E402
from tests.reconciler.fleet import Config, group_manifest  # noqa: E402

HOOKS = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")


def make_bundle(path: Path, version: int) -> Path:
    (path / "app").mkdir(parents=True)
    for index in range(100):
        (path / "app" / f"file{index:03d}.txt").write_text(f"v{version} content {index}\n" * 10)
    (path / "scripts").mkdir()
    script = path / "scripts" / "noop.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    hooks = "".join(f"  {event}:\n    - location: scripts/noop.sh\n      timeout: 30\n" for event in HOOKS)
    (path / "appspec.yml").write_text(
        f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: /srv/app\nhooks:\n{hooks}"
    )
    return path


def directory_revision(path: Path) -> str:
    return f"    local:\n      path: {path}\n      bundleType: directory"


def start_agents(workdir: Path, store_url: str, count: int, poll: str) -> list[LocalAgent]:
    agents = []
    for index in range(count):
        host = f"host-{index:02d}"
        if poll == "default":
            agent = LocalAgent(host, workdir / "hosts" / host, tags={"app": "hello"}, poll_interval="10s")
        else:
            # The agent polls at its busy interval while a command runs and for a minute after; every host has
            # just run v1 when v2 starts, so that interval, not the idle one, decides how fast a host picks up v2.
            agent = LocalAgent(host, workdir / "hosts" / host, tags={"app": "hello"}, poll_interval=poll,
                               env={"FLEETSHIFT_AGENT_BUSY_POLL_INTERVAL": poll})
        agent.start(store_url, log_level="info")
        agents.append(agent)
    return agents


def pickup_delays(agents: list[LocalAgent], store_root: Path) -> list[float]:
    """For each host: seconds from its latest command's write (the command file's mtime, which the file store
    stamps at the write) to the agent's latest `command.received` log line."""
    delays = []
    for agent in agents:
        written = (store_root / "commands" / f"{agent.host_id}.json").stat().st_mtime
        received = [line for line in agent.log.read_text().splitlines() if '"command.received"' in line]
        if received:
            stamp = json.loads(received[-1])["timestamp"].replace("Z", "+00:00")
            delays.append(datetime.fromisoformat(stamp).timestamp() - written)
    return delays


def reconcile(config: Config, store_url: str, poll: str) -> tuple[int, float]:
    env = {**os.environ, "FLEETSHIFT_LOGGING_LEVEL": "warning", "FLEETSHIFT_RECONCILE_TIMEOUT": "20m"}
    if poll != "default":
        env["FLEETSHIFT_RECONCILE_POLL_INTERVAL"] = poll
    started = time.monotonic()
    done = subprocess.run([str(BIN / "reconcile"), *config.args(), "--store", store_url, "--once"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        print(done.stdout.decode(), file=sys.stderr)
    return done.returncode, elapsed


def run_ansible(playbook_bin: str, workdir: Path, hosts: int, bundle: Path) -> float:
    play = workdir / "ansible"
    play.mkdir()
    inventory = play / "inventory.ini"
    python = Path(playbook_bin).resolve().parent / "python"
    lines = ["[fleet]"]
    for index in range(hosts):
        lines.append(f"host-{index:02d} ansible_connection=local ansible_python_interpreter={python} "
                     f"host_root={play / 'hosts' / f'host-{index:02d}'}")
    inventory.write_text("\n".join(lines) + "\n")
    script = bundle / "scripts" / "noop.sh"
    # One archive, unpacked by one module call, like an agent fetching and extracting a bundle. (A `copy` of
    # the folder would make one module call per file, about a minute per host here: not a fair comparison.)
    archive = play / "app.tgz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(bundle), "app"], check=True)
    tasks = [
        {"name": "make the install folder",
         "ansible.builtin.file": {"path": "{{ host_root }}/srv", "state": "directory"}},
        {"name": "install files", "ansible.builtin.unarchive": {"src": str(archive), "dest": "{{ host_root }}/srv"}},
        *({"name": event, "ansible.builtin.command": str(script)} for event in HOOKS),
    ]
    playbook = play / "rollout.yml"
    playbook.write_text(json.dumps([{"hosts": "fleet", "serial": 1, "gather_facts": False, "tasks": tasks}]))
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(play / "tmp"), "ANSIBLE_REMOTE_TEMP": str(play / "tmp")}
    started = time.monotonic()
    done = subprocess.run([playbook_bin, "-i", str(inventory), str(playbook)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        print(done.stdout.decode()[-3000:], file=sys.stderr)
        raise SystemExit("ansible-playbook failed")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--agent-poll", default="100ms")
    parser.add_argument("--reconcile-poll", default="100ms")
    parser.add_argument("--runs", type=int, default=1, help="timed OneAtATime rollouts (v2, v3, v2, ...)")
    parser.add_argument("--ansible", default=os.environ.get("ANSIBLE_PLAYBOOK") or shutil.which("ansible-playbook"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    store_url = f"file://{workdir / 'store'}"
    store = open_store(store_url)
    bundles = {version: make_bundle(workdir / f"bundle-v{version}", version) for version in (1, 2, 3)}
    config = Config(workdir / "config")
    agents = start_agents(workdir, store_url, args.hosts, args.agent_poll)
    totals: list[float] = []
    delays: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while len([i for i in store.list("hosts/") if i.key.endswith("/status.json")]) < args.hosts:
            if time.monotonic() > deadline:
                raise SystemExit("agents did not register within 60 s")
            time.sleep(0.1)
        config.set_group(group_manifest(revision=directory_revision(bundles[1])), message="v1")
        code, first = reconcile(config, store_url, args.reconcile_poll)
        if code != 0:
            raise SystemExit(f"the v1 rollout failed (exit {code})")
        for run in range(args.runs):
            version = 2 + run % 2
            config.set_group(group_manifest(revision=directory_revision(bundles[version])), message=f"v{version}")
            code, total = reconcile(config, store_url, args.reconcile_poll)
            if code != 0:
                raise SystemExit(f"the v{version} rollout failed (exit {code})")
            totals.append(total)
            delays += pickup_delays(agents, workdir / "store")
    finally:
        stop_all(agents)
    total = statistics.median(totals)
    print(f"rollout_first_all_at_once_{args.hosts}_hosts: {first:.2f} s (new hosts are all unhealthy, so "
          f"OneAtATime sends them all at once)")
    print(f"rollout_one_at_a_time_{args.hosts}_hosts_total: {total:.2f} s (median of {len(totals)})")
    print(f"rollout_one_at_a_time_per_host: {total / args.hosts:.3f} s (reconcile poll {args.reconcile_poll}, "
          f"agent poll {args.agent_poll})")
    if delays:
        print(f"rollout_command_to_agent_median: {statistics.median(delays) * 1000:.0f} ms (command write to "
              "the agent's command.received)")
        print(f"rollout_command_to_agent_max: {max(delays) * 1000:.0f} ms")
    if args.ansible:
        ansible = run_ansible(args.ansible, workdir, args.hosts, bundles[2])
        print(f"ansible_serial_1_{args.hosts}_hosts_total: {ansible:.2f} s")
        print(f"ansible_serial_1_per_host: {ansible / args.hosts:.3f} s (ansible_connection=local, unarchive 100 "
              f"files + 5 commands)")
    else:
        print("ansible_serial_1: not measured (no ansible-playbook; pass --ansible PATH)")
    if not os.environ.get("KEEP_BENCH"):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
