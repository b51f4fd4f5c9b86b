"""``explore()``: run the same annotation task with several models and collect the answers in
localLLM's long and wide formats, ready for :func:`jupyter_localllm.validate`."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..engine.llama import Model
from ..engine.runner import GenerationContext
from ..engine.scoring import check_scoring
from ..errors import InvalidParameterError
from ..session.executors import Plan, execute
from ..session.manager import get_manager, model_load, open_context
from ..session.pipeline import BatchRequest
from ..types import Progress, Result, Results
from .classification import label_frame, label_request
from .generation import generation_request
from .prompts import chat_prompts

if TYPE_CHECKING:
    from ..session.jobs import Job

__all__ = ["Exploration", "exploration_plan", "explore"]

_ENGINES = ("auto", "parallel", "single")
_RUN_ARGUMENTS = ("progress", "cancel", "background")  # how explore() runs its plan


@dataclass
class Exploration:
    """The result of :func:`explore`.

    ``annotations``: long format (``sample_id, model_id, label, truth``); ``matrix``: wide
    (one row per sample, one column per model); ``hashes``: per model, the input and output
    SHA-256 of its run; ``details``: per model, the full output (probabilities for labels).
    """

    annotations: pd.DataFrame
    matrix: pd.DataFrame
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self, **kwargs: Any):
        """:func:`jupyter_localllm.validate` on these annotations (gold = ``truth``)."""
        from ..analysis.evaluation import validate

        return validate(self.annotations, **kwargs)


def _models(models: Any) -> list[tuple[str, Any]]:
    if isinstance(models, (str, Model)):
        models = [models]
    if isinstance(models, Mapping):
        return [(str(k), v) for k, v in models.items()]
    out = []
    for m in models:
        name = (
            m.name
            if isinstance(m, Model)
            else Path(str(m)).stem
            if str(m).endswith(".gguf")
            else str(m)
        )
        out.append((name, m))
    if len({n for n, _ in out}) != len(out):
        raise InvalidParameterError("Model names must be unique; pass a dict {name: model}.")
    return out


def _texts(
    prompts: Sequence[Any] | None,
    data: pd.DataFrame | None,
    text_column: str,
    truth: str | Sequence[Any] | None,
) -> tuple[list[Any], list[Any], list[Any]]:
    """The texts, their sample ids and their gold labels."""
    if (prompts is None) == (data is None):
        raise InvalidParameterError("Give either prompts or data (with text_column), not both.")
    if data is not None:
        if text_column not in data.columns:
            raise InvalidParameterError(
                f"Column {text_column!r} not found; columns are "
                f"{', '.join(map(str, data.columns))}."
            )
        texts, sample_ids = data[text_column].tolist(), list(data.index)
    else:
        texts = list(prompts)
        sample_ids = list(range(len(texts)))
    if isinstance(truth, str):
        if data is None or truth not in data.columns:
            raise InvalidParameterError(f"truth column {truth!r} not found in data.")
        gold = data[truth].tolist()
    else:
        gold = list(truth) if truth is not None else [None] * len(texts)
    if len(gold) != len(texts):
        raise InvalidParameterError(f"truth has {len(gold)} values for {len(texts)} texts.")
    return texts, sample_ids, gold


def _label_of(request: BatchRequest, result: Result) -> str | None:
    """A row's annotation: the scored label, or the first line of the generated answer."""
    if not result.ok:
        return None
    return str(result) if request.kind == "score" else result.strip().split("\n")[0].strip()


def _annotation(request: BatchRequest, result: Result) -> dict[str, Any]:
    """A finished row as an annotation record (``sample_id, model_id, label, truth``)."""
    tag = request.tag
    return {
        "sample_id": tag["sample_ids"][result.row],
        "model_id": tag["model_id"],
        "label": _label_of(request, result),
        "truth": tag["truth"][result.row],
    }


class _Chunks:
    """The requests of one exploration, model by model and chunk by chunk."""

    def __init__(self, texts, sample_ids, gold, labels, options, chunk, slots):
        self.texts, self.sample_ids, self.gold = texts, sample_ids, gold
        self.labels, self.options, self.chunk, self.slots = labels, options, chunk, slots

    def request(self, ctx: GenerationContext, name: str, start: int) -> BatchRequest:
        """The request for ``texts[start:start + chunk]`` on ``ctx``."""
        part = self.texts[start : start + self.chunk]
        opts = self.options
        if self.labels is not None:
            keys = ("instruction", "examples", "system_prompt", "calibrate", "scoring", "format")
            request = label_request(ctx, part, self.labels, **{k: opts[k] for k in keys})
        else:
            if ctx.model.chat_template:
                part = chat_prompts(ctx.model, part, opts["system_prompt"], opts["instruction"])
            request = generation_request(
                ctx, part, max_tokens=opts["max_tokens"], clean=opts["clean"], cache=opts["cache"]
            )
        request.tag.update(
            model_id=name,
            sample_ids=self.sample_ids[start : start + self.chunk],
            truth=self.gold[start : start + self.chunk],
        )
        return request


def _open(name: str, ref: Any, reuse_models: bool) -> tuple[Model, bool]:
    """The model ``ref`` and whether this exploration must close it."""
    if isinstance(ref, Model):
        return ref, False
    if reuse_models:
        return get_manager().load(ref, alias=name), False
    return model_load(ref), True


def _steps(
    models: list[tuple[str, Any]],
    chunks: _Chunks,
    reuse_models: bool,
    sink_path: Path | None,
    on_result: Callable[[pd.DataFrame], Any] | None,
) -> Generator[BatchRequest, Results, Exploration]:
    frames, hashes, details = [], {}, {}
    for name, ref in models:
        model, owned = _open(name, ref, reuse_models)
        ctx = open_context(model, n_seq_max=chunks.slots)
        try:
            outputs: list[Any] = []
            for start in range(0, len(chunks.texts), chunks.chunk):
                request = chunks.request(ctx, name, start)
                results = yield request
                scored = request.kind == "score"
                outputs.append(label_frame(request, results) if scored else list(results))
                hashes[name] = results.hashes
                frame = pd.DataFrame([_annotation(request, r) for r in results])
                frames.append(frame)
                if sink_path is not None:
                    frame.to_csv(sink_path, mode="a", header=not sink_path.exists(), index=False)
                if on_result is not None:
                    on_result(frame)
            details[name] = outputs
        finally:
            ctx.close()
            if owned:
                model.close()
    annotations = pd.concat(frames, ignore_index=True)
    matrix = annotations.pivot_table(
        index="sample_id", columns="model_id", values="label", aggfunc="first", sort=False
    )
    matrix.columns.name = None
    return Exploration(annotations, matrix, hashes, details)


def exploration_plan(
    models: Any,
    prompts: Sequence[str] | None = None,
    *,
    data: pd.DataFrame | None = None,
    text_column: str = "text",
    truth: str | Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
    engine: str = "auto",
    n_seq_max: int = 8,
    batch_size: int | None = None,
    reuse_models: bool = True,
    sink: str | os.PathLike | None = None,
    on_result: Callable[[pd.DataFrame], Any] | None = None,
    **options: Any,
) -> Plan[Exploration]:
    """The plan of :func:`explore` (arguments as there; ``options`` are its instruction,
    examples, system_prompt, calibrate, scoring, format, clean, max_tokens and cache)."""
    check_scoring(options["scoring"])  # before any model loads
    if engine not in _ENGINES:
        raise InvalidParameterError(f"engine must be one of {', '.join(_ENGINES)}, got {engine!r}.")
    texts, sample_ids, gold = _texts(prompts, data, text_column, truth)
    model_list = _models(models)
    if not texts:
        raise InvalidParameterError("There are no texts to annotate; give at least one.")
    slots = 1 if engine == "single" else n_seq_max
    chunks = _Chunks(texts, sample_ids, gold, labels, options, batch_size or len(texts), slots)
    sink_path = Path(sink) if sink is not None else None
    if sink_path is not None and sink_path.exists():
        sink_path.unlink()  # a fresh file for this run
    return Plan(
        _steps(model_list, chunks, reuse_models, sink_path, on_result),
        total=len(model_list) * len(texts),
        desc="explore",
        view=_annotation,
    )


def explore(
    models: Any,
    prompts: Sequence[str] | None = None,
    *,
    data: pd.DataFrame | None = None,
    text_column: str = "text",
    truth: str | Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
    instruction: str | None = None,
    examples: Any = None,
    system_prompt: str | None = None,
    calibrate: bool | Sequence[str] = False,
    scoring: str = "constrained",
    format: str = "auto",
    engine: str = "auto",
    n_seq_max: int = 8,
    batch_size: int | None = None,
    reuse_models: bool = True,
    sink: str | os.PathLike | None = None,
    clean: bool = True,
    max_tokens: int = 16,
    cache: bool | None = None,
    progress: bool | Callable[[Progress], Any] | None = None,
    on_result: Callable[[pd.DataFrame], Any] | None = None,
    cancel: threading.Event | None = None,
    background: bool = False,
) -> Exploration | Job:
    """Annotate the same texts with every model in ``models``.

    ``models``: references (``"default"``, paths, ``ollama:…``), loaded models, or a dict
    ``{name: model}``. Texts come from ``prompts`` or ``data[text_column]``; ``truth`` (a
    column of ``data`` or a list) fills the ``truth`` column for validation.

    With ``labels``, each model labels by label scoring (:func:`classify`, always a valid
    label, with ``instruction``, ``examples``, ``calibrate``, ``scoring`` and ``format`` as
    there); without, it generates (``max_tokens``)
    and the first line of the cleaned answer is the label. ``engine="single"`` runs one row
    at a time, ``"parallel"``/``"auto"`` ``n_seq_max`` at a time. Rows go in chunks of
    ``batch_size`` (default: all); with ``sink`` (a CSV path) each finished chunk is appended
    to the file at once, so a long run leaves its results on disk as it goes.
    ``reuse_models`` keeps loaded models in the session's model manager for later calls.

    ``progress`` shows one bar over all models (see :func:`generate_parallel`);
    ``on_result`` is called with each finished chunk's annotations (long format); setting
    ``cancel`` (or Ctrl-C) stops the run with :class:`BatchInterrupted` whose ``results``
    hold one result per annotation row. ``background=True`` returns a
    :class:`~jupyter_localllm.Job` at once: ``job.partial()`` holds the finished
    annotation rows (``{row: dict}``, numbered as in ``annotations``), ``job.result()`` the
    :class:`Exploration`.
    """
    # every other argument is the plan's, under the same name
    options = {k: v for k, v in locals().items() if k not in _RUN_ARGUMENTS}
    plan = exploration_plan(**options)
    return execute(plan, background=background, progress=progress, cancel=cancel)
