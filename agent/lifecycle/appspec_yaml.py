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
    wins), parsed by libyaml when available. Every failure is a `RevisionInvalid` with `file:line`: what
    contract/yamlmarks.py refuses (too large, too deep, an alias bomb, `!!timestamp foo`) is a located
    `yaml.MarkedYAMLError`; bytes that are not UTF-8 are PyYAML's reader error, located here."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")  # libyaml reads UTF-8: a lone surrogate (only in a str) would fail in it
        except UnicodeEncodeError as exc:
            line, column = _line_column(text[: exc.start])
            raise _invalid(f"{filename}:{line}:{column}", "not valid YAML: a lone surrogate character") from exc
    try:
        document = load_document(text, like_safe_load=True, libyaml=True)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        reason = exc.problem or exc.context or "invalid YAML"
        raise _invalid(where, f"not valid YAML: {reason}") from exc
    except yaml.reader.ReaderError as exc:
        raise _invalid(_reader_where(text, exc, filename), f"not valid YAML: {_reader_reason(exc)}") from exc
    except yaml.YAMLError as exc:
        raise _invalid(filename, f"not valid YAML: {exc}") from exc
    return (document.data if document is not None else None), Located(filename, document)


def _invalid(where: str, message: str) -> RevisionInvalid:
    return RevisionInvalid([Problem(where, None, message)])


def _line_column(before: str) -> tuple[int, int]:
    lines = before.split("\n")
    return len(lines), len(lines[-1]) + 1


def _reader_where(text: bytes | str, exc: yaml.reader.ReaderError, filename: str) -> str:
    # libyaml counts bytes of UTF-8 (its `encoding` is "?"); PyYAML's reader counts decoded characters.
    data = text.encode("utf-8") if isinstance(text, str) else text
    if exc.encoding == "?":
        before = data[: exc.position].decode("utf-8", "replace")
    else:
        before = data.decode("utf-8", "replace")[: exc.position]
    line, column = _line_column(before)
    return f"{filename}:{line}:{column}"


def _reader_reason(exc: yaml.reader.ReaderError) -> str:
    if isinstance(exc.character, int) and exc.reason.startswith(("control", "special")):
        return f"the control character {chr(exc.character)!r} (write it as an escape in double quotes)"
    return f"{exc.reason} (byte {exc.character!r}); the file must be UTF-8 text"


#: Texts longer than this are cut short in messages (a 4 KB path helps nobody); numbers wider than this
#: many bits are described by their size (Python refuses to print a number of more than 4300 digits).
_SHOWN_CHARS = 80
_NUMBER_BITS = 256


def shown(text: str) -> str:
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def too_big(value: Any) -> bool:
    """An integer too wide to mean anything in an appspec (and maybe too wide for Python to print)."""
    return isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _NUMBER_BITS


def key_text(key: Any) -> str:
    """A mapping key as text, for paths and messages (keys are scalars; a huge number is described)."""
    if too_big(key):
        return f"<a number of about {int(key.bit_length() * 0.30103)} digits>"
    return str(key)


def kind(value: Any) -> str:
    """A value as a message shows it: its type, and the value itself when short."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the text {shown(value)}"
    if too_big(value):
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


#: Longest file name and path Linux accepts (NAME_MAX, PATH_MAX less the final NUL), in bytes.
NAME_MAX = 255
PATH_MAX = 4095


def scalar_text(value: Any, path: Path_, problems: Collector, what: str) -> str | None:
    """The text of a scalar field as the reference agent's `to_s` gives it (numbers become their digits),
    or None after a located error: a list or mapping, a number too wide, a NUL character or text that is
    not valid Unicode. Never stringifies a collection (an aliased one can be large)."""
    if isinstance(value, list | dict | set | tuple | bytes | bytearray) or too_big(value):
        problems.error(path, f"must be {what}, found {kind(value)}")
        return None
    text = str(value)
    if "\0" in text:
        problems.error(path, f"{shown(text)} contains a NUL character, which no name on a host can hold")
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        problems.error(path, f"{shown(text)} is not valid Unicode text")
        return None
    return text


def path_too_long(text: str) -> str | None:
    """Why a path no Linux filesystem can hold is rejected, or None: a name over NAME_MAX bytes or a
    whole path over PATH_MAX (the OS would refuse it with ENAMETOOLONG)."""
    size = len(text.encode("utf-8"))
    if size > PATH_MAX:
        return f"{shown(text)} is {size} bytes long; a path on the host can be at most {PATH_MAX}"
    for name in text.split("/"):
        length = len(name.encode("utf-8"))
        if length > NAME_MAX:
            return (f"{shown(text)} has a name of {length} bytes ({shown(name)}); a file or folder name can "
                    f"be at most {NAME_MAX}")
    return None


def did_you_mean_key(key: str, known: tuple[str, ...] | frozenset[str]) -> str:
    for candidate in known:
        if candidate.lower() == key.lower().replace("-", "_"):
            return f"; did you mean `{candidate}`? (keys are case-sensitive)"
    return ""

