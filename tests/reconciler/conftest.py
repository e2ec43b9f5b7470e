"""Fixtures for the reconciler shell tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """`reconciler.cli.main.main` configures structlog to write to the stderr of the moment, which pytest closes
    after each test; later log events (from code called outside `main`) must not write to a closed file."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
