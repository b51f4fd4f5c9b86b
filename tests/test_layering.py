"""The layer rules of DESIGN.md that code review alone would let slip: only the backend touches
llama_cpp, ``import jupyter_localllm`` stays light, and the public names are all there."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import run_python

import jupyter_localllm as ll

PACKAGE = Path(ll.__file__).resolve().parent
BACKEND = PACKAGE / "engine" / "llama.py"
SOURCES = sorted(PACKAGE.rglob("*.py"))
IMPORTERS = {"import_module", "__import__", "find_spec", "find_loader", "import_string"}


def _is_llama_cpp(name: str | None) -> bool:
    return bool(name) and (name == "llama_cpp" or name.startswith("llama_cpp."))


def _llama_cpp_uses(path: Path) -> list[str]:
    """Where ``path`` imports llama_cpp, statically or by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if _is_llama_cpp(a.name)]
            found += [f"line {node.lineno}: import {name}" for name in names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_llama_cpp(node.module):
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0] if node.args else None
            if (
                name in IMPORTERS
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _is_llama_cpp(arg.value)
            ):
                found.append(f"line {node.lineno}: {name}({arg.value!r})")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _is_llama_cpp(node.value.strip())
            and " " not in node.value.strip()
        ):
            # The bare module name as a value: a dynamic import in the making.
            found.append(f"line {node.lineno}: the string {node.value!r}")
    return found


def test_the_check_sees_the_backend_import():
    assert _llama_cpp_uses(BACKEND), "the AST check found no llama_cpp import in the backend"


def test_only_the_backend_imports_llama_cpp():
    assert len(SOURCES) > 5
    offenders = {
        str(p.relative_to(PACKAGE)): uses
        for p in SOURCES
        if p != BACKEND and (uses := _llama_cpp_uses(p))
    }
    assert not offenders, f"only engine/llama.py may import llama_cpp: {offenders}"


def test_import_is_light():
    done = run_python(
        """
        import json, sys
        import jupyter_localllm
        heavy = ("llama_cpp", "pandas", "IPython", "ipywidgets", "numpy", "matplotlib")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
        """,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    top = {name.split(".")[0] for name in loaded}
    assert not top & {"llama_cpp", "pandas", "IPython"}, loaded


def test_all_is_sorted_and_resolves():
    assert ll.__all__ == sorted(ll.__all__)
    assert len(set(ll.__all__)) == len(ll.__all__)
    for name in ll.__all__:
        assert getattr(ll, name) is not None, name
    assert set(ll.__all__) <= set(dir(ll))


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ll.nope  # noqa: B018
