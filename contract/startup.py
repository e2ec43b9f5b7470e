"""What both command-line programs do first, before anything imports structlog (issue 18).

Kept free of imports beyond `sys`: it must run before the modules it is about are loaded.
"""

from __future__ import annotations

import sys


def import_structlog_without_rich() -> None:
    """Load structlog without the rich library it picks up when rich is installed (the reconciler depends on rich,
    so it usually is). structlog uses rich only to draw exceptions on a terminal, yet importing it loads rich and
    pygments: ~150 ms of every `reconcile` run and ~5 MiB of every agent's memory. structlog treats rich as
    optional and falls back to plain tracebacks; the block lasts only while structlog loads, so rich stays
    importable for anyone else (the reconciler's live progress table, `reconcile plan`'s renderer). Does nothing
    if structlog is already loaded (tests, or a program that imported it first)."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail: the documented idiom
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


__all__ = ["import_structlog_without_rich"]
