"""contract/yamlmarks.py's bounds and line numbers, for every reader: node budget through aliases, depth,
size, located control characters, and lines that agree with `\\n`-counting editors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contract.yamlbounds import MAX_NODES, YamlRefused
from contract.yamlmarks import load_document, load_located
from reconciler.errors import ManifestErrors
from reconciler.settings import load_settings

BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 8))


@pytest.mark.parametrize("load", [lambda t: list(load_located(t)), load_document,
                                  lambda t: load_document(t, like_safe_load=True, libyaml=True)])
def test_an_alias_bomb_is_refused_quickly_at_a_line(load: object) -> None:
    # CPU time, not wall time: the bound is about the work done (expanded, the bomb is 9**7 nodes), and a machine
    # busy with other tests once stretched a refusal taking well under a second of CPU to 4.7 s of wall time.
    started = time.process_time()
    with pytest.raises(YamlRefused, match=f"more than {MAX_NODES:,}") as refused:
        load(BOMB)  # type: ignore[operator]
    assert time.process_time() - started < 2.0
    assert refused.value.problem_mark is not None


def test_aliases_within_the_budget_still_expand() -> None:
    document = load_document("a: &a [1, 2]\nb: [*a, *a]\n")
    assert document is not None and document.data == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {<<: *a}\n", "a: " + "[" * 500 + "]" * 500 + "\n"])
def test_unbounded_nesting_is_refused(text: str) -> None:
    with pytest.raises(YamlRefused, match="nested more than"):
        list(load_located(text))
    with pytest.raises(Exception, match="nest"):
        load_document(text, like_safe_load=True, libyaml=True)


def test_a_control_character_is_located_by_newlines() -> None:
    with pytest.raises(YamlRefused, match="U\\+0007") as refused:
        list(load_located("a: 1\nb: x\x07\n"))
    mark = refused.value.problem_mark
    assert mark is not None and (mark.line + 1, mark.column + 1) == (2, 5)


def test_manifests_refuse_line_breaks_editors_do_not_show() -> None:
    for odd in ("\r", "\x85", "\u2028", "\u2029"):
        with pytest.raises(YamlRefused, match="line break") as refused:
            list(load_located(f"a: 1\nb: 2{odd}c: 3\n"))
        mark = refused.value.problem_mark
        assert mark is not None and (mark.line + 1, mark.column + 1) == (2, 5)
    assert [d.data for _, d in load_located("a: 1\r\nb: 2\r\n")] == [{"a": 1, "b": 2}]


def test_appspecs_keep_such_breaks_and_report_newline_counted_lines() -> None:
    document = load_document("a: 1\x85b: 2\nc: 3\n", like_safe_load=True, libyaml=True)
    assert document is not None and document.data == {"a": 1, "b": 2, "c": 3}
    assert document.marks[("b",)] == (1, 6) and document.marks[("c",)] == (2, 1)
    with pytest.raises(Exception) as failed:
        load_document("a: 1\u2028b: [\nc: 3\n")
    mark = failed.value.problem_mark  # type: ignore[attr-defined]
    assert mark.line + 1 <= 3


def test_too_much_text_is_refused() -> None:
    with pytest.raises(YamlRefused, match="characters long"):
        list(load_located("#" * (1024 * 1024 + 1)))


def test_an_oversize_or_hostile_settings_file_is_a_located_error(tmp_path: Path) -> None:
    big = tmp_path / "deploy.yaml"
    big.write_bytes(b"# padding\n" * 120_000)
    with pytest.raises(ManifestErrors, match="MiB"):
        load_settings(big, environ={})
    big.write_text(BOMB)
    with pytest.raises(ManifestErrors, match="more than") as refused:
        load_settings(big, environ={})
    assert refused.value.errors[0].line >= 1 and refused.value.errors[0].column > 1
