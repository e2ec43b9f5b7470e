"""Notifications under `reconcile watch`, two real processes: only the lease holder delivers (the standby sends
nothing while it waits), and after a SIGTERM hand-over the new holder goes on from the cursor: every event of both
rollouts reaches the webhook once, in order."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.events import from_deployment, in_order
from contract.keys import group_state_key
from contract.models import Deployment, GroupState
from contract.store import Store, open_store
from fleetlab.receiver import Receiver, receiver
from tests.reconciler.fleet import APPLICATION, Config, ScriptedAgents, group_manifest, local_revision
from tests.reconciler.procs import Reconciler, wait_for

pytestmark = pytest.mark.slow

HOOK = """\
apiVersion: deploy/v1
kind: Notification
metadata:
  name: hook
spec:
  webhook:
    url: {url}/hook
"""


@pytest.fixture
def server() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


def recorded_ids(store: Store) -> list[str]:
    stored = store.get(group_state_key("hello", "web"))
    if stored is None:
        return []
    group = GroupState.model_validate_json(stored.data)
    ids = [*group.history, *([group.deployment_in_flight] if group.deployment_in_flight else [])]
    events = []
    for deployment_id in dict.fromkeys(ids):
        document = store.get(f"deployments/{deployment_id}.json")
        assert document is not None
        events.extend(from_deployment(Deployment.model_validate_json(document.data)))
    return [event.id for event in in_order(events)]


def hook_ids(server: Receiver) -> list[str]:
    return [request.json()["id"] for request in server.received("/hook")]


def effective(store: Store) -> str | None:
    stored = store.get(group_state_key("hello", "web"))
    if stored is None:
        return None
    revision = GroupState.model_validate_json(stored.data).effective_revision
    return revision.short() if revision is not None else None


def test_only_the_holder_delivers_and_a_new_holder_goes_on_from_the_cursor(tmp_path: Path, server: Receiver) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    store = open_store(store_url)
    config = Config(tmp_path / "config")
    config.repo.write("manifests/application.yaml", APPLICATION)
    config.repo.write("manifests/hook.yaml", HOOK.format(url=server.url))
    config.repo.commit("application and a webhook")
    agents = ScriptedAgents(store, ["h1", "h2", "h3"])
    agents.register()
    stop = threading.Event()

    def answer() -> None:
        while not stop.wait(0.02):
            agents.answer()

    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    env = {"FLEETSHIFT_RECONCILE_POLL_INTERVAL": "50ms", "FLEETSHIFT_RECONCILE_RESYNC_INTERVAL": "1h",
           "FLEETSHIFT_RECONCILE_LEASE_DURATION": "3s", "FLEETSHIFT_RECONCILE_HEARTBEAT_TIMEOUT": "1h"}
    args = [*config.args(), "--store", store_url, "watch"]
    leader = Reconciler(args, tmp_path / "leader.log", env)
    standby: Reconciler | None = None
    try:
        leader.wait_event("lease.acquired")
        standby = Reconciler(args, tmp_path / "standby.log", env)
        standby.wait_event("lease.waiting")

        config.set_group(group_manifest(revision=local_revision(1)), message="deploy v1")
        wait_for(lambda: effective(store) == "bundles/v1.zip", 30, "v1 rolled out")
        wait_for(lambda: hook_ids(server) == recorded_ids(store), 15, "v1's events delivered")
        assert standby.events("notify.delivered") == [] and standby.events("notify.started") == []
        assert {event["notification"] for event in leader.events("notify.delivered")} == {"hook"}

        leader.signal(signal.SIGTERM)
        assert leader.wait(timeout=10) == 0
        standby.wait_event("lease.acquired", timeout=15)
        config.set_group(group_manifest(revision=local_revision(2)), message="deploy v2")
        wait_for(lambda: effective(store) == "bundles/v2.zip", 30, "v2 through the new holder")
        wait_for(lambda: len(hook_ids(server)) >= len(recorded_ids(store)), 15, "v2's events delivered")
        ids = hook_ids(server)
        assert ids == recorded_ids(store), "every event of both rollouts once, in order, across the hand-over"
        assert len(ids) == len(set(ids))
        assert standby.events("notify.delivered"), "the new holder delivered v2's events"
        standby.signal(signal.SIGTERM)
        assert standby.wait(timeout=10) == 0
    finally:
        stop.set()
        answering.join()
        leader.stop()
        if standby is not None:
            standby.stop()
