"""``sem_filter``: the rows of a frame for which a predicate holds, decided by label scoring
of yes/no (one ``classify`` request over every row; a cascade goes through ``classify``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...errors import InvalidParameterError
from ...session.executors import Plan, execute, single
from ..classification import LabelSpec
from ..rows import FrameRows, frame_rows
from .common import (
    check_threshold,
    operator_info,
    resolve,
    scored_request,
    split_cascade,
    yes_no_spec,
    yes_probs,
)

if TYPE_CHECKING:
    from ...engine.runner import GenerationContext
    from ...session.jobs import Job
    from ...types import Results

__all__ = ["FILTER_INSTRUCTION", "FilterJob", "filter_partition", "filter_plan", "sem_filter"]

FILTER_INSTRUCTION = "Is the following claim true? Answer yes or no."
"""What the model is asked before each row's rendered predicate."""


@dataclass(frozen=True)
class FilterOptions:
    """How the scored rows become the filter's value."""

    threshold: float = 0.5
    """A row passes when its probability of "yes" is at least this."""
    probs: bool = False
    """Keep that probability as a column ``prob``."""
    return_all: bool = False
    """Return every row, with ``passed`` (``True``/``False``/``<NA>`` for a row that could not
    run) and ``error`` columns, instead of the passing rows only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))


def frame_part(frame: pd.DataFrame, rows: FrameRows, positions: Any) -> pd.DataFrame:
    """The rows at ``positions`` of the rendered rows, from ``frame`` as it is now (by index
    label when the frame was re-ordered meanwhile)."""
    if frame.index.equals(rows.index):
        return frame.iloc[positions].copy()
    return frame.loc[rows.index[positions]].copy()


def filtered(
    frame: pd.DataFrame,
    rows: FrameRows,
    prob: np.ndarray,
    errors: list[str | None],
    options: FilterOptions,
) -> pd.DataFrame:
    """The filter's value from each row's probability of "yes" and error."""
    passed = np.nan_to_num(prob, nan=0.0) >= options.threshold
    if options.return_all:
        out = frame_part(frame, rows, np.arange(len(prob)))
        flags = [None if e else bool(p) for p, e in zip(passed, errors, strict=True)]
        out["passed"] = pd.array(flags, dtype="boolean")
        if options.probs:
            out["prob"] = prob
        out["error"] = errors
        return out
    keep = np.flatnonzero(passed)
    out = frame_part(frame, rows, keep)
    if options.probs:
        out["prob"] = prob[keep]
    return out


def filter_plan(
    context: GenerationContext,
    frame: pd.DataFrame,
    rows: FrameRows,
    spec: LabelSpec,
    options: FilterOptions,
    *,
    cache: bool | None = None,
) -> Plan[pd.DataFrame]:
    """The run of a filter: one yes/no label request over ``rows`` (``frame`` rendered by the
    predicate); its value is :func:`filtered`'s frame with the run's details in
    ``attrs["llm"]`` (``kept``, ``threshold``, ``failed`` rows with why)."""
    request = scored_request(
        context, rows.texts, spec, errors=rows.errors, function="filter", cache=cache
    )

    def finish(results: Results) -> pd.DataFrame:
        errors = [r.error for r in results]
        out = filtered(frame, rows, yes_probs(results), errors, options)
        return _noted(out, context, rows, errors, options, results.hashes)

    return single(request, finish, desc="filter")


def _noted(
    out: pd.DataFrame,
    context: GenerationContext,
    rows: FrameRows,
    errors: list[str | None],
    options: FilterOptions,
    hashes: Any,
) -> pd.DataFrame:
    info = operator_info("filter", context, rows, threshold=options.threshold)
    info["failed"] = {rows.index[i]: e for i, e in enumerate(errors) if e is not None}
    info["errors"] = len(info["failed"])
    kept = out["passed"].fillna(False).sum() if options.return_all else len(out)
    info["kept"] = int(kept)
    info["hashes"] = hashes
    out.attrs["llm"] = info
    return out


def _cascaded(
    context: GenerationContext,
    frame: pd.DataFrame,
    rows: FrameRows,
    spec: LabelSpec,
    options: FilterOptions,
    cascade: dict[str, Any],
    run: dict[str, Any],
) -> pd.DataFrame:
    """The filter through ``classify``'s cascade (the proxy answers where it is sure)."""
    from dataclasses import asdict

    from ..classification import classify

    spec_options = {k: v for k, v in asdict(spec).items() if k != "labels"}
    if {"target_precision", "target_recall"} & set(cascade):
        cascade = {"positive": spec.labels[0], **cascade}  # precision and recall of "yes"
    scored = classify(context, rows.texts, list(spec.labels), **spec_options, **cascade, **run)
    errors = [rows.errors.get(i, e) for i, e in enumerate(scored["error"])]
    prob = scored[spec.labels[0]].to_numpy(dtype=float)
    out = filtered(frame, rows, prob, errors, options)
    out = _noted(out, context, rows, errors, options, scored.attrs.get("hashes", {}))
    out.attrs["llm"]["cascade"] = scored.attrs.get("llm", {})
    return out


def sem_filter(
    frame: pd.DataFrame,
    predicate: str,
    *,
    model: Any = None,
    n_seq_max: int | None = None,
    threshold: float = 0.5,
    probs: bool = False,
    return_all: bool = False,
    cache: bool | None = None,
    progress: Any = None,
    cancel: threading.Event | None = None,
    background: bool = False,
    cluster: Any = None,
    **options: Any,
) -> pd.DataFrame | Job:
    """The rows of ``frame`` for which ``predicate`` holds.

    ``predicate`` is a template over the frame's columns (``"The review praises the acting:
    {text}"``); each rendered row is put to the model as a yes/no question
    (:data:`FILTER_INSTRUCTION`) and decided by label scoring: a row passes when the
    probability of "yes" is at least ``threshold``. Returns those rows (same index labels and
    columns; ``probs=True`` adds ``prob``), or with ``return_all=True`` every row with
    ``passed`` (``<NA>`` where a row could not run) and ``error``. ``attrs["llm"]`` holds the
    run's details (``kept``, ``failed``: index label -> why).

    ``model`` is a context, a loaded model, an alias or a reference (``None``: the session's
    default). Other keywords are ``classify``'s (``instruction``, ``examples``,
    ``calibrate``, ``system_prompt``, ``format``, ``scoring``), and the cascade keywords
    (``proxy``, ``target_precision``, ``target_recall``, ``delta``, ``label_budget``) go to
    ``classify``'s cascade. ``cache`` (``None``: ``$LOCALLLM_RESULT_CACHE``) keeps each row's
    scores, so a re-run scores only new rows; ``progress``, ``cancel``, ``background`` and
    ``cluster`` as for :func:`~jupyter_localllm.classify`.
    """
    cascade = split_cascade(options)
    if cascade and (background or cluster is not None):  # rows are picked after classify
        raise InvalidParameterError(
            "A filter with proxy= runs in the foreground; drop background= and cluster=."
        )
    spec = yes_no_spec(FILTER_INSTRUCTION, options)
    settings = FilterOptions(threshold, probs, return_all)
    rows = frame_rows(frame, predicate)
    context = resolve(model, n_seq_max)
    run = {"progress": progress, "cancel": cancel}
    if cascade:
        return _cascaded(context, frame, rows, spec, settings, cascade, {**run, "cache": cache})
    plan = filter_plan(context, frame, rows, spec, settings, cache=cache)
    return execute(plan, background=background, cluster=cluster, **run)


# -- Dask: one partition at a time, where Dask runs it ---------------------------------------
@dataclass(frozen=True)
class FilterJob:
    """A filter over the partitions of a Dask frame, as a picklable value."""

    predicate: str
    spec: LabelSpec
    options: FilterOptions = field(default_factory=FilterOptions)
    cache: bool | None = None


def filter_partition(
    part: pd.DataFrame,
    offsets: list[int],
    spec: Any,
    job: FilterJob,
    partition_info: dict | None = None,
) -> pd.DataFrame:
    """``job`` over one partition on this process's copy of the model (``spec``, a
    :class:`~jupyter_localllm.session.cluster_worker.WorkerSpec`); as
    :func:`~jupyter_localllm.tasks.frames.run_partition` for the map-like tasks."""
    from ...session.cluster_worker import run_plan_here, worker_context

    offset = offsets[partition_info["number"]] if partition_info else 0
    rows = frame_rows(part, job.predicate)
    plan = filter_plan(worker_context(spec), part, rows, job.spec, job.options, cache=job.cache)
    value = run_plan_here(plan, offset)
    value.attrs = {}
    return value
