"""`Duration`: the pydantic field type for human durations (`90s`, `5m`, `1h30m`) in manifests and the reconciler's
settings. Parsing and printing are contract/durations.py's, shared with the agent, which has no pydantic."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from contract.durations import DURATION_PATTERN, format_duration, parse_duration


def _coerce(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected a duration string such as 90s, 5m or 1h")


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "5m", "1h"]}),
]
