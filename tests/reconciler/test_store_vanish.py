"""The file store's folder vanishes mid-rollout (renamed away, as an unmounted NFS share does) with a real
`reconcile --once` and real agents running: nothing is written into a phantom folder, `--once` does not
declare the fleet converged on zero hosts, and the agents keep their reports and send them when the store is
back."""

from __future__ import annotations

import time

import pytest

from tests.reconciler.procs import wait_for
from tests.reconciler.test_e2e import Fleet, fleet  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def test_a_store_folder_renamed_away_mid_rollout_is_an_outage(fleet: Fleet) -> None:  # noqa: F811
    folder = fleet.workdir / "store"
    away = fleet.workdir / "store-away"
    fleet.commit("v1")
    once = fleet.reconcile("vanish", "--once")
    try:
        wait_for(lambda: any(host.runs for host in fleet.hosts), 60, "a host to start the rollout")
        folder.rename(away)
        time.sleep(8)
        assert not folder.exists(), "something re-created the store folder while it was away"
        assert once.process.poll() is None, "reconcile --once ended while the store was away"
        away.rename(folder)
        code = once.wait(timeout=120)
        out = once.process.stdout.read().decode() if once.process.stdout else ""
    finally:
        once.stop()
    assert code == 0, out
    assert "converged" in out and "NO_INSTANCES" not in out
    wait_for(lambda: set(fleet.answers().values()) == {"1"}, 30, "every host to serve v1")
    group = fleet.group()
    assert group.effective_revision is not None
    fleet.assert_nothing_ran_twice()
