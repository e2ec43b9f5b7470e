"""`load_located` reads with libyaml where libyaml and PyYAML's pure loader agree, and never means or says
anything else than the pure loader would (issue 18: the pure loader was a third of a 10,000-host plan).

Every manifest and settings error is located from node marks and worded by PyYAML, so the promise is strict:
for any text, the documents (data, marks, scalars as written) and any error (type, words, line, column) are
the pure loader's. Checked on the seed corpora and examples, on mutated and random YAML, and on each kind of
text the two loaders are known to read differently, which must go to the pure loader.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contract.yamlmarks as yamlmarks
from contract.yamlmarks import load_located
from tests.fuzz.mutation import mutated

ROOT = Path(__file__).resolve().parents[2]
SEED_FILES = sorted([*(ROOT / "tests/fuzz/corpus").glob("*/*.y*ml"), *(ROOT / "examples").glob("**/*.y*ml")])
SEEDS = [path.read_bytes() for path in SEED_FILES]
PIECES = [b"&a ", b"*a", b"<<: ", b"[", b"]", b"{", b"}", b"- ", b": ", b":", b"? ", b"?", b"!!int ", b"!!str ",
          b"!!binary ", b"!!set ", b"!", b"'", b'"', b"#", b"---\n", b"...\n", b"\n", b"  ", b"|", b">", b"|-\n",
          b">+\n", b",", b"\\", b"%YAML 1.1\n", b"\xc3\xa9", b"\xf0\x9d\x84\x9e", b"\r\n", b"\t", b"\xef\xbb\xbf",
          b"~", b"yes", b"0x1F", b"2001-12-14t21:59:43.10-05:00"]


@contextmanager
def pure_only() -> Iterator[None]:
    with mock.patch.object(yamlmarks, "_LIBYAML", None):
        yield


def outcome(text: str) -> Any:
    """Everything a reader can see: each document's index, data, marks and scalars, or the error."""
    try:
        return [(index, repr(document.data), document.marks,
                 {path: (node.value, node.style, node.tag) for path, node in document.scalars.items()})
                for index, document in load_located(text)]
    except Exception as exc:  # the error itself is compared: type, words (with PyYAML's snippet), location
        where = [(mark.line, mark.column) for mark in (getattr(exc, "problem_mark", None),
                                                        getattr(exc, "context_mark", None)) if mark is not None]
        return type(exc).__name__, str(exc), where, getattr(exc, "line", None), getattr(exc, "column", None)


def same_as_pure(text: str) -> None:
    with pure_only():
        expected = outcome(text)
    assert outcome(text) == expected


def libyaml_reads(text: str) -> bool:
    return yamlmarks._with_libyaml(text) is not None


def test_libyaml_is_there() -> None:
    # PyYAML's wheels bundle it; without it every file silently takes the slow path, which is what this guards.
    assert yamlmarks._LIBYAML is yaml.CSafeLoader


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_seed_and_example_reads_as_with_the_pure_loader(path: Path) -> None:
    same_as_pure(path.read_bytes().decode("utf-8", errors="replace"))


def test_the_example_manifests_are_read_by_libyaml() -> None:
    manifests = sorted((ROOT / "examples/config-repo").glob("**/*.yaml"))
    assert manifests
    assert all(libyaml_reads(path.read_text()) for path in manifests)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=mutated(SEEDS, PIECES, min_steps=1) | st.lists(st.sampled_from([*PIECES, b"a", b"1", b" "]),
                                                               max_size=30).map(b"".join))
def test_mutated_and_random_yaml_reads_as_with_the_pure_loader(content: bytes) -> None:
    same_as_pure(content.decode("utf-8", errors="replace"))


#: Text libyaml alone reads differently from the pure loader (accepts what it refuses, or locates or builds
#: something else): each must be left to the pure loader.
DIVERGING = {
    "question mark in a flow key": "a: {b?c: 1}\n",
    "bare tag": "a: !\n",
    "comment right after a block scalar indicator": "a: >#x\n",
    "tab after a colon": "a:\tb\n",
    "byte order mark": "a: 1\n\ufeffb: 2\n",
    "directive": "%YAML 1.3\n---\na: 1\n",
    "empty last document without a line break": "a: 1\n---\n#",
}


@pytest.mark.parametrize("text", DIVERGING.values(), ids=DIVERGING.keys())
def test_text_libyaml_reads_differently_goes_to_the_pure_loader(text: str) -> None:
    assert not libyaml_reads(text)
    same_as_pure(text)


@pytest.mark.parametrize("text", DIVERGING.values(), ids=DIVERGING.keys())
def test_the_diverging_texts_do_diverge(text: str) -> None:
    """Why each is left to the pure loader: libyaml on its own gives another result (kept honest: a libyaml
    that starts agreeing makes this fail, and the rule can go)."""
    def read(loader: Any) -> Any:
        try:
            return [(index, repr(document.data), document.marks)
                    for index, document in yamlmarks._located(loader(text), text)]
        except yaml.YAMLError as exc:
            return type(exc).__name__

    assert read(yaml.CSafeLoader) != read(yamlmarks.BoundedLoader)


def test_a_tab_is_refused_in_the_pure_loader_s_words() -> None:
    with pytest.raises(yaml.MarkedYAMLError, match="a tab character"):
        list(load_located("a:\tb\n"))


def test_errors_are_the_pure_loader_s_even_where_libyaml_reads_first() -> None:
    # libyaml's syntax errors have other words and no snippet; a duplicate key and a bound are found in the node
    # walk after libyaml parsed. All must read exactly as before.
    for text in ("a: [1, 2\nb: 3\n", "a: 1\na: 2\n", "a: !!int x\n", "a: *nowhere\n",
                 "a: " + "[" * 150 + "]" * 150 + "\n", "a: b: c\n"):
        same_as_pure(text)
        assert isinstance(outcome(text), tuple), text  # an error, not documents


def test_documents_before_an_error_are_yielded_once() -> None:
    seen: list[Any] = []
    with pytest.raises(yaml.MarkedYAMLError):
        for _, document in load_located("a: 1\n---\nb: 2\n---\nc: [\n"):
            seen.append(document.data)
    assert seen == [{"a": 1}, {"b": 2}]
