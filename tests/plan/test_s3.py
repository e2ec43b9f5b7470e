"""Plans read the fleet from S3 exactly as from a folder (over real HTTP, against moto's server), and a store
that cannot be read makes the plan offline with a warning instead of failing the review."""

from __future__ import annotations

import uuid
from pathlib import Path

from reconciler.cli.plan import make_plan
from reconciler.plan.render import render_text
from tests.conftest import S3Server
from tests.plan.scenarios import NOW, build

GOLDEN = Path(__file__).parent / "golden"


def test_a_plan_reads_the_fleet_from_s3(tmp_path: Path, s3_server: S3Server) -> None:
    s3_server.client().create_bucket(Bucket="fleetshift-plan")
    store_url = f"s3://fleetshift-plan/{uuid.uuid4().hex[:8]}/prod?endpoint={s3_server.endpoint_url}"
    built = build(tmp_path, "revision-bump-store", store_url=store_url)
    plan = make_plan(built.request, now=NOW).plan
    assert plan.fleet == "store" and plan.registered_hosts == 9
    text = render_text(plan, width=110).replace(str(tmp_path), "<tmp>").replace(store_url, "file://<tmp>/store")
    # Same fleet, same plan, whichever backend holds it.
    assert text == (GOLDEN / "revision-bump-store" / "plan.txt").read_text()


def test_an_unreadable_store_makes_the_plan_offline_with_a_warning(tmp_path: Path, s3_server: S3Server) -> None:
    store_url = f"s3://no-such-fleetshift-bucket/prod?endpoint={s3_server.endpoint_url}"
    built = build(tmp_path, "revision-bump", store_url=store_url)
    plan = make_plan(built.request, now=NOW).plan
    assert plan.fleet == "offline" and plan.has_changes
    [warning] = plan.warnings
    assert warning.code == "STORE_UNREACHABLE"
    assert "the store's bucket 'no-such-fleetshift-bucket' does not exist" in warning.message
    assert plan.rollouts[0].action == "deploy" and plan.rollouts[0].basis == "selectors"
