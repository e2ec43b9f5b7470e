"""One copy for every host that gets the same change.

A step of a rollout changes many hosts' records in the same way: every host of a batch goes in flight with the same
batch number, generation and time; every host that answered in one pass ends with the same status and time. The
records are frozen pydantic models, so equal values can be one object, and a step over 10,000 hosts need not build
10,000 equal copies. `pass` and `plan`'s dry run do this at every batch of every deployment (issue 18).

Sharing changes no value: each copy is what `model_copy(update=...)` of the same record would give, down to how it
is written (two updates share a copy only when their values would be written alike, `_written`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


class SharedCopies:
    """`model_copy(update=...)` that hands back the same copy for the same record and the same update.

    Keyed by the record's identity, so it holds each record it has copied: an id is only unique while its object is
    alive, and a record held here cannot die and leave its id to another. Meant to live for one step, not a whole
    pass: it keeps everything it was given until it is dropped."""

    __slots__ = ("_copies",)

    def __init__(self) -> None:
        #: Key -> (the record copied, held only to keep its id unique; the copy).
        self._copies: dict[tuple[Hashable, ...], tuple[BaseModel, BaseModel]] = {}

    def copy(self, record: M, update: Mapping[str, Hashable]) -> M:
        key = (id(record), *(_written(name, value) for name, value in update.items()))
        found = self._copies.get(key)
        if found is not None:
            return found[1]  # type: ignore[return-value]  # stored by this method for a record of type M
        made = record.model_copy(update=dict(update))
        self._copies[key] = (record, made)
        return made


def _written(name: str, value: Hashable) -> tuple[str, type, object, Hashable]:
    """What of an update's value decides how it is written, not only whether it is equal: its type (`1` and `True`,
    `0` and `0.0` are equal) and a time's offset (an agent's end time `12:00Z` equals `14:00+02:00`, but is written
    differently; an agent with another clock setting may report either), a float's sign (`-0.0` equals `0.0`)."""
    if isinstance(value, datetime):
        return name, datetime, value.utcoffset(), value
    if isinstance(value, float):
        return name, float, repr(value), value
    return name, type(value), None, value
