"""The base of the agent's records (contract/wire.py): msgspec structs that read and write the same JSON as the
reconciler's pydantic models (contract/models.py).

Why not pydantic on this side too: an idle agent runs on every host of a fleet, and pydantic alone (its core
library, its modules, the OpenSSL it loads through `secrets`) is about half of what an idle agent would use
(issue 18: < 30 MiB). msgspec validates the same documents as strictly, in C, from one small extension.
docs/design.md, "Two implementations of the records", says how the two are kept the same.

The methods are the handful of pydantic's that the agent uses, with the same names and meaning, so code and
tests read the same whichever kind of record they hold:

- `to_json()`: camelCase, `None` fields left out, two-space indent, as `contract.models.Model.to_json`;
- `model_copy(update=...)`: a new record with some fields changed; types are not checked (as pydantic's), but a
  record's own checks (`__post_init__`, e.g. a revision's one source) run again, where pydantic's would not;
- `model_validate_json(data)` / `model_validate(obj)`: strict decoding; an error is `msgspec.ValidationError`
  naming the field's path (`$.command.events[0].status`).

Records built in code are not type-checked (msgspec checks types when it decodes): a float field given an int is
written `5`, where pydantic would write `5.0`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import msgspec

from contract.vocabulary import SCHEMA_VERSION

_encoder = msgspec.json.Encoder()


def _without_none(value: Any) -> Any:
    """What pydantic's `exclude_none` leaves of a record turned into builtins: every field set to None is gone.

    Dicts are the records' fields here: the generator refuses a dict field whose values may be None
    (contract/wiregen.py), so removing None from every dict removes exactly the None fields."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value


class WireRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """Frozen, keyword-only, strict about unknown fields, camelCase on the wire: what `contract.models.Model` is for
    pydantic. Subclasses inherit the camelCase names (the agent's own files, written by pydantic before they moved
    here, keep their format: tests/daemon/test_bookkeeping.py reads files an older agent wrote)."""

    def to_json(self) -> bytes:
        compact = _encoder.encode(_without_none(msgspec.to_builtins(self)))
        return msgspec.json.format(compact, indent=2)

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        if not update:
            return self
        return msgspec.structs.replace(self, **update)

    @classmethod
    def model_validate_json(cls, data: bytes | str) -> Self:
        return msgspec.json.decode(data, type=cls)

    @classmethod
    def model_validate(cls, obj: Any) -> Self:
        return msgspec.convert(obj, cls)


class WireDocument(WireRecord, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """A top-level object stored under a key, as `contract.models.Document`."""

    schema_version: int = msgspec.field(default=SCHEMA_VERSION, name="schemaVersion")
