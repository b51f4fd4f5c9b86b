"""The JupyterLab extension (``labextension/``) in a real JupyterLab, driven by Playwright in
Debian's Chromium (helpers in ``browser.py``).

One notebook, one page, in order: a ``%%llm`` cell is highlighted as a prompt (CodeMirror
classes ``cm-llm-*``) and a Python cell as Python, and the cell returns to Python when its
first line changes; the status-bar item is hidden until ``%load_ext jupyter_localllm``, then
names the model after ``%llm load default``; during a 200-row background generation it shows
the rows advancing; Cancel in its popup stops the job within 2 s and the finished rows stay;
"Load model…" from the command palette loads the gemma model; a running cell is interrupted
from the popup and keeps its finished rows; LocalLLM › Show dashboard runs ``%llm panel``; a
kernel speaking another comm protocol version is refused in the status bar and a notification.
Screenshots of the cell, the status bar, the popup and the dialog go to ``docs/screenshots/``.

Everything skips, with the reason, where Chromium, Playwright, JupyterLab or the built
extension are missing (``make setup`` builds it).
"""

from __future__ import annotations

import re
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

CANCEL_WITHIN_S = 2.0
ROWS = 200
STATUS = "#jp-main-statusbar .jp-LocalLLM-status"

CELLS = [
    # 0: the extension, and no result cache, so the run below takes real time.
    'import os\nos.environ["LOCALLLM_RESULT_CACHE"] = "0"\n%load_ext jupyter_localllm',
    # 1
    "%llm load default",
    # 2: highlighted as a prompt (never run)
    "%%llm -m default --max-tokens 20\n# Task\nSay {greeting} for me in **one** word, as {{json}}.",
    # 3: highlighted as Python (never run)
    "for word in ['a', 'b']:\n    print(word)  # a comment",
    # 4: a background run of ROWS rows
    "import pandas as pd\n"
    f"df = pd.DataFrame({{'text': [f'Count from {{i}} to {{i + 30}}.' for i in range({ROWS})]}})\n"
    "job = df.llm.generate('{text}', max_tokens=48, background=True)",
    # 5: what the kernel kept
    "print(f'status={job.status} kept={len(job.partial())} total={job.total}')",
    # 6: the models the kernel holds
    "%llm models",
    # 7: a foreground run, stopped from the popup by interrupting the kernel
    "from jupyter_localllm.errors import BatchInterrupted\n"
    "try:\n"
    "    df.llm.generate('{text}', max_tokens=48)\n"
    "except BatchInterrupted as stop:\n"
    "    kept = sum(r.ok for r in stop.results)\n"
    "    print(f'interrupted kept={kept} of {len(stop.results)}')",
    # 8: a kernel whose jupyter-localllm speaks protocol 1 (an older install) opens its comm
    "import comm\n"
    "from jupyter_localllm.notebook.comm import close_comms\n"
    "close_comms()\n"
    "old = comm.create_comm(target_name='jupyter_localllm',"
    " data={'type': 'state', 'protocol': 1, 'models': [], 'jobs': []})",
]


@pytest.fixture(scope="module")
def page() -> Iterator[object]:
    """A page with the test notebook open in a JupyterLab of its own (nothing run yet)."""
    with browser.notebook_page("labext-", "labextension.ipynb", CELLS) as tab:
        yield tab


def token_classes(page, index: int) -> dict[str, set[str]]:
    """The classes CodeMirror put on the tokens of cell ``index``'s editor: {text: classes}."""
    return page.evaluate(
        """index => {
          const panel = '.jp-NotebookPanel:not(.lm-mod-hidden)';
          const cell = document.querySelectorAll(`${panel} .jp-Cell`)[index];
          const found = {};
          for (const span of cell.querySelectorAll('.cm-content .cm-line span')) {
            const names = [...span.classList];
            if (names.length) (found[span.textContent] ??= []).push(...names);
          }
          return found;
        }""",
        index,
    )


def llm_classes(classes: dict[str, list[str]]) -> set[str]:
    return {c for names in classes.values() for c in names if c.startswith("cm-llm-")}


def status_text(page) -> str:
    item = page.locator(STATUS)
    return item.inner_text() if item.is_visible() else ""


def wait_for_status(page, pattern: re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
    """Wait until the status item's text matches ``pattern``; the match."""
    deadline = time.monotonic() + timeout
    while True:
        text = status_text(page)
        found = pattern.search(text)
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"status bar still {text!r} after {timeout:.0f} s, not {pattern}")
        page.wait_for_timeout(100)


def test_llm_cell_highlighted_as_a_prompt(page) -> None:
    """The %%llm cell's magic line reads as a command line and its body as a Markdown prompt
    with placeholders; the Python cell reads as Python, with none of those classes."""
    llm = token_classes(page, 2)
    assert "cm-llm-magic" in llm["%%llm"]
    assert "cm-llm-flag" in llm["-m"] and "cm-llm-flag" in llm["--max-tokens"]
    assert "cm-llm-alias" in llm["default"]
    assert "cm-llm-value" in llm["20"]
    assert "cm-llm-heading" in llm["# Task"]
    assert "cm-llm-placeholder" in llm["{greeting}"]
    assert "cm-llm-strong" in llm["**one**"]
    assert "cm-llm-escape" in llm["{{"]
    assert "for" not in llm, "prose in a prompt is not Python: 'for' is no keyword there"
    python = token_classes(page, 3)
    assert llm_classes(python) == set()
    assert "for" in python and "print" in python, python  # Python tokens get Python's classes
    shot = browser.screenshot(browser.cell(page, 2), "llm-cell-highlighting")
    assert shot.stat().st_size > 1000


def test_cell_returns_to_python_when_the_magic_goes(page) -> None:
    """Editing the first line away from %%llm turns the cell back into Python; undo restores."""
    editor = browser.cell(page, 2).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+Home")
    page.keyboard.press("Shift+End")
    page.keyboard.type("import this")
    page.wait_for_timeout(300)
    classes = token_classes(page, 2)
    assert llm_classes(classes) == set(), classes
    assert "import" in classes  # a Python keyword again
    page.keyboard.press("Control+z")
    page.wait_for_timeout(300)
    assert "cm-llm-magic" in token_classes(page, 2).get("%%llm", [])
    page.keyboard.press("Escape")


def test_status_bar_names_the_model_after_load_ext(page) -> None:
    """Hidden before %load_ext; then "no model loaded"; after %llm load default, the model."""
    assert not page.locator(STATUS).is_visible()
    browser.run_cell(page, 0, timeout=120)
    wait_for_status(page, re.compile("no model loaded"), timeout=30)
    browser.run_cell(page, 1, timeout=120)
    assert browser.cell_errors(page) == []
    wait_for_status(page, re.compile(r"^🦙 SmolLM2-135M-Instruct$"), timeout=30)


def test_status_bar_follows_a_background_job(page) -> None:
    """During a 200-row background run the status item shows the rows advancing, with a rate."""
    browser.run_cell(page, 4, timeout=60)
    assert browser.cell_errors(page) == []
    pattern = re.compile(rf"SmolLM2-135M-Instruct · ([\d,]+)/{ROWS} rows")
    seen = [int(wait_for_status(page, pattern, timeout=60).group(1).replace(",", ""))]
    later = re.compile(rf"· ([\d,]+)/{ROWS} rows · \d+ tok/s")
    deadline = time.monotonic() + 120
    while seen[-1] < 20:  # well under way (the screenshot shows a run in progress)
        found = later.search(status_text(page))
        if found and int(found.group(1).replace(",", "")) > seen[-1]:
            seen.append(int(found.group(1).replace(",", "")))
        assert time.monotonic() < deadline, f"rows did not advance past {seen[-1]}"
        page.wait_for_timeout(100)
    assert len(seen) >= 2 and seen == sorted(seen), seen
    assert seen[-1] < ROWS, "the run ended before it could be cancelled"
    browser.screenshot(page.locator("#jp-main-statusbar"), "status-bar")


def test_cancel_in_the_popup_stops_the_job_within_2s(page) -> None:
    """The popup lists the job with a Cancel button; a click stops it within 2 s, and the
    kernel keeps the finished rows."""
    page.locator(STATUS).click()
    popup = page.locator(".jp-LocalLLM-popup")
    popup.wait_for(timeout=10_000)
    job = popup.locator(".jp-LocalLLM-job-running").first
    job.wait_for(timeout=10_000)
    assert re.search(rf"generate · [\d,]+/{ROWS} rows", job.inner_text())
    assert browser.text_problems(popup) == []
    browser.screenshot(popup, "status-popup")
    clicked = time.monotonic()
    job.get_by_role("button", name="Cancel").click()
    popup.locator(".jp-LocalLLM-job-cancelled").first.wait_for(timeout=30_000)
    elapsed = time.monotonic() - clicked
    assert elapsed < CANCEL_WITHIN_S, f"the job stopped {elapsed:.2f} s after the click"
    print(f"Cancel: the popup said 'cancelled' {elapsed:.2f} s after the click")
    page.keyboard.press("Escape")
    output = browser.run_cell(page, 5).inner_text()
    found = re.search(r"status=cancelled kept=(\d+) total=(\d+)", output)
    assert found, output
    assert 0 < int(found.group(1)) < int(found.group(2)) == ROWS
    wait_for_status(page, re.compile(r"^🦙 SmolLM2-135M-Instruct$"), timeout=10)


def test_load_model_from_the_command_palette(page) -> None:
    """LocalLLM: Load model… lists the kernel's models in a dialog; choosing gemma loads it."""
    page.keyboard.press("Control+Shift+c")
    palette = page.locator("#command-palette")
    palette.wait_for(timeout=10_000)
    page.keyboard.type("Load model")
    palette.get_by_text("Load model…").first.click()
    dialog = page.locator(".jp-Dialog")
    choice = dialog.locator("select.jp-LocalLLM-choice")
    choice.wait_for(timeout=60_000)
    refs = choice.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert "default" in refs and "gemma-3-270m" in refs, refs
    choice.select_option("gemma-3-270m")
    browser.screenshot(dialog.locator(".jp-Dialog-content"), "load-model-dialog")
    dialog.get_by_role("button", name="Load").click()
    wait_for_status(page, re.compile(r"^🦙 SmolLM2-135M-Instruct \+1$"), timeout=120)
    assert "gemma-3-270m" in page.locator(STATUS).get_attribute("title")
    output = browser.run_cell(page, 6).inner_text()
    assert "gemma-3-270m" in output


def test_interrupt_in_the_popup_stops_a_running_cell(page) -> None:
    """A foreground run shows in the status bar too; its Interrupt button interrupts the
    kernel, and the cell gets BatchInterrupted with the finished rows."""
    browser.cell(page, 7).locator(".jp-InputPrompt").click()
    page.keyboard.press("Control+Enter")  # not waiting: the cell runs until interrupted
    wait_for_status(page, re.compile(rf"· ([1-9][\d,]*)/{ROWS} rows"), timeout=120)
    page.locator(STATUS).click()
    popup = page.locator(".jp-LocalLLM-popup")
    job = popup.locator(".jp-LocalLLM-job-running").first
    job.wait_for(timeout=10_000)
    job.get_by_role("button", name="Interrupt").click()
    found = browser.wait_for_text(
        browser.cell_output(page, 7), re.compile(r"interrupted kept=\d+ of \d+"), timeout=30
    )
    kept, total = map(int, re.findall(r"\d+", found.inner_text()))
    assert 0 < kept < total == ROWS
    page.keyboard.press("Escape")
    browser.wait_for_kernel_idle(page)


def test_a_kernel_in_another_protocol_version_is_refused_visibly(page) -> None:
    """A comm opened with a protocol-1 state: the extension reads nothing of it, the status
    item names both versions in the error colour (its tooltip says what to do) and a
    notification says it."""
    browser.run_cell(page, 8, timeout=60)
    assert browser.cell_errors(page) == []
    found = wait_for_status(
        page, re.compile(r"jupyter-localllm: kernel protocol 1, extension (\d+): reinstall")
    )
    assert int(found.group(1)) > 1
    item = page.locator(STATUS)
    assert "jp-LocalLLM-refused" in item.get_attribute("class")
    title = item.get_attribute("title")
    assert "speaks protocol 1" in title and "restart the kernel and reload the page" in title
    toast = page.locator(".jp-toast-message", has_text="speaks protocol 1")
    toast.first.wait_for(timeout=10_000)


def test_show_dashboard_from_the_menu(page) -> None:
    """LocalLLM › Show dashboard inserts a %llm panel cell below the active one and runs it."""
    cells = browser.notebook(page).locator(".jp-Cell")
    before = cells.count()
    page.get_by_role("menuitem", name="LocalLLM", exact=True).click()
    page.get_by_role("menuitem", name="Show dashboard", exact=True).click()
    deadline = time.monotonic() + 30
    while cells.count() == before:
        assert time.monotonic() < deadline, "no cell was inserted"
        page.wait_for_timeout(100)
    new = browser.notebook(page).locator(".jp-Cell", has_text="%llm panel").first
    browser.wait_for_text(new.locator(".jp-OutputArea"), "Hardware", timeout=60)
