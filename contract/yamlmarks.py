"""YAML to plain Python, with the line and column of every key and item.

Both sides read YAML that people write (manifests and `deploy.yaml` on the reconciler's side, `agent.yaml`
on the agent's) and both must point at the exact line when a value is wrong, so the conversion lives here
once. Scalars go through PyYAML's safe constructor (YAML 1.1 typing, as CodeDeploy's agent); mappings are
built here, so duplicate keys are an error instead of the last one silently winning.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
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

    def where(self, path: YamlPath) -> tuple[int, int]:
        """Line and column of `path`, or of its closest ancestor that exists in the document."""
        probe = tuple(path)
        while probe and probe not in self.marks:
            probe = probe[:-1]
        return self.marks.get(probe, (1, 1))


class _ScalarConstructor(SafeConstructor):
    """PyYAML's safe constructor, used only for scalars so mappings (marks, duplicate keys) stay ours."""


def _to_python(node: Node, path: YamlPath, marks: dict[YamlPath, tuple[int, int]], constructor: SafeConstructor) -> Any:
    marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, MappingNode):
        constructor.flatten_mapping(node)  # YAML merge keys (`<<: *defaults`)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise YamlKeyProblem(key_node, path, "mapping keys must be plain scalars")
            key = constructor.construct_object(key_node)
            if isinstance(key, list | dict):
                raise YamlKeyProblem(key_node, path, "mapping keys must be plain scalars")
            child = (*path, key)
            if key in result:
                where = ".".join(map(str, path))
                raise YamlKeyProblem(key_node, child, f"duplicate key {key!r}" + (f" in {where}" if where else ""))
            marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _to_python(value_node, child, marks, constructor)
        return result
    if isinstance(node, SequenceNode):
        return [_to_python(item, (*path, index), marks, constructor) for index, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


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
            if exc.problem != _PYYAML_TAB_PROBLEM:
                raise
            raise ScannerError(problem=TAB_PROBLEM, problem_mark=exc.problem_mark) from exc
        yield node


def load_located(text: str) -> Iterator[tuple[int, LocatedYaml]]:
    """Each non-empty document with its index in the stream. Raises `yaml.MarkedYAMLError` for syntax
    errors (a tab reads as `TAB_PROBLEM`), `yaml.constructor.ConstructorError` for bad tags,
    `YamlKeyProblem` for bad keys."""
    constructor = _ScalarConstructor()
    for index, node in enumerate(_documents(text)):
        if node is None:
            continue
        marks: dict[YamlPath, tuple[int, int]] = {}
        yield index, LocatedYaml(_to_python(node, (), marks, constructor), marks)


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
