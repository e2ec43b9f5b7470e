"""The one-line description of a deployment config that `reconcile status` and `reconcile plan` print."""

from __future__ import annotations

import pytest

from reconciler.desired.manifests import BUILTIN_CONFIGS, EffectiveConfig, MinimumHealthyHostsSpec


@pytest.mark.parametrize(
    ("kind", "value", "text"),
    [
        ("HOST_COUNT", 1, "minimum healthy 1 host"),
        ("HOST_COUNT", 0, "minimum healthy 0 hosts"),
        ("HOST_COUNT", 3, "minimum healthy 3 hosts"),
        ("FLEET_PERCENT", 1, "minimum healthy 1%"),
        ("FLEET_PERCENT", 50, "minimum healthy 50%"),
    ],
)
def test_describe_agrees_in_number(kind: str, value: int, text: str) -> None:
    config = EffectiveConfig("custom", MinimumHealthyHostsSpec.model_validate({"type": kind, "value": value}))
    assert config.describe() == text


def test_builtin_descriptions() -> None:
    assert {name: config.describe() for name, config in BUILTIN_CONFIGS.items()} == {
        "CodeDeployDefault.OneAtATime": "one host at a time",
        "CodeDeployDefault.HalfAtATime": "minimum healthy 50%",
        "CodeDeployDefault.AllAtOnce": "minimum healthy 0 hosts",
    }
