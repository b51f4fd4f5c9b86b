"""Agreement and accuracy of annotations: confusion matrices, Cohen's kappa, Krippendorff's
alpha and per-model metrics, computed with scikit-learn and the ``krippendorff`` package.

Annotations come in localLLM's long format (``sample_id, model_id, label[, truth]``, as
``explore()`` returns) or wide (one row per sample, one column per model/coder).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError, column_not_found

__all__ = [
    "ReliabilityResult",
    "ValidationReport",
    "compute_confusion_matrices",
    "intercoder_reliability",
    "validate",
]


def _wide(annotations: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None]:
    """(wide labels: index sample_id, one column per model; truth or None)."""
    if not isinstance(annotations, pd.DataFrame):
        raise InvalidParameterError("annotations must be a pandas DataFrame.")
    if {"sample_id", "model_id", "label"} <= set(annotations.columns):
        wide = annotations.pivot_table(
            index="sample_id", columns="model_id", values="label", aggfunc="first", sort=False
        )
        wide.columns.name = None
        truth = None
        if "truth" in annotations.columns:
            truth = annotations.groupby("sample_id")["truth"].first()
        return wide, truth
    return annotations.copy(), None


def _gold(wide: pd.DataFrame, truth: pd.Series | None, gold: Any) -> pd.Series | None:
    if gold is None:
        return truth
    if isinstance(gold, str):
        if gold not in wide.columns:
            raise column_not_found(gold, wide.columns)
        return wide[gold]
    if isinstance(gold, (bytes, dict)) or not hasattr(gold, "__len__"):
        raise InvalidParameterError(
            f"gold must be a list or Series of labels, or a column name, got {type(gold).__name__}."
        )
    gold = pd.Series(gold)
    if len(gold) != len(wide):
        raise InvalidParameterError(
            f"gold has {len(gold)} labels for {len(wide)} samples; give one gold label per "
            "sample, in sample order."
        )
    if not gold.index.equals(wide.index):
        gold.index = wide.index
    return gold


def _coders(wide: pd.DataFrame, gold: Any) -> pd.DataFrame:
    return wide.drop(columns=[gold]) if isinstance(gold, str) else wide


def _confusion(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    keep = a.notna() & b.notna()
    a, b = a[keep].astype(str), b[keep].astype(str)
    labels = sorted(set(a) | set(b))
    where = {label: i for i, label in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)  # rows: a, columns: b
    for x, y in zip(a, b, strict=True):
        m[where[x], where[y]] += 1
    return pd.DataFrame(
        m,
        index=pd.Index(labels, name="truth" if a.name is None else str(a.name)),
        columns=pd.Index(labels, name="predicted"),
    )


def compute_confusion_matrices(
    annotations: pd.DataFrame, gold: Any = None, *, pairwise: bool = True
) -> dict[str, dict]:
    """Confusion matrices of every model against ``gold`` (``vs_gold``: rows are the gold
    labels) and, with ``pairwise``, between every pair of models (``pairwise``).

    ``gold``: a Series/list aligned with the samples, the name of a wide column, or ``None``
    to use the ``truth`` column of long annotations.
    """
    wide, truth = _wide(annotations)
    ref = _gold(wide, truth, gold)
    coders = _coders(wide, gold)
    out: dict[str, dict] = {"vs_gold": {}, "pairwise": {}}
    if ref is not None:
        ref = ref.reindex(coders.index).rename("truth")
        for col in coders.columns:
            out["vs_gold"][col] = _confusion(ref, coders[col])
    if pairwise:
        for a, b in itertools.combinations(coders.columns, 2):
            out["pairwise"][(a, b)] = _confusion(coders[a].rename(str(a)), coders[b])
    return out


@dataclass
class ReliabilityResult:
    """Krippendorff's alpha with per-item detail (how many coders, and whether they agree)."""

    alpha: float
    level: str
    items: pd.DataFrame = field(repr=False)

    def __float__(self) -> float:
        return float(self.alpha)


def _kappa_table(coders: pd.DataFrame) -> pd.DataFrame:
    from sklearn.metrics import cohen_kappa_score

    rows = []
    for a, b in itertools.combinations(coders.columns, 2):
        pair = coders[[a, b]].dropna().astype(str)
        if pair.empty:
            continue
        kappa = float(cohen_kappa_score(pair[a], pair[b]))
        observed = float((pair[a] == pair[b]).mean())
        pa = pair[a].value_counts(normalize=True)
        pb = pair[b].value_counts(normalize=True)
        categories = set(pa.index) | set(pb.index)
        expected = float(sum(pa.get(k, 0.0) * pb.get(k, 0.0) for k in categories))
        rows.append(
            {
                "model_a": a,
                "model_b": b,
                "kappa": kappa,
                "observed": observed,
                "expected": expected,
                "n": len(pair),
            }
        )
    return pd.DataFrame(rows, columns=["model_a", "model_b", "kappa", "observed", "expected", "n"])


_LEVELS = ("nominal", "ordinal", "interval", "ratio")


def _alpha_data(coders: pd.DataFrame, level: str) -> np.ndarray:
    """The coders x units matrix Krippendorff's alpha reads (labels coded as numbers),
    checked so that alpha is defined."""
    if level not in _LEVELS:
        raise InvalidParameterError(f"level must be one of {', '.join(_LEVELS)}, got {level!r}.")
    values = sorted({str(v) for v in coders.stack().dropna()})
    if len(values) < 2:
        seen = f"every label is {values[0]!r}" if values else "there are no labels"
        raise InvalidParameterError(
            f"Krippendorff's alpha is undefined here ({seen}); it needs at least two different "
            "labels among the annotations."
        )
    if coders.notna().sum(axis=1).max() < 2:
        raise InvalidParameterError(
            "Krippendorff's alpha needs a sample labelled by at least two coders; every sample "
            "has at most one label."
        )
    if level == "nominal":
        codes = {v: i for i, v in enumerate(values)}
        data = coders.apply(
            lambda s: s.map(lambda v: codes.get(str(v), np.nan) if pd.notna(v) else np.nan)
        )
    else:
        try:
            data = coders.astype(float)
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(
                f"Labels must be numbers for level={level!r} ({exc}); use level='nominal'."
            ) from exc
    return data.to_numpy(dtype=float).T


def _alpha(coders: pd.DataFrame, level: str) -> ReliabilityResult:
    import krippendorff

    matrix = _alpha_data(coders, level)
    alpha = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level))
    items = pd.DataFrame(
        {
            "n_coders": coders.notna().sum(axis=1),
            "n_distinct": coders.apply(lambda r: r.dropna().astype(str).nunique(), axis=1),
        }
    )
    items["agree"] = items.n_distinct <= 1
    return ReliabilityResult(alpha, level, items)


def intercoder_reliability(
    annotations: pd.DataFrame, method: str = "auto", *, level: str = "nominal"
) -> pd.DataFrame | ReliabilityResult:
    """Agreement between models (coders).

    ``method="cohen"`` gives Cohen's kappa for every pair as a DataFrame (``model_a,
    model_b, kappa, observed, expected, n``); ``"krippendorff"`` gives Krippendorff's alpha
    over all coders (missing labels allowed) with per-item detail; ``"auto"`` picks Cohen for
    two coders and Krippendorff for more. Values equal R's irr ``kappa2`` and ``kripp.alpha``.
    """
    if method not in ("auto", "cohen", "krippendorff"):
        raise InvalidParameterError(
            f'method must be "auto", "cohen" or "krippendorff", got {method!r}.'
        )
    wide, _ = _wide(annotations)
    if wide.shape[1] < 2:
        raise InvalidParameterError("Reliability needs at least two coders (models).")
    if method == "auto":
        method = "cohen" if wide.shape[1] == 2 else "krippendorff"
    return _kappa_table(wide) if method == "cohen" else _alpha(wide, level)


@dataclass
class ValidationReport:
    """What :func:`validate` found: per-model metrics against gold, confusion matrices and
    reliability between models."""

    metrics: pd.DataFrame
    confusion: dict[str, dict]
    reliability: Any

    def figures(self) -> dict[str, Any]:
        """The report's matplotlib figures: ``"comparison"`` (accuracy, kappa and macro-F1 of
        every model) and, per model, ``"confusion: NAME"`` and ``"per class: NAME"``."""
        from .charts import confusion_matrix_figure, model_comparison_figure, per_class_figure

        figs: dict[str, Any] = {}
        if not self.metrics.empty:
            figs["comparison"] = model_comparison_figure(self.metrics)
        for name, m in self.confusion["vs_gold"].items():
            if not m.empty:
                figs[f"confusion: {name}"] = confusion_matrix_figure(m, title=str(name))
                figs[f"per class: {name}"] = per_class_figure(m, title=str(name))
        return figs

    def _repr_html_(self) -> str:
        from html import escape

        from .charts import figure_html

        # Model names and labels come from the user's data: pandas escapes every header, index
        # and cell (escape=True), names written here go through html.escape.
        figs = self.figures()
        parts = [
            "<h4>Accuracy against gold</h4>",
            self.metrics.to_html(float_format="%.3f", escape=True),
        ]
        if "comparison" in figs:
            parts.append(figure_html(figs["comparison"]))
        row = "<div style='display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start'>{}</div>"
        for name, m in self.confusion["vs_gold"].items():
            keys = (f"confusion: {name}", f"per class: {name}")
            cells = [m.to_html(escape=True), *(figure_html(figs[k]) for k in keys if k in figs)]
            parts += [f"<h4>Confusion: {escape(str(name))}</h4>", row.format("".join(cells))]
        if isinstance(self.reliability, pd.DataFrame):
            parts += [
                "<h4>Cohen's kappa</h4>",
                self.reliability.to_html(float_format="%.3f", escape=True),
            ]
        elif self.reliability is not None:
            parts.append(f"<h4>Krippendorff's alpha: {self.reliability.alpha:.3f}</h4>")
        return "\n".join(parts)


def _kappa(gold: pd.Series, predicted: pd.Series) -> float:
    """Cohen's kappa of a model against gold (NaN without rows; 1 when both use one label)."""
    from sklearn.metrics import cohen_kappa_score

    if len(gold) == 0:
        return float("nan")
    if gold.nunique() == 1 and predicted.nunique() == 1:
        return 1.0 if gold.iloc[0] == predicted.iloc[0] else 0.0
    return float(cohen_kappa_score(gold, predicted))


def validate(
    annotations: pd.DataFrame, gold: Any = None, *, method: str = "auto", pairwise: bool = True
) -> ValidationReport:
    """Accuracy, macro-F1 and Cohen's kappa of every model against ``gold``, confusion
    matrices, and agreement between models (see :func:`intercoder_reliability`; ``None``
    with ``method="auto"`` when it is undefined, e.g. every model gave the same label).
    ``gold`` holds one label per sample (a list or Series, or a column name). In a notebook
    the report shows its tables with charts (see :meth:`ValidationReport.figures`)."""
    from sklearn.metrics import accuracy_score, f1_score

    wide, truth = _wide(annotations)
    ref = _gold(wide, truth, gold)
    coders = _coders(wide, gold)
    rows = []
    if ref is not None:
        ref = ref.reindex(coders.index)
        for col in coders.columns:
            pair = pd.DataFrame({"t": ref, "p": coders[col]}).dropna().astype(str)
            rows.append(
                {
                    "model": col,
                    "n": len(pair),
                    "accuracy": accuracy_score(pair.t, pair.p) if len(pair) else np.nan,
                    "macro_f1": f1_score(pair.t, pair.p, average="macro", zero_division=0)
                    if len(pair)
                    else np.nan,
                    "kappa": _kappa(pair.t, pair.p),
                }
            )
    metrics = pd.DataFrame(rows, columns=["model", "n", "accuracy", "macro_f1", "kappa"])
    reliability = None
    if coders.shape[1] >= 2:
        try:
            reliability = intercoder_reliability(coders, method)
        except InvalidParameterError:
            if method != "auto":
                raise
            # alpha is undefined (all coders gave one label): the report leaves it out
    return ValidationReport(
        metrics, compute_confusion_matrices(annotations, gold, pairwise=pairwise), reliability
    )
