#!/usr/bin/env python3
"""Benchmark: what traffic control costs in rollout time, and what it saves in failed requests.

The fleet is fleetlab's TrafficFleet (the one tests/traffic/test_nondisruptive.py proves non-disruptive): N real
`deploy-agent run` processes serving the hello app on loopback behind a real HAProxy (no retries, no redispatch),
with an ApplicationStop that kills the app with SIGKILL. Each side of the comparison gets a fresh fleet in its own
temporary folder: `reconcile --once` deploys v1 (and waits until HAProxy has every server UP), a LoadGenerator
starts sending `--rate` requests a second through HAProxy, and after a one-second warm-up v2 is committed and
rolled out with `reconcile --once`; that command, from start to exit, is the rollout time. The load runs on for
half a second after it, so the requests sent during the last host's restart are counted too.

- **with**: the group has `trafficControl` on the fleet's HAProxy, so each host is drained and taken out
  (BlockTraffic) before ApplicationStop and put back only once HAProxy's health checks call it UP (AllowTraffic).
- **without**: the same group without `trafficControl`; HAProxy keeps sending requests to a host until a health
  check notices its app is gone, and those requests fail.

The difference in rollout time, divided by the number of hosts, is the per-host cost of the two traffic steps
(each one a round trip through the store: the agent reports the step, a reconciler pass acts, the agent reads
the record). The agents' own reports (`hosts/<host>/status.json`, the v2 command's events) give the time of the
BlockTraffic and AllowTraffic steps themselves; the per-event breakdown of both sides goes to stderr.

Prints `name: value unit` lines on stdout (medians over `--repeat` runs of each side); logs go to stderr.
Needs haproxy (/usr/sbin/haproxy on Debian and Ubuntu: apt-get install haproxy). Usage:
    .venv/bin/python bench/bench_traffic.py [--hosts 4] [--rate 200] [--config CodeDeployDefault.OneAtATime]
                                            [--repeat 1] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.exitcodes import ExitCode  # noqa: E402
from contract.logs import configure_logging  # noqa: E402
from fleetlab.fleet import TrafficFleet  # noqa: E402
from fleetlab.haproxy import HAProxyError, haproxy_path  # noqa: E402
from fleetlab.loadgen import LoadGenerator  # noqa: E402

#: Load before the rollout starts, so the generator's connections are open and its schedule steady.
WARM_UP = 1.0
#: Load after `reconcile --once` exits: the last host's requests in flight, and HAProxy noticing it is back.
COOL_DOWN = 0.5
#: How long to wait after the v1 deployment for HAProxy to call every server UP (health checks every 100 ms).
UP_TIMEOUT = 15.0
#: How long a process of a stopped fleet may take to die before the safety net kills it (see kill_leftovers).
LEFTOVER_GRACE = 2.0
#: The two steps the reconciler performs, as the agents report them, and their short names in the output.
TRAFFIC_STEPS = {"BlockTraffic": "block", "AllowTraffic": "allow"}


class BenchError(RuntimeError):
    """A run could not be measured (a rollout failed, HAProxy never saw the fleet UP); the message says where."""


@dataclass
class Run:
    """One rollout of v1 -> v2 under load, on one fresh fleet."""

    traffic: bool
    rollout_seconds: float
    sent: int
    ok: int
    failed: int
    by_reason: dict[str, int]
    #: Event name -> its duration on each host, from the v2 command's events in status.json.
    events: dict[str, list[float]] = field(default_factory=dict)
    #: Each host's v2 command, from its start to its end (the agent's view of one host's deployment).
    host_seconds: list[float] = field(default_factory=list)
    #: Each host's v2 command as (started, ended), wall clock, to find the batches and the time between them.
    spans: list[tuple[datetime, datetime]] = field(default_factory=list)
    #: When `reconcile --once` for v2 started and exited, wall clock (the agents' reports use the same clock).
    began: datetime | None = None
    ended: datetime | None = None

    def batches(self) -> list[tuple[datetime, datetime]]:
        """The hosts' commands merged where they overlap: one span per batch of the rollout."""
        merged: list[tuple[datetime, datetime]] = []
        for start, end in sorted(self.spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def gaps(self) -> list[float]:
        """Seconds from a batch's last host finishing to the next batch's first host starting: the reconciler
        noticing, deciding and writing commands, and the agents picking them up."""
        merged = self.batches()
        return [(after[0] - before[1]).total_seconds() for before, after in pairwise(merged)]


def side(traffic: bool) -> str:
    return "with" if traffic else "without"


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ignore Ctrl-C while cleaning up: a second Ctrl-C would otherwise abort the cleanup it is waiting for and
    leave agents, apps or haproxy running. Every step of the cleanup is bounded by its own timeout."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_all_up(fleet: TrafficFleet) -> None:
    """Wait until HAProxy calls every server UP, so that the load starts on a healthy fleet on both sides (without
    traffic control nothing else waits for HAProxy's health checks after v1)."""
    assert fleet.haproxy is not None
    deadline = time.monotonic() + UP_TIMEOUT
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {name: state.status for name, state in fleet.haproxy.server_states().items()}
        if states and set(states.values()) == {"UP"}:
            return
        time.sleep(0.05)
    raise BenchError(f"HAProxy did not see every server UP within {UP_TIMEOUT:g}s after v1: {states}")


def seconds_between(event: dict[str, object], start: str = "startedAt", end: str = "endedAt") -> float | None:
    began, ended = event.get(start), event.get(end)
    if not isinstance(began, str) or not isinstance(ended, str):
        return None
    return (datetime.fromisoformat(ended) - datetime.fromisoformat(began)).total_seconds()


def read_reports(fleet: TrafficFleet, run: Run) -> None:
    """Fill `run` with each host's v2 command as its agent reported it: per-event and whole-command durations."""
    for host in fleet.hosts:
        status = json.loads((fleet.workdir / "store" / "hosts" / host.host_id / "status.json").read_text())
        command = status.get("command") or {}
        whole = seconds_between(command)
        if whole is not None:
            run.host_seconds.append(whole)
            run.spans.append((datetime.fromisoformat(command["startedAt"]), datetime.fromisoformat(command["endedAt"])))
        for event in command.get("events", []):
            took = seconds_between(event)
            if took is not None and event.get("status") == "Succeeded":
                run.events.setdefault(str(event["name"]), []).append(took)


def check(fleet: TrafficFleet, returncode: int, what: str) -> None:
    """A `reconcile --once` that did not succeed: interrupted (it stops at Ctrl-C or SIGTERM between passes, and a
    Ctrl-C in a terminal reaches it along with this script), or failed, which makes the run meaningless."""
    if returncode in (ExitCode.INTERRUPTED, ExitCode.TERMINATED) or returncode < 0:
        raise KeyboardInterrupt
    if returncode != 0:
        raise BenchError(f"{what} exited {returncode}; see {fleet.workdir / 'reconcile.log'}")


def measure(traffic: bool, *, hosts: int, rate: float, config: str, keep: bool) -> Run:
    """One side, one time, on a fresh fleet that is stopped (agents, apps, haproxy) whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-traffic-{side(traffic)}-"))
    fleet = TrafficFleet(workdir / "fleet", count=hosts)
    load: LoadGenerator | None = None
    failed = False  # a run that could not be measured keeps its folder, for its logs
    try:
        fleet.start()
        check(fleet, fleet.deploy("v1", config=config, traffic=traffic).returncode,
              f"the v1 deployment ({side(traffic)} traffic control)")
        wait_all_up(fleet)
        load = LoadGenerator(fleet.url, rate=rate)
        load.start()
        time.sleep(WARM_UP)
        fleet.commit("v2", config=config, traffic=traffic)
        began = datetime.now(UTC)
        started = time.monotonic()
        second = fleet.reconcile("--once")
        elapsed = time.monotonic() - started
        ended = datetime.now(UTC)
        check(fleet, second.returncode, f"the v2 rollout ({side(traffic)} traffic control)")
        time.sleep(COOL_DOWN)
        seen = load.stop()
        load = None
        run = Run(traffic, elapsed, seen.sent, seen.ok, seen.failed, dict(seen.by_reason))
        run.began, run.ended = began, ended
        read_reports(fleet, run)
        return run
    except BenchError:
        failed = True
        raise
    finally:
        with shielded():
            if load is not None:
                load.stop()
            fleet.stop()
            leftovers = kill_leftovers(workdir)
            if leftovers:
                print(f"# killed processes left running from {workdir}: {leftovers}", file=sys.stderr)
            if keep or failed:
                print(f"# kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


def processes_in(workdir: Path) -> dict[int, str]:
    """Live processes whose command line names `workdir` (pid -> command line); a zombie's is empty, so it is not
    one of them."""
    found: dict[int, str] = {}
    marker = str(workdir).encode()
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            cmdline = (entry / "cmdline").read_bytes()
            if marker in cmdline:
                found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def kill_leftovers(workdir: Path) -> list[str]:
    """SIGKILL any process still running from `workdir` once the fleet was stopped: a safety net for an
    interruption that lands between a process starting and the fleet recording it, which `TrafficFleet.stop`
    cannot know about. A process the fleet has just sent SIGKILL may not have been scheduled to die yet, so it
    gets LEFTOVER_GRACE first. Returns what it killed (pid and command line); normally nothing."""
    deadline = time.monotonic() + LEFTOVER_GRACE
    found = processes_in(workdir)
    while found and time.monotonic() < deadline:
        time.sleep(0.05)
        found = processes_in(workdir)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f"{pid} {command}" for pid, command in found.items()]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def event_medians(runs: list[Run]) -> dict[str, float]:
    """Per event, the median of its per-host durations pooled over every run of a side."""
    pooled: dict[str, list[float]] = {}
    for run in runs:
        for name, durations in run.events.items():
            pooled.setdefault(name, []).extend(durations)
    return {name: median(durations) for name, durations in pooled.items()}


def report(runs: dict[bool, list[Run]], hosts: int) -> None:
    lines: list[tuple[str, str, str]] = []
    for traffic in (True, False):
        done = runs[traffic]
        name = side(traffic)
        sent = median([r.sent for r in done])
        failed = median([r.failed for r in done])
        lines += [
            (f"traffic_rollout_seconds_{name}", f"{median([r.rollout_seconds for r in done]):.2f}", "s"),
            (f"traffic_requests_sent_{name}", f"{sent:g}", "requests"),
            (f"traffic_requests_failed_{name}", f"{failed:g}", "requests"),
            (f"traffic_failed_ratio_{name}", f"{median([r.failed / r.sent if r.sent else 0.0 for r in done]):.4f}",
             "ratio"),
            (f"traffic_host_command_seconds_{name}", f"{median([s for r in done for s in r.host_seconds]):.2f}",
             "s (median, one host's v2 command as its agent reports it)"),
            (f"traffic_between_batches_seconds_{name}", f"{median([g for r in done for g in r.gaps()]):.2f}",
             "s (median, a batch's last host done -> the next batch's first host starting)"),
        ]
    with_events = event_medians(runs[True])
    for step, short in TRAFFIC_STEPS.items():
        seconds = with_events.get(step, float("nan"))
        lines.append((f"traffic_step_{short}_seconds_median", f"{seconds:.2f}", f"s ({step}, median over hosts)"))
    overhead = (median([r.rollout_seconds for r in runs[True]])
                - median([r.rollout_seconds for r in runs[False]])) / hosts
    lines.append(("traffic_step_overhead_per_host", f"{overhead:.2f}", "s"))
    for name, value, unit in lines:
        print(f"{name}: {value} {unit}")
    for traffic in (True, False):
        medians = event_medians(runs[traffic])
        breakdown = ", ".join(f"{name} {seconds:.2f}" for name, seconds in medians.items())
        reasons: dict[str, int] = {}
        for run in runs[traffic]:
            for reason, count in run.by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + count
        print(f"# {side(traffic)}: median event seconds per host: {breakdown}", file=sys.stderr)
        print(f"# {side(traffic)}: failures by reason over all runs: {reasons or 'none'}", file=sys.stderr)
        for run in runs[traffic]:
            merged = run.batches()
            if run.began is None or run.ended is None or not merged:
                continue
            lead = (merged[0][0] - run.began).total_seconds()
            busy = sum((end - start).total_seconds() for start, end in merged)
            tail = (run.ended - merged[-1][1]).total_seconds()
            print(f"# {side(traffic)}: rollout {run.rollout_seconds:.2f}s = reconcile start to first command "
                  f"{lead:.2f}s + {len(merged)} batches {busy:.2f}s + between batches {sum(run.gaps()):.2f}s "
                  f"+ last host done to exit {tail:.2f}s", file=sys.stderr)


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM takes the same way out as Ctrl-C, so the `finally` blocks stop every process this run started."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second through HAProxy")
    parser.add_argument("--config", default="CodeDeployDefault.OneAtATime", help="the group's deploymentConfig")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; the figures are medians")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (logs, store, repos)")
    parser.add_argument("--log-level", default="warning", help="stderr log level (default warning)")
    args = parser.parse_args()
    if args.hosts < 1 or args.repeat < 1 or args.rate <= 0:
        parser.error("--hosts and --repeat must be at least 1, --rate positive")
    try:
        haproxy_path()
    except HAProxyError as exc:
        print(f"bench_traffic: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    signal.signal(signal.SIGTERM, on_sigterm)
    runs: dict[bool, list[Run]] = {True: [], False: []}
    try:
        for index in range(args.repeat):
            # Alternate the sides, so that a machine getting busier or quieter over the runs weighs on both alike.
            for traffic in (True, False) if index % 2 == 0 else (False, True):
                run = measure(traffic, hosts=args.hosts, rate=args.rate, config=args.config, keep=args.keep)
                runs[traffic].append(run)
                print(f"# run {index + 1}/{args.repeat} {side(traffic)}: rollout {run.rollout_seconds:.2f}s, "
                      f"{run.failed} of {run.sent} requests failed", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench_traffic: interrupted; every agent, app and haproxy of this run was stopped", file=sys.stderr)
        return 130
    except (BenchError, HAProxyError) as exc:
        print(f"bench_traffic: {exc}", file=sys.stderr)
        return 1
    report(runs, args.hosts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
