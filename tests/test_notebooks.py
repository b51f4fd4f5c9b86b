"""The notebooks in ``notebooks/`` are documentation that runs: each executes, cell by cell, on
a real ipykernel with the default model."""

from __future__ import annotations

import os

import nbformat
import pytest
from conftest import REPO_ROOT
from nbclient import NotebookClient

NOTEBOOKS = REPO_ROOT / "notebooks"


def execute(name: str) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>`` in a fresh kernel (working directory: notebooks/)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute(env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def errors_of(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"{out.ename}: {out.evalue}"
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]


def test_notebook_list_is_complete():
    names = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    assert {
        "quickstart.ipynb",
        "parallel_processing.ipynb",
        "model_comparison.ipynb",
        "semantic_operators.ipynb",
    } <= names


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
def test_parallel_processing_notebook():
    nb = execute("parallel_processing.ipynb")
    assert not errors_of(nb)
    text = outputs_text(nb)
    assert "Accuracy (label scoring" in text and "x faster" in text
    assert "answers identical" in text and "The measured rates allow" in text
    assert "Error: " in text  # the error-handling section shows errors in place
    kinds = [k for c in nb.cells for out in c.get("outputs", []) for k in out.get("data", {})]
    assert kinds.count("image/png") == 2  # the confusion matrix and the per-class chart
    assert "application/vnd.jupyter.widget-view+json" in kinds  # progress and hardware panels
    summary = next(c for c in nb.cells if "summary" in c.metadata.get("tags", []))
    lines = summary.outputs[0]["text"].splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "Accuracy",
        "Seed workload speed-up",
        "Generation-heavy speed-up",
    ], lines
    assert all("limit" in line and "of it)" in line for line in lines[1:]), lines


def test_quickstart_notebook():
    nb = execute("quickstart.ipynb")
    assert not errors_of(nb)
    text = outputs_text(nb)
    assert "Loaded" in text and "Wrote 24 rows to news['topic']" in text
    assert "accuracy:" in text


def test_semantic_operators_notebook():
    nb = execute("semantic_operators.ipynb")
    assert not errors_of(nb)
    text = outputs_text(nb)
    assert "comparisons in" in text and "of 36 pairs" in text and "pairs scored" in text
    assert "similarity" in text


@pytest.mark.slow
def test_model_comparison_notebook():
    nb = execute("model_comparison.ipynb")
    assert not errors_of(nb)
    text = outputs_text(nb)
    assert "kappa" in text and "gemma-3-270m" in text
