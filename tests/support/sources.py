"""The project's Python files, parsed once while pytest collects and before any test's thread runs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# CPython 3.11 keeps the ast module's recursion counter in one place for all threads
# (python/cpython#106905, fixed in 3.12): an ast.parse in a test that races another thread's
# traceback (3.11 parses the failing line to draw its ^^^ marks) can fail with "AST constructor
# recursion depth mismatch". Parsing everything here, at import, runs before any test has
# started a thread.
TREES: dict[Path, ast.Module] = {
    f: ast.parse(f.read_text(), filename=str(f))
    for f in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "tests").rglob("*.py")])
}


def tree(path: Path) -> ast.Module:
    """The parsed module at ``path`` (an app or test file)."""
    return TREES[path.resolve()]
