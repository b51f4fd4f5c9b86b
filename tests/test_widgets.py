"""Widgets without a front-end (ipywidgets 8 on comm's no-op comm): panels build, draw the
session's state and events, throttle their updates, and their threads stop. Charts are
checked by rendering them."""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import place

import jupyter_localllm as ll
from jupyter_localllm import models
from jupyter_localllm.analysis import charts
from jupyter_localllm.notebook.progress import live
from jupyter_localllm.notebook.widgets import hardware as hw
from jupyter_localllm.notebook.widgets.progress import format_seconds, recent_panels
from jupyter_localllm.session.manager import get_manager
from jupyter_localllm.session.sinks import TqdmSink, make_sink

LONG = pd.DataFrame(
    {
        "sample_id": list(range(6)) * 2,
        "model_id": ["m1"] * 6 + ["m2"] * 6,
        "label": ["World", "Sports", "Business", "Sci/Tech", "World", "Sports"] + ["World"] * 6,
        "truth": ["World", "Sports", "Business", "Sci/Tech", "Sports", "World"] * 2,
    }
)


_WIDGET = "application/vnd.jupyter.widget-view+json"


def _wait_for(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


# -- progress ----------------------------------------------------------------------------
def test_progress_panel_draws_events_and_ends_green_or_red():
    panel = ll.ProgressPanel(10, "generate", min_interval=0)
    assert panel.cancel_button.layout.display == "none"  # no Cancel without a job
    panel(ll.Progress(done=4, total=10, errors=1, generated_tokens=200, elapsed=2.0))
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (4, 10, "info")
    text = panel.stats.value
    assert "4/10 rows" in text and "1 errors" in text and "100.0 tok/s" in text
    assert "ETA 0:03" in text and "elapsed 0:02" in text  # 2 s for 4 rows: 3 s for 6 more
    panel(ll.Progress(done=10, total=10, errors=1, generated_tokens=500, elapsed=5.0))
    panel.finish(False)
    assert panel.bar.bar_style == "success" and panel.bar.value == 10
    assert "ETA" not in panel.stats.value and "finished" in panel.stats.value
    assert repr(panel).startswith("generate: 10/10 rows")

    failed = ll.ProgressPanel(3, "classify")
    failed(ll.Progress(1, 3, 0, 0, 1.0))
    failed.finish(True)
    assert failed.bar.bar_style == "danger" and "failed" in failed.stats.value
    assert failed.bar.value == 1  # stays visible with the rows it did


def test_progress_panel_redraws_at_most_ten_times_a_second():
    panel = ll.ProgressPanel(100_000, "generate")
    draws = []
    panel.stats.observe(lambda change: draws.append(change["new"]), "value")
    start = time.monotonic()
    for i in range(20_000):
        panel(ll.Progress(i, 100_000, 0, i, time.monotonic() - start + 1e-6))
    seconds = time.monotonic() - start
    assert len(draws) <= 10 * seconds + 1
    assert panel.bar.value < 19_999  # the latest event is kept, not yet drawn
    panel.finish()
    assert panel.bar.value == 19_999 and "19999/100000 rows" in panel.stats.value


def test_cancel_button_calls_back_once():
    calls = []
    panel = ll.ProgressPanel(5, "job", on_cancel=lambda: calls.append(1))
    assert panel.cancel_button.layout.display != "none"
    panel.cancel_button.click()
    panel.cancel_button.click()
    assert calls == [1] and panel.cancel_button.disabled


def test_text_fallback_outside_a_notebook_kernel():
    assert not live()  # pytest: no ipykernel shell
    sink = make_sink(True, 5, "generate")
    assert isinstance(sink, TqdmSink)
    sink(ll.Progress(5, 5, 0, 10, 1.0))
    sink.close("finished")
    assert make_sink(False, 5) is None
    assert format_seconds(3725) == "1:02:05" and format_seconds(None) == "?"


def test_progress_panel_in_a_real_notebook_kernel():
    """In a Jupyter kernel a batch run shows a ProgressPanel that ends green."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    code = (
        "import jupyter_localllm as ll\n"
        "m = ll.model_load('default')\n"
        "ctx = ll.context_create(m, n_seq_max=2)\n"
        "p = [ll.apply_chat_template(m, [{'role': 'user', 'content': t}]) for t in 'abc']\n"
        "out = ll.generate_parallel(ctx, p, max_tokens=4, cache=False)\n"
        "from jupyter_localllm.notebook.widgets.progress import recent_panels\n"
        "panel = recent_panels()[-1]\n"
        "print(panel.bar.value, panel.bar.max, panel.bar.bar_style)"
    )
    background = "job = ll.generate_parallel(ctx, p, max_tokens=4, background=True)\njob"
    finish = "print(len(job.result()), job.panel.bar.bar_style)\njob"
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in (code, background, finish)]
    )
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3")
    client.execute()

    def views(cell):
        return [o for o in cell.outputs if _WIDGET in o.get("data", {})]

    def printed(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    assert len(views(nb.cells[0])) == 1, nb.cells[0].outputs  # the panel, as a widget
    assert "3 3 success" in printed(nb.cells[0])
    # a background job shows its panel once, though the cell also returns the job
    assert len(views(nb.cells[1])) == 1, nb.cells[1].outputs
    assert "3 success" in printed(nb.cells[2])
    assert len(views(nb.cells[2])) == 1  # shown again in a later cell


# -- models ------------------------------------------------------------------------------
def test_model_panel_lists_loads_and_unloads(model, cache):
    place(models.default_model_path(), cache / "copy-of-smol.gguf")
    panel = ll.ModelPanel()
    options = list(panel.ref.options)
    assert options[:2] == ["default", "gemma-3-270m"] and "copy-of-smol.gguf" in options
    manager = get_manager()
    assert "widget-test" not in manager.aliases
    panel.ref.value, panel.alias.value, panel.n_seq_max.value = "default", "widget-test", 2
    try:
        assert panel.load() is not None
        assert "widget-test" in manager.aliases
        assert "Loaded widget-test" in panel.message.value
        assert "widget-test" in panel.loaded.value and "n_seq_max=2" in panel.loaded.value
        assert "widget-test" in panel.unload_choice.options
        panel.unload_choice.value = "widget-test"
        panel.unload_button.click()
        assert "widget-test" not in manager.aliases
        assert "widget-test" not in panel.loaded.value
    finally:
        if "widget-test" in manager.aliases:
            manager.unload("widget-test")


def test_model_panel_shows_errors_in_red_instead_of_raising():
    panel = ll.ModelPanel()
    panel.ref.value = "no-such-model-anywhere"
    panel.load_button.click()  # must not raise
    assert "color:#c62828" in panel.message.value
    assert "ModelNotFoundError" in panel.message.value
    panel.ref.value, panel.n_gpu_layers.value = "default", "lots"
    assert panel.load() is None
    assert "n_gpu_layers must be" in panel.message.value


# -- hardware ----------------------------------------------------------------------------
def test_hardware_panel_updates_from_its_thread_and_stops_on_close():
    panel = ll.HardwarePanel(interval=0.1)
    try:
        assert panel.running
        _wait_for(lambda: len(panel.history) >= 3)
        u = panel.latest
        assert len(u.cpu_per_core) == psutil.cpu_count()
        assert 0 < u.ram_used < u.ram_total and u.rss > 10 * 2**20
        assert "CPU" in panel.summary.value and "kernel RSS" in panel.summary.value
        assert panel.cores.value.count(">core ") == psutil.cpu_count()
        assert "<polyline" in panel.sparkline.value
        assert panel.gpus.value == ""  # no nvidia-ml-py here
    finally:
        panel.close()
    assert not panel.running
    count = len(panel.history)
    time.sleep(0.35)
    assert len(panel.history) == count  # no more samples after close


def test_hardware_threads_stop_at_exit():
    panels = [ll.HardwarePanel(interval=0.1) for _ in range(2)]
    assert all(p.running for p in panels)
    hw._stop_all()  # what atexit runs
    assert not any(p.running for p in panels)


def test_hardware_panel_draws_gpus_from_nvml(monkeypatch):
    # No GPU can exist on this test machine: a stand-in for nvidia-ml-py's module.
    calls = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"Test GPU",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3 * 2**30, total=8 * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42, memory=10),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    panel = ll.HardwarePanel(autostart=False)
    try:
        assert "GPU 0 Test GPU: 42%" in panel.gpus.value
        assert "VRAM 3.0/8.0 GB" in panel.gpus.value
        assert "GPU0 42%" in panel.sparkline.value
        assert "GPU0 42%" in repr(panel)
    finally:
        panel.close()
    assert calls == ["init", "shutdown"]


# -- charts and accuracy -----------------------------------------------------------------
def _texts_do_not_overlap(fig) -> None:
    """No two pieces of text of ``fig`` overlap, as drawn into a PNG. Level texts are
    compared by their boxes; slanted labels (parallel strips) by the distance between their
    base lines, which must exceed the text height."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)  # what a PNG is drawn with
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [
        t
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and t.get_figure() is not None
    ]
    assert len(texts) > 5
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            angle = a.get_rotation() % 180
            if angle and angle == b.get_rotation() % 180:
                _, height, _ = renderer.get_text_width_height_descent(
                    a.get_text(), a.get_fontproperties(), ismath=False
                )
                (xa, ya), (xb, yb) = (t.get_transform().transform(t.get_position()) for t in (a, b))
                theta = np.radians(angle)
                gap = abs((xb - xa) * np.sin(theta) - (yb - ya) * np.cos(theta))
                assert gap >= height, f"{a.get_text()!r} overlaps {b.get_text()!r}"
            else:
                assert not box_a.overlaps(box_b), f"{a.get_text()!r} overlaps {b.get_text()!r}"


def test_confusion_matrix_figure_writes_counts_legibly():
    matrix = ll.compute_confusion_matrices(LONG)["vs_gold"]["m1"]
    fig = ll.confusion_matrix_figure(matrix, title="m1")
    ax = fig.axes[0]
    cells = [t.get_text() for t in ax.texts]
    assert cells == [str(v) for v in matrix.to_numpy().ravel()]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(matrix.columns)
    _texts_do_not_overlap(fig)
    long_names = matrix.rename(
        index=lambda s: f"{s} (a rather long label)", columns=lambda s: f"{s} (a long label)"
    )
    _texts_do_not_overlap(ll.confusion_matrix_figure(long_names))


def test_per_class_scores_match_sklearn_and_bars_show_them():
    from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

    m1 = LONG[LONG.model_id == "m1"]
    matrix = ll.compute_confusion_matrices(LONG)["vs_gold"]["m1"]
    scores = charts.per_class_scores(matrix)
    p, r, f, s = precision_recall_fscore_support(
        m1.truth, m1.label, labels=list(scores.index), zero_division=0
    )
    np.testing.assert_allclose(scores.precision, p)
    np.testing.assert_allclose(scores.recall, r)
    np.testing.assert_allclose(scores.f1, f)
    assert list(scores.support) == list(s)
    assert charts.kappa_from_confusion(matrix) == pytest.approx(
        cohen_kappa_score(m1.truth, m1.label)
    )
    fig = ll.per_class_figure(matrix)
    heights = [round(b.get_height(), 6) for b in fig.axes[0].patches]
    assert heights == [round(x, 6) for x in [*p, *r]]
    _texts_do_not_overlap(fig)


def test_model_comparison_figure_and_report_html():
    report = ll.validate(LONG)
    assert list(report.metrics.columns) == ["model", "n", "accuracy", "macro_f1", "kappa"]
    fig = ll.model_comparison_figure(report.metrics)
    bars = fig.axes[0].patches
    assert len(bars) == 6  # 2 models x (accuracy, kappa, macro_f1)
    assert bars[0].get_height() == pytest.approx(report.metrics.accuracy[0])
    _texts_do_not_overlap(fig)
    html = report._repr_html_()
    assert html.count("data:image/png;base64,") == 5  # comparison + 2 per model
    assert "<h4>Confusion: m1</h4>" in html
    with pytest.raises(ll.errors.InvalidParameterError, match="model"):
        ll.model_comparison_figure(pd.DataFrame({"x": [1]}))


def test_accuracy_panel_shows_a_tab_per_model():
    panel = ll.AccuracyPanel(ll.validate(LONG))
    assert panel.tabs.titles == ("m1", "m2")
    images = [img for box in panel.tabs.children for img in box.children]
    assert len(images) == 4 and all(img.value[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert panel.comparison.value[:4] == b"\x89PNG"
    assert "0.667" in panel.metrics.value  # m1 gets 4 of 6 right
    with pytest.raises(ll.errors.InvalidParameterError, match="ValidationReport"):
        ll.AccuracyPanel(LONG)


# -- dashboard ---------------------------------------------------------------------------
def test_dashboard_holds_the_panels_and_follows_new_runs():
    board = ll.dashboard(runs=2, hardware_interval=0.2)
    try:
        assert isinstance(board.models, ll.ModelPanel)
        assert board.hardware.running
        runs = [ll.ProgressPanel(1, f"run {i}") for i in range(3)]
        assert list(board.progress.children) == runs[1:]  # the latest two, same widgets
        assert recent_panels()[-1] is runs[-1]
    finally:
        board.close()
    assert not board.hardware.running
    ll.ProgressPanel(1, "after close")
    assert list(board.progress.children) == runs[1:]
