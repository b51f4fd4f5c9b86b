"""Matplotlib figures for accuracy results: a confusion-matrix heatmap, per-class precision and
recall, and a comparison of models. Each function returns a :class:`matplotlib.figure.Figure`
(closed in pyplot, so a notebook shows it once, when it is the cell's value).

They take what :func:`jupyter_localllm.validate` computes: confusion matrices as DataFrames
(rows = gold labels, columns = predictions) and the per-model metrics table.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "confusion_matrix_figure",
    "figure_html",
    "figure_to_png",
    "kappa_from_confusion",
    "model_comparison_figure",
    "per_class_figure",
    "per_class_scores",
]


# Labels, model names and titles come from the user's data: they are drawn as written
# (parse_math=False), so a "$" in a label is no mathtext to parse, or to fail on.


def _new_figure(width: float, height: float) -> Figure:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height), layout="constrained")
    plt.close(fig)  # no second copy from the notebook's end-of-cell display of open figures
    return fig


def _tilt(labels: Sequence[Any], slot: float) -> tuple[bool, float]:
    """Whether category labels must slant to fit ``slot`` inches each without overlapping,
    and the extra figure height (inches) slanted labels need."""
    longest = max((len(str(t)) for t in labels), default=0)
    tilt = longest * 0.075 > 0.8 * slot  # ~0.075 in per character at 9-10 pt
    return tilt, (0.045 * longest if tilt else 0.0)


def _x_labels(ax: Any, positions: Any, labels: Sequence[Any], tilt: bool) -> None:
    ax.set_xticks(
        positions,
        [str(t) for t in labels],
        rotation=35 if tilt else 0,
        ha="right" if tilt else "center",
        rotation_mode="anchor",
        parse_math=False,
    )


def _check_matrix(matrix: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(matrix, pd.DataFrame) or matrix.empty:
        raise InvalidParameterError(
            "Expected a confusion matrix DataFrame (as compute_confusion_matrices returns)."
        )
    return matrix


def confusion_matrix_figure(
    matrix: pd.DataFrame, *, title: str | None = None, normalize: bool = False
) -> Figure:
    """A heatmap of ``matrix`` (rows: gold labels, columns: predicted) with the count in
    every cell. ``normalize=True`` colours by the share of each gold row (the counts stay
    written). The figure grows with the number of labels so the text never overlaps."""
    matrix = _check_matrix(matrix)
    counts = matrix.to_numpy(dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    colours = shares if normalize else counts
    n_rows, n_cols = counts.shape
    longest = max(len(str(x)) for x in [*matrix.index, *matrix.columns])
    side = 0.55 + 0.07 * min(longest, 30)  # room for labels, in inches
    fig = _new_figure(1.2 + side + 0.6 * n_cols, 0.9 + side + 0.5 * n_rows)
    ax = fig.add_subplot()
    image = ax.imshow(colours, cmap="Blues", vmin=0, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of row" if normalize else "rows")
    peak = colours.max() if colours.size else 0
    size = 10 if max(n_rows, n_cols) <= 8 else 8
    for i in range(n_rows):
        for j in range(n_cols):
            dark = peak > 0 and colours[i, j] > peak / 2  # white text on dark cells
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=size,
                color="white" if dark else "black",
            )
    ax.set_xticks(
        range(n_cols),
        [str(c) for c in matrix.columns],
        rotation=35,
        ha="right",
        rotation_mode="anchor",
        parse_math=False,
    )
    ax.set_yticks(range(n_rows), [str(r) for r in matrix.index], parse_math=False)
    ax.set_xlabel(str(matrix.columns.name or "predicted"), parse_math=False)
    ax.set_ylabel(str(matrix.index.name or "gold"), parse_math=False)
    if title:
        ax.set_title(str(title), parse_math=False)
    return fig


def per_class_scores(matrix: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and support of every label in a confusion matrix (rows: gold)."""
    matrix = _check_matrix(matrix)
    labels = sorted(set(map(str, matrix.index)) | set(map(str, matrix.columns)))
    m = matrix.rename(index=str, columns=str).reindex(index=labels, columns=labels, fill_value=0)
    counts = m.to_numpy(dtype=float)
    hits = np.diag(counts)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(actual > 0, hits / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": actual.astype(int)},
        index=pd.Index(labels, name="label"),
    )


def kappa_from_confusion(matrix: pd.DataFrame) -> float:
    """Cohen's kappa of the two codings a confusion matrix compares."""
    matrix = _check_matrix(matrix)
    labels = sorted(set(map(str, matrix.index)) | set(map(str, matrix.columns)))
    m = matrix.rename(index=str, columns=str).reindex(index=labels, columns=labels, fill_value=0)
    counts = m.to_numpy(dtype=float)
    n = counts.sum()
    if n == 0:
        return float("nan")
    observed = np.trace(counts) / n
    expected = float((counts.sum(axis=0) * counts.sum(axis=1)).sum()) / n**2
    return 1.0 if expected == 1 else float((observed - expected) / (1 - expected))


def per_class_figure(matrix: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Bars of precision and recall for every label of a confusion matrix, the value
    written above each bar."""
    scores = per_class_scores(matrix)
    n = len(scores)
    width = max(4.0, 1.0 + 0.9 * n)
    tilt, extra = _tilt(scores.index, width / n)
    fig = _new_figure(width, 3.4 + extra)
    ax = fig.add_subplot()
    x = np.arange(n)
    for offset, column, colour in ((-0.2, "precision", "#1565c0"), (0.2, "recall", "#ef6c00")):
        bars = ax.bar(x + offset, scores[column], width=0.4, label=column, color=colour)
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    _x_labels(ax, x, scores.index, tilt)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("score")
    fig.legend(loc="outside upper right", ncols=2, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(str(title), loc="left", parse_math=False)
    return fig


def model_comparison_figure(
    metrics: pd.DataFrame,
    *,
    columns: Sequence[str] = ("accuracy", "kappa", "macro_f1"),
    title: str | None = "Models against gold",
) -> Figure:
    """Grouped bars comparing models: one group per model (the ``model`` column), one bar per
    metric in ``columns`` that ``metrics`` has (e.g. :func:`validate`'s ``report.metrics``)."""
    if not isinstance(metrics, pd.DataFrame) or "model" not in metrics.columns:
        raise InvalidParameterError("metrics must be a DataFrame with a 'model' column.")
    shown = [c for c in columns if c in metrics.columns]
    if not shown:
        raise InvalidParameterError(
            f"metrics has none of the columns {', '.join(columns)}; columns are "
            f"{', '.join(map(str, metrics.columns))}."
        )
    names = [str(m) for m in metrics["model"]]
    n, k = len(names), len(shown)
    width = max(4.0, 1.2 + n * (0.35 * k + 0.5))
    tilt, extra = _tilt(names, width / n)
    fig = _new_figure(width, 3.4 + extra)
    ax = fig.add_subplot()
    width = 0.8 / k
    x = np.arange(n)
    palette = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a"]
    for j, column in enumerate(shown):
        values = metrics[column].astype(float).to_numpy()
        bars = ax.bar(
            x + (j - (k - 1) / 2) * width, values, width, label=column, color=palette[j % 4]
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    _x_labels(ax, x, names, tilt)
    ax.set_ylabel("score")
    low = min(0.0, float(np.nanmin(metrics[shown].astype(float).to_numpy())))
    ax.set_ylim(low, 1.15)
    ax.axhline(0, color="#999", linewidth=0.8)
    fig.legend(loc="outside upper right", ncols=k, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(str(title), loc="left", parse_math=False)
    return fig


def figure_to_png(fig: Figure, *, dpi: int = 96) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_html(fig: Figure, *, dpi: int = 96) -> str:
    """An ``<img>`` tag holding the figure as a base64 PNG (for ``_repr_html_``)."""
    data = base64.b64encode(figure_to_png(fig, dpi=dpi)).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' style='max-width:100%'/>"
