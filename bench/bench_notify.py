"""What notifications cost the reconciler on a store with long histories (issue 17).

Records of `--groups` groups, each with `--history` deployments of `--events` events (a long-running fleet at
`reconcile.historyLimit`), all already sent by a webhook notification (`*`) and by a Slack one (its default
triggers). Measured, best of `--rounds`:

- `pending_caught_up`: one worker's look for pending events when nothing is new (what every pass costs each
  notification in steady state);
- `pending_one_new_event`: the same with one new event recorded in one deployment (the usual case during a rollout);
- `cursor_from_now`: creating a new notification's cursor with everything recorded counted as handled;
- `cursor_bytes`: the size of that cursor document when every deployment finished within the hour (the worst
  case: nothing can be folded; the store reads at most 1 MiB of an `events/` document), and
  `cursor_bytes_compacted` once they are older than an hour (`cursor.compacted`, which `fresh` applies too);
- `on_pass`: what `Notifier.on_pass` adds to a pass (it hands the records over and returns).

    .venv/bin/python bench/bench_notify.py [--groups 1000 --history 20 --events 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.models import (
    Deployment,
    DeploymentStatus,
    EventSeverity,
    EventType,
    GitLocation,
    GroupState,
    RecordedEvent,
    Revision,
)
from contract.store import MemoryStore
from reconciler.core.state import State
from reconciler.desired.manifests import Desired, NotificationManifest
from reconciler.desired.notification_spec import NotificationSpec
from reconciler.notify import cursor as cursors
from reconciler.notify.deliver import Notifier
from reconciler.notify.feed import pending_events

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CYCLE = [EventType.DEPLOYMENT_STARTED, EventType.BATCH_STARTED, EventType.HOST_SUCCEEDED,
         EventType.HOST_SUCCEEDED, EventType.DEPLOYMENT_SUCCEEDED]


def build(groups: int, history: int, events: int) -> State:
    revision = Revision(git=GitLocation(repository="https://git.example/app.git", commit="ab" * 20))
    deployments: dict[str, Deployment] = {}
    group_states: dict[str, GroupState] = {}
    for g in range(groups):
        ids = []
        for h in range(history):
            deployment_id = f"d-{g:05d}{h:03d}"
            start = T0 + timedelta(minutes=g * history + h)
            recorded = [RecordedEvent(seq=n + 1, type=CYCLE[n % len(CYCLE)], severity=EventSeverity.INFO,
                                      at=start + timedelta(seconds=n), message=f"event {n + 1}")
                        for n in range(events)]
            deployments[deployment_id] = Deployment(
                deployment_id=deployment_id, application=f"app{g}", deployment_group="web", revision=revision,
                source_commit="cd" * 20, deployment_config="CodeDeployDefault.OneAtATime",
                status=DeploymentStatus.SUCCEEDED, created_at=start, updated_at=start, events=recorded)
            ids.append(deployment_id)
        group_states[f"app{g}/web"] = GroupState(application=f"app{g}", deployment_group="web", history=ids,
                                                 updated_at=T0)
    return State(groups=group_states, deployments=deployments)


def best(rounds: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def measure_pending(name: str, spec: NotificationSpec, state: State, rounds: int) -> None:
    cursor = cursors.fresh(name, spec, state, T0)
    caught_up = best(rounds, lambda: pending_events(spec, cursor, state))
    print(f"{name}_pending_caught_up: {caught_up * 1000:.1f} ms")
    some = next(iter(state.deployments.values()))
    failed = some.events[0].model_copy(update={"seq": len(some.events) + 1, "type": EventType.DEPLOYMENT_FAILED})
    more = some.model_copy(update={"events": [*some.events, failed]})
    moved = State(groups=state.groups, deployments={**state.deployments, more.deployment_id: more})
    assert len(pending_events(spec, cursor, moved)) == 1
    one_new = best(rounds, lambda: pending_events(spec, cursor, moved))
    print(f"{name}_pending_one_new_event: {one_new * 1000:.1f} ms")


@dataclass(frozen=True)
class Snap:
    state: State


@dataclass(frozen=True)
class Pass:
    snapshot: Snap
    state_after: State
    desired: Desired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    state = build(args.groups, args.history, args.events)
    print(f"recorded_events: {args.groups * args.history * args.events} events")
    manifests = {
        name: NotificationManifest.model_validate({"apiVersion": "deploy/v1", "kind": "Notification",
                                                   "metadata": {"name": name}, "spec": spec})
        for name, spec in (("webhook", {"webhook": {"url": "https://hooks.example/x"}}),
                           ("slack", {"slack": {"urlFrom": {"env": "SLACK_WEBHOOK_URL"}}}))
    }
    for name, manifest in manifests.items():
        measure_pending(name, manifest.spec, state, args.rounds)
    spec = manifests["webhook"].spec
    print(f"cursor_from_now: {best(args.rounds, lambda: cursors.fresh('webhook', spec, state, T0)) * 1000:.1f} ms")
    fresh = cursors.fresh("webhook", spec, state, T0)
    print(f"cursor_bytes: {len(fresh.to_json()) / 1024:.0f} KiB")
    # A day on, with nothing pending: every finished deployment's entry is folded into one time.
    folded = cursors.compacted(fresh, state, [], T0 + timedelta(days=30))
    print(f"cursor_bytes_compacted: {len(folded.to_json()) / 1024:.1f} KiB")
    notifier = Notifier(MemoryStore(), may_deliver=lambda: False)
    wanted = Desired(commit=None, notifications=manifests)
    outcome = Pass(Snap(state), state, wanted)
    notifier.on_pass(outcome)  # the first pass starts the workers; later passes only hand the records over
    try:
        print(f"on_pass: {best(args.rounds, lambda: notifier.on_pass(outcome)) * 1e6:.0f} us")
    finally:
        notifier.close()


if __name__ == "__main__":
    main()
