"""A real JupyterLab, driven by Playwright in Debian's Chromium (helpers in ``browser.py``).

One JupyterLab server and one Chromium serve the whole module. The widget plumbing tests run a
notebook written here: an ``IntProgress`` fed from a background thread must reach its maximum
in the browser, and a click on its Cancel button must reach the kernel and stop the thread
within 2 s. The panel tests stop a background ``generate_parallel`` job with its panel's
Cancel button (within 2 s), and run ``notebooks/quickstart.ipynb`` cell by cell, saving the
progress, hardware, model and confusion-matrix screenshots in ``docs/screenshots/`` and
failing on text that is cut off or drawn over other text. They skip, saying what they wait
for, while the widgets, the API or the notebook are missing.

Everything skips, with the reason, where Chromium, Playwright or JupyterLab are missing
(``make test`` installs Chromium itself when it runs as root with apt-get).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import browser
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing())),
]

CANCEL_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def lab() -> Iterator[browser.Lab]:
    """A JupyterLab server on 127.0.0.1 serving the repository, for this module."""
    with browser.start_lab() as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright."""
    with browser.launch_chromium() as b:
        yield b


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder under ``notebooks/_build/`` for the notebooks this module writes (removed
    afterwards; screenshots of these notebooks go to ``browser.TEST_SHOTS``)."""
    folder = browser.scratch_folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# The widget plumbing notebook. Cell 0 checks which kernel runs and defines `panel`: a progress
# bar, a "done/total" label and a Cancel button; a background thread advances the bar every
# `delay` seconds until `total`, or stops when the button's click reaches the kernel.
PLUMBING_CELLS = [
    """\
import sys, threading
import ipywidgets as w
import jupyter_localllm
print("kernel:", sys.executable)
print("package:", jupyter_localllm.__file__)

def panel(total, delay):
    stop = threading.Event()
    bar = w.IntProgress(value=0, min=0, max=total, description="rows")
    label = w.Label(f"0/{total}")
    button = w.Button(description="Cancel")
    button.on_click(lambda _: stop.set())

    def run():
        for i in range(1, total + 1):
            if stop.wait(delay):
                label.value = f"cancelled at {bar.value}/{total}"
                return
            bar.value = i
            label.value = f"{i}/{total}"
        label.value = f"done {total}/{total}"

    threading.Thread(target=run, daemon=True).start()
    return w.HBox([bar, label, button])
""",
    "panel(20, 0.05)",
    "panel(100_000, 0.05)",
    """\
w.VBox([
    w.IntText(description="a_description_far_too_long_for_its_label"),
    w.HTML("<span>first words</span><span style='margin-left:-3em'>drawn over</span>"),
])""",
]


@pytest.fixture(scope="module")
def plumbing(lab: browser.Lab, chromium, scratch: Path):
    """A page with the widget plumbing notebook open and its first cell run."""
    path = browser.write_notebook(scratch / "widget_plumbing.ipynb", PLUMBING_CELLS)
    page = chromium.new_page(viewport=browser.VIEWPORT)
    browser.open_notebook(page, lab, path)
    output = browser.run_cell(page, 0, timeout=120)
    assert browser.cell_errors(page) == [], lab.log_tail()
    yield page, output.inner_text()
    page.close()


def test_kernel_is_this_environment(plumbing) -> None:
    """The notebook's kernel is this interpreter, with this checkout's package importable."""
    _, text = plumbing
    assert f"kernel: {sys.executable}" in text
    assert f"package: {browser.REPO_ROOT / 'jupyter_localllm' / '__init__.py'}" in text


def test_progress_widget_reaches_max(plumbing) -> None:
    """A progress bar fed from a background thread renders and reaches its maximum."""
    page, _ = plumbing
    output = browser.run_cell(page, 1)
    box = output.locator(".widget-hbox").first
    box.wait_for(timeout=30_000)
    browser.wait_for_text(box, "done 20/20", timeout=30)
    assert browser.progress_fraction(box) == 1.0
    assert box.get_by_role("button", name="Cancel").is_visible()
    assert browser.text_problems(box) == []
    shot = browser.screenshot(box, "widget-plumbing", browser.TEST_SHOTS)
    assert shot.stat().st_size > 1000


def test_cancel_click_reaches_kernel_within_2s(plumbing) -> None:
    """Clicking Cancel stops the kernel's background thread, seen in the browser within 2 s."""
    page, _ = plumbing
    output = browser.run_cell(page, 2)
    box = output.locator(".widget-hbox").first
    browser.wait_for_text(box, re.compile(r"^[1-9]\d*/100000$"), timeout=30)
    clicked = time.monotonic()
    box.get_by_role("button", name="Cancel").click()
    stopped = browser.wait_for_text(box, re.compile(r"^cancelled at \d+/100000$"), timeout=30)
    elapsed = time.monotonic() - clicked
    assert elapsed < CANCEL_WITHIN_S, f"the kernel saw the click after {elapsed:.2f} s"
    # The thread has stopped: nothing moves any more.
    text, fraction = stopped.inner_text(), browser.progress_fraction(box)
    assert 0 < fraction < 1
    page.wait_for_timeout(500)
    assert (stopped.inner_text(), browser.progress_fraction(box)) == (text, fraction)


def test_text_problems_are_found(plumbing) -> None:
    """``text_problems`` (used on the panels' screenshots) finds a clipped label and two
    texts drawn over each other."""
    page, _ = plumbing
    output = browser.run_cell(page, 3)
    box = output.locator(".widget-vbox").first
    box.wait_for(timeout=30_000)
    assert browser.text_problems(box) == [
        "cut off: a_description_far_too_long_for_its_label",
        "overlap: first words / drawn over",
    ]


# --- the real panels: a background job's Cancel, and notebooks/quickstart.ipynb -------------

QUICKSTART = browser.REPO_ROOT / "notebooks" / "quickstart.ipynb"
ROWS = re.compile(r"(\d+)/(\d+) rows")


def waiting_for(*, quickstart: bool = False) -> str | None:
    """What the panel tests still wait for (the widgets, the API, the notebook), or ``None``."""
    if importlib.util.find_spec("jupyter_localllm.notebook.widgets") is None:
        return "waiting for jupyter_localllm.notebook.widgets (ProgressPanel, HardwarePanel, ...)"
    import jupyter_localllm

    for name in ("dashboard", "generate_parallel"):
        if not hasattr(jupyter_localllm, name):
            return f"waiting for jupyter_localllm.{name}"
    if quickstart and not QUICKSTART.is_file():
        return f"waiting for {QUICKSTART.relative_to(browser.REPO_ROOT)}"
    return None


def progress_panel(scope) -> object:
    """The (last) ProgressPanel under ``scope``: the innermost box with a bar and "N/M rows"."""
    return browser.innermost(scope, ".widget-vbox:has(.widget-hprogress)", ROWS)


def rows_shown(panel) -> tuple[int, int]:
    """The panel's "done/total rows" numbers."""
    match = ROWS.search(panel.inner_text())
    assert match is not None, f"no 'done/total rows' in {panel.inner_text()!r}"
    return int(match.group(1)), int(match.group(2))


JOB_CELLS = [
    """\
import jupyter_localllm as ll
model = ll.model_load("default")
ctx = ll.context_create(model, n_seq_max=4)
prompts = [
    ll.apply_chat_template(model, [{"role": "user", "content": f"Count from {i} to {i + 60}."}])
    for i in range(400)
]
""",
    "job = ll.generate_parallel(ctx, prompts, max_tokens=64, background=True)\njob",
    "print(f'status={job.status} done={job.done()} kept={len(job.partial())}')",
]


def test_cancel_button_stops_background_job_within_2s(lab, chromium, scratch: Path) -> None:
    """Clicking Cancel on a background job's panel stops the job within 2 s: the panel says
    "cancelled", its rows stop moving, and the kernel's job agrees."""
    reason = waiting_for()
    if reason:
        pytest.skip(reason)
    path = browser.write_notebook(scratch / "cancel_job.ipynb", JOB_CELLS)
    page = chromium.new_page(viewport=browser.VIEWPORT)
    try:
        browser.open_notebook(page, lab, path)
        browser.run_cell(page, 0, timeout=120)
        output = browser.run_cell(page, 1)
        assert browser.cell_errors(page) == []
        panel = progress_panel(output)
        browser.wait_for_text(panel, re.compile(r"^[1-9]\d*/400 rows"), timeout=60)
        cancel = panel.get_by_role("button", name="Cancel")
        clicked = time.monotonic()
        cancel.click()
        browser.wait_for_text(panel, "cancelled", timeout=30)
        elapsed = time.monotonic() - clicked
        assert elapsed < CANCEL_WITHIN_S, f"the job stopped {elapsed:.2f} s after the click"
        print(f"Cancel: the panel said 'cancelled' {elapsed:.2f} s after the click")
        done, total = rows_shown(panel)
        assert 0 < done < total == 400
        page.wait_for_timeout(1000)
        assert rows_shown(panel) == (done, total)
        kernel = browser.run_cell(page, 2).inner_text()
        assert re.search(r"status=cancelled done=True kept=\d+", kernel), kernel
        assert browser.screenshot(panel, "cancelled-job", browser.TEST_SHOTS).stat().st_size > 1000
    finally:
        page.close()


def confusion_view(scope):
    """The confusion matrix shown under ``scope``: the first chart of an AccuracyPanel's tabs,
    or, for a ValidationReport's HTML, the row (table and charts) after "Confusion: NAME"."""
    image = scope.locator(".widget-tab img, .jupyter-widget-tab img")
    if image.count():
        return image.first
    heading = scope.get_by_role("heading", name=re.compile(r"^Confusion")).first
    return heading.locator("xpath=following-sibling::div[1]")


def run_quickstart(
    page, lab: browser.Lab, path: Path, shots: Path
) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Run the notebook at ``path`` cell by cell, check its panels and save their screenshots
    in ``shots``; the screenshots by name, and each screenshot's unreadable text (see
    :func:`browser.text_problems`; checked after all are saved, so all can be looked at)."""
    browser.open_notebook(page, lab, path)
    saved: dict[str, Path] = {}
    problems: dict[str, list[str]] = {}

    def shoot(target, name: str) -> None:
        saved[name] = browser.screenshot(target, name, shots)
        problems[name] = browser.text_problems(target)

    for index in browser.code_cells(page):
        output = browser.run_cell(page, index, timeout=300)
        assert browser.cell_errors(page) == [], f"cell {index} failed"
        if progress_panel(output).count():
            # A batch cell: its panel fills up (a background job may still be running). The
            # last batch's panel is the screenshot.
            panel = progress_panel(output)
            browser.wait_for_text(panel, re.compile(r"^(\d+)/\1 rows"), timeout=300)
            assert browser.progress_fraction(panel) == 1.0
            done, total = rows_shown(panel)
            assert done == total > 0
            shoot(panel, "progress-panel")
    assert saved, "no cell showed a ProgressPanel"

    nb = browser.notebook(page)
    hardware = browser.innermost(nb, ".widget-vbox", re.compile(r"^Hardware$"))
    browser.wait_for_text(hardware, re.compile(r"CPU \d+% · RAM \d+\.\d/\d+\.\d GB"), timeout=30)
    page.wait_for_timeout(2000)  # a few samples in the sparkline
    shoot(hardware, "hardware-panel")

    models = browser.innermost(nb, ".widget-vbox", re.compile(r"^Models$"))
    # (an icon's glyph comes first in a button's accessible name)
    assert models.get_by_role("button", name=re.compile(r"(^|\s)Load$")).is_visible()
    assert "No model loaded" not in models.inner_text(), "the model panel shows no model"
    shoot(models, "model-panel")

    assert re.search(r"0\.\d{3}|1\.000", nb.inner_text()), "no metrics shown"
    confusion = confusion_view(nb)
    confusion.wait_for(timeout=30_000)
    shoot(confusion, "confusion-matrix")
    return saved, problems


def test_quickstart_notebook_and_panel_screenshots(lab, chromium) -> None:
    """``notebooks/quickstart.ipynb`` runs cell by cell without errors; its batch's
    ProgressPanel reaches 100%; the hardware, model and accuracy panels show real numbers.
    Saves docs/screenshots/{progress-panel,hardware-panel,model-panel,confusion-matrix}.png
    (look at them before committing them)."""
    reason = waiting_for(quickstart=True)
    if reason:
        pytest.skip(reason)
    page = chromium.new_page(viewport=browser.VIEWPORT)
    try:
        saved, problems = run_quickstart(page, lab, QUICKSTART, browser.SCREENSHOTS)
        assert sorted(saved) == [
            "confusion-matrix",
            "hardware-panel",
            "model-panel",
            "progress-panel",
        ]
        assert all(p.stat().st_size > 1000 for p in saved.values())
        assert {name: found for name, found in problems.items() if found} == {}
    finally:
        page.close()
