"""The JupyterLab extension as a package: the wheel ships it prebuilt and a fresh environment
lists it "enabled OK"; its copy of the ``%%llm`` options matches the kernel's parser.

The TypeScript unit tests (vitest, ``labextension/test/``) run from ``make test``; the browser
tests are in ``test_labextension_browser.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from jupyter_localllm.notebook.magics import _cell_parser

REPO = Path(__file__).resolve().parents[1]
MAGIC_TS = REPO / "labextension" / "src" / "magic.ts"
BUILT = REPO / "jupyter_localllm" / "labextension" / "package.json"
SHARE = "jupyter_localllm-0.1.0.data/data/share/jupyter/labextensions/jupyter-localllm"


def ts_set(name: str) -> set[str]:
    """The strings in the ``new Set([...])`` called ``name`` in magic.ts."""
    source = MAGIC_TS.read_text()
    found = re.search(rf"{name}: ReadonlySet<string> = new Set\(\[(.*?)\]\)", source, re.S)
    assert found, f"{name} not found in {MAGIC_TS}"
    return set(re.findall(r"'([^']+)'", found.group(1)))


def test_highlighter_knows_the_options_of_the_cell_magic() -> None:
    """Every %%llm option the kernel accepts is highlighted as one (and no other)."""
    takes_value, switches = set(), set()
    for action in _cell_parser()._actions:
        target = switches if action.nargs == 0 else takes_value
        target.update(action.option_strings)
    assert ts_set("VALUE_OPTIONS") == takes_value
    assert ts_set("SWITCH_OPTIONS") == switches


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built by ``python -m build --wheel`` from this checkout."""
    if not BUILT.exists():
        pytest.skip(f"the extension is not built ({BUILT} is missing; run make setup)")
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (found,) = out.glob("jupyter_localllm-*.whl")
    return found


@pytest.mark.slow
def test_wheel_ships_the_prebuilt_extension(wheel: Path) -> None:
    """The wheel holds the extension's package.json, its static bundle, schema and
    install.json under share/jupyter/labextensions/jupyter-localllm."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in (
        "package.json",
        "install.json",
        "static/style.js",
        "schemas/jupyter-localllm/plugin.json",
    ):
        assert f"{SHARE}/{part}" in names, part
    assert any(re.fullmatch(rf"{SHARE}/static/remoteEntry\.\w+\.js", n) for n in names)
    assert "jupyter_localllm/labextension/package.json" in names


@pytest.mark.slow
def test_fresh_environment_lists_the_extension_enabled(wheel: Path, tmp_path: Path) -> None:
    """In a new virtual environment with JupyterLab and the wheel (no Node anywhere),
    ``jupyter labextension list`` shows jupyter-localllm "enabled OK"."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for args in (["jupyterlab>=4.5,<5"], ["--no-deps", str(wheel)]):
        run = subprocess.run([*pip, *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
    listing = subprocess.run(
        [str(env / "bin" / "jupyter"), "labextension", "list"],
        capture_output=True,
        text=True,
        env={"PATH": f"{env / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(
        r"jupyter-localllm v0\.1\.0 enabled\s+OK \(python, jupyter-localllm\)", text
    ), text
