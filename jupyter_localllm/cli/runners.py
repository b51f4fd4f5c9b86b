"""The rows of a ``run``: the table's rows rendered and run by the DataFrame tasks
(:mod:`~jupyter_localllm.tasks.frames`, which ``df.llm`` and ``ddf.llm`` run too), on the
defaults of :mod:`~jupyter_localllm.defaults`, and returned as the columns the run adds: the
value column(s) and the error column, one row per finished row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from .. import defaults
from ..errors import BatchInterrupted
from ..types import Progress, Result
from .signals import StopSignals
from .spec import RunSpec

__all__ = ["Interrupted", "compute", "finished_rows"]


class Interrupted(Exception):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) ended the run; ``table`` holds the rows
    finished before it."""

    def __init__(self, table: pd.DataFrame):
        super().__init__(f"interrupted after {len(table)} rows")
        self.table = table


def compute(
    spec: RunSpec, work: pd.DataFrame, progress: Callable[[Progress], Any], stop: StopSignals
) -> pd.DataFrame:
    """The added columns for every row of ``work`` (indexed like it); a stop signal raises
    :class:`Interrupted` with the rows finished before it. Signals are held (recorded, not
    raised) from the moment the batch ends."""
    from ..tasks.rows import frame_rows

    rows = frame_rows(work, spec.template)
    try:
        value = _run(spec, rows, progress, stop)
    except BatchInterrupted as exc:
        raise Interrupted(finished_rows(spec, exc.results, work.index)) from None
    except KeyboardInterrupt:  # before the batch started (loading the model)
        raise Interrupted(finished_rows(spec, [], work.index)) from None
    return _COLUMNS[spec.task](spec, value)


def _run(spec: RunSpec, rows: Any, progress: Callable[[Progress], Any], stop: StopSignals) -> Any:
    """The task's value over ``rows``, with the stop signals held as soon as the batch
    returns or raises, so what it finished is converted and written whole."""
    from ..session.executors import execute
    from ..session.manager import resolve_context

    try:
        context = resolve_context(
            spec.model, n_seq_max=spec.n_seq_max, deterministic=spec.deterministic
        )
        return execute(_job(spec).plan(context, rows), progress=progress, cluster=spec.cluster)
    finally:
        stop.hold()


def _job(spec: RunSpec) -> Any:
    """The DataFrame task ``spec`` asks for."""
    from ..tasks.classification import LabelSpec
    from ..tasks.extraction import ExtractSpec
    from ..tasks.frames import FrameJob

    if spec.task == "classify":
        return FrameJob("classify", spec.template, (LabelSpec(spec.labels),), {"probs": True})
    if spec.task == "extract":
        extract = ExtractSpec(spec.schema or {}, sampling=spec.sampling)
        return FrameJob("extract", spec.template, (extract,))
    options = {"clean": defaults.CLEAN, "sampling": spec.sampling}
    return FrameJob("generate", spec.template, options=options)


def _generated(spec: RunSpec, answers: pd.Series) -> pd.DataFrame:
    return finished_rows(spec, list(answers), answers.index)


def _classified(spec: RunSpec, scored: pd.DataFrame) -> pd.DataFrame:
    return _as_cells(pd.DataFrame({spec.base: scored["label"], spec.error_column: scored["error"]}))


def _extracted(spec: RunSpec, table: pd.DataFrame) -> pd.DataFrame:
    names = dict(zip(spec.properties, spec.output_columns, strict=True))
    return _as_cells(table.rename(columns={**names, "error": spec.error_column}))


_COLUMNS = {"generate": _generated, "classify": _classified, "extract": _extracted}


def finished_rows(spec: RunSpec, results: Sequence[Result], index: pd.Index) -> pd.DataFrame:
    """The added columns of the finished ``results`` (``row``: position in ``index``);
    cancelled rows are left out."""
    done = [r for r in results if r.finish_reason != "cancelled"]
    records = [_record(spec, r) for r in done]
    rows = index[[r.row for r in done]]
    return _as_cells(pd.DataFrame(records, index=rows, columns=spec.columns))


def _record(spec: RunSpec, result: Result) -> dict[str, Any]:
    """One finished row's added columns."""
    if result.error is not None:
        return {spec.error_column: result.error}
    if spec.task != "extract":
        return {spec.base: str(result)}
    value = result.value if isinstance(result.value, dict) else {}
    return {col: value.get(p) for p, col in zip(spec.properties, spec.output_columns, strict=True)}


def _as_cells(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as plain cells: object columns, ``None`` where empty."""
    table = table.astype(object)
    return table.where(table.notna(), None)
