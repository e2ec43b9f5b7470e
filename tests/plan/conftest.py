"""Fixtures for the plan tests: fixed commit dates, so every config repo built here has the same SHAs."""

from __future__ import annotations

import pytest

from tests.plan.scenarios import GIT_DATES


@pytest.fixture(autouse=True)
def fixed_commit_dates(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GIT_DATES.items():
        monkeypatch.setenv(name, value)
