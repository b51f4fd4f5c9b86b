"""Hostile names in a real JupyterLab (issue 25, family 2; helpers in ``browser.py``).

A copy of the default model whose file name and ``general.name`` are HTML with JavaScript,
loaded under an alias that is HTML with JavaScript, and a model answer carrying HTML: the
model panel, the status bar and its popup, the Load model dialog, the notification after a load
from it and the answer's Markdown show the text literally, and no script from the data runs
(``window.__pwned`` stays unset, no ``<img src=x>`` is in the page). A canary cell shows that
raw HTML in an output does run here, so the check can fail.

Skips, with the reason, where Chromium, Playwright, JupyterLab or the built extension are missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import browser
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        browser.extension_missing() is not None, reason=f"{browser.extension_missing()}"
    ),
]

FILE = "<img src=x onerror=window.__pwned=1>.gguf"
SHOWN_FILE = "<img src=x onerror=window.__pwned=1>"  # the status bar drops ".gguf"
NAME = "<img src=x onerror=window.__pwned=3><script>window.__pwned=4</script>"
ALIAS = "<img src=x onerror=window.__pwned=2>"
DIALOG_ALIAS = "<svg onload=window.__pwned=7>"
# Markdown takes an unquoted attribute value without "=" only: these quotes make it a real tag.
ANSWER = 'Answer <img src="x" onerror="window.__pwned=5"> and [link](javascript:window.__pwned=6)'
STATUS = "#jp-main-statusbar .jp-LocalLLM-status"

CELLS = [
    # 0: a hostile copy of the default model in a model cache of its own
    "import os, sys, tempfile, pathlib\n"
    f"sys.path.insert(0, {str(browser.REPO_ROOT / 'tests')!r})\n"
    "from gguf_edit import write_copy\n"
    "from jupyter_localllm.models import default_model_path\n"
    "cache = pathlib.Path(tempfile.mkdtemp(prefix='hostile-cache-'))\n"
    "os.environ['LOCALLLM_CACHE_DIR'] = str(cache)\n"
    f"write_copy(default_model_path(), cache / {FILE!r}, {{'general.name': {NAME!r}}})\n"
    "%load_ext jupyter_localllm",
    # 1: loaded under a hostile alias
    "from jupyter_localllm.session.manager import get_manager\n"
    f"get_manager().load(str(cache / {FILE!r}), alias={ALIAS!r}).name",
    # 2: the model panel
    "from jupyter_localllm.notebook.widgets import ModelPanel\nModelPanel()",
    # 3: a model's answer carrying HTML, shown as the magics show it
    f"from jupyter_localllm.notebook.magics import LLMResponse\nLLMResponse({ANSWER!r})",
    # 4: the canary: raw HTML in an output runs here
    "from IPython.display import HTML\nHTML('<img src=x onerror=\"window.__canary=1\">')",
]


@pytest.fixture(scope="module")
def page() -> Iterator[object]:
    """A page with the test notebook open in a JupyterLab of its own (nothing run yet)."""
    with browser.notebook_page("escaping-", "escaping.ipynb", CELLS) as tab:
        yield tab


def assert_no_script_ran(page) -> None:
    """Nothing from the data became an element or ran."""
    pwned = page.evaluate("() => window.__pwned")
    assert pwned is None, f"a script from the data ran (window.__pwned = {pwned})"
    found = page.evaluate(
        """() => [...document.querySelectorAll('img, svg, script')]
                 .map(e => e.outerHTML).filter(h => h.includes('__pwned'))"""
    )
    assert found == [], found


def page_text(page) -> str:
    return page.evaluate("() => document.body.innerText")


def wait_for_page_text(page, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in page_text(page):
        assert time.monotonic() < deadline, f"{text!r} is not shown after {timeout:.0f} s"
        page.wait_for_timeout(100)


def test_model_panel_and_status_bar_show_hostile_names_as_text(page) -> None:
    browser.run_cell(page, 0, timeout=120)
    out = browser.run_cell(page, 1, timeout=120)
    assert browser.cell_errors(page) == []
    assert NAME in out.inner_text()  # the model's own name, as the kernel read it
    item = page.locator(STATUS)
    deadline = time.monotonic() + 30
    while SHOWN_FILE not in (item.inner_text() if item.is_visible() else ""):
        assert time.monotonic() < deadline, "the status bar never named the model"
        page.wait_for_timeout(100)
    assert item.inner_text() == f"\U0001f999 {SHOWN_FILE}"
    assert ALIAS in item.get_attribute("title") and NAME in item.get_attribute("title")
    panel = browser.run_cell(page, 2, timeout=60)
    browser.wait_for_text(panel, "Unload", timeout=30)
    browser.wait_for_text(panel, "memory_mb", timeout=30)  # the table of loaded models
    assert_no_script_ran(page)
    text = panel.inner_text()
    assert ALIAS in text and NAME in text, text


def test_status_popup_shows_hostile_names_as_text(page) -> None:
    page.locator(STATUS).click()
    popup = page.locator(".jp-LocalLLM-popup")
    popup.wait_for(timeout=10_000)
    assert f"{ALIAS}: {SHOWN_FILE}, " in popup.inner_text()
    page.keyboard.press("Escape")
    assert_no_script_ran(page)


def test_load_model_dialog_and_its_notification_show_hostile_names_as_text(page) -> None:
    page.keyboard.press("Control+Shift+c")
    palette = page.locator("#command-palette")
    palette.wait_for(timeout=10_000)
    page.keyboard.type("Load model")
    palette.get_by_text("Load model…").first.click()
    dialog = page.locator(".jp-Dialog")
    choice = dialog.locator("select.jp-LocalLLM-choice")
    choice.wait_for(timeout=60_000)
    shown = choice.locator("option").evaluate_all("options => options.map(o => o.textContent)")
    assert any(s.startswith(f"{FILE} (cache, ") for s in shown), shown
    choice.select_option(FILE)
    dialog.locator("input.jp-LocalLLM-alias").fill(DIALOG_ALIAS)
    dialog.get_by_role("button", name="Load").click()
    wait_for_page_text(page, f"Loaded '{FILE}' as '{DIALOG_ALIAS}'.", timeout=120)
    item = page.locator(STATUS)
    deadline = time.monotonic() + 30
    while DIALOG_ALIAS not in (item.get_attribute("title") or ""):
        assert time.monotonic() < deadline, "the status bar never listed the second alias"
        page.wait_for_timeout(100)
    assert_no_script_ran(page)


def test_an_answer_with_html_shows_as_text(page) -> None:
    out = browser.run_cell(page, 3, timeout=60)
    deadline = time.monotonic() + 30
    while "Answer" not in out.inner_text():
        assert time.monotonic() < deadline, "the answer is not shown"
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)  # time for an image to fail and its onerror to run
    assert_no_script_ran(page)
    text = out.inner_text()
    assert f"{ANSWER.split(' and ')[0]} and [link](javascript:" in text, text
    assert out.locator("a").count() == 0  # no link from the answer


def test_the_check_sees_raw_html_run(page) -> None:
    """The canary: HTML in an output does run in this page, so the checks above can fail."""
    browser.run_cell(page, 4, timeout=60)
    deadline = time.monotonic() + 10
    while page.evaluate("() => window.__canary") != 1:
        assert time.monotonic() < deadline, "raw HTML in an output did not run: the check is blind"
        page.wait_for_timeout(100)
    assert_no_script_ran(page)
