"""The reconciler's metrics over a large fleet: what one scrape costs (issue 17).

The fleet is `bench_reconcile_pass.build`'s: `--groups` groups of `--hosts-per-group` hosts, `--in-flight` of them
rolling out. One pass's outcome is built from it (no store: the pass itself is measured by that benchmark), handed
to `ReconcilerMetrics.on_pass`, and then measured:

- `view_time`: the group and host rows computed from that pass (done once per pass, at its first scrape);
- `scrape_time`: one whole exposition after that (what every further scrape of the same pass costs);
- the exposition's size and series count, with per-host series on and off (`metrics.hostSeries`).

    .venv/bin/python bench/bench_metrics.py [--groups N --hosts-per-group N --in-flight N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reconcile_pass import NOW, build

from reconciler.shell.executor import Applied
from reconciler.shell.metrics import ReconcilerMetrics, fleet_view
from reconciler.shell.observe import Snapshot
from reconciler.shell.passes import PassOutcome


def measure(label: str, groups: int, per_group: int, in_flight: int, rounds: int) -> None:
    desired, observed, state = build(groups, per_group, in_flight)
    outcome = PassOutcome(number=1, commit=desired.commit, started_at=NOW, now=NOW, duration=timedelta(seconds=0.1),
                          snapshot=Snapshot(observed, state), actions=[], applied=Applied(), state_after=state,
                          desired=desired)
    print(f"{label}_hosts: {groups * per_group} hosts")
    for host_series in (True, False):
        suffix = "" if host_series else "_no_host_series"
        view = float("inf")
        for _ in range(rounds):
            gc.collect()
            start = time.perf_counter()
            fleet_view(outcome, heartbeat_timeout=timedelta(minutes=3), host_series=host_series)
            view = min(view, time.perf_counter() - start)
        metrics = ReconcilerMetrics(heartbeat_timeout=timedelta(minutes=3), host_series=host_series)
        metrics.on_pass(outcome)
        text = metrics.exposition()  # the first scrape computes the view
        scrape = float("inf")
        for _ in range(rounds):
            gc.collect()
            start = time.perf_counter()
            text = metrics.exposition()
            scrape = min(scrape, time.perf_counter() - start)
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        print(f"{label}{suffix}_view_time: {view:.3f} s")
        print(f"{label}{suffix}_scrape_time: {scrape:.3f} s")
        print(f"{label}{suffix}_series: {series} series")
        print(f"{label}{suffix}_exposition_size: {len(text) / 1e6:.2f} MB")


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
    measure("metrics_10k", 1_000, 10, 50, args.rounds)


if __name__ == "__main__":
    main()
