"""Execute notebooks headless and write them as HTML under ``notebooks/_build/``.

``python notebooks/build.py [NOTEBOOK ...]`` (default: parallel_processing.ipynb) runs each
notebook in a fresh kernel with the notebook's folder as working directory, saves the executed
copy as ``_build/<name>.html`` and ``_build/<name>.ipynb``, and prints the output of the cells
tagged ``summary`` (the figures the notebook measured). Exits non-zero when a cell fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

HERE = Path(__file__).resolve().parent
BUILD = HERE / "_build"


def build(path: Path) -> int:
    """Execute ``path``, write its HTML and executed copy, print its summary; 0 when it ran."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    t0 = time.perf_counter()
    status = 0
    try:
        client.execute()
    except CellExecutionError as exc:
        print(f"{path.name}: a cell failed:\n{exc}", file=sys.stderr)
        status = 1
    BUILD.mkdir(exist_ok=True)
    nbformat.write(nb, BUILD / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    out = BUILD / f"{path.stem}.html"
    out.write_text(html, encoding="utf-8")
    print(f"{path.name}: executed in {time.perf_counter() - t0:.0f} s -> {out}")
    for cell in nb.cells:
        if "summary" in cell.metadata.get("tags", []):
            for output in cell.get("outputs", []):
                print(output.get("text", ""), end="")
    return status


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or [HERE / "parallel_processing.ipynb"]
    return max(build(p.resolve()) for p in paths)


if __name__ == "__main__":
    sys.exit(main())
