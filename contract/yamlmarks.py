"""YAML to plain Python, with the line and column of every key and item.

Both sides read YAML that people write (manifests and `deploy.yaml` on the reconciler's side, `agent.yaml`
on the agent's) and both must point at the exact line when a value is wrong, so the conversion lives here
once. Scalars go through PyYAML's safe constructor (YAML 1.1 typing, as CodeDeploy's agent); mappings are
built here, so duplicate keys are an error instead of the last one silently winning.

The agent's appspec must mean exactly what it means under CodeDeploy, duplicate keys and all, so
`load_document(..., like_safe_load=True)` builds mappings as PyYAML's `safe_load` does instead, through the
same walker, and keeps every scalar's node (its text as written, quoting style and tag) for warnings such as
an unquoted `mode: 0644` being the octal number 420.

Hostile input is bounded, once for every reader (manifests, `deploy.yaml`, `agent.yaml`, appspecs), by
`contract/yamlbounds.py` (size, node budget through aliases and merge keys, depth, characters, scalars that
cannot be built): always refused with a located `yaml.MarkedYAMLError` (`YamlRefused`), never a stray
exception. This module walks the nodes under those bounds and records where everything stands.

Line numbers agree with editors that count `\n`: PyYAML also breaks lines at a lone `\r`, U+0085 (NEL),
U+2028 and U+2029, which most editors show on one line. `load_located` (files people write: manifests,
settings) refuses those characters with a located error, since a key that YAML reads on its own line but
an editor shows mid-line hides what the file means. `load_document` (appspecs, which must mean what they
mean under CodeDeploy, whose libyaml breaks lines the same way) keeps them and maps every reported line
and column to the `\n`-counted ones.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args, get_origin

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver
from yaml.scanner import ScannerError

from contract.annotations import type_members
from contract.yamlbounds import (
    ODD_BREAKS,
    BoundedLoader,
    NodeBudget,
    YamlRefused,
    as_text,
    screen,
    text_mark,
    unbuildable,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

YamlPath = tuple[str | int, ...]


class YamlKeyProblem(Exception):
    """A mapping key that cannot be accepted: not a plain scalar, or given twice."""

    def __init__(self, node: Node, path: YamlPath, message: str) -> None:
        super().__init__(message)
        self.line = node.start_mark.line + 1
        self.column = node.start_mark.column + 1
        #: The key's node, kept so its line can be mapped to the `\n`-counted one (`_Lines`).
        self.node = node
        #: Where the key stands: the mapping's path plus the key.
        self.path = path
        self.message = message


@dataclass
class LocatedYaml:
    """One YAML document's data and a (line, column) for every path in it, 1-based."""

    data: Any
    marks: dict[YamlPath, tuple[int, int]]
    #: The node of every scalar value, by path: its text as written (`.value`), `.style` and `.tag`.
    scalars: dict[YamlPath, ScalarNode] = field(default_factory=dict)

    def where(self, path: YamlPath) -> tuple[int, int]:
        """Line and column of `path`, or of its closest ancestor that exists in the document."""
        probe = tuple(path)
        while probe and probe not in self.marks:
            probe = probe[:-1]
        return self.marks.get(probe, (1, 1))


class _ScalarConstructor(SafeConstructor):
    """PyYAML's safe constructor, used only for scalars so mappings (marks, duplicate keys) stay ours."""


@dataclass
class _Walker:
    """Builds a document's data and records where every part of it stands, in one pass over the nodes.

    `like_safe_load`: mappings as PyYAML's `safe_load` builds them (CodeDeploy's appspec semantics): the
    last of duplicate keys wins, tagged collections (`!!set`, `!!omap`, unknown tags) go to PyYAML's
    constructor, an unhashable key is PyYAML's error, and paths name keys by their text as written.

    `budget` is what is left of `MAX_NODES` for the whole stream (`contract/yamlbounds.py`); every node
    visited, through an alias as often as it is referenced, costs one. `lines` maps PyYAML's marks to
    `\n`-counted ones.
    """

    constructor: SafeConstructor
    located: LocatedYaml
    like_safe_load: bool = False
    budget: NodeBudget = field(default_factory=NodeBudget)
    lines: _Lines | None = None

    def mark(self, node: Node) -> tuple[int, int]:
        return self.lines.where(node.start_mark) if self.lines else _mark(node)

    def build(self, node: Node, path: YamlPath, mark: tuple[int, int] | None = None, depth: int = 0) -> Any:
        self.budget.charge(node, depth)
        # A mapping value is located at its key: that is the line a person looks for.
        self.located.marks[path] = mark or self.mark(node)
        if isinstance(node, ScalarNode):
            self.located.scalars[path] = node
        elif self.like_safe_load and node.tag not in _PLAIN_COLLECTION_TAGS:
            self.budget.measure(node, depth)
            return self._construct(node)
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, index), None, depth + 1) for index, item in enumerate(node.value)]
        return self._construct(node)

    def _construct(self, node: Node) -> Any:
        try:
            if isinstance(node, ScalarNode) and node.tag in _PLAIN_SCALAR_TAGS:
                # A plain scalar straight to its constructor, which is all `construct_object` does for one after its
                # bookkeeping for collections and aliases: a tenth of loading 2,000 groups' manifests (issue 18).
                # Other tags (`!!set`, `!!binary`, `!!timestamp`, unknown ones) keep PyYAML's whole path.
                return self.constructor.yaml_constructors[node.tag](self.constructor, node)
            return self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError, LookupError, RecursionError) as exc:
            raise unbuildable(node, exc) from None

    def _mapping(self, node: MappingNode, path: YamlPath, depth: int) -> dict[Any, Any]:
        # YAML merge keys (`<<: *defaults`): PyYAML copies every merged pair into this node, so a chain of
        # merges of merges grows exponentially before anything is built; count first, then flatten.
        self.budget.merged_size(node, depth, {})
        self.constructor.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(node, key_node, path)
            child = (*path, str(key_node.value) if self.like_safe_load else key)
            if key in result and not self.like_safe_load:
                where = ".".join(map(str, path))
                raise YamlKeyProblem(key_node, child, f"duplicate key {key!r}" + (f" in {where}" if where else ""))
            result[key] = self.build(value_node, child, self.mark(key_node), depth + 1)
        return result

    def _key(self, node: MappingNode, key_node: Node, path: YamlPath) -> Any:
        if self.like_safe_load:
            self.budget.measure(key_node, 0)
            key = self._construct(key_node)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                ) from None
            return key
        if not isinstance(key_node, ScalarNode):
            raise YamlKeyProblem(key_node, path, "mapping keys must be plain scalars")
        key = self._construct(key_node)
        if isinstance(key, list | dict):
            raise YamlKeyProblem(key_node, path, "mapping keys must be plain scalars")
        return key


_PLAIN_COLLECTION_TAGS = frozenset({BaseResolver.DEFAULT_MAPPING_TAG, BaseResolver.DEFAULT_SEQUENCE_TAG})
#: Scalar tags whose safe constructor returns the value itself (no generator, nothing to track for aliases).
_PLAIN_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null"))


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


#: What PyYAML's scanner says about a tab, and what people need to read instead.
_PYYAML_TAB_PROBLEM = "found character '\\t' that cannot start any token"
TAB_PROBLEM = "a tab character (YAML indents with spaces only)"


#: Every line break PyYAML counts, to map its marks to `\n`-counted ones.
_PYYAML_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


class _Lines:
    """Maps PyYAML's marks (which also break lines at a lone CR, NEL, LS, PS) to `\n`-counted ones."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0, *(match.end() for match in _PYYAML_BREAKS.finditer(text))]
        self.newlines = [match.start() for match in re.finditer("\n", text)]

    def index(self, mark: Any) -> int:
        line = min(int(mark.line), len(self.starts) - 1)
        return min(self.starts[line] + int(mark.column), len(self.text))

    def where(self, mark: Any) -> tuple[int, int]:
        index = self.index(mark)
        line = bisect.bisect_left(self.newlines, index)
        start = self.newlines[line - 1] + 1 if line else 0
        return line + 1, index - start + 1

    def relocate(self, exc: BaseException) -> None:
        if isinstance(exc, YamlKeyProblem):
            exc.line, exc.column = self.where(exc.node.start_mark)
        elif isinstance(exc, yaml.MarkedYAMLError):
            for name in ("problem_mark", "context_mark"):
                mark = getattr(exc, name)
                if mark is not None:
                    line, column = self.where(mark)
                    setattr(exc, name, Mark(mark.name, self.index(mark), line - 1, column - 1, None, 0))


def _documents(loader: yaml.SafeLoader) -> Iterator[Node | None]:
    """PyYAML's node stream, with its scanner's message for a tab reworded.

    PyYAML reports a tab as "found character '\\t' that cannot start any token while scanning for the next
    token": accurate, but a tab is invisible in most editors, so people read it as nonsense. The position is
    kept; only the words change, for every reader of this module at once.
    """
    while True:
        try:
            if not loader.check_node():
                return
            node = loader.get_node()
        except ScannerError as exc:
            raise _reworded(exc) from exc
        yield node


def _reworded(exc: ScannerError) -> ScannerError:
    if exc.problem != _PYYAML_TAB_PROBLEM:
        return exc
    return ScannerError(problem=TAB_PROBLEM, problem_mark=exc.problem_mark)


#: libyaml's safe loader, when PyYAML was built with it (its wheels are): the same nodes and marks for the YAML
#: people write, read about ten times faster (issue 18: the pure loader was a third of a 10,000-host plan).
_LIBYAML: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def load_located(text: str) -> Iterator[tuple[int, LocatedYaml]]:
    """Each non-empty document with its index in the stream. Raises `yaml.MarkedYAMLError` for syntax
    errors (a tab reads as `TAB_PROBLEM`), `yaml.constructor.ConstructorError` for bad tags,
    `YamlRefused` (a `MarkedYAMLError`) for input beyond the bounds in `contract/yamlbounds.py` and for a
    line break editors do not show, `YamlKeyProblem` for bad keys. Lines count `\n` only.

    Parsed with libyaml when it can be (`_with_libyaml`), else, and for every error, with PyYAML's pure loader,
    so what a file means and every message about it are the pure loader's."""
    screen(text, refuse_odd_breaks=True)
    documents = _with_libyaml(text)
    yield from documents if documents is not None else _located(BoundedLoader(text), text)


def _located(loader: yaml.SafeLoader, text: str) -> Iterator[tuple[int, LocatedYaml]]:
    budget = NodeBudget()
    try:
        for index, node in enumerate(_documents(loader)):
            if node is None:
                continue
            located = LocatedYaml(None, {})
            located.data = _Walker(loader, located, budget=budget).build(node, ())
            yield index, located
    except RecursionError:  # a last resort: the bounds above should make this unreachable
        raise YamlRefused("nested too deeply", text_mark(text, 0)) from None
    finally:
        loader.dispose()


#: Text libyaml reads differently from PyYAML's pure loader, found by running both on mutated and random YAML
#: (tests/manifests/test_yaml_libyaml.py): a tab (libyaml takes some PyYAML refuses), a byte order mark (libyaml
#: skips it where PyYAML keeps it, which moves columns), `?` (libyaml takes `{a?b: c}`), `!` (a bare `!` tag is
#: '' to libyaml, None to PyYAML), `%` (directives: each checks versions its own way), and a block scalar's `|`
#: or `>` followed by `#` with no space (libyaml takes it as a comment).
_PURE_ONLY = re.compile("[\t\ufeff?!%]|[|>][-+0-9]*#")


def _with_libyaml(text: str) -> list[tuple[int, LocatedYaml]] | None:
    """Every document of `text` read with libyaml, or None: no libyaml, text it may read differently, or any
    failure at all, which the pure loader then reports in its own words (libyaml's messages and marks differ,
    and the bounds raise from the node walk, which both share). Read whole before any document is yielded, so
    a failure in a later document never repeats the earlier ones."""
    # Without a final line break libyaml puts the end of the stream on a line of its own, so an empty document
    # there would be located a line lower.
    if _LIBYAML is None or not text.endswith("\n") or _PURE_ONLY.search(text):
        return None
    try:
        documents = list(_located(_LIBYAML(text), text))
    except Exception:  # every failure is the pure loader's to report
        return None
    for _, located in documents:
        for node in located.scalars.values():
            node.style = node.style or None  # libyaml says '' for a plain scalar, PyYAML None
    return documents


#: For appspecs, libyaml when PyYAML was built with it: same YAML 1.1 results, several times faster.
_FAST_LOADER: Any = _LIBYAML or yaml.SafeLoader


def load_document(text: str | bytes, *, like_safe_load: bool = False, libyaml: bool = False) -> LocatedYaml | None:
    """The stream's only document, or None when it has none. Raises `yaml.MarkedYAMLError` for syntax
    errors and for a second document, `yaml.constructor.ConstructorError` for bad tags, `YamlRefused` (a
    `MarkedYAMLError`) for input beyond the bounds in `contract/yamlbounds.py`, `YamlKeyProblem` for bad
    keys (unless `like_safe_load`, see `_Walker`). `libyaml` parses with libyaml when PyYAML has it
    (faster; its syntax error messages are libyaml's own). Lines and columns count `\n` only: a lone CR,
    NEL, LS or PS is kept (it means what it means to CodeDeploy) and marks are mapped."""
    text = as_text(text)
    lines = None
    if isinstance(text, str):
        screen(text, refuse_odd_breaks=False)
        lines = _Lines(text) if ODD_BREAKS.search(text) else None
    loader = (_FAST_LOADER if libyaml else BoundedLoader)(text)
    try:
        try:
            node = loader.get_single_node()
        except ScannerError as exc:
            raise _reworded(exc) from exc
        if node is None:
            return None
        located = LocatedYaml(None, {})
        located.data = _Walker(loader, located, like_safe_load, lines=lines).build(node, ())
        return located
    except RecursionError:  # a last resort: the bounds above should make this unreachable
        raise YamlRefused("nested too deeply", Mark("<text>", 0, 0, 0, None, 0)) from None
    except (yaml.MarkedYAMLError, YamlKeyProblem) as exc:
        if lines is not None:
            lines.relocate(exc)
        raise
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------------
# "Did you mean": unknown keys in files people write


def did_you_mean(key: str, known: Iterable[str]) -> str | None:
    """The known key `key` was most likely meant to be, or None when nothing is close.

    Case, `_` and `-` are ignored first (`poll_interval`, `PollInterval` -> `pollInterval`), then difflib
    finds a typo (`deploymentConfg` -> `deploymentConfig`). The cutoff is strict enough that a key which is
    simply wrong gets no suggestion rather than a misleading one.
    """
    def norm(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    by_norm = {norm(candidate): candidate for candidate in sorted(set(known))}
    if norm(key) in by_norm:
        return by_norm[norm(key)]
    close = difflib.get_close_matches(norm(key), list(by_norm), n=1, cutoff=0.75)
    return by_norm[close[0]] if close else None


def known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys (as written in files: aliases) accepted by the mapping at `loc` inside `model`.

    `loc` is a pydantic error location without its last part, e.g. ("spec",) for `spec.deploymentConfg`.
    Pydantic puts a union member's name into locations; a part that matches no field is taken to be one and
    skipped. Unknown shapes yield no keys, so the caller simply offers no suggestion.
    """
    from pydantic import BaseModel  # loaded with the reconciler's models already; the agent never calls this

    candidates: list[Any] = [model]
    for part in loc:
        following = [child for annotation in candidates for child in _children(annotation, part)]
        if following:
            candidates = following
    keys: set[str] = set()
    for annotation in candidates:
        for leaf in type_members(annotation):
            if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                keys |= {info.alias or name for name, info in leaf.model_fields.items()}
    return sorted(keys)


def _children(annotation: Any, part: str | int) -> list[Any]:
    from pydantic import BaseModel

    found: list[Any] = []
    for leaf in type_members(annotation):
        origin = get_origin(leaf)
        if isinstance(leaf, type) and issubclass(leaf, BaseModel) and isinstance(part, str):
            for name, info in leaf.model_fields.items():
                if part in (name, info.alias):
                    found.append(info.annotation)
        elif isinstance(part, int) and isinstance(origin, type) and issubclass(origin, Sequence):
            found.extend(get_args(leaf)[:1])
        elif isinstance(part, str) and isinstance(origin, type) and issubclass(origin, Mapping):
            found.extend(get_args(leaf)[1:2])
    return found
