"""The layer rules of DESIGN.md that code review alone would let slip: only the backend touches
llama_cpp, ``import jupyter_localllm`` stays light, and the public names are all there."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
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


# --- import rules between the floors ------------------------------------------------------------
#
# Every static import counts: at module top, inside functions (lazy imports), and inside
# ``if TYPE_CHECKING:`` blocks. A type-only import is still a dependency on the floor it names
# (an engine that annotates with a session type is layered wrong even if nothing loads at run
# time), so the rules treat it like any other import. The one exception is the root package's
# ``if TYPE_CHECKING:`` mirror of its lazy public names, which rule (e) lets name widget classes:
# those names are public API and the root is the composition root. ``importlib.import_module``
# with a literal name counts as an import too; names computed at run time cannot be seen.
# Relative imports are resolved to absolute names; ``from pkg import name`` resolves to the
# module ``pkg.name`` when that is a module of the package, and a public name of the root package
# (``from jupyter_localllm import generate``) resolves to the module that defines it. Importing
# the root package itself counts as reaching above every floor (it re-exports them all), except
# for ``from jupyter_localllm import __version__``.

PKG = "jupyter_localllm"


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package in folder ``package`` (named ``jupyter_localllm``) by its
    absolute name."""
    return {
        ".".join((PKG, *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): p
        for p in sorted(package.rglob("*.py"))
    }


MODULES = package_modules()


@dataclass(frozen=True)
class Import:
    """One imported module (and the name taken from it, for ``from m import name``)."""

    importer: str  # the importing module, e.g. "jupyter_localllm.engine.runner"
    line: int
    target: str  # absolute name of the imported module
    name: str | None  # the name taken from ``target``; None for ``import target``
    text: str  # the statement as written, for messages
    type_only: bool = False

    def __str__(self) -> str:
        kind = " (type-only)" if self.type_only else ""
        return f"{self.importer} line {self.line}: {self.text}{kind}"


def _package_of(module: str, is_package: bool) -> list[str]:
    parts = module.split(".")
    return parts if is_package else parts[:-1]


def _resolve_from(module: str, is_package: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = _package_of(module, is_package)
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _from_target(base: str, name: str, modules: set[str]) -> tuple[str, str | None]:
    """The module that ``from base import name`` really depends on."""
    if f"{base}.{name}" in modules:
        return f"{base}.{name}", name
    if base == PKG and name in ll._EXPORTS:
        return f"{PKG}.{ll._EXPORTS[name]}", name
    return base, name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.type_only = False
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str, name: str | None, text: str) -> None:
        self.found.append(Import(self.module, node.lineno, target, name, text, self.type_only))

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer, self.type_only = self.type_only, True
        for child in node.body:
            self.visit(child)
        self.type_only = outer
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name, None, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "__future__":
            return
        base = _resolve_from(self.module, self.is_package, node.level, node.module)
        written = "." * node.level + (node.module or "")
        for alias in node.names:
            target, name = _from_target(base, alias.name, self.modules)
            self._add(node, target, name, f"from {written} import {alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0] if node.args else None
        if (
            called == "import_module"
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            anchor = getattr(node.args[1], "id", None) if len(node.args) > 1 else None
            target = self._absolute(first.value, anchor)
            self._add(node, target, None, f"import_module({first.value!r})")
        self.generic_visit(node)

    def _absolute(self, name: str, anchor: str | None = None) -> str:
        """The module ``import_module(name, anchor)`` loads, ``anchor`` being ``__name__`` (or
        ``__package__``) of the calling module."""
        if not name.startswith("."):
            return name
        level = len(name) - len(name.lstrip("."))
        in_package = self.is_package or anchor == "__name__"
        return _resolve_from(self.module, in_package, level, name.lstrip(".") or None)


def collect_imports(
    source: str, module: str, *, is_package: bool = False, modules: set[str] | None = None
) -> list[Import]:
    """Every import in ``source`` (the code of ``module``), resolved to absolute module names."""
    collector = _ImportCollector(module, is_package, set(MODULES) if modules is None else modules)
    collector.visit(ast.parse(source))
    return collector.found


def package_imports(package: Path = PACKAGE) -> list[Import]:
    """Every import of every module of the package in folder ``package``."""
    modules = package_modules(package)
    found = []
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        is_package = path.name == "__init__.py"
        found += collect_imports(source, module, is_package=is_package, modules=set(modules))
    return found


ALL_IMPORTS = package_imports()


def _in_package(module: str) -> bool:
    return module == PKG or module.startswith(PKG + ".")


def _in(module: str, *floors: str) -> bool:
    """Whether ``module`` is one of ``floors`` (names below the package) or inside one."""
    return any(module == f"{PKG}.{f}" or module.startswith(f"{PKG}.{f}.") for f in floors)


def _is_root(imp: Import) -> bool:
    """An import of the root package itself for anything but ``__version__``: the root re-exports
    every floor, so a lower floor that reaches for it reaches above itself."""
    return imp.target == PKG and imp.name != "__version__"


def _engine_rule(imp: Import) -> bool:
    """(a) The engine imports only the engine, types, errors, the defaults table and the
    machine probes (hardware)."""
    if not _in(imp.importer, "engine") or not _in_package(imp.target):
        return False
    if imp.target == PKG:
        return _is_root(imp)
    return not _in(imp.target, "engine", "types", "errors", "defaults", "hardware")


BOTTOM = ("types", "errors", "defaults", "hardware", "models", "analysis", "datasets")


def _bottom_rule(imp: Import) -> bool:
    """(b) The bottom floor imports nothing from engine, session, tasks or a front-end."""
    return _in(imp.importer, *BOTTOM) and (
        _is_root(imp) or _in(imp.target, "engine", "session", "tasks", "notebook", "cli")
    )


def _session_rule(imp: Import) -> bool:
    """(c) The session imports nothing from tasks or a front-end."""
    return _in(imp.importer, "session") and (
        _is_root(imp) or _in(imp.target, "tasks", "notebook", "cli")
    )


def _tasks_rule(imp: Import) -> bool:
    """(d) Tasks import nothing from a front-end."""
    return _in(imp.importer, "tasks") and (_is_root(imp) or _in(imp.target, "notebook", "cli"))


DISPLAY = (f"{PKG}.notebook.widgets", "ipywidgets", "IPython.display", "IPython.core.display")


def _shows(imp: Import) -> bool:
    names = [imp.target] + ([f"{imp.target}.{imp.name}"] if imp.name else [])
    return any(n == d or n.startswith(d + ".") for n in names for d in DISPLAY)


def _display_rule(imp: Import) -> bool:
    """(e) Only the notebook front-end imports widgets, ipywidgets or IPython display code (the
    root's ``TYPE_CHECKING`` mirror of its public widget names excepted)."""
    if _in(imp.importer, "notebook") or (imp.importer == PKG and imp.type_only):
        return False
    return _shows(imp)


def _public(imp: Import) -> bool:
    """``from jupyter_localllm import NAME`` of a name in the package's ``__all__``."""
    return imp.name in ll.__all__ and re.match(rf"from ({PKG}|\.+) import\b", imp.text) is not None


def _frontend_engine_rule(imp: Import) -> bool:
    """(f) Front-ends (notebook, cli) reach the engine only through tasks, the session and
    the public names of the package (``from jupyter_localllm import SamplingParams``)."""
    return _in(imp.importer, "notebook", "cli") and _in(imp.target, "engine") and not _public(imp)


FRONTENDS = ("notebook", "cli")
BINDING = f"{PKG}.engine.llama"


def _binding_rule(imp: Import) -> bool:
    """(h) Only the engine imports the llama.cpp binding (engine/llama.py): every floor above
    types models against the backend protocol and opens them with ``engine.factory``."""
    named = imp.target == BINDING or imp.target.startswith(BINDING + ".")
    return named and not _in(imp.importer, "engine")


def _frontend_rule(imp: Import) -> bool:
    """(g) A front-end imports no other front-end: what two of them share (row rendering,
    defaults) lives in tasks or the bottom, so each stands on the floors below alone."""
    here, there = _floor(imp.importer), _floor(imp.target)
    return here in FRONTENDS and there in FRONTENDS and here != there


def _floor(module: str) -> str:
    return module.split(".")[1] if module.startswith(PKG + ".") else module


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_rule(imp: Import) -> bool:
    """(f) No module takes an underscore-prefixed name (or module) from another sub-package."""
    if not _in_package(imp.target) or _floor(imp.target) == _floor(imp.importer):
        return False
    parts = imp.target.split(".")[1:] + ([imp.name] if imp.name else [])
    return any(_is_private(p) for p in parts)


RULES = {
    "a: engine imports only engine, types, errors, defaults, hardware": _engine_rule,
    "b: bottom imports nothing from engine, session, tasks, front-ends": _bottom_rule,
    "c: session imports nothing from tasks, notebook, cli": _session_rule,
    "d: tasks import nothing from notebook, cli": _tasks_rule,
    "e: only notebook imports widgets, ipywidgets, IPython display": _display_rule,
    "f: front-ends import no engine module": _frontend_engine_rule,
    "f: no private names across sub-packages": _private_rule,
    "g: a front-end imports no other front-end": _frontend_rule,
    "h: only the engine imports engine/llama.py": _binding_rule,
}

# One violation per rule, written the way a slip would look: (module, is_package, source).
VIOLATIONS = {
    "a: engine imports only engine, types, errors, defaults, hardware": (
        "jupyter_localllm.engine.runner",
        False,
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..session.jobs import Job",
    ),
    "b: bottom imports nothing from engine, session, tasks, front-ends": (
        "jupyter_localllm.analysis.repro",
        False,
        "def f():\n    from .. import generate",
    ),
    "c: session imports nothing from tasks, notebook, cli": (
        "jupyter_localllm.session.manager",
        False,
        "from ..tasks.generation import generate_parallel",
    ),
    "d: tasks import nothing from notebook, cli": (
        "jupyter_localllm.tasks",
        True,
        "import jupyter_localllm.notebook.config",
    ),
    "e: only notebook imports widgets, ipywidgets, IPython display": (
        "jupyter_localllm.session.sinks",
        False,
        "def f():\n    from IPython import display",
    ),
    "f: front-ends import no engine module": (
        "jupyter_localllm.notebook.widgets.models",
        False,
        "from ...engine import runner",
    ),
    "f: no private names across sub-packages": (
        "jupyter_localllm.notebook.magics",
        False,
        "from ..session.manager import _manager",
    ),
    "g: a front-end imports no other front-end": (
        "jupyter_localllm.cli.run",
        False,
        "def f():\n    from ..notebook.config import get_settings",
    ),
    "h: only the engine imports engine/llama.py": (
        "jupyter_localllm.tasks.generation",
        False,
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..engine.llama import Model",
    ),
}


def test_imports_are_found_and_resolved():
    src = (
        "import os, ipywidgets as w\n"
        "from . import gguf\n"
        "from .. import __version__, generate\n"
        "from ..engine.llama import Model\n"
        "if TYPE_CHECKING:\n    from ...x import y\nelse:\n    import z\n"
        "def f():\n    import importlib\n    importlib.import_module('.gguf', __package__)\n"
    )
    found = collect_imports(src, "jupyter_localllm.models.download")
    got = [(i.line, i.target, i.name, i.type_only) for i in found]
    assert got == [
        (1, "os", None, False),
        (1, "ipywidgets", None, False),
        (2, "jupyter_localllm.models.gguf", "gguf", False),
        (3, "jupyter_localllm", "__version__", False),
        (3, "jupyter_localllm.tasks.generation", "generate", False),
        (4, "jupyter_localllm.engine.llama", "Model", False),
        (6, "x", "y", True),
        (8, "z", None, False),
        (10, "importlib", None, False),
        (11, "jupyter_localllm.models.gguf", None, False),
    ]
    root = collect_imports("import_module('.notebook.accessor', __name__)", PKG, is_package=True)
    assert [i.target for i in root] == ["jupyter_localllm.notebook.accessor"]
    assert str(found[5]) == (
        "jupyter_localllm.models.download line 4: from ..engine.llama import Model"
    )
    assert len(ALL_IMPORTS) > 100


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_sees_a_violation(rule):
    module, is_package, source = VIOLATIONS[rule]
    found = collect_imports(source, module, is_package=is_package)
    assert [i for i in found if RULES[rule](i)], f"rule {rule!r} missed {source!r}"
    others = [r for r in RULES if r != rule and r.split(":")[0] != rule.split(":")[0]]
    assert not [r for r in others for i in found if RULES[r](i)], "one slip, one rule"


def test_allowed_imports_pass_every_rule():
    allowed = {
        "jupyter_localllm.analysis.repro": "def f():\n    from .. import __version__",
        "jupyter_localllm.engine.scheduler": "from ..types import Result\nfrom .text import clean",
        "jupyter_localllm.session.cache": "from ..analysis.repro import sha256_json",
        "jupyter_localllm.tasks.generation": "from ..session.jobs import Job",
        "jupyter_localllm.notebook.magics": "from IPython.display import display\nimport numpy",
        "jupyter_localllm.models": "from . import download as _download",
    }
    for module, source in allowed.items():
        for imp in collect_imports(source, module, is_package=module.endswith("models")):
            assert not [r for r, broken in RULES.items() if broken(imp)], str(imp)


def test_the_root_names_widgets_for_type_checkers_only():
    widgets = "from .notebook.widgets import ProgressPanel"
    typed = collect_imports(f"if TYPE_CHECKING:\n    {widgets}", PKG, is_package=True)
    loaded = collect_imports(f"def f():\n    {widgets}", PKG, is_package=True)
    assert not _display_rule(typed[0])
    assert _display_rule(loaded[0])
    assert not _display_rule(
        collect_imports("from .notebook import magics", PKG, is_package=True)[0]
    )


def offenders(rule: str, imports: list[Import]) -> list[str]:
    """The imports that break ``rule``."""
    return [str(imp) for imp in imports if RULES[rule](imp)]


@pytest.mark.parametrize("rule", list(RULES))
def test_layering_rule(rule):
    broken = offenders(rule, ALL_IMPORTS)
    assert not broken, f"rule {rule}:\n" + "\n".join(broken)


def plant(root: Path, module: str, is_package: bool, source: str) -> Path:
    """A package ``jupyter_localllm`` in folder ``root`` whose module ``module`` holds
    ``source`` (every folder on the way a package); returns the package's folder."""
    package = root / PKG
    parts = module.split(".")[1:]
    path = package.joinpath(*parts, "__init__.py") if is_package else package.joinpath(*parts)
    if not is_package:
        path = path.with_suffix(".py")
    for folder in [package, *[package.joinpath(*parts[:i]) for i in range(1, len(parts))]]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").touch()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return package


@pytest.mark.parametrize("rule", list(RULES))
def test_a_violation_planted_in_a_package_breaks_its_rule(tmp_path, rule):
    """The whole check (files found, modules named, imports resolved, the rule) run over a
    package on disk: the planted slip is reported, the same package without it passes."""
    module, is_package, source = VIOLATIONS[rule]
    clean = plant(tmp_path / "clean", module, is_package, "import os\n")
    assert not offenders(rule, package_imports(clean))
    broken = offenders(
        rule, package_imports(plant(tmp_path / "broken", module, is_package, source))
    )
    assert len(broken) == 1 and broken[0].startswith(f"{module} line "), broken


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("jupyter_localllm.cli.run", "from ..notebook import accessor"),
        ("jupyter_localllm.cli.runners", "import jupyter_localllm.notebook.templates"),
        ("jupyter_localllm.cli", "from .. import ProgressPanel"),  # a public name of notebook
        ("jupyter_localllm.notebook.magics", "from ..cli.spec import RunSpec"),
        ("jupyter_localllm.notebook.magics", "importlib.import_module('jupyter_localllm.cli')"),
    ],
)
def test_a_front_end_importing_another_is_found_in_a_package(tmp_path, module, source):
    package = plant(tmp_path, module, module == "jupyter_localllm.cli", source)
    rule = "g: a front-end imports no other front-end"
    assert len(offenders(rule, package_imports(package))) == 1
    shared = "from ..tasks.rows import render\nfrom .. import defaults\nfrom ..tasks import frames"
    fine = plant(tmp_path / "fine", module, module == "jupyter_localllm.cli", shared)
    assert not offenders(rule, package_imports(fine))
