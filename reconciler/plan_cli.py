"""Placeholder until the sub-commands land; registers nothing."""

from typing import Any


def register(sub: Any, parent: Any) -> None:
    return None
