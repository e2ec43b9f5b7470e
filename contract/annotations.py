"""What a type annotation is made of, for code that walks models and settings by their annotations.

A module of its own, importing nothing else of the project, so that code that must not load YAML (the reconciler's
core reaches reconciler/desired/secrets.py) can use it as well as contract/yamlmarks.py and the agent's settings.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin


def type_members(annotation: Any) -> list[Any]:
    """`X | None`, `Annotated[X, ...]`, `Union[X, Y]` -> their members."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [leaf for arg in get_args(annotation) for leaf in type_members(arg)]
    return [annotation]
