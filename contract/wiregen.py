"""Generates contract/wire.py, the agent's msgspec records, from the pydantic models in contract/models.py.

Why generated: contract/models.py is the one definition of every document in the store ("one file is what keeps
the two sides reading the same definitions"). The agent needs the documents it reads and writes without pydantic
(contract/wirebase.py says why), so their msgspec form is derived from that definition, never written by hand:
a field added to a model and not to the agent's record is impossible, since tests/store/test_wire.py fails
while contract/wire.py is stale. Run `python -m contract.wiregen` after changing a model the agent uses.

What carries over, and how:

- fields in order, with their wire names (pydantic's alias), defaults and default factories;
- types: str, int, float, bool, datetime, None, unions, lists, dicts, Literal, the vocabulary's enums, and other
  models (generated too); constraints (lengths, patterns, bounds) as `msgspec.Meta`. A pattern's final `$`
  becomes `\\Z`: pydantic's regex engine ends `$` at the end of the text, Python's also before a final newline;
- behaviour: a model's mixins from contract/vocabulary.py are the struct's mixins too, and each of their
  `check_*` methods runs in `__post_init__`. A model's validator is carried over only as the mixin check it calls,
  listed in `CARRIED` (e.g. `Revision._exactly_one_source` is `check_sources`).

Anything else in a model stops the generator with an error, rather than producing a record that accepts what the
model refuses or writes what it would not: a validator or serializer not in `CARRIED` (or one listed there that does
more than call its check), a computed field, a `model_post_init`, constraint metadata other than lengths, patterns
and bounds (an `AfterValidator`, say), an alias for validation or serialization only, a field left out of the
output, or a `model_config` other than `contract.models.Model`'s (unknown fields refused, nothing stripped).
"""

from __future__ import annotations

import argparse
import enum
import re
import sys
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from contract import models, vocabulary

#: The documents the agent reads or writes; what they contain is generated with them.
ROOTS: tuple[type[models.Document], ...] = (
    models.HostCommand,
    models.HostStatus,
    models.HostRegistration,
    models.HostConflict,
    models.HostTraffic,
)
OUTPUT = Path(__file__).with_name("wire.py")
#: Validators of the models that the generated structs keep, by (model, validator): the mixin check that is the
#: whole of the validator (it calls that check and nothing else).
CARRIED: dict[tuple[str, str], str] = {("Revision", "_exactly_one_source"): "check_sources"}
#: The constraint metadata carried over as `msgspec.Meta`; any other kind of metadata stops the generator.
_CONSTRAINTS: tuple[type, ...] = (
    StringConstraints, annotated_types.MinLen, annotated_types.MaxLen, annotated_types.Gt, annotated_types.Ge,
    annotated_types.Lt, annotated_types.Le,
)

HEADER = '''"""The agent's records: msgspec structs made from contract/models.py by contract/wiregen.py. Do not edit.

Each reads and writes the same JSON as the pydantic model of the same name; what each field means is documented
there. Regenerate with `python -m contract.wiregen` (tests/store/test_wire.py fails while this file is stale).
"""

# ruff: noqa: E501
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from contract.vocabulary import (
{vocabulary})
from contract.wirebase import WireDocument, WireRecord
'''


class GenerationError(Exception):
    """A model uses something the generator cannot carry over faithfully."""


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_nested_models(arg))
    return found


def _ordered(roots: tuple[type[BaseModel], ...]) -> list[type[BaseModel]]:
    """Every model the roots reach, each after the models it contains."""
    order: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in order:
            return
        for field in model.model_fields.values():
            for nested in _nested_models(field.annotation):
                visit(nested)
        order.append(model)

    for root in roots:
        visit(root)
    return order


def _meta(constraints: list[Any], where: str) -> str | None:
    """The `msgspec.Meta(...)` for a field's constraints, or None without any."""
    args: dict[str, Any] = {}
    for item in constraints:
        if not isinstance(item, _CONSTRAINTS):
            raise GenerationError(f"{where}: {type(item).__name__} is not carried over (lengths, patterns, bounds are)")
        for name in ("min_length", "max_length", "pattern", "gt", "ge", "lt", "le"):
            value = getattr(item, name, None)
            if value is not None:
                if name == "pattern":
                    value = re.sub(r"\$$", r"\\Z", value)
                args[name] = value
        unknown = {
            name for name in ("strip_whitespace", "to_upper", "to_lower", "strict", "ascii_only", "multiple_of")
            if getattr(item, name, None) is not None
        }
        if unknown:
            raise GenerationError(f"{where}: constraint {sorted(unknown)} has no msgspec equivalent here")
    if not args:
        return None
    return "msgspec.Meta(" + ", ".join(f"{name}={value!r}" for name, value in args.items()) + ")"


def _type(annotation: Any, where: str, enums: set[str]) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if annotation in (str, int, float, bool):
        return str(annotation.__name__)
    if annotation is datetime:
        return "datetime"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        name: str = annotation.__name__
        if getattr(vocabulary, name, None) is not annotation:
            raise GenerationError(f"{where}: enum {name} must live in contract/vocabulary.py")
        enums.add(name)
        return name
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return str(annotation.__name__)
    if origin is typing.Annotated:
        meta = _meta(list(annotation.__metadata__), where)
        inner = _type(args[0], where, enums)
        return f"Annotated[{inner}, {meta}]" if meta else inner
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(arg, where, enums) for arg in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in args) + "]"
    if origin is list:
        return f"list[{_type(args[0], where, enums)}]"
    if origin is dict:
        if type(None) in typing.get_args(args[1]) or args[1] is type(None):
            raise GenerationError(f"{where}: a dict whose values may be None (to_json leaves out every None)")
        return f"dict[{_type(args[0], where, enums)}, {_type(args[1], where, enums)}]"
    raise GenerationError(f"{where}: type {annotation!r} is not carried over by contract/wiregen.py")


def _default(field: FieldInfo, where: str, enums: set[str]) -> str | None:
    """The `= ...` part of a field, or None for a required field."""
    if field.default_factory is not None:
        factory = field.default_factory
        if factory in (list, dict):
            return f"default_factory={factory.__name__}"
        made = factory()  # type: ignore[call-arg]
        if not isinstance(made, list) or not all(isinstance(item, str | int | float | bool) for item in made):
            raise GenerationError(f"{where}: default factory making {made!r} is not carried over")
        return f"default_factory=lambda: {made!r}"
    if field.default is PydanticUndefined:
        return None
    value = field.default
    if isinstance(value, enum.Enum):
        enums.add(type(value).__name__)
        return f"default={type(value).__name__}.{value.name}"
    if value is None or isinstance(value, str | int | float | bool):
        return f"default={value!r}"
    raise GenerationError(f"{where}: default {value!r} is not carried over")


def _mixins(model: type[BaseModel]) -> list[type]:
    mixins = [base for base in model.__bases__ if not issubclass(base, BaseModel)]
    for mixin in mixins:
        if getattr(vocabulary, mixin.__name__, None) is not mixin:
            raise GenerationError(f"{model.__name__}: mixin {mixin.__name__} must live in contract/vocabulary.py")
    return mixins


def _refuse_what_is_not_carried(model: type[BaseModel]) -> None:
    """Stop on anything of the model's that the generated struct would not do the same way."""
    decorators = model.__pydantic_decorators__
    checks = {name for mixin in _mixins(model) for name in vars(mixin) if name.startswith("check_")}
    for kind in ("field_validators", "model_validators", "root_validators", "validators", "field_serializers",
                 "model_serializers", "computed_fields"):
        for name, decorator in getattr(decorators, kind).items():
            carried = CARRIED.get((model.__name__, name))
            code = getattr(decorator.func, "__code__", None)
            if (
                carried is None
                or carried not in checks
                or getattr(decorator.info, "mode", None) != "after"
                or code is None
                or code.co_names != (carried,)  # calls the check, and nothing else
            ):
                raise GenerationError(
                    f"{model.__name__}: {kind[:-1].replace('_', ' ')} {name} is not carried over: write it as a mixin "
                    "check in contract/vocabulary.py, called alone by an after-validator listed in wiregen.CARRIED"
                )
    if model.model_config != models.Model.model_config:
        raise GenerationError(f"{model.__name__}: a model_config of its own is not carried over")
    if model.__pydantic_post_init__ is not None:
        raise GenerationError(f"{model.__name__}: model_post_init is not carried over")
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if field.validation_alias not in (None, alias) or field.serialization_alias not in (None, alias):
            raise GenerationError(f"{model.__name__}.{name}: an alias for validation or serialization only")
        if field.exclude or getattr(field, "exclude_if", None) is not None:
            raise GenerationError(f"{model.__name__}.{name}: a field left out of the output")


def generate() -> str:
    """The text of contract/wire.py."""
    enums: set[str] = set()
    mixin_names: set[str] = set()
    classes: list[str] = []
    for model in _ordered(ROOTS):
        _refuse_what_is_not_carried(model)
        mixins = _mixins(model)
        mixin_names.update(mixin.__name__ for mixin in mixins)
        document = issubclass(model, models.Document)
        base = "WireDocument" if document else "WireRecord"
        bases = ", ".join([*(mixin.__name__ for mixin in mixins), base])
        lines = [f"class {model.__name__}({bases}, frozen=True, kw_only=True, forbid_unknown_fields=True):"]
        for name, field in model.model_fields.items():
            if document and name == "schema_version":
                continue
            where = f"{model.__name__}.{name}"
            annotation = _type(field.annotation, where, enums)
            meta = _meta(list(field.metadata), where)
            if meta:
                annotation = f"Annotated[{annotation}, {meta}]"
            options = [option for option in (_default(field, where, enums),) if option]
            alias = field.alias or name
            if alias != name:
                options.append(f"name={alias!r}")
            if not options:
                lines.append(f"    {name}: {annotation}")
            elif len(options) == 1 and options[0].startswith("default=") and alias == name:
                lines.append(f"    {name}: {annotation} = {options[0].removeprefix('default=')}")
            else:
                lines.append(f"    {name}: {annotation} = msgspec.field({', '.join(options)})")
        checks = sorted(name for mixin in mixins for name in vars(mixin) if name.startswith("check_"))
        if checks:
            lines += ["", "    def __post_init__(self) -> None:", *(f"        self.{check}()" for check in checks)]
        if len(lines) == 1:
            lines.append("    pass")
        classes.append("\n".join(lines))
    imported = "".join(f"    {name},\n" for name in sorted(enums | mixin_names))
    return HEADER.format(vocabulary=imported) + "\n\n" + "\n\n\n".join(classes) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contract.wiregen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if contract/wire.py is out of date")
    options = parser.parse_args(argv)
    try:
        text = generate()
    except GenerationError as exc:
        print(f"contract/wiregen.py: {exc}", file=sys.stderr)
        return 1
    if options.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print("contract/wire.py is stale: run python -m contract.wiregen", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
