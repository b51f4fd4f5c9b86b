"""AccuracyPanel: a :class:`~jupyter_localllm.analysis.evaluation.ValidationReport` as widgets — the
metrics table, the model comparison chart, and per model its confusion matrix and per-class
precision/recall (PNG images drawn with :mod:`jupyter_localllm.analysis.charts`)."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from ...analysis.charts import figure_to_png
from ...analysis.evaluation import ValidationReport
from ...errors import InvalidParameterError
from ..escaping import html_text

__all__ = ["AccuracyPanel"]


def _report_of(source: Any) -> ValidationReport:
    if isinstance(source, ValidationReport):
        return source
    if hasattr(source, "validate"):  # an Exploration
        return source.validate()
    raise InvalidParameterError(
        "AccuracyPanel needs a ValidationReport (from validate()) or an Exploration (from "
        f"explore()), got {type(source).__name__}."
    )


def _image(fig: Any) -> w.Image:
    return w.Image(value=figure_to_png(fig), format="png", layout=w.Layout(max_width="100%"))


class AccuracyPanel(w.VBox):
    """Accuracy of one or more models: ``source`` is a :class:`ValidationReport` or an
    :class:`~jupyter_localllm.tasks.exploration.Exploration` (validated against its ``truth``).

    ``figures`` holds the matplotlib figures shown (see :meth:`ValidationReport.figures`).
    """

    def __init__(self, source: Any):
        self.report = _report_of(source)
        self.figures = self.report.figures()
        # Model names come from the user: pandas escapes every header and cell (escape=True).
        self.metrics = w.HTML(
            self.report.metrics.to_html(index=False, float_format="%.3f", escape=True)
        )
        self.comparison = (
            _image(self.figures["comparison"]) if "comparison" in self.figures else None
        )
        models = list(self.report.confusion["vs_gold"])
        self.tabs = w.Tab(
            children=[self._model_box(name) for name in models],
            titles=[str(m) for m in models],
        )
        children: list[w.Widget] = [w.HTML("<b>Accuracy against gold</b>"), self.metrics]
        if self.comparison is not None:
            children.append(self.comparison)
        children.append(self.tabs)
        if self.report.reliability is not None:
            children.append(w.HTML(self._reliability_html()))
        super().__init__(children)

    def _model_box(self, name: Any) -> w.Widget:
        images = [
            _image(self.figures[key])
            for key in (f"confusion: {name}", f"per class: {name}")
            if key in self.figures
        ]
        return w.HBox(images, layout=w.Layout(flex_flow="row wrap"))

    def _reliability_html(self) -> str:
        rel = self.report.reliability
        if hasattr(rel, "to_html"):
            return "<b>Cohen's kappa between models</b>" + rel.to_html(
                index=False, float_format="%.3f", escape=True
            )
        return f"<b>Krippendorff's alpha between models: {html_text(f'{rel.alpha:.3f}')}</b>"

    def __repr__(self) -> str:
        return "Accuracy against gold:\n" + self.report.metrics.to_string(index=False)
