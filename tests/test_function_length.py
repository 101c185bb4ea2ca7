"""No function or method in src/ spans more than :data:`LIMIT` lines (issue 34): from its ``def`` line to
its last line, decorators excluded, the docstring included. A longer one is split into named helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import consistcam

SRC = Path(consistcam.__file__).resolve().parent
LIMIT = 80


def function_lengths() -> dict[str, int]:
    """``file:function`` (path relative to the package, methods as ``Class.method``) -> its length in lines."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lengths[f"{where}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, f"{name}.", where)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", where)
            else:
                visit(child, prefix, where)

    for path in sorted(SRC.rglob("*.py")):
        visit(ast.parse(path.read_text(), str(path)), "", path.relative_to(SRC).as_posix())
    return lengths


def test_no_function_is_longer_than_the_limit():
    long = {name: n for name, n in function_lengths().items() if n > LIMIT}
    assert not long, f"functions over {LIMIT} lines (split them into named helpers): " + ", ".join(
        f"{name}:{n}" for name, n in sorted(long.items()))
