"""The reconciler's layers only look down: nothing under the CLI imports it (progress reaches the CLI through
`reconciler.shell.passes.PassListener`), so the shell can be driven and tested without a terminal."""

from __future__ import annotations

import ast
from pathlib import Path

import reconciler

ROOT = Path(reconciler.__file__).parent
BELOW_THE_CLI = ("shell", "core", "desired", "plan")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_nothing_below_the_cli_imports_it() -> None:
    offenders = {
        str(path.relative_to(ROOT.parent)): sorted(name for name in imported_modules(path)
                                                   if name.startswith("reconciler.cli"))
        for layer in BELOW_THE_CLI
        for path in sorted((ROOT / layer).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}
