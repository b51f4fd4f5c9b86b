"""The shape rules of docs/architecture.md: no function or method in the package is longer than
60 lines, and none is more complex than ruff's C901 limit (12, set in pyproject.toml).

Long functions are where loops of their own, half-done refactors and untested branches hide;
a function that fits on one screen can be read, tested and replaced whole.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jupyter_localllm as ll

PACKAGE = Path(ll.__file__).resolve().parent
REPO_ROOT = PACKAGE.parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 60


def long_functions(source: str, filename: str = "<string>", limit: int = MAX_LINES) -> list[str]:
    """``file:line name (n lines)`` for each function or method in ``source`` longer than
    ``limit`` lines, counted from the ``def`` line through its last line (decorators excluded)."""
    tree = ast.parse(source, filename=filename)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((node.lineno, f"{filename}:{node.lineno} {node.name} ({lines} lines)"))
    return [text for _, text in sorted(found)]


def _body(lines: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(lines))


def test_the_walker_finds_long_functions_and_methods():
    source = (
        f"def short():\n{_body(59)}\n"  # 60 lines with its def: allowed
        f"def long():\n{_body(60)}\n"  # 61 lines
        f"class C:\n    @property\n    def method(self):\n{textwrap.indent(_body(70), '    ')}\n"
        f"async def outer():\n    def inner():\n{textwrap.indent(_body(61), '    ')}\n"
    )
    assert long_functions(source, "x.py") == [
        "x.py:62 long (61 lines)",
        "x.py:126 method (71 lines)",
        "x.py:198 outer (63 lines)",
        "x.py:199 inner (62 lines)",
    ]
    assert long_functions(f"def f():\n{_body(59)}", "y.py") == []


def test_no_function_is_longer_than_60_lines():
    assert len(SOURCES) > 20
    offenders = []
    for path in SOURCES:
        name = str(path.relative_to(REPO_ROOT))
        offenders += long_functions(path.read_text(encoding="utf-8"), name)
    listing = "\n".join(offenders)
    assert not offenders, f"functions over {MAX_LINES} lines (split them):\n{listing}"


def _ruff() -> str | None:
    beside = Path(sys.executable).with_name("ruff" + (".exe" if os.name == "nt" else ""))
    return str(beside) if beside.is_file() else shutil.which("ruff")


def _ruff_c901(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed")
    return subprocess.run(
        [ruff, "check", "--no-cache", "--select", "C901", "--output-format", "concise", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_ruff_sees_a_complex_function():
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(13))
    done = _ruff_c901("--stdin-filename", "complex.py", "-", stdin=f"def f(x):\n{branches}")
    assert done.returncode == 1 and "C901 `f` is too complex (14 > 12)" in done.stdout, (
        done.stdout + done.stderr
    )


def test_no_function_is_more_complex_than_12():
    done = _ruff_c901(str(PACKAGE.relative_to(REPO_ROOT)))
    assert done.returncode == 0, "too complex (split them):\n" + done.stdout + done.stderr
