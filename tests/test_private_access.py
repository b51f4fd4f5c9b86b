"""No code reaches into another sub-package's private attributes (issue 26, layering rules).

``tests/test_layering.py`` forbids importing an underscore name from another sub-package; this
closes the other door: ``model._require_open()`` in ``tasks/`` on an object of ``engine/``.
A private attribute read on anything but ``self``/``cls`` must be defined (assigned on
``self``/``cls``, a method, a class or module attribute) in the reading module's own
sub-package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jupyter_localllm as ll

PACKAGE = Path(ll.__file__).resolve().parent
# Names of modules of the standard library or of dependencies whose private names we use on
# purpose (llama_cpp's ctypes structs are read in engine/llama.py only, covered by its own rule).
FOREIGN = {"_ll", "_thread", "sys", "os", "ctypes", "np", "pd", "signal", "threading"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _sub_package(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "<root>"


def _defined_privates(tree: ast.AST) -> set[str]:
    """Private names a module defines: self/cls attributes, functions, classes, assignments."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _is_private(n)}


def _private_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of each ``x._name`` read where ``x`` is not self, cls, super() or a module
    of :data:`FOREIGN`."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in {"self", "cls", *FOREIGN}:
            continue
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def cross_package_reads(root: Path) -> list[str]:
    """Every private attribute read in ``root``'s modules whose name no module of the reading
    module's own sub-package defines."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(root.rglob("*.py"))}
    defined: dict[str, set[str]] = {}
    for path, tree in trees.items():
        defined.setdefault(_sub_package(path, root), set()).update(_defined_privates(tree))
    out = []
    for path, tree in trees.items():
        own = defined[_sub_package(path, root)]
        for line, text in _private_reads(tree):
            if text.rsplit(".", 1)[1] not in own:
                out.append(f"{path.relative_to(root)}:{line} {text}")
    return out


def test_no_private_attribute_is_read_across_sub_packages():
    assert cross_package_reads(PACKAGE) == []


@pytest.mark.parametrize(
    "source",
    [
        "def f(model):\n    model._require_open()\n",
        "def f(run):\n    return run.ledger._rows\n",
        "from ..engine import runner\nX = runner._DEFAULT\n",
    ],
)
def test_a_planted_read_across_sub_packages_is_found(tmp_path, source):
    root = tmp_path / "pkg"
    for sub, body in {
        "engine": (
            "_DEFAULT = 1\nclass Model:\n    def _require_open(self):\n        self._rows = {}\n"
        ),
        "tasks": source,
    }.items():
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
        (root / sub / "mod.py").write_text(body)
    (root / "__init__.py").write_text("")
    found = cross_package_reads(root)
    assert len(found) == 1 and found[0].startswith("tasks/mod.py:"), found
    # the same read inside the sub-package that defines the name is allowed
    (root / "engine" / "other.py").write_text(source.replace("..engine", "."))
    assert cross_package_reads(root) == found
