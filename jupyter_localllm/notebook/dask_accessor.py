"""The ``ddf.llm`` and ``dds.llm`` accessors for Dask DataFrames and Series: the pandas
accessors' ``generate``, ``classify`` and ``extract``, and the map-like ``filter`` and
``embed``, lazy.

Each returns a Dask Series or DataFrame (``map_partitions`` with its ``meta``); computing it
runs every partition where Dask runs it (on a cluster: the workers) through the DataFrame
task ``df.llm`` runs (:func:`~jupyter_localllm.tasks.frames.run_partition`: the same rows,
prompts and pipeline as in the kernel), on the process's one copy of the model, loaded
from its file on first use and kept (:mod:`~jupyter_localllm.session.cluster_worker`). Rows
take their seeds from their place in the whole frame, so sampled answers do not depend on the
partitioning.
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
from typing import Any

import dask
import pandas as pd
from dask.dataframe.extensions import register_dataframe_accessor, register_series_accessor

from .. import defaults
from ..errors import InvalidParameterError
from ..tasks.frames import FrameJob, partition_offsets, run_partition
from ..tasks.rows import frame_rows
from .accessor import _cache
from .config import get_settings

__all__ = ["DaskFrameAccessor", "DaskSeriesAccessor"]


# -- the accessors (each partition runs :func:`~jupyter_localllm.tasks.frames.run_partition`) --
class _DaskAccessor:
    """Shared body of the Dask DataFrame and Series accessors."""

    def _frame(self) -> Any:
        raise NotImplementedError

    def _spec(self, model: Any, n_seq_max: int | None) -> Any:
        from ..session.cluster import model_spec

        return model_spec(model, n_seq_max=n_seq_max, **get_settings().context_options())

    def _map(self, job: FrameJob, spec: Any, meta: Any) -> Any:
        """``job`` over every partition, lazily, with the partitions' first rows."""
        frame = self._frame()
        job.rows(pd.DataFrame(columns=list(frame.columns)))  # the template checked now
        offsets = dask.delayed(partition_offsets)(frame.map_partitions(len).to_delayed())
        return frame.map_partitions(run_partition, offsets, spec, job, meta=meta)

    def generate(
        self,
        template: str,
        *,
        model: Any = None,
        system_prompt: str | None = None,
        format: str = "auto",
        n_seq_max: int | None = None,
        clean: bool = defaults.CLEAN,
        cache: bool | None = None,
        **sampling: Any,
    ) -> Any:
        """A lazy Series of answers, one per row (see ``df.llm.generate``; no ``out``:
        assign the result, ``ddf["answer"] = ddf.llm.generate(...)``)."""
        if "sampling" not in sampling:
            sampling = get_settings().sampling(**sampling)
        options = {"system_prompt": system_prompt, "format": format, "clean": clean}
        job = FrameJob(
            "generate", template, options={**options, "cache": _cache(cache), **sampling}
        )
        meta = pd.Series(dtype=object, name="llm")
        return self._map(job, self._spec(model, n_seq_max), meta)

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
        from ..tasks.classification import LabelSpec

        spec = LabelSpec.from_kwargs(labels, **options)  # checked now, not on the workers
        names = spec.labels
        job = FrameJob("classify", template, (spec,), {"probs": probs})
        if probs:
            meta: Any = pd.DataFrame(
                {"label": pd.Series(dtype=object)}
                | {name: pd.Series(dtype=float) for name in names}
                | {"error": pd.Series(dtype=object)}
            )
        else:
            meta = pd.Series(dtype=object, name="label")
        return self._map(job, self._spec(model, n_seq_max), meta)

    def extract(
        self,
        template: str,
        schema: Mapping[str, Any] | type,
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        cache: bool | None = None,
        **options: Any,
    ) -> Any:
        """A lazy DataFrame with a column per top-level property of ``schema`` and
        ``error`` (see ``df.llm.extract``)."""
        from ..tasks.extraction import ExtractSpec

        if "sampling" not in options:
            options = get_settings().sampling(**options)
        spec = ExtractSpec.from_kwargs(schema, **options)  # checked now, not on the workers
        props = spec.properties
        job = FrameJob("extract", template, (spec,), {"cache": _cache(cache)})
        meta = pd.DataFrame({c: pd.Series(dtype=object) for c in [*props, "error"]})
        return self._map(job, self._spec(model, n_seq_max), meta)

    def filter(
        self,
        predicate: str,
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        threshold: float = 0.5,
        probs: bool = False,
        return_all: bool = False,
        cache: bool | None = None,
        **options: Any,
    ) -> Any:
        """A lazy frame of the rows for which ``predicate`` holds, each partition filtered
        where it runs (see ``df.llm.filter``; a map-like operator, so partitions are
        independent; cascades need the whole frame and are not offered here)."""
        from ..tasks.operators.common import split_cascade, yes_no_spec
        from ..tasks.operators.filter import (
            FILTER_INSTRUCTION,
            FilterJob,
            FilterOptions,
            filter_partition,
        )

        if split_cascade(dict(options)):
            raise InvalidParameterError(
                "ddf.llm.filter runs each partition alone and cannot run a cascade; compute "
                "the frame and use df.llm.filter."
            )
        spec = yes_no_spec(FILTER_INSTRUCTION, options)  # checked now, not on the workers
        job = FilterJob(predicate, spec, FilterOptions(threshold, probs, return_all), _cache(cache))
        meta = pd.DataFrame({c: pd.Series(dtype=t) for c, t in self._frame().dtypes.items()})
        if return_all:
            meta["passed"] = pd.Series(dtype="boolean")
        if probs:
            meta["prob"] = pd.Series(dtype=float)
        if return_all:
            meta["error"] = pd.Series(dtype=object)
        return self._map_job(filter_partition, predicate, job, model, n_seq_max, meta)

    def embed(
        self,
        template: str = "{text}",
        *,
        model: Any = None,
        n_seq_max: int | None = None,
        **options: Any,
    ) -> Any:
        """A lazy Series of each row's embedding (float32 vectors), each partition embedded
        where it runs (see ``df.llm.embed``; ``normalize``, ``pooling``, ``cache``)."""
        if "cache" in options:
            options["cache"] = _cache(options["cache"])
        job = (template, options)
        meta = pd.Series(dtype=object, name=options.get("name") or "embedding")
        return self._map_job(embed_partition, template, job, model, n_seq_max, meta)

    def _map_job(
        self, function: Any, template: str, job: Any, model: Any, n_seq_max: int | None, meta: Any
    ) -> Any:
        """``function(partition, offsets, spec, job)`` over every partition, lazily."""
        frame = self._frame()
        frame_rows(pd.DataFrame(columns=list(frame.columns)), template)  # checked now
        offsets = dask.delayed(partition_offsets)(frame.map_partitions(len).to_delayed())
        spec = self._spec(model, n_seq_max)
        return frame.map_partitions(function, offsets, spec, job, meta=meta)


def embed_partition(
    part: pd.DataFrame,
    offsets: list[int],
    spec: Any,
    job: tuple[str, dict[str, Any]],
    partition_info: dict | None = None,
) -> pd.Series:
    """One partition's embeddings on this process's copy of the model."""
    from ..session.cluster_worker import run_plan_here, worker_context
    from ..tasks.embedding import embed_rows

    template, options = job
    offset = offsets[partition_info["number"]] if partition_info else 0
    plan = embed_rows(worker_context(spec), frame_rows(part, template), **options)
    value = run_plan_here(plan, offset)
    value.attrs = {}
    return value


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
