"""YAML to plain Python, with the line and column of every key and item.

Both sides read YAML that people write (manifests and `deploy.yaml` on the reconciler's side, `agent.yaml`
on the agent's) and both must point at the exact line when a value is wrong, so the conversion lives here
once. Scalars go through PyYAML's safe constructor (YAML 1.1 typing, as CodeDeploy's agent); mappings are
built here, so duplicate keys are an error instead of the last one silently winning.

The agent's appspec must mean exactly what it means under CodeDeploy, duplicate keys and all, so
`load_document(..., like_safe_load=True)` builds mappings as PyYAML's `safe_load` does instead, through the
same walker, and keeps every scalar's node (its text as written, quoting style and tag) for warnings such as
an unquoted `mode: 0644` being the octal number 420.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver
from yaml.scanner import ScannerError

YamlPath = tuple[str | int, ...]


class YamlKeyProblem(Exception):
    """A mapping key that cannot be accepted: not a plain scalar, or given twice."""

    def __init__(self, node: Node, path: YamlPath, message: str) -> None:
        super().__init__(message)
        self.line = node.start_mark.line + 1
        self.column = node.start_mark.column + 1
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


@dataclass(frozen=True)
class _Walker:
    """Builds a document's data and records where every part of it stands, in one pass over the nodes.

    `like_safe_load`: mappings as PyYAML's `safe_load` builds them (CodeDeploy's appspec semantics): the
    last of duplicate keys wins, tagged collections (`!!set`, `!!omap`, unknown tags) go to PyYAML's
    constructor, an unhashable key is PyYAML's error, and paths name keys by their text as written.
    """

    constructor: SafeConstructor
    located: LocatedYaml
    like_safe_load: bool = False

    def build(self, node: Node, path: YamlPath, mark: tuple[int, int] | None = None) -> Any:
        # A mapping value is located at its key: that is the line a person looks for.
        self.located.marks[path] = mark or _mark(node)
        if isinstance(node, ScalarNode):
            self.located.scalars[path] = node
        elif self.like_safe_load and node.tag not in _PLAIN_COLLECTION_TAGS:
            return self.constructor.construct_object(node, deep=True)
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[Any, Any]:
        self.constructor.flatten_mapping(node)  # YAML merge keys (`<<: *defaults`)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(node, key_node, path)
            child = (*path, str(key_node.value) if self.like_safe_load else key)
            if key in result and not self.like_safe_load:
                where = ".".join(map(str, path))
                raise YamlKeyProblem(key_node, child, f"duplicate key {key!r}" + (f" in {where}" if where else ""))
            result[key] = self.build(value_node, child, _mark(key_node))
        return result

    def _key(self, node: MappingNode, key_node: Node, path: YamlPath) -> Any:
        if self.like_safe_load:
            key = self.constructor.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                ) from None
            return key
        if not isinstance(key_node, ScalarNode):
            raise YamlKeyProblem(key_node, path, "mapping keys must be plain scalars")
        key = self.constructor.construct_object(key_node)
        if isinstance(key, list | dict):
            raise YamlKeyProblem(key_node, path, "mapping keys must be plain scalars")
        return key


_PLAIN_COLLECTION_TAGS = frozenset({BaseResolver.DEFAULT_MAPPING_TAG, BaseResolver.DEFAULT_SEQUENCE_TAG})


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


#: What PyYAML's scanner says about a tab, and what people need to read instead.
_PYYAML_TAB_PROBLEM = "found character '\\t' that cannot start any token"
TAB_PROBLEM = "a tab character (YAML indents with spaces only)"


def _documents(text: str) -> Iterator[Node | None]:
    """PyYAML's node stream, with its scanner's message for a tab reworded.

    PyYAML reports a tab as "found character '\\t' that cannot start any token while scanning for the next
    token": accurate, but a tab is invisible in most editors, so people read it as nonsense. The position is
    kept; only the words change, for every reader of this module at once.
    """
    stream = yaml.compose_all(text, Loader=yaml.SafeLoader)
    while True:
        try:
            node = next(stream)
        except StopIteration:
            return
        except ScannerError as exc:
            raise _reworded(exc) from exc
        yield node


def _reworded(exc: ScannerError) -> ScannerError:
    if exc.problem != _PYYAML_TAB_PROBLEM:
        return exc
    return ScannerError(problem=TAB_PROBLEM, problem_mark=exc.problem_mark)


def load_located(text: str) -> Iterator[tuple[int, LocatedYaml]]:
    """Each non-empty document with its index in the stream. Raises `yaml.MarkedYAMLError` for syntax
    errors (a tab reads as `TAB_PROBLEM`), `yaml.constructor.ConstructorError` for bad tags,
    `YamlKeyProblem` for bad keys."""
    constructor = _ScalarConstructor()
    for index, node in enumerate(_documents(text)):
        if node is None:
            continue
        located = LocatedYaml(None, {})
        located.data = _Walker(constructor, located).build(node, ())
        yield index, located


#: libyaml's loader when PyYAML was built with it: same YAML 1.1 results, several times faster.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_document(text: str | bytes, *, like_safe_load: bool = False, libyaml: bool = False) -> LocatedYaml | None:
    """The stream's only document, or None when it has none. Raises `yaml.MarkedYAMLError` for syntax
    errors and for a second document, `yaml.constructor.ConstructorError` for bad tags, `YamlKeyProblem`
    for bad keys (unless `like_safe_load`, see `_Walker`). `libyaml` parses with libyaml when PyYAML has it
    (faster; its syntax error messages are libyaml's own)."""
    loader = (_FAST_LOADER if libyaml else yaml.SafeLoader)(text)
    try:
        try:
            node = loader.get_single_node()
        except ScannerError as exc:
            raise _reworded(exc) from exc
        if node is None:
            return None
        located = LocatedYaml(None, {})
        located.data = _Walker(loader, located, like_safe_load).build(node, ())
        return located
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
    candidates: list[Any] = [model]
    for part in loc:
        following = [child for annotation in candidates for child in _children(annotation, part)]
        if following:
            candidates = following
    keys: set[str] = set()
    for annotation in candidates:
        for leaf in _leaves(annotation):
            if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                keys |= {info.alias or name for name, info in leaf.model_fields.items()}
    return sorted(keys)


def _leaves(annotation: Any) -> list[Any]:
    """`X | None`, `Annotated[X, ...]`, `Union[X, Y]` -> their members."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaves(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [leaf for arg in get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _children(annotation: Any, part: str | int) -> list[Any]:
    found: list[Any] = []
    for leaf in _leaves(annotation):
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
