"""YAML to plain Python, with the line and column of every key and item.

Both sides read YAML that people write (manifests and `deploy.yaml` on the reconciler's side, `agent.yaml`
on the agent's) and both must point at the exact line when a value is wrong, so the conversion lives here
once. Scalars go through PyYAML's safe constructor (YAML 1.1 typing, as CodeDeploy's agent); mappings are
built here, so duplicate keys are an error instead of the last one silently winning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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


def load_located(text: str) -> Iterator[tuple[int, LocatedYaml]]:
    """Each non-empty document with its index in the stream. Raises `yaml.MarkedYAMLError` for syntax
    errors, `yaml.constructor.ConstructorError` for bad tags, `YamlKeyProblem` for bad keys."""
    constructor = _ScalarConstructor()
    for index, node in enumerate(yaml.compose_all(text, Loader=yaml.SafeLoader)):
        if node is None:
            continue
        marks: dict[YamlPath, tuple[int, int]] = {}
        yield index, LocatedYaml(_to_python(node, (), marks, constructor), marks)
