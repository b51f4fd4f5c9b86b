"""What the semantic operators share: yes/no and pairwise label requests built on
``classify``'s (:func:`~jupyter_localllm.tasks.classification.label_request`), the rows an
instruction's ``{column}`` placeholders name, the run details kept in ``attrs["llm"]``, and the
cascade keywords forwarded to ``classify``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...errors import InvalidParameterError, PlaceholderError
from ...session.cache import cache_enabled
from ...session.pipeline import BatchRequest
from ..classification import LabelSpec, label_request
from ..rows import FrameRows, frame_rows, render, template_fields

if TYPE_CHECKING:
    from ...engine.runner import GenerationContext
    from ...types import Results

__all__ = [
    "CASCADE_KEYWORDS",
    "YES_NO",
    "check_threshold",
    "columns_rows",
    "operator_info",
    "resolve",
    "scored_request",
    "split_cascade",
    "yes_no_spec",
    "yes_probs",
]

YES_NO = ("yes", "no")
"""The labels of every yes/no decision (lower case: the default model gives them more weight
than ``Yes``/``No``, whose scores barely move with the question)."""

CASCADE_KEYWORDS = (
    "proxy",
    "target_accuracy",
    "target_precision",
    "target_recall",
    "delta",
    "label_budget",
    "ranking",
)
"""The keywords of a model cascade, forwarded to :func:`~jupyter_localllm.classify`."""


def resolve(model: Any, n_seq_max: int | None = None) -> GenerationContext:
    """The context an operator runs on: ``model`` may be a context, a loaded model, an alias
    or a reference (``None``: the session's default model), as for ``df.llm``."""
    from ... import defaults
    from ...session.manager import resolve_context

    return resolve_context(model, n_seq_max=n_seq_max, default_n_seq_max=defaults.N_SEQ_MAX)


def yes_no_spec(instruction: str, options: Mapping[str, Any]) -> LabelSpec:
    """The spec of a yes/no question: ``options`` are ``classify``'s (``instruction``,
    ``examples``, ``calibrate``, ...), an ``instruction`` given there replacing the default."""
    options = dict(options)
    options.setdefault("instruction", instruction)
    return LabelSpec.from_kwargs(list(YES_NO), **options)


def scored_request(
    context: GenerationContext,
    texts: Sequence[Any],
    spec: LabelSpec,
    *,
    errors: Mapping[int, str] | None,
    function: str,
    cache: bool | None,
) -> BatchRequest:
    """``classify``'s label request for ``texts``, named ``function`` in the run log, using
    the result cache when ``cache`` (``None``: ``$LOCALLLM_RESULT_CACHE``) says so: a re-run
    of an operator scores only what it has not scored before."""
    request = label_request(context, texts, spec, errors=errors)
    request.function = function
    request.cache = cache_enabled(cache)
    return request


def yes_probs(results: Results, label: str = YES_NO[0]) -> np.ndarray:
    """Each row's probability of ``label`` (NaN where the row failed)."""
    return np.array([r.probs[label] if r.ok else np.nan for r in results], dtype=float)


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a probability in (0, 1); else an :class:`InvalidParameterError`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise InvalidParameterError(f"threshold must be a number in (0, 1), got {threshold!r}.")
    if not 0 < threshold < 1:
        raise InvalidParameterError(f"threshold must be in (0, 1), got {threshold!r}.")
    return float(threshold)


def columns_rows(frame: pd.DataFrame, instruction: str, what: str) -> tuple[str, FrameRows]:
    """An instruction whose ``{column}`` placeholders name the columns to read (LOTUS's
    style: ``"Which {title} is most about sports?"``): the instruction as the model sees it
    (braces dropped) and each row's text (the one column's value, or ``column: value``
    lines)."""
    fields = template_fields(instruction)
    if not fields:
        raise PlaceholderError(
            f"The {what} names no column; write the columns it reads in braces, like "
            "'Which {title} is most about sports?'."
        )
    shown = render(instruction, lambda name: name)
    if len(fields) == 1:
        template = "{" + fields[0] + "}"
    else:
        template = "\n".join(f"{f}: {{{f}}}" for f in fields)
    return shown, frame_rows(frame, template)


def operator_info(
    task: str, context: GenerationContext, rows: FrameRows, **details: Any
) -> dict[str, Any]:
    """An operator's run details (its value's ``attrs["llm"]``): the task, the model, the
    template, rows, failed rows by index label with why, and the operator's own figures."""
    failed = {rows.index[pos]: message for pos, message in rows.errors.items()}
    return {
        "task": task,
        "model": context.model.name,
        "model_path": str(context.model.path),
        "template": rows.template,
        "rows": len(rows.texts),
        "errors": len(failed),
        "failed": failed,
        "n_seq_max": context.n_seq_max,
        **details,
        "seconds": round(time.perf_counter() - rows.started, 3),
    }


def split_cascade(options: dict[str, Any]) -> dict[str, Any]:
    """Take the cascade keywords out of ``options`` and return those given (``classify``
    checks them)."""
    return {k: options.pop(k) for k in CASCADE_KEYWORDS if k in options}
