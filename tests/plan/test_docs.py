"""docs/plan.md shows real output: its rendered example is the golden plan (with readable paths), and it
renders as Markdown without unbalanced fences or <details>."""

from __future__ import annotations

from pathlib import Path

from tests.plan.markdown_check import check_markdown

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


def _readable(text: str) -> str:
    return text.replace("file://<tmp>/store", "s3://acme-deploy/prod").replace("<tmp>/config", ".")


def test_the_documented_examples_are_the_golden_plans() -> None:
    doc = (ROOT / "docs" / "plan.md").read_text()
    start, end = doc.index("<!-- example:start -->\n"), doc.index("<!-- example:end -->")
    example = doc[start + len("<!-- example:start -->\n"): end]
    assert example == _readable((GOLDEN / "revision-bump-store" / "plan.md").read_text()), (
        "docs/plan.md's example differs from tests/plan/golden/revision-bump-store/plan.md; paste the new one")
    assert _readable((GOLDEN / "store-warnings" / "plan.txt").read_text()) in doc
    check_markdown(doc)
