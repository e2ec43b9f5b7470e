"""Checks that a Markdown plan renders as intended, with a real Markdown parser (markdown-it-py).

A PR comment with one unclosed fence or <details> swallows everything after it, so: every fence closes,
every <details> closes after it opens, each has a <summary>, and tables parse as tables.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

_PARSER = MarkdownIt("commonmark").enable("table")


def check_markdown(text: str) -> None:
    tokens = _PARSER.parse(text)
    lines = text.splitlines()

    # Fences: markdown-it closes an unclosed fence at the end of the document; catch that by checking each
    # fence block ends on a closing fence line of its own.
    for token in tokens:
        if token.type == "fence":
            assert token.map is not None
            end_line = lines[token.map[1] - 1].strip()
            assert end_line.startswith(token.markup), f"unclosed {token.markup} fence at line {token.map[0] + 1}"

    # <details>: balanced and properly nested, counted in the HTML blocks the parser found (so a <details>
    # inside a code span or fence does not count).
    depth = 0
    html = [t.content for t in tokens if t.type in ("html_block", "html_inline")]
    for block in html:
        for tag in re.findall(r"</?details>", block):
            depth += 1 if tag == "<details>" else -1
            assert depth >= 0, "a </details> closes nothing"
        for opening in re.findall(r"<details>.*", block):
            assert "<summary>" in opening and "</summary>" in opening, f"<details> without a summary: {opening}"
    assert depth == 0, f"{depth} <details> block(s) left open"

    # Every line that looks like a table row belongs to a table the parser recognised.
    if any(line.startswith("|---") for line in lines):
        assert any(t.type == "table_open" for t in tokens), "table rows that do not parse as a table"
    rows = sum(1 for t in tokens if t.type == "tr_open")
    table_lines = sum(1 for line in lines if line.startswith("|") and not line.startswith("|---"))
    assert rows == table_lines, f"{table_lines} table line(s) but {rows} parsed row(s): a cell broke a row"
