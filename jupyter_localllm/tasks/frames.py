"""DataFrame runs: a template over a frame's rows (:mod:`.rows`), run as ``generate``,
``classify`` or ``extract``, the results aligned to the frame's index.

``df.llm`` and ``s.llm`` (in the kernel), ``ddf.llm`` (on each partition, where Dask runs it)
and ``jupyter-localllm run`` build their runs here, so a row gets the same answer from each;
they add only what is theirs (``out=`` writing into the user's frame, how progress shows,
files). Each function returns the :class:`~jupyter_localllm.session.executors.Plan` of the run:
the caller picks the executor. Its value carries the run's details in ``attrs["llm"]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import defaults
from ..session.sinks import RESULT_FIELDS, rows_to_sink
from .rows import FrameRows, frame_rows

if TYPE_CHECKING:
    from ..engine.runner import GenerationContext
    from ..session.executors import Plan
    from ..types import Results
    from .classification import LabelSpec
    from .extraction import ExtractSpec

__all__ = [
    "FrameJob",
    "classify_cascade_rows",
    "classify_rows",
    "extract_rows",
    "generate_rows",
    "partition_offsets",
    "run_info",
    "run_partition",
]


def generate_rows(
    context: GenerationContext,
    rows: FrameRows,
    *,
    name: Hashable = None,
    system_prompt: str | None = None,
    format: str = "auto",
    clean: bool = defaults.CLEAN,
    cache: bool | None = None,
    sink: Any = None,
    **sampling: Any,
) -> Plan[pd.Series]:
    """The run answering every row: its text is the user message (``format="chat"`` or
    ``"auto"``) after an optional ``system_prompt``; sampling keywords as for
    :func:`~jupyter_localllm.generate_parallel` (``sampling=`` or ``max_tokens=`` ...). Its
    value is a Series of :class:`~jupyter_localllm.Result` named ``name`` (default ``"llm"``).
    ``sink`` (a CSV path or :func:`~jupyter_localllm.annotation_sink_csv`) appends each row as
    it finishes, keyed by its index label."""
    from ..session.executors import single
    from .generation import generation_request
    from .prompts import render_rows, resolve_format

    fmt = resolve_format(context.model, format)
    prompts, _ = render_rows(context.model, fmt, rows.texts, None, system_prompt)
    request = generation_request(
        context, prompts, clean=clean, cache=cache, errors=rows.errors, **sampling
    )

    def finish(results: Results) -> pd.Series:
        series = pd.Series(list(results), index=rows.index, name=_name(name, "llm"), dtype=object)
        info = run_info("generate", context, rows, series)
        info["hashes"] = results.hashes
        series.attrs["llm"] = info
        return series

    plan = single(request, finish, desc="generate")
    return rows_to_sink(plan, sink, RESULT_FIELDS, ids=rows.index)


def classify_rows(
    context: GenerationContext,
    rows: FrameRows,
    spec: LabelSpec,
    *,
    probs: bool = False,
    name: Hashable = None,
    sink: Any = None,
) -> Plan[pd.Series | pd.DataFrame]:
    """The run labelling every row with one of ``spec.labels`` by label scoring (the
    options of :func:`~jupyter_localllm.classify`, as one value). Its value is a Series of
    labels named ``name`` (default ``"label"``; ``<NA>`` where a row could not run), or with
    ``probs`` the DataFrame of ``label``, one probability per label and ``error``. ``sink``
    as for :func:`generate_rows`."""
    from .classification import classify_plan

    plan = classify_plan(context, rows.texts, spec, errors=rows.errors)
    plan = rows_to_sink(plan, sink, ["label", *spec.labels, "error"], ids=rows.index)
    return plan.then(lambda scored: _labels(scored, context, rows, spec, probs, name))


def classify_cascade_rows(
    context: GenerationContext,
    rows: FrameRows,
    spec: LabelSpec,
    proxy: Any,
    cascade: Mapping[str, Any],
    *,
    probs: bool = False,
    name: Hashable = None,
    cache: bool | None = None,
    **run: Any,
) -> pd.Series | pd.DataFrame:
    """:func:`classify_rows` through a model cascade, run now (its requests depend on the
    proxy's answers): ``proxy`` answers the rows it is sure of, ``context``'s model the
    others, with the guarantee set by ``cascade`` (``target_accuracy``, ``delta``, ...; see
    :func:`~jupyter_localllm.tasks.classification.cascade_classify`, which gets ``run``:
    ``progress``, ``cancel``). The value is :func:`classify_rows`'s, its ``attrs["llm"]``
    also holding the cascade's details under ``"cascade"``. An interrupt raises
    :class:`~jupyter_localllm.BatchInterrupted` with one result per row."""
    from .classification import cascade_classify

    scored = cascade_classify(
        context, rows.texts, spec, proxy, cascade, errors=rows.errors, cache=cache, **run
    )
    return _labels(scored, context, rows, spec, probs, name)


def _labels(
    scored: pd.DataFrame,
    context: GenerationContext,
    rows: FrameRows,
    spec: LabelSpec,
    probs: bool,
    name: Hashable,
) -> pd.Series | pd.DataFrame:
    """A classify run's scores aligned to the frame: the labels (or with ``probs`` every
    column), its details in ``attrs["llm"]`` (a cascade's under ``"cascade"``)."""
    cascade = scored.attrs.get("llm")
    scored.index = rows.index
    label = scored["label"].astype(object).where(scored["label"].notna(), pd.NA)
    label.name = _name(name, "label")
    info = run_info("classify", context, rows, scored["error"])
    info["labels"] = list(spec.labels)
    info["hashes"] = scored.attrs.get("hashes", {})
    if cascade is not None:
        info["cascade"] = cascade
    result = scored if probs else label
    result.attrs["llm"] = info
    return result


def extract_rows(
    context: GenerationContext,
    rows: FrameRows,
    spec: ExtractSpec,
    *,
    cache: bool | None = None,
    sink: Any = None,
) -> Plan[pd.DataFrame]:
    """The run extracting the fields of ``spec.schema`` from every row (the options of
    :func:`~jupyter_localllm.extract`, as one value). Its value is a DataFrame of one column
    per top-level property and ``error`` (``None``, or why the row failed). ``sink`` as for
    :func:`generate_rows`."""
    from .extraction import extraction_plan

    plan = extraction_plan(context, rows.texts, spec, cache=cache, errors=rows.errors)
    props = spec.properties
    plan = rows_to_sink(plan, sink, [*props, "error"], ids=rows.index)

    def finish(values: list[Any]) -> pd.DataFrame:
        records = [v if isinstance(v, dict) else {} for v in values]
        table = pd.DataFrame.from_records(records, columns=props or None)
        table.index = rows.index
        table["error"] = [None if isinstance(v, dict) else v.error for v in values]
        table.attrs["llm"] = run_info("extract", context, rows, table["error"])
        return table

    return plan.then(finish)


def _name(name: Hashable, default: str) -> Hashable:
    return default if name is None else name


def run_info(
    task: str, context: GenerationContext, rows: FrameRows, values: pd.Series
) -> dict[str, Any]:
    """A run's details, kept in its value's ``attrs["llm"]`` (and ``df.attrs["llm"]``):
    ``values`` are the answers (generate) or the error column (classify, extract)."""
    from ..types import Result

    if task == "generate":
        n_errors = sum(isinstance(v, Result) and v.error is not None for v in values)
        tokens = sum(v.n_tokens for v in values if isinstance(v, Result))
    else:
        n_errors, tokens = int(values.notna().sum()), None
    return {
        "task": task,
        "model": context.model.name,
        "model_path": str(context.model.path),
        "template": rows.template,
        "rows": len(values),
        "errors": int(n_errors),
        "generated_tokens": tokens,
        "n_seq_max": context.n_seq_max,
        "seconds": round(time.perf_counter() - rows.started, 3),
    }


_TASKS: dict[str, Callable[..., Plan[Any]]] = {
    "generate": generate_rows,
    "classify": classify_rows,
    "extract": extract_rows,
}


@dataclass(frozen=True)
class FrameJob:
    """One DataFrame run as a value: the task, the template, the task's own arguments
    (``labels`` or ``schema``) and its keywords. Picklable, so Dask can send it to workers."""

    task: str
    """``"generate"``, ``"classify"`` or ``"extract"``."""
    template: str
    """The prompt template: ``{column}`` placeholders over the frame's columns."""
    args: tuple[Any, ...] = ()
    """classify: ``(LabelSpec,)``; extract: ``(ExtractSpec,)``."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The keywords of :func:`generate_rows`, :func:`classify_rows` or :func:`extract_rows`."""

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {self.task!r}")

    def rows(self, frame: pd.DataFrame) -> FrameRows:
        """``frame``'s rows rendered by the template."""
        return frame_rows(frame, self.template)

    def plan(self, context: GenerationContext, rows: FrameRows) -> Plan[Any]:
        """The run of ``rows`` on ``context``."""
        return _TASKS[self.task](context, rows, *self.args, **self.options)


# -- Dask: one partition at a time, where Dask runs it ---------------------------------------
def partition_offsets(lengths: Sequence[Any]) -> list[int]:
    """Each partition's first row in the whole frame, from the partitions' lengths."""
    sizes = [int(n.sum()) if hasattr(n, "sum") else int(n) for n in lengths]
    return [0, *accumulate(sizes)][:-1]


def run_partition(
    part: pd.DataFrame,
    offsets: list[int],
    spec: Any,
    job: FrameJob,
    partition_info: dict | None = None,
) -> pd.Series | pd.DataFrame:
    """``job`` over one partition on this process's copy of the model
    (:class:`~jupyter_localllm.session.cluster_worker.WorkerSpec` ``spec``); rows take their
    seeds from their place in the whole frame (``offsets``), so answers do not depend on the
    partitioning. The value has no ``attrs`` (Dask concatenates the partitions)."""
    from ..session.cluster_worker import run_plan_here, worker_context

    offset = offsets[partition_info["number"]] if partition_info else 0
    value = run_plan_here(job.plan(worker_context(spec), job.rows(part)), offset)
    value.attrs = {}
    return value.astype(object) if job.task == "extract" else value
