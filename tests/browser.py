"""Drive a real JupyterLab in Debian's Chromium from the tests (Playwright, sync API).

:func:`start_lab` runs ``jupyter lab`` from this virtual environment on 127.0.0.1 (a free port,
a random token) with its own config, data, runtime, settings and IPython folders, so nothing of
the user's Jupyter set-up is read or written. Its kernel is this interpreter (``sys.executable``),
where ``jupyter_localllm`` is importable. The server's root is the repository, so notebooks run
with ``notebooks/`` as working directory exactly as under ``make lab``; autosave is off, so the
committed notebooks are never rewritten. Notebooks a test writes go under ``notebooks/_build/``
(ignored by git; see :func:`scratch_folder`).

:func:`launch_chromium` starts ``/usr/bin/chromium`` headless with the flags in DEVELOPERS.md.
The page helpers (:func:`open_notebook`, :func:`run_cell`, :func:`wait_for_text`,
:func:`screenshot`, ...) work on the notebook shown in the main area.

:func:`missing` says why browser tests cannot run here (no Chromium, no Playwright, no
JupyterLab); the tests skip with that reason. ``make test`` installs Chromium when it runs as
root with apt-get, as on CI.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("LOCALLLM_CHROMIUM", "/usr/bin/chromium"))
# As root there is no user namespace sandbox (--no-sandbox); headless on a machine without a GPU
# (--disable-gpu); the tests must not reach the network or depend on what it says
# (--disable-background-networking, --disable-component-update, --disable-sync); a fresh
# profile every run (--no-first-run).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
SCRATCH = REPO_ROOT / "notebooks" / "_build"
TEST_SHOTS = SCRATCH / "screenshots"  # screenshots of test-only notebooks (not committed)
VIEWPORT = {"width": 1280, "height": 900}

# JupyterLab user settings for the test server: no news or update checks (they pop up a
# notification and reach the network), no extension manager (network), no autosave (the
# committed notebooks stay as they are), and every cell kept in the DOM so cells can be found
# by index.
LAB_SETTINGS: dict[str, dict[str, object]] = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False, "disclaimed": True},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/sessionDialogs": {"skipKernelRestartDialog": True},
}


def missing() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"{CHROMIUM} is not installed; `make test` installs Debian's chromium with apt-get "
            "when it runs as root (as on CI), or run `apt-get install chromium` yourself"
        )
    for module, package in (("playwright", "playwright"), ("jupyterlab", "jupyterlab")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed in this environment (pip install -e '.[test]')"
    return None


EXTENSION = REPO_ROOT / "jupyter_localllm" / "labextension" / "package.json"


def extension_missing() -> str | None:
    """Why the JupyterLab extension's browser tests cannot run here, or ``None``."""
    reason = missing()
    if reason is None and not EXTENSION.exists():
        reason = f"the JupyterLab extension is not built ({EXTENSION} is missing; run make setup)"
    return reason


@dataclass
class Lab:
    """A running JupyterLab server: its address, token, root folder and process."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def notebook_url(self, path: Path | str) -> str:
        """The address that opens ``path`` (absolute, or relative to the server's root) alone:
        ``reset`` drops the tabs an earlier page of this server left in the workspace."""
        rel = Path(path).resolve().relative_to(self.root) if Path(path).is_absolute() else path
        return f"{self.url}lab/tree/{Path(rel).as_posix()}?token={self.token}&reset"

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines the server wrote (for failure messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lab_environment(home: Path) -> dict[str, str]:
    """Environment variables giving a Jupyter server its own folders under ``home``.

    Writes the JupyterLab user settings (:data:`LAB_SETTINGS`), a server config without the LSP
    extension, and a ``python3`` kernel spec running this interpreter, which takes precedence
    over any other ``python3`` spec.
    """
    dirs = {
        "JUPYTER_CONFIG_DIR": home / "config",
        "JUPYTER_DATA_DIR": home / "data",
        "JUPYTER_RUNTIME_DIR": home / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": home / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": home / "lab-workspaces",
        "IPYTHONDIR": home / "ipython",
    }
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    for plugin, values in LAB_SETTINGS.items():
        path = dirs["JUPYTERLAB_SETTINGS_DIR"] / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    server_config = {"ServerApp": {"jpserver_extensions": {"jupyter_lsp": False}}}
    (dirs["JUPYTER_CONFIG_DIR"] / "jupyter_server_config.json").write_text(
        json.dumps(server_config)
    )
    spec_dir = dirs["JUPYTER_DATA_DIR"] / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update({name: str(folder) for name, folder in dirs.items()})
    # Only this environment's Jupyter paths and ours; never ~/.local or /usr/local/share.
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group ``process`` leads (server and kernels), SIGKILL after
    ``grace`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


@contextlib.contextmanager
def start_lab(root: Path = REPO_ROOT, *, timeout: float = 120.0) -> Iterator[Lab]:
    """Run ``jupyter lab`` serving ``root`` on 127.0.0.1 until the ``with`` block ends.

    Waits until ``/api/status`` answers; raises ``RuntimeError`` with the server's log when it
    exits or does not answer within ``timeout`` seconds. On exit the whole process group
    (server and the kernels it started) is stopped.
    """
    home = Path(tempfile.mkdtemp(prefix="localllm-lab-"))
    env = lab_environment(home)
    port, token = free_port(), secrets.token_hex(16)
    log = home / "lab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
        # CI runs as root; the server refuses to unless told.
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    lab = Lab(f"http://127.0.0.1:{port}/", token, root.resolve(), process, log)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"{lab.url}api/status?token={token}"):
            if process.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {process.returncode}:\n{lab.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"jupyter lab did not answer in {timeout:.0f} s:\n{lab.log_tail()}"
                )
            time.sleep(0.25)
        yield lab
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, with :data:`CHROMIUM_ARGS`, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def scratch_folder(prefix: str = "browser-") -> Path:
    """A new folder under ``notebooks/_build/`` (ignored by git) for notebooks a test writes."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def write_notebook(path: Path, cells: list[str]) -> Path:
    """Write code ``cells`` as a notebook for the ``python3`` kernel (no dialog asks which)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# Hidden tabs are either display:none (lm-mod-hidden) or scaled to nothing, depending on
# JupyterLab's hidden mode; Playwright's :visible excludes both.
_SHOWN_PANEL = ".jp-NotebookPanel:visible"


def notebook(page: Page) -> Locator:
    """The notebook shown in the main area."""
    return page.locator(f"{_SHOWN_PANEL} .jp-Notebook").first


def kernel_status(page: Page) -> str:
    """The state of the shown notebook's kernel (``idle``, ``busy``, ``connecting``, ...), or
    ``""`` while it has none yet (the toolbar says "No Kernel" and the indicator is idle)."""
    panel = page.locator(_SHOWN_PANEL).first
    names = panel.locator(".jp-Toolbar-kernelName").all_inner_texts()
    if not names or names[0].strip() in ("", "No Kernel"):
        return ""
    return panel.locator(".jp-Notebook-ExecutionIndicator").first.get_attribute("data-status") or ""


def wait_for_kernel_idle(page: Page, timeout: float = 60.0) -> None:
    """Wait until the notebook's kernel is started and idle."""
    deadline = time.monotonic() + timeout
    while kernel_status(page) != "idle":
        if time.monotonic() > deadline:
            raise TimeoutError(f"kernel not idle after {timeout:.0f} s ({kernel_status(page)!r})")
        page.wait_for_timeout(200)


def open_notebook(page: Page, lab: Lab, path: Path | str, *, timeout: float = 90.0) -> Locator:
    """Open ``path`` in JupyterLab, wait for its cells and an idle kernel; the notebook."""
    page.goto(lab.notebook_url(path), timeout=timeout * 1000)
    nb = notebook(page)
    nb.locator(".jp-Cell").first.wait_for(timeout=timeout * 1000)
    wait_for_kernel_idle(page, timeout)
    return nb


def cell(page: Page, index: int) -> Locator:
    """Cell ``index`` (from 0) of the notebook shown."""
    return notebook(page).locator(".jp-Cell").nth(index)


def cell_output(page: Page, index: int) -> Locator:
    """The output area of cell ``index``."""
    return cell(page, index).locator(".jp-OutputArea")


_DONE_PROMPT = re.compile(r"^\[(\d+)\]:$")


def _prompt(page: Page, index: int) -> str:
    return cell(page, index).locator(".jp-InputPrompt").inner_text().strip()


def run_cell(page: Page, index: int, *, timeout: float = 60.0) -> Locator:
    """Select cell ``index``, run it (Ctrl+Enter) and wait until it has finished; its output.

    "Finished" is the kernel's reply: the prompt shows a new execution count. Output that a
    background thread sends later still arrives; wait for it with :func:`wait_for_text`.
    Raises ``TimeoutError`` when the cell has not finished after ``timeout`` seconds.
    """
    target = cell(page, index)
    before = _prompt(page, index)
    target.locator(".jp-InputPrompt").click()
    page.keyboard.press("Control+Enter")
    deadline = time.monotonic() + timeout
    while True:
        prompt = _prompt(page, index)
        if _DONE_PROMPT.match(prompt) and prompt != before:
            return cell_output(page, index)
        if time.monotonic() > deadline:
            raise TimeoutError(f"cell {index} still running after {timeout:.0f} s ({prompt})")
        page.wait_for_timeout(100)


def run_all(page: Page, *, timeout: float = 300.0) -> None:
    """Run every cell (Run > Run All Cells) and wait until the kernel is idle again."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_timeout(500)
    wait_for_kernel_idle(page, timeout)


def wait_for_text(
    scope: Page | Locator, text: str | re.Pattern[str], *, timeout: float = 30.0
) -> Locator:
    """Wait until an element under ``scope`` shows ``text`` (a substring or a pattern); it."""
    found = scope.get_by_text(text).first
    found.wait_for(state="visible", timeout=timeout * 1000)
    return found


def innermost(scope: Page | Locator, css: str, text: str | re.Pattern[str]) -> Locator:
    """The innermost ``css`` element under ``scope`` that contains ``text`` (of its last
    occurrence): ancestors come first in document order, so it is the last match."""
    page = scope if hasattr(scope, "goto") else scope.page
    return scope.locator(css).filter(has=page.get_by_text(text)).last


def code_cells(page: Page) -> list[int]:
    """The indices of the shown notebook's code cells."""
    cells = notebook(page).locator(".jp-Cell")
    classes = cells.evaluate_all("cells => cells.map(c => c.className)")
    return [i for i, names in enumerate(classes) if "jp-CodeCell" in names.split()]


def progress_fraction(scope: Page | Locator) -> float:
    """How full the first ipywidgets progress bar under ``scope`` is, from 0.0 to 1.0.

    ipywidgets draws the fill as a ``width`` (horizontal bars) or ``height`` (vertical) share
    of the track.
    """
    bar = scope.locator(".widget-hprogress .progress-bar, .widget-vprogress .progress-bar").first
    style = bar.evaluate(
        "e => e.closest('.widget-vprogress') ? e.style.height : e.style.width", timeout=30_000
    )
    match = re.fullmatch(r"([\d.]+)%", style)
    if match is None:
        raise ValueError(f"progress bar fill {style!r} is not a percentage")
    return float(match.group(1)) / 100


# Every text node under the root, as text boxes; a text box cut off by its element (ellipsis or
# hidden overflow), and two text boxes that overlap by more than a pixel each way, are problems.
_TEXT_PROBLEMS_JS = """
root => {
  const problems = [];
  const boxes = [];  // [text node number, text, visible box]
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  let number = 0;
  for (let node = walker.nextNode(); node; node = walker.nextNode(), number++) {
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    const clips = style.textOverflow === "ellipsis" || style.overflowX === "hidden";
    if (clips && el.scrollWidth > el.clientWidth + 1) problems.push(`cut off: ${text}`);
    const clip = el.getBoundingClientRect();
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const r of range.getClientRects()) {
      // What is drawn: a clipping element hides the text outside it.
      const box = clips
        ? {left: Math.max(r.left, clip.left), right: Math.min(r.right, clip.right),
           top: r.top, bottom: r.bottom}
        : r;
      if (box.right > box.left && box.bottom > box.top) boxes.push([number, text, box]);
    }
  }
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [na, ta, a] = boxes[i];
      const [nb, tb, b] = boxes[j];
      if (na === nb) continue;
      const dx = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const dy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (dx > 1 && dy > 1) problems.push(`overlap: ${ta} / ${tb}`);
    }
  }
  return [...new Set(problems)];
}
"""


def text_problems(target: Locator) -> list[str]:
    """Text under ``target`` that a reader cannot read whole: ``"cut off: TEXT"`` (clipped by
    its element, e.g. an ellipsis) and ``"overlap: A / B"`` (two texts drawn over each other).
    Text inside images (charts) is not seen; look at those."""
    return list(target.evaluate(_TEXT_PROBLEMS_JS))


def cell_errors(page: Page) -> list[str]:
    """The tracebacks shown in the notebook's outputs (``[]`` when none)."""
    errors = notebook(page).locator(".jp-OutputArea-output[data-mime-type*='error']")
    return [errors.nth(i).inner_text() for i in range(errors.count())]


def screenshot(target: Page | Locator, name: str, folder: Path = SCREENSHOTS) -> Path:
    """Save a PNG of ``target`` (a page or one element) as ``folder/name.png``; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    target.screenshot(path=str(path))
    return path


@contextlib.contextmanager
def notebook_page(prefix: str, name: str, cells: list[str]) -> Iterator[object]:
    """A page with a notebook of ``cells`` open in a JupyterLab of its own (nothing run yet);
    ``page.lab`` is the server, for failure messages."""
    folder = scratch_folder(prefix)
    path = write_notebook(folder / name, cells)
    try:
        with start_lab() as lab, launch_chromium() as chromium:
            tab = chromium.new_page(viewport=VIEWPORT)
            open_notebook(tab, lab, path)
            tab.lab = lab
            yield tab
            tab.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
