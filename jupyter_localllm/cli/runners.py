"""The rows of a ``run``, computed by the ``df.llm`` accessor (which renders the template,
loads the model and runs the batch) and returned as the columns the run adds: the value
column(s) and the error column, one row per finished row."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from ..errors import BatchInterrupted
from ..types import Progress, Result
from .signals import StopSignals
from .spec import BadInput, RunSpec

__all__ = ["Interrupted", "check_cluster", "compute"]


class Interrupted(Exception):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) ended the run; ``table`` holds the rows
    finished before it."""

    def __init__(self, table: pd.DataFrame):
        super().__init__(f"interrupted after {len(table)} rows")
        self.table = table


def check_cluster(spec: RunSpec) -> None:
    """``--cluster`` needs the accessor's ``cluster=`` keyword (Dask support)."""
    if spec.cluster is None:
        return
    from ..notebook.accessor import LLMFrameAccessor

    method = getattr(LLMFrameAccessor, spec.task)
    if "cluster" not in inspect.signature(method).parameters:
        raise BadInput(
            f"--cluster: this version of jupyter-localllm cannot run {spec.task} on a Dask "
            "cluster (no cluster= option); run without --cluster"
        )


def compute(
    spec: RunSpec, work: pd.DataFrame, progress: Callable[[Progress], Any], stop: StopSignals
) -> pd.DataFrame:
    """The added columns for every row of ``work`` (indexed like it); a stop signal raises
    :class:`Interrupted` with the rows finished before it. Signals are held (recorded, not
    raised) from the moment the batch ends."""
    from ..notebook import accessor  # noqa: F401  (registers df.llm)

    try:
        return _TASKS[spec.task](spec, work, _options(spec, progress), stop)
    except BatchInterrupted as exc:
        raise Interrupted(finished_rows(spec, exc.results, work.index)) from None
    except KeyboardInterrupt:  # before the batch started (loading the model)
        raise Interrupted(finished_rows(spec, [], work.index)) from None


def _options(spec: RunSpec, progress: Callable[[Progress], Any]) -> dict[str, Any]:
    """The keywords every accessor method takes."""
    options: dict[str, Any] = {
        "model": spec.model,
        "n_seq_max": spec.n_seq_max,
        "progress": progress,
    }
    if spec.cluster is not None:
        options["cluster"] = spec.cluster
    return options


def _batch(stop: StopSignals, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``method(*args, **kwargs)`` (an accessor call), with the stop signals held as soon as
    it returns or raises, so what it finished is converted and written whole."""
    try:
        return method(*args, **kwargs)
    finally:
        stop.hold()


def _generate(spec: RunSpec, work: pd.DataFrame, options: dict, stop: StopSignals) -> pd.DataFrame:
    answers = _batch(stop, work.llm.generate, spec.template, **options, **spec.sampling)
    return finished_rows(spec, list(answers), work.index)


def _classify(spec: RunSpec, work: pd.DataFrame, options: dict, stop: StopSignals) -> pd.DataFrame:
    labels = list(spec.labels or ())
    scored = _batch(stop, work.llm.classify, spec.template, labels, probs=True, **options)
    table = pd.DataFrame({spec.base: scored["label"], spec.error_column: scored["error"]})
    return _as_cells(table)


def _extract(spec: RunSpec, work: pd.DataFrame, options: dict, stop: StopSignals) -> pd.DataFrame:
    table = _batch(stop, work.llm.extract, spec.template, spec.schema, **options, **spec.sampling)
    names = dict(zip(spec.properties, spec.output_columns, strict=True))
    return _as_cells(table.rename(columns={**names, "error": spec.error_column}))


_TASKS = {"generate": _generate, "classify": _classify, "extract": _extract}


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
