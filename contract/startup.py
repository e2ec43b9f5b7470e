"""What both command-line programs do first, before anything imports structlog (issue 18).

Kept free of imports beyond the standard library's smallest modules: it must run before the modules it is about
are loaded.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in `sys.modules` for a standard module that is imported early but used late, or never.

    structlog imports `asyncio` at the top of the modules that hold its `async` logging methods, and uses it only
    inside them, which neither program calls. Loading `asyncio` there costs ~10-20 ms of every `reconcile` and
    `deploy-agent` start and ~2 MiB of every idle agent. The stand-in is in `sys.modules` only while structlog is
    imported, so structlog's modules hold it and nobody else ever sees it (anyone importing `asyncio` later gets
    the real module, submodules and all). Its first attribute lookup imports the real `asyncio` and copies its
    names here, so structlog finds the real names from then on."""

    def __getattr__(self, name: str) -> Any:
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def import_structlog_without_rich() -> None:
    """Load structlog without the rich library it picks up when rich is installed (the reconciler depends on rich,
    so it usually is), and with `asyncio` deferred (`_Deferred`). structlog uses rich only to draw exceptions on a
    terminal, yet importing it loads rich and pygments: ~150 ms of every `reconcile` run and ~5 MiB of every agent's
    memory. structlog treats rich as optional and falls back to plain tracebacks; the block lasts only while
    structlog loads, so rich stays importable for anyone else (the reconciler's live progress table, `reconcile
    plan`'s renderer). Does nothing if structlog is already loaded (tests, or a program that imported it first), and
    defers `asyncio` only if it is not loaded yet."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    stand_in = _Deferred("asyncio") if "asyncio" not in sys.modules else None
    if stand_in is not None:
        sys.modules["asyncio"] = stand_in
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail: the documented idiom
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
        if stand_in is not None and sys.modules.get("asyncio") is stand_in:
            del sys.modules["asyncio"]  # structlog holds it; everyone else imports the real module


__all__ = ["import_structlog_without_rich"]
