"""Reading an appspec's YAML for the parser (agent/lifecycle/appspec.py): the located document, a collector
of problems that name `file:line` and the field, and how values are described in messages."""

from __future__ import annotations

from typing import Any

import yaml

from agent.errors import Problem, RevisionInvalid
from contract.yamlmarks import LocatedYaml, load_document

Path_ = tuple[str | int, ...]


class Located:
    """Where each part of the appspec stands (contract/yamlmarks.py), as `file:line` for problems."""

    def __init__(self, filename: str, document: LocatedYaml | None) -> None:
        self.filename = filename
        self.marks = document.marks if document is not None else {}
        #: Each scalar's node as written, for the YAML 1.1 warnings (`mode: 0644`).
        self.raw = document.scalars if document is not None else {}

    def where(self, path: Path_) -> str:
        probe = path
        while probe not in self.marks and probe:
            probe = probe[:-1]
        line = self.line(probe)
        return f"{self.filename}:{line}" if line else self.filename

    def line(self, path: Path_) -> int | None:
        mark = self.marks.get(path)
        return mark[0] if mark else None


def dotted(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class Collector:
    def __init__(self, located: Located) -> None:
        self.located = located
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: Path_, message: str) -> None:
        self.errors.append(Problem(self.located.where(path), dotted(path) or None, message))

    def warn(self, path: Path_, message: str) -> None:
        self.warnings.append(Problem(self.located.where(path), dotted(path) or None, message))


def load_yaml(text: bytes | str, filename: str) -> tuple[Any, Located]:
    """YAML 1.1 as CodeDeploy's agent reads it: PyYAML `safe_load` semantics (the last of duplicate keys
    wins), parsed by libyaml when available."""
    try:
        document = load_document(text, like_safe_load=True, libyaml=True)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        reason = exc.problem or exc.context or "invalid YAML"
        raise RevisionInvalid([Problem(where, None, f"not valid YAML: {reason}")]) from exc
    except yaml.YAMLError as exc:
        raise RevisionInvalid([Problem(filename, None, f"not valid YAML: {exc}")]) from exc
    return (document.data if document is not None else None), Located(filename, document)



def kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def did_you_mean_key(key: str, known: tuple[str, ...] | frozenset[str]) -> str:
    for candidate in known:
        if candidate.lower() == key.lower().replace("-", "_"):
            return f"; did you mean `{candidate}`? (keys are case-sensitive)"
    return ""

