#!/usr/bin/env python3
"""Modules over 400 lines and functions over 60 lines in reconciler/, agent/ and contract/: the sizes the
project's design guide asks a reason for (docs/design.md, "Code layout"). Run: python3 scripts/sizes.py"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULE_LIMIT = 400
FUNCTION_LIMIT = 60


def main() -> None:
    modules: list[tuple[int, str]] = []
    functions: list[tuple[int, str]] = []
    for package in ("reconciler", "agent", "contract"):
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            name = str(path.relative_to(ROOT))
            modules.append((len(source.splitlines()), name))
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                    functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    print(f"modules over {MODULE_LIMIT} lines:")
    for lines, name in sorted(modules, reverse=True):
        if lines > MODULE_LIMIT:
            print(f"  {lines:5d} {name}")
    print(f"functions over {FUNCTION_LIMIT} lines:")
    for lines, name in sorted(functions, reverse=True):
        if lines > FUNCTION_LIMIT:
            print(f"  {lines:5d} {name}")


if __name__ == "__main__":
    main()
