"""The ``ddf.llm`` and ``dds.llm`` accessors for Dask DataFrames and Series: the pandas
accessors' ``generate``, ``classify`` and ``extract``, lazy.

Each returns a Dask Series or DataFrame (``map_partitions`` with its ``meta``); computing it
runs every partition where Dask runs it (on a cluster: the workers) through the same
pipeline as in the kernel, on the process's one copy of the model, loaded from its file on
first use and kept (:mod:`~jupyter_localllm.session.cluster_worker`). Rows take their seeds
from their place in the whole frame, so sampled answers do not depend on the partitioning.
The model is named as for ``df.llm`` (an alias, a reference, ``None`` for the default) and
resolved to its file in the kernel: the file must be at that path where partitions run.

Registered when the package sees ``dask.dataframe`` imported (``import jupyter_localllm``
after it, or any public name's first use); importing this module registers it at once::

    import dask.dataframe as dd
    import jupyter_localllm
    ddf = dd.from_pandas(df, npartitions=8)
    answers = ddf.llm.generate("Summarise in five words: {text}", max_tokens=20).compute()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any

import dask
import pandas as pd
from dask.dataframe.extensions import register_dataframe_accessor, register_series_accessor

from ..errors import InvalidParameterError
from .accessor import _cache, _row_texts
from .config import get_settings

__all__ = ["DaskFrameAccessor", "DaskSeriesAccessor"]


def _offsets(lengths: Sequence[Any]) -> list[int]:
    """Each partition's first row in the whole frame, from the partitions' lengths."""
    sizes = [int(n.sum()) if hasattr(n, "sum") else int(n) for n in lengths]
    return [0, *accumulate(sizes)][:-1]


def _offset(offsets: list[int], partition_info: dict | None) -> int:
    return offsets[partition_info["number"]] if partition_info else 0


# -- what runs on the workers, one partition at a time --------------------------------------
def _generate_part(part: pd.DataFrame, offsets, spec, job, partition_info=None) -> pd.Series:
    from ..session.cluster_worker import run_plan_here, worker_context
    from ..session.executors import single
    from ..tasks.generation import generation_request
    from ..tasks.prompts import render_rows, resolve_format

    ctx = worker_context(spec)
    texts, errors = _row_texts(part, job["template"])
    fmt = resolve_format(ctx.model, job["format"])
    prompts, _ = render_rows(ctx.model, fmt, texts, None, job["system_prompt"])
    request = generation_request(
        ctx, prompts, clean=job["clean"], cache=job["cache"], errors=errors, **job["sampling"]
    )
    results = run_plan_here(single(request), _offset(offsets, partition_info))
    return pd.Series(list(results), index=part.index, name="llm", dtype=object)


def _classify_part(part: pd.DataFrame, offsets, spec, job, partition_info=None):
    from ..session.cluster_worker import run_plan_here, worker_context
    from ..tasks.classification import classify_plan

    ctx = worker_context(spec)
    texts, errors = _row_texts(part, job["template"])
    scored = run_plan_here(
        classify_plan(ctx, texts, job["labels"], errors=errors, **job["options"])
    )
    scored.attrs = {}
    scored.index = part.index
    if job["probs"]:
        return scored
    return scored["label"].astype(object).where(scored["label"].notna(), pd.NA)


def _extract_part(part: pd.DataFrame, offsets, spec, job, partition_info=None) -> pd.DataFrame:
    from ..session.cluster_worker import run_plan_here, worker_context
    from ..tasks.extraction import extraction_plan

    ctx = worker_context(spec)
    texts, errors = _row_texts(part, job["template"])
    plan = extraction_plan(ctx, texts, job["schema"], errors=errors, **job["options"])
    values = run_plan_here(plan, _offset(offsets, partition_info))
    records = [v if isinstance(v, dict) else {} for v in values]
    table = pd.DataFrame.from_records(records, columns=job["props"] or None).astype(object)
    table.index = part.index
    table["error"] = pd.Series(
        [None if isinstance(v, dict) else v.error for v in values], index=part.index, dtype=object
    )
    return table


# -- the accessors --------------------------------------------------------------------------
class _DaskAccessor:
    """Shared body of the Dask DataFrame and Series accessors."""

    def _frame(self) -> Any:
        raise NotImplementedError

    def _spec(self, model: Any, n_seq_max: int | None) -> Any:
        from ..session.cluster import model_spec

        settings = get_settings()
        return model_spec(
            model,
            n_seq_max=n_seq_max,
            n_ctx=settings.n_ctx,
            default_model=settings.default_model,
            default_n_seq_max=settings.n_seq_max,
            load_options=settings.load_options(),
        )

    def _map(self, run: Any, template: str, spec: Any, job: dict[str, Any], meta: Any) -> Any:
        """``run`` over every partition, lazily, with the partitions' first rows."""
        frame = self._frame()
        _row_texts(pd.DataFrame(columns=list(frame.columns)), template)  # fields checked now
        offsets = dask.delayed(_offsets)(frame.map_partitions(len).to_delayed())
        return frame.map_partitions(run, offsets, spec, {**job, "template": template}, meta=meta)

    def generate(
        self,
        template: str,
        *,
        model: Any = None,
        system_prompt: str | None = None,
        format: str = "auto",
        n_seq_max: int | None = None,
        clean: bool = True,
        cache: bool | None = None,
        **sampling: Any,
    ) -> Any:
        """A lazy Series of answers, one per row (see ``df.llm.generate``; no ``out``:
        assign the result, ``ddf["answer"] = ddf.llm.generate(...)``)."""
        settings = get_settings()
        job = {
            "format": format,
            "system_prompt": system_prompt,
            "clean": clean,
            "cache": _cache(cache),
            "sampling": sampling if "sampling" in sampling else settings.sampling(**sampling),
        }
        meta = pd.Series(dtype=object, name="llm")
        return self._map(_generate_part, template, self._spec(model, n_seq_max), job, meta)

    def classify(
        self,
        template: str,
        labels: Sequence[str],
        *,
        probs: bool = False,
        model: Any = None,
        n_seq_max: int | None = None,
        **options: Any,
    ) -> Any:
        """A lazy Series of labels (``<NA>`` where a row could not run), or with
        ``probs=True`` a DataFrame with ``label``, a probability per label and ``error``
        (see ``df.llm.classify``)."""
        from ..tasks.classification import check_label_options

        names, _, _ = check_label_options(
            labels, options.get("examples"), options.get("calibrate", False)
        )
        job = {"labels": list(labels), "options": options, "probs": probs}
        if probs:
            meta: Any = pd.DataFrame(
                {"label": pd.Series(dtype=object)}
                | {name: pd.Series(dtype=float) for name in names}
                | {"error": pd.Series(dtype=object)}
            )
        else:
            meta = pd.Series(dtype=object, name="label")
        return self._map(_classify_part, template, self._spec(model, n_seq_max), job, meta)

    def extract(
        self,
        template: str,
        schema: Mapping[str, Any] | type,
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        **options: Any,
    ) -> Any:
        """A lazy DataFrame with a column per top-level property of ``schema`` and
        ``error`` (see ``df.llm.extract``)."""
        from ..tasks.extraction import json_schema

        schema = json_schema(schema)
        props = list(schema.get("properties", {}))
        job = {"schema": schema, "props": props, "options": options}
        meta = pd.DataFrame({c: pd.Series(dtype=object) for c in [*props, "error"]})
        return self._map(_extract_part, template, self._spec(model, n_seq_max), job, meta)


@register_dataframe_accessor("llm")
class DaskFrameAccessor(_DaskAccessor):
    """``ddf.llm``: lazy :meth:`generate`, :meth:`classify` and :meth:`extract` over a Dask
    DataFrame's rows; templates name its columns in ``{braces}``."""

    def __init__(self, frame: Any):
        self._ddf = frame

    def _frame(self) -> Any:
        return self._ddf


@register_series_accessor("llm")
class DaskSeriesAccessor(_DaskAccessor):
    """``dds.llm``: the same over a Dask Series; the template names its values ``{text}``
    (or the Series' name), and defaults to the value itself."""

    def __init__(self, series: Any):
        self._s = series

    def _frame(self) -> Any:
        frame = self._s.to_frame(name="text")
        if self._s.name is not None and str(self._s.name) != "text":
            frame = frame.assign(**{str(self._s.name): frame["text"]})
        return frame

    def generate(self, template: str = "{text}", **kwargs: Any) -> Any:
        return super().generate(template, **kwargs)

    generate.__doc__ = _DaskAccessor.generate.__doc__

    def classify(self, template: str | Sequence[str] = "{text}", labels: Any = None, **kwargs):
        """Label every value (see :meth:`DaskFrameAccessor.classify`)."""
        if labels is None and not isinstance(template, str):
            template, labels = "{text}", template
        if labels is None:
            raise InvalidParameterError("Give the labels, e.g. s.llm.classify(['yes', 'no']).")
        return super().classify(template, labels, **kwargs)

    def extract(self, schema: Any, template: str = "{text}", **kwargs: Any) -> Any:
        """Extract ``schema``'s fields from every value (see
        :meth:`DaskFrameAccessor.extract`)."""
        return super().extract(template, schema, **kwargs)
