"""The plan's dry run copies only what a simulated tick changes, and decides exactly as before (issue 18).

`preview_rollout` used to give every live host a new heartbeat, a copy of its status, at every tick. Now a host
whose command does not move keeps its last heartbeat for as long as that keeps it online (`run_agents` with
`heartbeat_timeout`). A pass reads heartbeats only to tell online from offline, so every pass must decide the
same: checked here tick by tick against simulated agents that heartbeat every time, over every golden scenario
of the core, with small ticks and with jumps past the heartbeat timeout.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reconciler.core import CoreSettings, Observed, State, apply_actions, is_online, reconcile, run_agents
from reconciler.desired.manifests import Desired
from tests.core.scenario import load_scenario

SCENARIOS = sorted(folder for folder in (Path(__file__).parents[1] / "core" / "scenarios").iterdir() if folder.is_dir())
#: Simulated time between passes: the plan's tick, bakes, and jumps past the default 3-minute heartbeat timeout.
TICKS = [timedelta(milliseconds=1), timedelta(minutes=2), timedelta(milliseconds=1), timedelta(minutes=4),
         timedelta(seconds=30), timedelta(minutes=2, seconds=59), timedelta(milliseconds=1), timedelta(hours=1)] * 3


def lockstep(desired: Desired, observed: Observed, state: State, now: datetime,
             settings: CoreSettings) -> tuple[int, int]:
    """Run agents that keep heartbeats and agents that always heartbeat side by side; every pass must return the
    same actions. (statuses the keeping agents copied, statuses the heartbeating ones copied)"""
    timeout = settings.heartbeat_timeout
    alive = {host for host in observed.statuses if is_online(observed, host, now=now, heartbeat_timeout=timeout)}
    keeping, heartbeating = observed, observed
    clock = now
    copied = {"keeping": 0, "heartbeating": 0}
    for passes, tick in enumerate(TICKS):
        actions = reconcile(desired, keeping, state, now=clock, settings=settings)
        assert actions == reconcile(desired, heartbeating, state, now=clock, settings=settings), (passes, clock)
        state = apply_actions(state, actions)
        clock += tick
        for name, before, after in (
            ("keeping", keeping, run_agents(keeping, state, now=clock, alive=alive, heartbeat_timeout=timeout)),
            ("heartbeating", heartbeating, run_agents(heartbeating, state, now=clock, alive=alive)),
        ):
            copied[name] += sum(1 for host, status in after.statuses.items() if before.statuses[host] is not status)
            if name == "keeping":
                keeping = after
            else:
                heartbeating = after
    return copied["keeping"], copied["heartbeating"]


@pytest.mark.parametrize("folder", SCENARIOS, ids=lambda folder: folder.name)
def test_keeping_heartbeats_decides_every_pass_as_heartbeating(folder: Path) -> None:
    desired, observed, state, now, settings = load_scenario(folder)
    kept, heartbeating = lockstep(desired, observed, state, now, settings)
    assert kept < heartbeating or not observed.statuses


def test_a_tick_copies_only_the_statuses_it_changes() -> None:
    desired, observed, state, now, settings = load_scenario(
        Path(__file__).parents[1] / "core" / "scenarios" / "codedeploy-host-count-6-of-9")
    timeout = settings.heartbeat_timeout
    alive = {host for host in observed.statuses if is_online(observed, host, now=now, heartbeat_timeout=timeout)}
    assert len(alive) == 9
    state = apply_actions(state, reconcile(desired, observed, state, now=now, settings=settings))
    dispatched = {host for host, command in state.commands.items() if host in alive}
    assert 0 < len(dispatched) < len(alive)
    later = now + timedelta(seconds=1)
    kept = run_agents(observed, state, now=later, alive=alive, heartbeat_timeout=timeout)
    assert {host for host in alive if kept.statuses[host] is not observed.statuses[host]} == dispatched
    # Past the timeout every live host needs its heartbeat again, or it would count offline.
    much_later = now + timeout + timedelta(minutes=1)
    stale = run_agents(observed, state, now=much_later, alive=alive, heartbeat_timeout=timeout)
    assert all(stale.statuses[host] is not observed.statuses[host] for host in alive)
    assert all(is_online(stale, host, now=much_later, heartbeat_timeout=timeout) for host in alive)
