"""The HTML that ``make demo`` writes shows its panels with the network off: ``notebooks/build.py``
stores the widgets' state while the notebook runs and inlines the widget manager, so the page
opened from disk in Chromium, every non-file request aborted, draws the progress panel and the
hardware panel; charts are PNG outputs. A small notebook with the demo's kinds of panels stands
in for the demo (which takes minutes); the same notebook exported as nbconvert does by default
draws no panel offline, which shows that the check can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import launch_chromium, missing, scratch_folder, write_notebook
from conftest import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "notebooks" / "build.py"
CACHED_MANAGER = REPO_ROOT / "notebooks" / "_build" / "widgets"

CELLS = [
    "import pandas as pd\n"
    "from IPython.display import display\n"
    "import jupyter_localllm as ll\n"
    'model = ll.model_load("default")\n'
    "ctx = ll.context_create(model, n_seq_max=2)",
    # the hardware panel during a run, and the run's progress panel
    "hardware = ll.HardwarePanel(interval=0.2)\n"
    "display(hardware)\n"
    'prompts = ["Name a fruit.", "Name a colour."]\n'
    "results = ll.generate_parallel(ctx, prompts, max_tokens=8, progress=True, cache=False)\n"
    "hardware.stop()",
    # the confusion matrix as the demo draws it
    'gold = ["World", "Sports", "World", "Sports", "World"]\n'
    'pred = ["World", "Sports", "Sports", "Sports", "World"]\n'
    "report = ll.validate(pd.DataFrame(\n"
    '    {"sample_id": range(5), "model_id": "m", "label": pred, "truth": gold}\n'
    "))\n"
    'display(report.figures()["confusion: m"])',
]


def _unavailable() -> str | None:
    why = missing()
    if why is None and shutil.which("npm") is None and not any(CACHED_MANAGER.glob("*/embed.js")):
        why = "npm is not installed: notebooks/build.py fetches @jupyter-widgets/html-manager once"
    return why


@pytest.fixture(scope="module")
def built() -> Iterator[Path]:
    """The small notebook executed and exported by notebooks/build.py; its output folder."""
    why = _unavailable()
    if why:
        pytest.skip(why)
    folder = scratch_folder("demo-html-")
    nb = write_notebook(folder / "panels.ipynb", CELLS)
    done = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), str(nb), "--out", str(folder / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if "loads the widget manager from a CDN" in done.stderr:
        pytest.skip(f"the widget manager could not be fetched: {done.stderr.strip()}")
    assert done.stdout.strip().splitlines()[-1] == f"HTML: {folder / 'out' / 'panels.html'}"
    yield folder / "out"
    shutil.rmtree(folder, ignore_errors=True)


def _open_offline(browser, html: Path):
    """``html`` opened from disk with every request but file: and data: aborted; the page and
    the list of aborted addresses."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    aborted: list[str] = []

    def route(r):
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            aborted.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    return page, aborted


def test_the_html_loads_nothing_from_a_network(built: Path):
    html = (built / "panels.html").read_text(encoding="utf-8")
    assert 'type="application/vnd.jupyter.widget-state+json"' in html
    assert html.count('type="application/vnd.jupyter.widget-view+json"') == 2
    assert '<script src="http' not in html and "require.min.js" not in html
    assert '<script src="data:text/javascript;base64,' in html


def test_panels_and_chart_render_offline(built: Path):
    with launch_chromium() as browser:
        page, aborted = _open_offline(browser, built / "panels.html")
        bar = page.locator(".widget-hprogress .progress-bar")
        bar.wait_for(timeout=30_000)
        assert "progress-bar-success" in bar.get_attribute("class")  # the run finished
        assert bar.bounding_box()["width"] > 100
        assert page.locator(".widget-html", has_text="2/2 rows").count() == 1
        hardware = page.locator(".widget-vbox", has=page.locator("text=Hardware")).last
        assert "kernel RSS" in hardware.inner_text()
        assert hardware.locator("svg text", has_text="CPU").count() == 1  # the sparkline
        chart = page.locator(".jp-OutputArea-output img[src^='data:image/png']")
        assert chart.count() == 1
        assert page.evaluate("(img) => img.naturalWidth", chart.element_handle()) > 200
        assert aborted == []


def test_the_default_export_shows_no_panel_offline(built: Path):
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(built / "panels.ipynb", as_version=4)
    plain = built / "plain.html"
    plain.write_text(HTMLExporter().from_notebook_node(nb)[0], encoding="utf-8")
    with launch_chromium() as browser:
        page, aborted = _open_offline(browser, plain)
        page.wait_for_timeout(2000)
        assert page.locator(".widget-hprogress").count() == 0
        assert any("html-manager" in url for url in aborted), aborted
