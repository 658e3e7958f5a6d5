"""The tree's own rules, beside the layers contract of lint-imports:

- no source file under src/ (.py, .pyi, .pyx, .pxd, .pxi) over 700 lines;
- no import inside a function, or at module level after the first function
  or class, where it could hide an import circle. A lazy import that keeps the
  command line's start-up short says so with ``# lazy:`` on its line.
"""

from __future__ import annotations

import ast
import pathlib
import sys

MAX_LINES = 700
SOURCES = (".py", ".pyi", ".pyx", ".pxd", ".pxi")


def problems(root: pathlib.Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in SOURCES:
            continue
        text = path.read_text()
        count = text.count("\n")
        if count > MAX_LINES:
            found.append(f"{path}: {count} lines, over {MAX_LINES}")
        if path.suffix not in (".py", ".pyi"):
            continue
        lines = text.splitlines()
        seen_definition = False
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                seen_definition = True
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and seen_definition:
                found.append(f"{path}:{node.lineno}: import after the module's definitions")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    if "# lazy:" not in lines[inner.lineno - 1]:
                        found.append(f"{path}:{inner.lineno}: import inside {node.name}()")
    return found


if __name__ == "__main__":
    found = problems(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src"))
    for line in found:
        print(line)
    sys.exit(1 if found else 0)
