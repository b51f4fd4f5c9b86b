"""The ``df.llm`` and ``s.llm`` pandas accessors: prompts over DataFrame columns.

A thin front-end over the DataFrame tasks (:mod:`~jupyter_localllm.tasks.frames`, which
``ddf.llm`` and ``jupyter-localllm run`` run too): it adds the notebook's parts, the
``%config LocalLLM`` defaults, ``out=`` and ``df.attrs["llm"]``. A template names
columns in ``{braces}``; every row is rendered, wrapped in the model's chat template and run in
parallel. Results come back aligned to the frame's index; ``out="col"`` also writes them into
the frame as each row finishes (by index label and column name, so a background run's
frame may change meanwhile), so an interrupted run keeps every finished row. A row whose
cell is missing (NaN/None) or not text gets an error in its place; the other rows go on.

Example::

    import jupyter_localllm  # registers the accessors
    df["summary"] = df.llm.generate("Summarise in five words: {text}", max_tokens=20)
    df.llm.classify("{title}", ["World", "Sports", "Business", "Sci/Tech"], out="topic")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import defaults
from ..errors import InvalidParameterError
from ..tasks.options import check_count
from ..tasks.rows import frame_rows
from .config import get_settings
from .out_column import OutColumn

if TYPE_CHECKING:
    from ..session.executors import Plan
    from ..session.jobs import Job

# The tasks (and llama.cpp) are imported on first use, so registering the accessors when the
# package is imported costs no more than pandas.

__all__ = ["LLMFrameAccessor", "LLMSeriesAccessor", "resolve_context"]


def resolve_context(model: Any = None, *, n_seq_max: int | None = None) -> Any:
    """The context a front-end runs on (see
    :func:`~jupyter_localllm.session.manager.resolve_context`), with the defaults of
    ``%config LocalLLM``: its default model, ``n_seq_max`` and ``n_ctx``."""
    from ..session.manager import resolve_context as session_context

    return session_context(model, n_seq_max=n_seq_max, **get_settings().context_options())


def _progress(progress: bool | Any | None) -> bool | Any | None:
    if progress is None and not get_settings().progress:
        return False
    return progress


def _cache(cache: bool | None) -> bool | None:
    return False if cache is None and not get_settings().cache else cache


def _run(plan: Plan[Any], background: bool, progress: Any, cluster: Any = None) -> Any:
    from ..session.executors import execute

    return execute(plan, background=background, progress=_progress(progress), cluster=cluster)


class _Accessor:
    """Shared body of the DataFrame and Series accessors."""

    def _frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def _target(self) -> pd.DataFrame | None:
        """The frame ``out=`` writes into (None for a Series)."""
        return None

    def _writer(self, out: Any, values: Sequence[Any] | None = None) -> OutColumn | None:
        """The writer of column ``out`` (checked, and made if absent, before the run)."""
        if out is None:
            return None
        target = self._target()
        if target is None:
            raise InvalidParameterError(
                f"out={out!r} writes into a DataFrame column and a Series has none; assign "
                "the result instead, or use df.llm with out=."
            )
        return OutColumn(target, out, values)

    def _writing(
        self, plan: Plan[Any], out: Any, pick: Callable, values: Sequence[Any] | None = None
    ) -> Plan:
        """``plan`` also writing ``pick(row value)`` into column ``out`` as each row finishes
        (other rows keep their values until their result exists; see :class:`OutColumn`);
        at the end, rows that could not be written are listed in the result's
        ``attrs["llm"]["unwritten"]``."""
        writer = self._writer(out, values)
        if writer is None:
            return plan

        def noted(value: Any) -> Any:
            unwritten = writer.finish()
            if unwritten:
                value.attrs["llm"]["unwritten"] = unwritten
            return value

        return plan.also_on_result(lambda row, value: writer.write(row, pick(value))).then(noted)

    def _recorded(self, value: Any) -> Any:
        """``value`` (a run's result), its run details also put in ``df.attrs["llm"]``."""
        frame = self._target()
        if frame is not None:
            frame.attrs["llm"] = value.attrs["llm"]
        return value

    def _rows(self, template: str, model: Any, n_seq_max: int | None) -> tuple:
        """The frame's rows rendered (before the model loads: a bad template costs nothing),
        and the context."""
        rows = frame_rows(self._frame(), template)
        if n_seq_max is not None:  # refused before a model loads, never replaced by a default
            check_count("n_seq_max", n_seq_max)
        return rows, resolve_context(model, n_seq_max=n_seq_max)

    def generate(
        self,
        template: str,
        *,
        out: str | None = None,
        model: Any = None,
        system_prompt: str | None = None,
        format: str = "auto",
        n_seq_max: int | None = None,
        clean: bool = defaults.CLEAN,
        progress: bool | Any | None = None,
        cache: bool | None = None,
        background: bool = False,
        cluster: Any = None,
        sink: Any = None,
        **sampling: Any,
    ) -> pd.Series | Job:
        """Generate an answer for every row: ``template`` with ``{column}`` placeholders is
        the user message (``format="chat"``/``"auto"``) after an optional ``system_prompt``.

        Returns a Series of :class:`~jupyter_localllm.Result` strings aligned to the index; a
        row that could not run holds ``"Error: …"`` (its ``.error`` says why). ``out`` also
        writes the answers into that column as rows finish (an interrupt keeps them; other
        rows keep their old values). Sampling keywords (``max_tokens``, ``temperature``,
        ``seed``, ``stop``, …) default to ``%config LocalLLM``; run details go to
        ``df.attrs["llm"]``.

        ``background=True`` returns a :class:`~jupyter_localllm.Job` at once (with a Cancel
        button in notebooks); rows still land in ``out`` as they finish, each where its index
        label is then (the frame may be sorted, filtered or given columns meanwhile; a row
        that is gone stays in the result, see :mod:`~jupyter_localllm.notebook.out_column`),
        ``job.partial()`` holds them by position, and ``job.result()`` gives the Series.
        ``cluster`` (a ``distributed.Client`` or a scheduler address) runs the rows on a Dask
        cluster's workers (see :func:`~jupyter_localllm.generate_parallel`). ``sink`` (a CSV
        path or :func:`~jupyter_localllm.annotation_sink_csv`) appends each row as it finishes,
        keyed by its index label; a re-run appends only the rows the file lacks.
        """
        from ..tasks.frames import generate_rows

        rows, ctx = self._rows(template, model, n_seq_max)
        if "sampling" not in sampling:
            sampling = get_settings().sampling(**sampling)
        plan = generate_rows(
            ctx,
            rows,
            name=out,
            system_prompt=system_prompt,
            format=format,
            clean=clean,
            cache=_cache(cache),
            sink=sink,
            **sampling,
        ).then(self._recorded)
        plan = self._writing(plan, out, lambda r: r)
        return _run(plan, background, progress, cluster)

    def classify(
        self,
        template: str,
        labels: Sequence[str],
        *,
        out: str | None = None,
        probs: bool = False,
        model: Any = None,
        n_seq_max: int | None = None,
        progress: bool | Any | None = None,
        background: bool = False,
        cluster: Any = None,
        sink: Any = None,
        **options: Any,
    ) -> pd.Series | pd.DataFrame | Job:
        """Label every row with one of ``labels`` by label scoring: ``template`` renders
        each row's text; other keywords (``examples``, ``instruction``, ``system_prompt``,
        ``format``, ``calibrate``, ``scoring``) as in :func:`~jupyter_localllm.classify`.

        Returns a Series of labels aligned to the index (``<NA>`` where a row could not
        run), or with ``probs=True`` a DataFrame with ``label``, one probability column per
        label and ``error``. ``out`` writes the labels into that column as rows are scored.
        ``background=True`` returns a :class:`~jupyter_localllm.Job` and ``cluster`` runs on
        a Dask cluster (see :meth:`generate`); ``sink`` as there.

        ``proxy`` (a cheaper model) with ``target_accuracy`` (or ``target_precision``/
        ``target_recall`` with ``positive``), ``delta``, ``label_budget``, ``ranking`` runs a
        model cascade (see :func:`~jupyter_localllm.classify`): the proxy answers the rows it
        is sure of, this call's model the rest, with the stated guarantee;
        ``attrs["llm"]["cascade"]`` holds its details. A cascade runs in the foreground,
        without ``sink``.
        """
        from ..tasks.classification import LabelSpec
        from ..tasks.operators.common import split_cascade

        cascade = split_cascade(options)
        spec = LabelSpec.from_kwargs(labels, **options)  # checked before the model loads
        if cascade:
            if background or cluster is not None or sink is not None:
                raise InvalidParameterError(
                    "classify with proxy= runs in the foreground; drop background=, cluster= "
                    "and sink=."
                )
            return self._cascade(template, spec, cascade, out, probs, model, n_seq_max, progress)
        from ..tasks.frames import classify_rows

        rows, ctx = self._rows(template, model, n_seq_max)
        plan = classify_rows(ctx, rows, spec, probs=probs, name=out, sink=sink)
        pick = lambda rec: pd.NA if rec["label"] is None else rec["label"]  # noqa: E731
        plan = self._writing(plan.then(self._recorded), out, pick, list(spec.labels))
        return _run(plan, background, progress, cluster)

    def _cascade(self, template, spec, cascade, out, probs, model, n_seq_max, progress) -> Any:
        """:meth:`classify` through a model cascade; ``out`` gets the labels of the rows the
        run answered, also when it is interrupted."""
        from ..errors import BatchInterrupted
        from ..tasks.frames import classify_cascade_rows

        writer = self._writer(out, list(spec.labels))
        rows, ctx = self._rows(template, model, n_seq_max)
        proxy = cascade.pop("proxy", None)
        if proxy is not None:
            proxy = resolve_context(proxy, n_seq_max=ctx.n_seq_max)
        try:
            result = classify_cascade_rows(
                ctx,
                rows,
                spec,
                proxy,
                cascade,
                probs=probs,
                name=out,
                cache=_cache(None),
                progress=_progress(progress),
            )
        except BatchInterrupted as exc:
            labels = [str(r) if r.ok else pd.NA for r in exc.results]
            self._write_all(writer, labels)
            raise
        labels = result["label"] if probs else result
        unwritten = self._write_all(writer, list(labels))
        if unwritten:
            result.attrs["llm"]["unwritten"] = unwritten
        return self._recorded(result)

    def _write_all(self, writer: OutColumn | None, values: Sequence[Any]) -> list[Any]:
        """Write ``values`` (one per row, ``<NA>`` for none) through ``writer``; the rows
        that could not be written (see :meth:`OutColumn.finish`)."""
        if writer is None:
            return []
        for row, value in enumerate(values):
            if value is not pd.NA:
                writer.write(row, value)
        return writer.finish()

    def extract(
        self,
        template: str,
        schema: Mapping[str, Any] | type,
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        progress: bool | Any | None = None,
        cache: bool | None = None,
        background: bool = False,
        cluster: Any = None,
        sink: Any = None,
        **options: Any,
    ) -> pd.DataFrame | Job:
        """Extract the fields of ``schema`` (JSON schema or pydantic model) from every row;
        other keywords (``instruction``, ``system_prompt``, ``format``, sampling options,
        which default to ``%config LocalLLM``) as in :func:`~jupyter_localllm.extract`.
        Returns a DataFrame aligned to the index: one column per top-level property and
        ``error`` (``None``, or why the row failed).
        ``background=True`` returns a :class:`~jupyter_localllm.Job` and ``cluster`` runs on
        a Dask cluster (see :meth:`generate`); ``sink`` as there."""
        from ..tasks.extraction import ExtractSpec
        from ..tasks.frames import extract_rows

        if "sampling" not in options:
            options = get_settings().sampling(**options)
        spec = ExtractSpec.from_kwargs(schema, **options)  # checked before the model loads
        rows, ctx = self._rows(template, model, n_seq_max)
        plan = extract_rows(ctx, rows, spec, cache=_cache(cache), sink=sink)
        return _run(plan.then(self._recorded), background, progress, cluster)


class _Operators:
    """The semantic operators and embeddings on ``df.llm`` (thin calls of
    :mod:`~jupyter_localllm.tasks.operators` and :mod:`~jupyter_localllm.tasks.embedding`
    with the ``%config LocalLLM`` defaults; the run's details also go to
    ``df.attrs["llm"]``)."""

    _df: pd.DataFrame

    def _operator(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """``function(df, *args, ...)`` on the settings' context, progress and cache."""
        kwargs["model"] = resolve_context(kwargs.get("model"), n_seq_max=kwargs.pop("n_seq_max"))
        kwargs["progress"] = _progress(kwargs.get("progress"))
        kwargs["cache"] = _cache(kwargs.get("cache"))
        value = function(self._df, *args, **kwargs)
        if isinstance(value, (pd.DataFrame, pd.Series)) and "llm" in value.attrs:
            self._df.attrs["llm"] = value.attrs["llm"]
        return value

    def filter(
        self, predicate: str, *, model: Any = None, n_seq_max: int | None = None, **kwargs: Any
    ) -> pd.DataFrame | Job:
        """The rows for which ``predicate`` (a ``{column}`` template) holds, by label scoring
        of yes/no: see :func:`~jupyter_localllm.sem_filter` (``threshold``, ``probs``,
        ``return_all``, cascade keywords, ``background``, ``cluster``, ...)."""
        from ..tasks.operators import sem_filter

        return self._operator(sem_filter, predicate, model=model, n_seq_max=n_seq_max, **kwargs)

    def topk(
        self,
        criterion: str,
        k: int,
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame | Job:
        """The ``k`` rows that best meet ``criterion`` (naming columns in braces), best
        first, by pairwise comparisons: see :func:`~jupyter_localllm.sem_topk`."""
        from ..tasks.operators import sem_topk

        return self._operator(sem_topk, criterion, k, model=model, n_seq_max=n_seq_max, **kwargs)

    def join(
        self,
        right: pd.DataFrame,
        predicate: str,
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame | Job:
        """Pairs of this frame's rows and ``right``'s for which ``predicate`` (with
        ``{left.column}`` and ``{right.column}``) holds: see
        :func:`~jupyter_localllm.sem_join` (``blocking``, ``candidates``, ...)."""
        from ..tasks.operators import sem_join

        return self._operator(
            sem_join, right, predicate, model=model, n_seq_max=n_seq_max, **kwargs
        )

    def agg(
        self,
        instruction: str,
        *,
        by: Any = None,
        model: Any = None,
        n_seq_max: int | None = None,
        **kwargs: Any,
    ) -> pd.Series | Job:
        """One answer per group (``by``) or for the frame, folding rows into answers that
        fit the context: see :func:`~jupyter_localllm.sem_agg`."""
        from ..tasks.operators import sem_agg

        if "sampling" not in kwargs:
            kwargs = get_settings().sampling(**kwargs)
        return self._operator(
            sem_agg, instruction, by=by, model=model, n_seq_max=n_seq_max, **kwargs
        )

    def dedup(
        self, template: str, *, model: Any = None, n_seq_max: int | None = None, **kwargs: Any
    ) -> pd.Series | Job:
        """Cluster ids of rows that are the same thing (``template`` renders each row):
        see :func:`~jupyter_localllm.sem_dedup`."""
        from ..tasks.operators import sem_dedup

        return self._operator(sem_dedup, template, model=model, n_seq_max=n_seq_max, **kwargs)

    def embed(
        self,
        template: str = "{text}",
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        **kwargs: Any,
    ) -> pd.Series:
        """Each row's embedding (a float32 vector) as ``template`` renders it: see
        :func:`~jupyter_localllm.embed_frame`."""
        from ..tasks.embedding import embed_frame

        return self._operator(embed_frame, template, model=model, n_seq_max=n_seq_max, **kwargs)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """The ``k`` rows most similar to ``query`` by embeddings, with ``similarity``: see
        :func:`~jupyter_localllm.search` (``template`` renders the rows)."""
        from ..tasks.embedding import search

        return self._operator(search, query, k, model=model, n_seq_max=n_seq_max, **kwargs)


@pd.api.extensions.register_dataframe_accessor("llm")
class LLMFrameAccessor(_Operators, _Accessor):
    """``df.llm``: :meth:`generate`, :meth:`classify` and :meth:`extract` over a DataFrame's
    rows; templates name its columns in ``{braces}``; the semantic operators :meth:`filter`,
    :meth:`topk`, :meth:`join`, :meth:`agg`, :meth:`dedup`, and :meth:`embed`/:meth:`search`."""

    def __init__(self, frame: pd.DataFrame):
        self._df = frame

    def _frame(self) -> pd.DataFrame:
        return self._df

    def _target(self) -> pd.DataFrame:
        return self._df


@pd.api.extensions.register_series_accessor("llm")
class LLMSeriesAccessor(_Accessor):
    """``s.llm``: the same methods over a Series; the template names its values ``{text}``
    (or the Series' name), and defaults to the value itself."""

    def __init__(self, series: pd.Series):
        self._s = series

    def _frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({"text": self._s.to_numpy(dtype=object)}, index=self._s.index)
        if self._s.name is not None and str(self._s.name) != "text":
            frame[str(self._s.name)] = frame["text"]
        return frame

    def generate(self, template: str = "{text}", **kwargs: Any) -> pd.Series:
        return super().generate(template, **kwargs)

    generate.__doc__ = _Accessor.generate.__doc__

    def classify(self, template: str | Sequence[str] = "{text}", labels: Any = None, **kwargs):
        """Label every value (see :meth:`LLMFrameAccessor.classify`); ``s.llm.classify(labels)``
        uses the values as they are."""
        if labels is None and not isinstance(template, str):
            template, labels = "{text}", template
        if labels is None:
            raise InvalidParameterError("Give the labels, e.g. s.llm.classify(['yes', 'no']).")
        return super().classify(template, labels, **kwargs)

    def extract(self, schema: Any, template: str = "{text}", **kwargs: Any) -> pd.DataFrame:
        """Extract ``schema``'s fields from every value (see
        :meth:`LLMFrameAccessor.extract`)."""
        return super().extract(template, schema, **kwargs)
