"""Settings precedence, written once: a settings file < FLEETSHIFT_* variables < flags.

Where it sits: under reconciler/settings.py (deploy.yaml, FLEETSHIFT_*) and agent/settings.py (agent.yaml,
FLEETSHIFT_AGENT_*). Each side reads its own file and knows its own variables and flags; both stack them the
same way here and, when a value fails validation, ask `Layers.origin` which variable or flag set it, so the
error names that instead of a line of the file the value never came from.

Values are nested mappings in the file's shape ({"repository": {"url": ...}}). Mappings merge key by key
(a flag that sets one key of a section keeps the file's other keys); any other value, None included,
replaces what is below it. "Not given" is absence: drop unset flags with `given()` before stacking them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: A key's place in the settings: ("logging", "level").
KeyPath = tuple[str, ...]


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings in both merge key by key, anything else in `top` replaces."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = merge(below, value)
        else:
            merged[key] = value
    return merged


def given(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` without its None values, at every depth (mappings stay, even when left empty): for flags,
    where None means "not given", never "set to null"."""
    return {key: given(value) if isinstance(value, Mapping) else value
            for key, value in data.items() if value is not None}


def put(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    """Set `value` at `path`, creating the mappings on the way."""
    target = data
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def leaves(data: Mapping[str, Any], below: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every non-mapping value with its path."""
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from leaves(value, (*below, key))
        else:
            yield (*below, key), value


@dataclass(frozen=True)
class Layer:
    """One source of settings: its values and, per key path it sets, the name to show in errors (a
    variable or a flag). A path in `origins` covers everything under it (a flag that sets all tags)."""

    data: Mapping[str, Any]
    origins: Mapping[KeyPath, str] = field(default_factory=dict)

    @classmethod
    def named_by(cls, data: Mapping[str, Any], name: Callable[[KeyPath], str]) -> Layer:
        """A layer whose every value is named from its path (flags: `name(("repository", "url"))` ->
        "--repo")."""
        return cls(data, {path: name(path) for path, _ in leaves(data)})


class Layers:
    """A base (the file's values) under layers, lowest first; `data` is what validation sees."""

    def __init__(self, base: Mapping[str, Any], *layers: Layer) -> None:
        self.layers = layers
        data = dict(base)
        for layer in layers:
            data = merge(data, layer.data)
        self.data = data

    def origin(self, loc: tuple[str | int, ...]) -> str | None:
        """The name of what set the value at `loc`: the highest layer with an origin at `loc` or at the
        longest of its prefixes. None: the value came from the base (the file) or from the defaults."""
        path = tuple(str(part) for part in loc)
        for layer in reversed(self.layers):
            for length in range(len(path), 0, -1):
                name = layer.origins.get(path[:length])
                if name is not None:
                    return name
        return None
