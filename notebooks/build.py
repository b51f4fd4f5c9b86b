"""Execute notebooks headless and write them as HTML under ``notebooks/_build/``.

``python notebooks/build.py [NOTEBOOK ...] [--out FOLDER]`` (default:
parallel_processing.ipynb, into ``notebooks/_build/``) runs each notebook in a fresh kernel with
the notebook's folder as working directory, saves the executed copy as ``<name>.ipynb`` and
``<name>.html``, prints the output of the cells tagged ``summary`` (the figures the notebook
measured) and last the HTML's path. Exits non-zero when a cell fails.

The HTML shows the widget panels (progress, hardware) with the network off: the widgets' state
is stored while the notebook runs, and the widget manager that draws them,
``@jupyter-widgets/html-manager``'s self-contained ``dist/embed.js``, is inlined into the page
instead of nbconvert's script tags that load it and require.js from a CDN. The manager is the
one released with the installed ipywidgets (the version whose ``@jupyter-widgets/base``,
``controls`` and ``output`` dependencies are those of the installed JupyterLab widget manager);
it comes from the npm registry through ``npm`` once and is cached in ``_build/widgets/``.
Without npm or the registry the HTML loads it from the CDN as nbconvert does, and a note says
so. Panels use only ipywidgets' own models, which this manager renders; charts are PNG outputs.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import nbformat
from jinja2 import DictLoader
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

HERE = Path(__file__).resolve().parent
BUILD = HERE / "_build"
WIDGETS = BUILD / "widgets"  # the cached widget manager (git-ignored with _build/)
MANAGER = "@jupyter-widgets/html-manager"
LAB_MANAGER = Path(sys.prefix) / "share/jupyter/labextensions/@jupyter-widgets/jupyterlab-manager"
SHARED_DEPS = ("@jupyter-widgets/base", "@jupyter-widgets/controls", "@jupyter-widgets/output")

# nbconvert's lab template without its CDN scripts: require.js (the inlined manager does not
# need it), MathJax and Mermaid (these notebooks have no formulas or diagrams) and the manager
# loader, replaced by the manager itself. A data: URL rather than an inline script: the bundle
# finds its own address from its script tag and stops on one that has none.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}
{%- if "widgets" in nb.metadata -%}
<script src="data:text/javascript;base64,{{ resources.widget_manager }}"></script>
{%- endif -%}
{% endblock jupyter_widgets %}
"""


class ManagerUnavailable(RuntimeError):
    """The offline widget manager could not be found or fetched (the message says why)."""


def _npm(*args: str, cwd: Path | None = None) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise ManagerUnavailable("npm is not installed (it fetches the widget manager once)")
    done = subprocess.run(
        [npm, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ManagerUnavailable(f"`npm {' '.join(args)}` failed: {' / '.join(tail)}")
    return done.stdout


def _manager_version(wanted: dict[str, str]) -> str:
    """The newest html-manager whose widget dependencies are ``wanted`` (one registry query)."""
    listing = json.loads(_npm("view", f"{MANAGER}@*", "version", "dependencies", "--json"))
    listing = listing if isinstance(listing, list) else [listing]
    matches = [
        x["version"]
        for x in listing
        if {k: x.get("dependencies", {}).get(k) for k in SHARED_DEPS} == wanted
    ]
    if not matches:
        raise ManagerUnavailable(f"no {MANAGER} release depends on {wanted}")
    return max(matches, key=lambda v: [int(p) if p.isdigit() else -1 for p in v.split(".")])


def widget_manager() -> Path:
    """``dist/embed.js`` of the html-manager released with the installed ipywidgets: from the
    cache, else fetched with ``npm pack`` (which checks the registry's checksum) and cached."""
    try:
        lab = json.loads((LAB_MANAGER / "package.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManagerUnavailable(f"jupyterlab_widgets is not installed ({exc})") from exc
    cached = WIDGETS / f"for-jupyterlab-manager-{lab['version']}" / "embed.js"
    if cached.is_file():
        return cached
    version = _manager_version({k: lab["dependencies"].get(k) for k in SHARED_DEPS})
    with tempfile.TemporaryDirectory() as tmp:
        _npm("pack", f"{MANAGER}@{version}", "--silent", cwd=Path(tmp))
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            for name in ("embed.js", "embed.js.LICENSE.txt"):
                member = tar.extractfile(f"package/dist/{name}")
                if member is None:
                    raise ManagerUnavailable(f"{MANAGER}@{version} has no dist/{name}")
                cached.parent.mkdir(parents=True, exist_ok=True)
                (cached.parent / name).write_bytes(member.read())
    (cached.parent / "VERSION").write_text(f"{MANAGER}@{version}\n", encoding="utf-8")
    return cached


def to_html(nb: nbformat.NotebookNode) -> str:
    """``nb`` as a standalone HTML page whose widgets render offline (see the module doc)."""
    try:
        manager = base64.b64encode(widget_manager().read_bytes()).decode("ascii")
    except (ManagerUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        print(f"note: the HTML loads the widget manager from a CDN: {exc}", file=sys.stderr)
        return HTMLExporter().from_notebook_node(nb)[0]
    exporter = HTMLExporter(
        extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="offline.html.j2",
    )
    return exporter.from_notebook_node(nb, resources={"widget_manager": manager})[0]


def build(path: Path, out: Path = BUILD) -> int:
    """Execute ``path``, write its HTML and executed copy into ``out``, print its summary and
    the HTML's path; 0 when every cell ran."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
    )
    t0 = time.perf_counter()
    status = 0
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"{path.name}: a cell failed:\n{exc}", file=sys.stderr)
        status = 1
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / path.name)
    html = out / f"{path.stem}.html"
    html.write_text(to_html(nb), encoding="utf-8")
    print(f"{path.name}: executed in {seconds:.0f} s")
    for cell in nb.cells:
        if "summary" in cell.metadata.get("tags", []):
            for output in cell.get("outputs", []):
                print(output.get("text", ""), end="")
    print(f"HTML: {html}")
    return status


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=BUILD, help="folder for the HTML and copy")
    args = parser.parse_args(argv)
    paths = args.notebooks or [HERE / "parallel_processing.ipynb"]
    return max(build(p.resolve(), args.out.resolve()) for p in paths)


if __name__ == "__main__":
    sys.exit(main())
