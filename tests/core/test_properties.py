"""Safety properties of the decision core over generated fleets (hypothesis + the randomised `World`).

Checked on every pass: a dispatch never takes the group below its minimum healthy hosts (by what agents
actually reported), a host never gets two commands with one generation for different deployments, no
busy host gets a command, at most one deployment is in flight per group, a quarantined revision is never
redeployed, and re-running a pass after applying it plans nothing new. At the end, with every agent
answering, every deployment must end.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.world import CONFIGS, CustomConfig, GroupSpec, World

TARGETS = [
    "{tagSets: [[{key: role, value: web}]]}",
    "{tagSets: [[{key: role, value: api}]]}",
    "{tagSets: [[{key: role, type: KEY_ONLY}]]}",  # every host: overlaps the others (shared command slots)
    "{tagSets: [[{key: role, value: web}], [{key: az, value: a}, {key: az, value: b}]], hosts: [ghost]}",
]

minimums = st.one_of(
    st.integers(0, 4).map(lambda v: f"{{type: HOST_COUNT, value: {v}}}"),
    st.integers(0, 90).map(lambda v: f"{{type: FLEET_PERCENT, value: {v}}}"),
)

custom_configs = st.builds(
    CustomConfig,
    minimum=minimums,
    canary=st.sampled_from([0, 0, 1, 2]),
    canary_bake=st.sampled_from([0, 60, 600]),
    zonal=st.booleans(),
    zone_bake=st.sampled_from([0, 30, 300]),
    first_zone_bake=st.sampled_from([None, 0, 900]),
    host_timeout=st.sampled_from([None, None, 60, 300]),
)

group_specs = st.lists(
    st.builds(
        GroupSpec,
        name=st.just("g"),
        targets=st.sampled_from(TARGETS),
        config=st.sampled_from(CONFIGS),
        auto_rollback=st.booleans(),
        outdated_only=st.booleans(),
    ),
    min_size=1,
    max_size=3,
).map(lambda specs: [GroupSpec(f"g{i}", s.targets, s.config, s.auto_rollback, s.outdated_only)
                     for i, s in enumerate(specs)])


def _world(data: st.DataObject, *, crash_rate: float) -> World:
    world = World(
        rng=random.Random(data.draw(st.integers(0, 2**32), label="seed")),
        hosts=[f"h{i}" for i in range(data.draw(st.integers(1, 12), label="hosts"))],
        groups=data.draw(group_specs, label="groups"),
        custom=data.draw(custom_configs, label="custom"),
        p_success=data.draw(st.sampled_from([1.0, 0.9, 0.6, 0.2]), label="p_success"),
        p_offline=data.draw(st.sampled_from([0.0, 0.01, 0.05]), label="p_offline"),
        crash_rate=crash_rate,
    )
    world.setup(installed_fraction=data.draw(st.sampled_from([0.0, 0.5, 1.0]), label="installed"))
    return world


def _run(world: World, passes: int) -> None:
    for _ in range(passes):
        world.step()
    settled = world.settle(max_passes=600)
    assert not world.violations, "\n".join(world.violations[:10])
    assert settled, f"deployments still in flight after settling: {world.in_flight()}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_safety_and_convergence(data: st.DataObject) -> None:
    _run(_world(data, crash_rate=0.0), passes=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_safety_and_convergence_with_crashes_between_writes(data: st.DataObject) -> None:
    """The executor dies after a random prefix of a pass's writes; the next passes must repair it."""
    _run(_world(data, crash_rate=0.25), passes=60)
