"""The Markdown plan as GitHub will show it: parsed by a real Markdown parser, kept under the comment size
limit by dropping whole detail blocks, and safe against values that look like Markdown or HTML."""

from __future__ import annotations

from datetime import UTC, datetime

from reconciler.plan.model import (
    Batch,
    FieldChange,
    GroupRollout,
    ObjectChange,
    Plan,
    PlanWarning,
    RefInfo,
)
from reconciler.plan.render import COMMENT_MARKER, GITHUB_COMMENT_LIMIT, render_markdown
from tests.plan.markdown_check import check_markdown

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def big_plan(groups: int, hosts_per_group: int) -> Plan:
    changes = []
    rollouts = []
    for n in range(groups):
        name = f"group-{n:04d}"
        changes.append(ObjectChange(kind="DeploymentGroup", name=name, change="changed", source=f"m/{name}.yaml:1",
                                    fields=[FieldChange(path="revision.git.commit", before="a" * 40, after="b" * 40),
                                            FieldChange(path="targets.hosts", before=["x|y"], after=["<b>z</b>"])]))
        hosts = [f"{name}-host-{h:04d}" for h in range(hosts_per_group)]
        rollouts.append(GroupRollout(
            group=f"shop/{name}", action="deploy", reason="the desired revision changed", basis="store",
            deployment_config="CodeDeployDefault.HalfAtATime", target_hosts=hosts, deploy_hosts=hosts,
            batches=[Batch(number=1, hosts=hosts[: len(hosts) // 2]), Batch(number=2, hosts=hosts[len(hosts) // 2:])],
        ))
    return Plan(repository="config", path="manifests", base=RefInfo(ref="main", commit="1" * 40),
                head=RefInfo(ref="HEAD", commit="2" * 40), fleet="store", store="s3://bucket/prod",
                registered_hosts=groups * hosts_per_group, computed_at=NOW, has_changes=True, changes=changes,
                rollouts=rollouts,
                warnings=[PlanWarning(code="ROLLBACK_DISABLED", group="shop/group-0000", message="`rm -rf` *bold*")])


def test_a_huge_plan_is_cut_to_the_comment_limit_at_block_boundaries() -> None:
    text = render_markdown(big_plan(400, 60), mermaid=True)
    assert len(text) <= GITHUB_COMMENT_LIMIT
    assert text.startswith(COMMENT_MARKER)
    assert "> **Truncated:**" in text and "detail sections were left out" in text
    check_markdown(text)
    # The summary table comes first and survives whole.
    assert text.count("| ~ | `DeploymentGroup/group-") == 400


def test_an_enormous_summary_is_cut_at_a_line_and_says_so() -> None:
    text = render_markdown(big_plan(3000, 2), limit=20_000)
    assert len(text) <= 20_000
    assert "the summary was cut" in text
    check_markdown(text)


def test_a_small_plan_is_not_cut() -> None:
    text = render_markdown(big_plan(3, 4), mermaid=True)
    assert "Truncated" not in text
    assert text.count("<details>") == 6 and text.count("```mermaid") == 3
    check_markdown(text)


def test_values_cannot_break_the_markdown() -> None:
    text = render_markdown(big_plan(1, 2))
    check_markdown(text)
    # Pipes inside cells are escaped, HTML in values stays code, Markdown in messages stays text.
    assert "`[x\\|y]`" in text
    assert "`[<b>z</b>]`" in text
    assert "\\`rm -rf\\` \\*bold\\*" in text
