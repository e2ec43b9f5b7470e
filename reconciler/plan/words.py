"""Numbers and durations in words, the way every part of a plan (estimates, refusals, renderings) says them."""

from __future__ import annotations

from datetime import timedelta

from contract.durations import format_duration


def count(number: int, word: str, plural: str | None = None) -> str:
    return f"{number} {word if number == 1 else plural or word + 's'}"


def duration(seconds: float) -> str:
    return format_duration(timedelta(seconds=round(seconds)))
