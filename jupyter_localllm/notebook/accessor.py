"""The ``df.llm`` and ``s.llm`` pandas accessors: prompts over DataFrame columns.

A thin front-end over :func:`~jupyter_localllm.generate_parallel`,
:func:`~jupyter_localllm.classify` and :func:`~jupyter_localllm.extract`. A template names
columns in ``{braces}``; every row is rendered, wrapped in the model's chat template and run in
parallel. Results come back aligned to the frame's index; ``out="col"`` also writes them into
the frame as each row finishes, so an interrupted run keeps every finished row. A row whose
cell is missing (NaN/None) or not text gets an error in its place; the other rows go on.

Example::

    import jupyter_localllm  # registers the accessors
    df["summary"] = df.llm.generate("Summarise in five words: {text}", max_tokens=20)
    df.llm.classify("{title}", ["World", "Sports", "Business", "Sci/Tech"], out="topic")
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import InvalidParameterError
from .config import get_settings
from .templates import check_fields, formatted_fields, render

if TYPE_CHECKING:
    from ..engine.llama import Model
    from ..engine.runner import GenerationContext
    from ..session.jobs import Job

# The engine (and llama.cpp) is imported on first use, so registering the accessors when the
# package is imported costs no more than pandas.

__all__ = ["LLMFrameAccessor", "LLMSeriesAccessor", "resolve_context"]


def resolve_context(
    model: str | Model | GenerationContext | None = None, *, n_seq_max: int | None = None
) -> GenerationContext:
    """The context a front-end runs on: ``model`` is a context (used as is), a loaded model,
    an alias of the session's model manager, a reference to load (``"default"``, a path, …), or
    ``None`` for the session's default model (loading ``%config LocalLLM.default_model`` when
    none is loaded). ``n_seq_max`` defaults to the value given at load, else the settings'."""
    from ..engine.llama import Model
    from ..engine.runner import GenerationContext
    from ..session.manager import get_manager

    if isinstance(model, GenerationContext):
        return model
    manager, settings = get_manager(), get_settings()
    if isinstance(model, Model):
        alias = manager.adopt(model)
    elif model is None:
        if manager.default_alias is None:
            manager.load(settings.default_model, **settings.load_options())
        alias = manager.default_alias
    else:
        alias = str(model)
        if alias not in manager.aliases:
            manager.load(alias, **settings.load_options())
    entry = manager.entry(alias)
    return manager.context(
        alias,
        n_seq_max=n_seq_max or entry.n_seq_max or settings.n_seq_max,
        n_ctx=entry.n_ctx or settings.n_ctx,
    )


def _row_texts(df: pd.DataFrame, template: str) -> tuple[list[str | None], dict[int, str]]:
    """Each row's rendered template (``None`` for a row that cannot run) and the errors."""
    fields = check_fields(template, [str(c) for c in df.columns])
    duplicated = [f for f in fields if list(map(str, df.columns)).count(f) > 1]
    if duplicated:
        raise InvalidParameterError(
            f"Column {duplicated[0]!r} appears more than once; rename one of them."
        )
    formatted = formatted_fields(template)
    by_name = {str(c): c for c in df.columns}
    columns = [df[by_name[f]].to_numpy(dtype=object) for f in fields]
    texts: list[str | None] = []
    errors: dict[int, str] = {}
    for pos in range(len(df)):
        values = {f: col[pos] for f, col in zip(fields, columns, strict=True)}
        problem = _cell_problem(values, formatted)
        if problem is not None:
            errors[pos] = problem
            texts.append(None)
        else:
            texts.append(render(template, values))
    return texts, errors


def _cell_problem(values: Mapping[str, Any], formatted: set[str]) -> str | None:
    for name, value in values.items():
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            return f"column {name!r} is empty (missing value) in this row"
        if not isinstance(value, str) and name not in formatted:
            return (
                f"column {name!r} holds {type(value).__name__} {value!r}, not text; "
                f"write {{{name}!s}} in the template to format it"
            )
        if isinstance(value, str) and not value.strip():
            return f"column {name!r} is blank in this row"
    return None


def _progress(progress: bool | Any | None) -> bool | Any | None:
    if progress is None and not get_settings().progress:
        return False
    return progress


def _cache(cache: bool | None) -> bool | None:
    return False if cache is None and not get_settings().cache else cache


class _Accessor:
    """Shared body of the DataFrame and Series accessors."""

    def _frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def _target(self) -> pd.DataFrame | None:
        """The frame ``out=`` writes into (None for a Series)."""
        return None

    def _start_column(self, out: str | None, dtype: Any = object) -> int | None:
        target = self._target()
        if out is None or target is None:
            return None
        target[out] = pd.Series(pd.NA, index=target.index, dtype=dtype)
        return target.columns.get_loc(out)

    def _record(self, info: dict[str, Any]) -> None:
        frame = self._target()
        if frame is not None:
            frame.attrs["llm"] = info

    def generate(
        self,
        template: str,
        *,
        out: str | None = None,
        model: str | Model | GenerationContext | None = None,
        system_prompt: str | None = None,
        format: str = "auto",
        n_seq_max: int | None = None,
        clean: bool = True,
        progress: bool | Any | None = None,
        cache: bool | None = None,
        background: bool = False,
        **sampling: Any,
    ) -> pd.Series | Job:
        """Generate an answer for every row: ``template`` with ``{column}`` placeholders is
        the user message (``format="chat"``/``"auto"``) after an optional ``system_prompt``.

        Returns a Series of :class:`~jupyter_localllm.Result` strings aligned to the index; a
        row that could not run holds ``"Error: …"`` (its ``.error`` says why). ``out`` also
        writes the answers into that column as rows finish. Sampling keywords
        (``max_tokens``, ``temperature``, ``seed``, ``stop``, …) default to ``%config
        LocalLLM``; run details go to ``df.attrs["llm"]``.

        ``background=True`` returns a :class:`~jupyter_localllm.Job` at once (with a Cancel
        button in notebooks); rows still land in ``out`` as they finish, ``job.partial()``
        holds them by position, and ``job.result()`` gives the Series.
        """
        from ..tasks import classification as tasks
        from ..tasks import generation as api
        from ..types import Result

        frame = self._frame()
        texts, errors = _row_texts(frame, template)
        ctx = resolve_context(model, n_seq_max=n_seq_max)
        fmt = tasks.resolve_format(ctx.model, format)
        prompts = [
            tasks.render_prompt(ctx.model, fmt, t, None, system_prompt, []) if t else None
            for t in texts
        ]
        todo = [pos for pos, p in enumerate(prompts) if p is not None]
        results: list[Result | None] = [None] * len(frame)
        for pos, message in errors.items():
            results[pos] = Result.failed(message, row=pos)
        col = self._start_column(out)
        target = self._target()
        if col is not None:
            for pos in errors:
                target.iat[pos, col] = results[pos]

        kwargs = get_settings().sampling(**sampling)

        def run(cancel: Any = None, report: Any = None, on_row: Any = None) -> pd.Series:
            def deliver(res: Result) -> None:
                pos = todo[res.row]
                results[pos] = res
                if col is not None:
                    target.iat[pos, col] = res
                if on_row is not None:
                    on_row(res, pos)

            t0 = time.perf_counter()
            ran = api.generate_parallel(
                ctx,
                [prompts[pos] for pos in todo],
                clean=clean,
                progress=report if report is not None else _progress(progress),
                cache=_cache(cache),
                on_result=deliver,
                cancel=cancel,
                **kwargs,
            )
            for k, res in enumerate(ran):  # rows served from the cache skip on_result
                if results[todo[k]] is None:
                    deliver(res)
            series = pd.Series(results, index=frame.index, name=out or "llm", dtype=object)
            info = _run_info("generate", ctx, template, series, time.perf_counter() - t0)
            info["hashes"] = ran.hashes
            series.attrs["llm"] = info
            self._record(info)
            return series

        if background:
            from ..session.jobs import start_job

            return start_job(
                lambda cancel, on_result, on_progress: run(cancel, on_progress, on_result),
                total=len(todo),
                desc="generate",
                context=ctx,
                progress=False if progress is False else None,
            )
        return run()

    def classify(
        self,
        template: str,
        labels: Sequence[str],
        *,
        out: str | None = None,
        probs: bool = False,
        examples: Any = None,
        instruction: str | None = None,
        system_prompt: str | None = None,
        calibrate: bool = False,
        scoring: str = "constrained",
        model: str | Model | GenerationContext | None = None,
        n_seq_max: int | None = None,
        progress: bool | Any | None = None,
    ) -> pd.Series | pd.DataFrame:
        """Label every row with one of ``labels`` by label scoring (see
        :func:`~jupyter_localllm.classify`; ``template`` renders each row's text).

        Returns a Series of labels aligned to the index (``<NA>`` where a row could not
        run), or with ``probs=True`` a DataFrame with ``label``, one probability column per
        label and ``error``. ``out`` writes the labels into that column.
        """
        from ..tasks import classification as tasks

        frame = self._frame()
        texts, errors = _row_texts(frame, template)
        ctx = resolve_context(model, n_seq_max=n_seq_max)
        t0 = time.perf_counter()
        scored = tasks.classify(
            ctx,
            texts,
            labels,
            examples=examples,
            instruction=instruction,
            system_prompt=system_prompt,
            calibrate=calibrate,
            scoring=scoring,
            progress=_progress(progress),
        )
        scored.index = frame.index
        for pos, message in errors.items():
            scored.iat[pos, scored.columns.get_loc("error")] = message
        label = scored["label"].astype(object).where(scored["label"].notna(), pd.NA)
        label.name = out or "label"
        col = self._start_column(out)
        if col is not None:
            self._target()[out] = label
        info = _run_info("classify", ctx, template, scored["error"], time.perf_counter() - t0)
        info["labels"] = [str(x) for x in labels]
        info["hashes"] = scored.attrs.get("hashes", {})
        self._record(info)
        result = scored if probs else label
        result.attrs["llm"] = info
        return result

    def extract(
        self,
        template: str,
        schema: Mapping[str, Any] | type,
        *,
        model: str | Model | GenerationContext | None = None,
        instruction: str | None = None,
        system_prompt: str | None = None,
        n_seq_max: int | None = None,
        progress: bool | Any | None = None,
        **sampling: Any,
    ) -> pd.DataFrame:
        """Extract the fields of ``schema`` (JSON schema or pydantic model) from every row
        (see :func:`~jupyter_localllm.extract`). Returns a DataFrame aligned to the index:
        one column per top-level property and ``error`` (``None``, or why the row failed)."""
        from ..tasks import classification as tasks
        from ..types import Result

        frame = self._frame()
        texts, errors = _row_texts(frame, template)
        ctx = resolve_context(model, n_seq_max=n_seq_max)
        todo = [pos for pos, t in enumerate(texts) if t is not None]
        t0 = time.perf_counter()
        rows = tasks.extract(
            ctx,
            [texts[pos] for pos in todo],
            schema,
            instruction=instruction,
            system_prompt=system_prompt,
            progress=_progress(progress),
            **sampling,
        )
        values: list[Any] = [None] * len(frame)
        for pos, row in zip(todo, rows, strict=True):
            values[pos] = row
        props = _schema_properties(schema)
        records = [v if isinstance(v, dict) else {} for v in values]
        table = pd.DataFrame.from_records(records, columns=props or None)
        table.index = frame.index
        table["error"] = [
            errors.get(pos) or (v.error if isinstance(v, Result) else None)
            for pos, v in enumerate(values)
        ]
        info = _run_info("extract", ctx, template, table["error"], time.perf_counter() - t0)
        self._record(info)
        table.attrs["llm"] = info
        return table


def _schema_properties(schema: Mapping[str, Any] | type) -> list[str]:
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    return list(schema.get("properties", {})) if isinstance(schema, Mapping) else []


def _run_info(
    task: str, ctx: GenerationContext, template: str, values: pd.Series, seconds: float
) -> dict[str, Any]:
    """Run details kept in ``df.attrs["llm"]``."""
    from ..types import Result

    if task == "generate":
        n_errors = sum(isinstance(v, Result) and v.error is not None for v in values)
        tokens = sum(v.n_tokens for v in values if isinstance(v, Result))
    else:
        n_errors, tokens = int(values.notna().sum()), None
    return {
        "task": task,
        "model": ctx.model.name,
        "model_path": str(ctx.model.path),
        "template": template,
        "rows": len(values),
        "errors": int(n_errors),
        "generated_tokens": tokens,
        "n_seq_max": ctx.n_seq_max,
        "seconds": round(seconds, 3),
    }


@pd.api.extensions.register_dataframe_accessor("llm")
class LLMFrameAccessor(_Accessor):
    """``df.llm``: :meth:`generate`, :meth:`classify` and :meth:`extract` over a DataFrame's
    rows; templates name its columns in ``{braces}``."""

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
