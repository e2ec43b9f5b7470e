"""The cursor and the feed, pure: what is pending, "from now", triggers changed, pruning, the fleet log's gap, and
the transitions a delivery makes."""

from __future__ import annotations

from datetime import timedelta

from contract.models import EventType
from reconciler.desired.manifests import NotificationManifest
from reconciler.desired.notification_spec import NotificationSpec
from reconciler.notify import cursor as cursors
from reconciler.notify.feed import fleet_log_start, pending_events
from tests.notify.records import T0, deployment, fleet_log, state, with_events

S = EventType


def spec(**fields: object) -> NotificationSpec:
    return NotificationManifest.model_validate({
        "apiVersion": "deploy/v1", "kind": "Notification", "metadata": {"name": "n"},
        "spec": {"webhook": {"urlFrom": {"env": "H"}}, **fields},
    }).spec


def ids(events: list) -> list[str]:  # type: ignore[type-arg]
    return [event.id for event in events]


def test_a_new_cursor_starts_from_now_and_sends_only_what_comes_after() -> None:
    first = deployment("d-1", [S.DEPLOYMENT_STARTED, S.BATCH_STARTED])
    before = state(first, fleet=fleet_log(1, 2))
    cursor = cursors.fresh("n", spec(), before, T0)
    assert cursor.handled == {"d-1": 2, "fleet": 2}
    assert pending_events(spec(), cursor, before) == []
    second = deployment("d-2", [S.DEPLOYMENT_STARTED], group="shop/api", start=T0 + timedelta(seconds=10))
    after = state(with_events(first, S.HOST_SUCCEEDED, S.DEPLOYMENT_SUCCEEDED), second,
                  fleet=fleet_log(1, 3, start=T0 + timedelta(seconds=20)))
    assert ids(pending_events(spec(), cursor, after)) == ["d-1.3", "d-1.4", "d-2.1", "fleet.3"]


def test_pending_events_are_in_stream_order_across_sources() -> None:
    a = deployment("d-a", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_SUCCEEDED], start=T0)
    b = deployment("d-b", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_FAILED], group="shop/api",
                   start=T0 + timedelta(milliseconds=1500))
    records = state(a, b)
    cursor = cursors.fresh("n", spec(), state(), T0)
    # d-a's events at +1s, +2s; d-b's at +2.5s, +3.5s.
    assert ids(pending_events(spec(), cursor, records)) == ["d-a.1", "d-a.2", "d-b.1", "d-b.2"]


def test_filters_apply_to_pending_events() -> None:
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.HOST_FAILED, S.DEPLOYMENT_FAILED]),
                    deployment("d-2", [S.DEPLOYMENT_FAILED], group="blog/web"), fleet=fleet_log(1, 1))
    empty = cursors.fresh("n", spec(), state(), T0)
    chosen = spec(events=["deployment.*"], groups=["shop/*"])
    assert ids(pending_events(chosen, empty, records)) == ["d-1.1", "d-1.3"]
    severe = spec(minSeverity="error")
    # By time (d-2.1 and fleet.1 at +1s, d-1.3 at +3s), then by source.
    assert ids(pending_events(severe, empty, records)) == ["d-2.1", "fleet.1", "d-1.3"]


def test_delivered_retried_and_abandoned_transitions() -> None:
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_FAILED]))
    cursor = cursors.fresh("n", spec(), state(), T0)
    first, second = pending_events(spec(), cursor, records)
    cursor = cursors.retried(cursor, first, T0, "HTTP 500", T0 + timedelta(seconds=2))
    assert cursor.head is not None and cursor.head.attempts == 1 and cursor.head.event_id == "d-1.1"
    cursor = cursors.retried(cursor, first, T0, "HTTP 502", T0 + timedelta(seconds=4))
    assert cursor.head is not None and cursor.head.attempts == 2 and cursor.last_error == "HTTP 502"
    assert cursors.attempts_so_far(cursor, first) == 2 and cursors.attempts_so_far(cursor, second) == 0
    cursor = cursors.delivered(cursor, first, T0 + timedelta(seconds=5))
    assert cursor.head is None and cursor.handled == {"d-1": 1} and cursor.delivered_total == 1
    assert cursor.retried_total == 2 and cursor.last_delivered_event == "d-1.1"
    assert ids(pending_events(spec(), cursor, records)) == ["d-1.2"]
    cursor = cursors.abandoned(cursor, second, T0 + timedelta(seconds=6), "HTTP 400: bad")
    assert cursor.handled == {"d-1": 2} and cursor.failed_total == 1
    assert cursor.last_failed_event == "d-1.2" and cursor.last_error == "HTTP 400: bad"
    assert pending_events(spec(), cursor, records) == []


def test_changed_triggers_start_from_now_and_keep_totals() -> None:
    records = state(deployment("d-1", [S.DEPLOYMENT_STARTED, S.HOST_FAILED]))
    narrow = spec(events=["deployment.*"])
    cursor = cursors.fresh("n", narrow, state(), T0)
    cursor = cursors.delivered(cursor, pending_events(narrow, cursor, records)[0], T0)
    wide = spec()
    assert cursors.trigger_digest(wide) != cursor.triggers
    # Without the restart, widening the triggers would send d-1.2, recorded before the change.
    assert ids(pending_events(wide, cursor, records)) == ["d-1.2"]
    restarted = cursors.restarted(cursor, wide, records, T0)
    assert pending_events(wide, restarted, records) == []
    assert restarted.delivered_total == 1 and restarted.triggers == cursors.trigger_digest(wide)
    # A change of provider settings that does not change what is sent keeps the digest.
    assert cursors.trigger_digest(spec(timeout="5s")) == cursors.trigger_digest(wide)


def test_entries_of_deployments_gone_from_every_history_are_pruned() -> None:
    old = deployment("d-old", [S.DEPLOYMENT_STARTED])
    kept = deployment("d-kept", [S.DEPLOYMENT_STARTED])
    cursor = cursors.fresh("n", spec(), state(old, kept), T0)
    assert set(cursor.handled) == {"d-old", "d-kept"}
    records = state(kept)
    assert cursors.pruned(cursor, cursors.live_sources(records)).handled == {"d-kept": 1}
    # A deployment still named by its group but unreadable this pass keeps its entry.
    unreadable = state(old, kept)
    unreadable = type(unreadable)(groups=unreadable.groups, deployments={"d-kept": kept})
    assert cursors.pruned(cursor, cursors.live_sources(unreadable)) is cursor


def test_a_gap_in_the_bounded_fleet_log_is_skipped_and_counted() -> None:
    cursor = cursors.fresh("n", spec(), state(fleet=fleet_log(1, 3)), T0)
    assert cursor.handled["fleet"] == 3
    later = state(fleet=fleet_log(10, 5))  # events 4..9 were dropped from the log before we saw them
    caught, missed = cursors.caught_up(cursor, fleet_log_start(later), T0)
    assert missed == 6 and caught.handled["fleet"] == 9 and caught.missed_total == 6
    assert ids(pending_events(spec(), caught, later)) == [f"fleet.{n}" for n in range(10, 15)]
    assert cursors.caught_up(caught, fleet_log_start(later), T0) == (caught, 0)


def test_the_cursor_key_is_under_events() -> None:
    assert cursors.cursor_key("oncall-slack") == "events/notifications/oncall-slack.json"


def test_finished_deployments_an_hour_old_are_folded_into_one_time() -> None:
    from contract.models import DeploymentStatus

    old = deployment("d-old", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_SUCCEEDED], status=DeploymentStatus.SUCCEEDED)
    running = deployment("d-run", [S.DEPLOYMENT_STARTED], group="shop/api")
    recent = deployment("d-new", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_SUCCEEDED], group="shop/db",
                        start=T0 + timedelta(hours=2), status=DeploymentStatus.SUCCEEDED)
    records = state(old, running, recent)
    cursor = cursors.fresh("n", spec(), records, T0)
    now = T0 + timedelta(hours=2, minutes=30)
    folded = cursors.compacted(cursor, records, [], now)
    assert folded.handled == {"d-run": 1, "d-new": 2}, "only the finished one whose last event is over an hour old"
    assert folded.compacted_before == now - cursors.COMPACT_AFTER
    assert pending_events(spec(), folded, records) == [], "folding changes nothing that is pending"
    # A new deployment appears with its events after the folding time: all of them are pending.
    later = deployment("d-later", [S.DEPLOYMENT_STARTED], group="blog/web", start=now)
    assert ids(pending_events(spec(), folded, state(old, running, recent, later))) == ["d-later.1"]
    # Nothing to fold: the same cursor (no write).
    assert cursors.compacted(folded, records, [], now) is folded


def test_folding_never_passes_a_pending_event_without_an_entry() -> None:
    from contract.models import DeploymentStatus

    old = deployment("d-old", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_SUCCEEDED], status=DeploymentStatus.SUCCEEDED)
    unsent = deployment("d-unsent", [S.DEPLOYMENT_STARTED, S.DEPLOYMENT_FAILED], group="shop/api",
                        start=T0 + timedelta(minutes=10), status=DeploymentStatus.FAILED)
    cursor = cursors.fresh("n", spec(), state(old), T0)  # d-unsent came after: no entry, both events pending
    records = state(old, unsent)
    pending = pending_events(spec(), cursor, records)
    assert ids(pending) == ["d-unsent.1", "d-unsent.2"]
    folded = cursors.compacted(cursor, records, pending, T0 + timedelta(hours=5))
    assert "d-old" not in folded.handled
    assert folded.compacted_before is not None and folded.compacted_before <= pending[0].at
    assert ids(pending_events(spec(), folded, records)) == ["d-unsent.1", "d-unsent.2"]
