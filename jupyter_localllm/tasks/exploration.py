"""``explore()``: run the same annotation task with several models and collect the answers in
localLLM's long and wide formats, ready for :func:`jupyter_localllm.validate`."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import defaults
from ..engine.backend import BackendModel
from ..engine.runner import GenerationContext
from ..engine.sampling import SamplingParams
from ..engine.scoring import check_scoring
from ..errors import BatchInterrupted, InvalidParameterError, LocalLLMError, column_not_found
from ..models import resolve_model, validate_model_file
from ..session.executors import Plan, execute
from ..session.manager import get_manager, model_load, open_context
from ..session.pipeline import BatchRequest
from ..session.sinks import AnnotationSink, annotation_sink_csv
from ..types import Progress, Result, Results
from .classification import LabelSpec, label_frame, label_request
from .generation import check_model, generation_request
from .options import check_count, check_text_option
from .prompts import as_texts, chat_prompts, check_format

if TYPE_CHECKING:
    from ..session.jobs import Job

__all__ = ["Exploration", "ExploreSpec", "Samples", "exploration_plan", "explore", "samples_of"]

_ENGINES = ("auto", "parallel", "single")


@dataclass
class Exploration:
    """The result of :func:`explore`.

    ``annotations``: long format (``sample_id, model_id, label, truth``); ``matrix``: wide
    (one row per sample, one column per model); ``hashes``: per model, the input and output
    SHA-256 of its run; ``details``: per model, the full output (probabilities for labels);
    ``errors``: per model that failed to load or run after others finished, why (its
    finished chunks, if any, stay in ``annotations``; empty when every model ran).
    """

    annotations: pd.DataFrame
    matrix: pd.DataFrame
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict, repr=False)
    errors: dict[str, str] = field(default_factory=dict)

    def validate(self, **kwargs: Any):
        """:func:`jupyter_localllm.validate` on these annotations (gold = ``truth``)."""
        from ..analysis.evaluation import validate

        return validate(self.annotations, **kwargs)


def _models(models: Any) -> list[tuple[str, Any]]:
    if isinstance(models, (str, os.PathLike, BackendModel)):
        models = [models]
    if isinstance(models, Mapping):
        out = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, Iterable):
        out = [(_model_name(m), m) for m in models]
    else:
        raise InvalidParameterError(
            f"models must be a model reference, a list of them or a dict {{name: model}}, "
            f"got {type(models).__name__}."
        )
    if not out:
        raise InvalidParameterError("There are no models to explore; give at least one.")
    if len({n for n, _ in out}) != len(out):
        raise InvalidParameterError("Model names must be unique; pass a dict {name: model}.")
    return out


def _model_name(ref: Any) -> str:
    if isinstance(ref, BackendModel):
        return ref.name
    return Path(str(ref)).stem if str(ref).endswith(".gguf") else str(ref)


def _checked_models(models: list[tuple[str, Any]], reuse_models: bool) -> list[tuple[str, Any]]:
    """Every model reference resolved and its file checked before anything runs: each
    ``(name, ref)`` becomes ``(name, what to load)``, a loaded model, the reference the
    session's model manager already holds under ``name``, or the checked file's path (so a
    download is not looked up twice). Raises the first reference's error, naming it."""
    manager = get_manager()
    out = []
    for name, ref in models:
        if isinstance(ref, BackendModel):
            check_model(ref)  # still open
            out.append((name, ref))
            continue
        if reuse_models and name in manager.aliases and manager.entry(name).ref == str(ref):
            out.append((name, ref))
            continue
        try:
            path = validate_model_file(resolve_model(ref))
        except LocalLLMError as exc:
            exc.args = (f"Model {name!r}: {exc}", *exc.args[1:])
            raise
        out.append((name, str(path)))
    return out


Samples = tuple[list[Any], list[Any], list[Any]]
"""The texts of an exploration, their sample ids and their gold labels."""


def samples_of(
    prompts: Sequence[Any] | None,
    data: pd.DataFrame | None,
    text_column: str,
    truth: str | Sequence[Any] | None,
) -> Samples:
    """The texts, their sample ids and their gold labels (arguments as for :func:`explore`);
    no text at all is an :class:`InvalidParameterError`."""
    if (prompts is None) == (data is None):
        raise InvalidParameterError("Give either prompts or data (with text_column), not both.")
    if data is not None:
        if not isinstance(data, pd.DataFrame):
            raise InvalidParameterError(f"data must be a DataFrame, got {type(data).__name__}.")
        if text_column not in data.columns:
            raise column_not_found(text_column, data.columns)
        texts, sample_ids = data[text_column].tolist(), list(data.index)
    else:
        texts = as_texts(prompts)
        sample_ids = list(range(len(texts)))
    if isinstance(truth, str):
        if data is None or truth not in data.columns:
            raise InvalidParameterError(f"truth column {truth!r} not found in data.")
        gold = data[truth].tolist()
    else:
        gold = list(truth) if truth is not None else [None] * len(texts)
    if len(gold) != len(texts):
        raise InvalidParameterError(f"truth has {len(gold)} values for {len(texts)} texts.")
    if not texts:
        raise InvalidParameterError("There are no texts to annotate; give at least one.")
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


@dataclass(frozen=True)
class ExploreSpec:
    """How :func:`explore` annotates (its options, under the same names), checked once when
    built, before any model loads, and passed down; copy it with :func:`dataclasses.replace`."""

    labels: Sequence[str] | None = None
    """Label each text with one of these by label scoring (:func:`classify`, always a valid
    label); ``None`` generates an answer and takes the first line of the cleaned answer."""

    examples: Any = None
    """Labels: few-shot examples, as for :func:`classify`."""

    instruction: str | None = None
    """The instruction before each text (labels: one naming them when ``None``)."""

    system_prompt: str | None = None
    """The system prompt of a chat model."""

    calibrate: bool | Sequence[str] = False
    """Labels: contextual calibration, as for :func:`classify`."""

    scoring: str = "constrained"
    """Labels: ``"constrained"`` or ``"joint"``, as for :func:`classify`."""

    format: str = "auto"
    """Labels: the prompt format, as for :func:`classify`."""

    engine: str = "auto"
    """``"single"`` runs one row at a time, ``"parallel"``/``"auto"`` ``n_seq_max`` at a time."""

    n_seq_max: int = defaults.N_SEQ_MAX
    """Rows run in parallel on each model (the defaults table's)."""

    batch_size: int | None = None
    """Rows per chunk (a request each); ``None`` is all rows in one."""

    reuse_models: bool = True
    """Keep loaded models in the session's model manager for later calls."""

    clean: bool = defaults.CLEAN
    """Generation: chat-template markers removed before the first line is taken."""

    max_tokens: int = defaults.MAX_TOKENS
    """Generation: most tokens per answer (the defaults table's)."""

    cache: bool | None = None
    """Generation: reuse finished rows from the result cache (``None``: the environment's)."""

    label_spec: LabelSpec | None = field(init=False, default=None, repr=False)
    """The label options as one :class:`LabelSpec` (``None`` when generating)."""

    def __post_init__(self) -> None:
        if self.engine not in _ENGINES:
            raise InvalidParameterError(
                f"engine must be one of {', '.join(_ENGINES)}, got {self.engine!r}."
            )
        for name in ("n_seq_max", "max_tokens"):
            check_count(name, getattr(self, name))
        if self.batch_size is not None:
            check_count("batch_size", self.batch_size)
        check_format(self.format)
        check_scoring(self.scoring)
        check_text_option("instruction", self.instruction)
        check_text_option("system_prompt", self.system_prompt)
        if self.labels is not None:
            spec = LabelSpec(
                self.labels,
                examples=self.examples,
                instruction=self.instruction,
                system_prompt=self.system_prompt,
                format=self.format,
                calibrate=self.calibrate,
                scoring=self.scoring,
            )
            object.__setattr__(self, "label_spec", spec)

    @property
    def sampling(self) -> SamplingParams:
        """The sampling of a generating exploration."""
        return SamplingParams(max_tokens=self.max_tokens)

    @property
    def slots(self) -> int:
        """The sequence slots of each model's context."""
        return 1 if self.engine == "single" else self.n_seq_max


class _Chunks:
    """The requests of one exploration, model by model and chunk by chunk."""

    def __init__(self, texts, sample_ids, gold, spec: ExploreSpec):
        self.texts, self.sample_ids, self.gold, self.spec = texts, sample_ids, gold, spec
        self.chunk = spec.batch_size or len(texts)

    def request(self, ctx: GenerationContext, name: str, start: int) -> BatchRequest:
        """The request for ``texts[start:start + chunk]`` on ``ctx``."""
        part = self.texts[start : start + self.chunk]
        spec = self.spec
        if spec.label_spec is not None:
            request = label_request(ctx, part, spec.label_spec)
        else:
            if ctx.model.chat_template:
                part = chat_prompts(ctx.model, part, spec.system_prompt, spec.instruction)
            request = generation_request(
                ctx, part, sampling=spec.sampling, clean=spec.clean, cache=spec.cache
            )
        request.tag.update(
            model_id=name,
            sample_ids=self.sample_ids[start : start + self.chunk],
            truth=self.gold[start : start + self.chunk],
        )
        return request


def _open(name: str, ref: Any, reuse_models: bool) -> tuple[BackendModel, bool]:
    """The model ``ref`` and whether this exploration must close it."""
    if isinstance(ref, BackendModel):
        return ref, False
    if reuse_models:
        return get_manager().load(ref, alias=name), False
    return model_load(ref), True


class _Collected:
    """What an exploration has so far: annotation frames, hashes, details, errors."""

    def __init__(self, on_result: Callable[[pd.DataFrame], Any] | None):
        self.on_result = on_result
        self.frames: list[pd.DataFrame] = []
        self.hashes: dict[str, dict[str, str]] = {}
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.first_error: LocalLLMError | None = None

    def add(self, name: str, request: BatchRequest, results: Results) -> None:
        """A finished chunk: kept and passed to ``on_result``."""
        scored = request.kind == "score"
        output = label_frame(request, results) if scored else list(results)
        self.details.setdefault(name, []).append(output)
        self.hashes[name] = results.hashes
        frame = pd.DataFrame([_annotation(request, r) for r in results])
        self.frames.append(frame)
        if self.on_result is not None:
            self.on_result(frame)

    def failed(self, name: str, exc: LocalLLMError) -> None:
        """Model ``name`` failed after the checks: noted, the others go on."""
        self.errors[name] = str(exc)
        self.first_error = self.first_error or exc
        warnings.warn(
            f"Model {name!r} failed ({exc}); the exploration goes on with the other models "
            "and lists it in .errors.",
            RuntimeWarning,
            stacklevel=2,
        )

    def exploration(self) -> Exploration:
        """The :class:`Exploration` of what finished (the first error if nothing did)."""
        if not self.frames and self.first_error is not None:
            raise self.first_error
        annotations = pd.concat(self.frames, ignore_index=True)
        matrix = annotations.pivot_table(
            index="sample_id", columns="model_id", values="label", aggfunc="first", sort=False
        )
        matrix.columns.name = None
        return Exploration(annotations, matrix, self.hashes, self.details, self.errors)


def _steps(
    models: list[tuple[str, Any]],
    chunks: _Chunks,
    collected: _Collected,
) -> Generator[BatchRequest, Results, Exploration]:
    reuse_models = chunks.spec.reuse_models
    for name, ref in models:
        try:
            model, owned = _open(name, ref, reuse_models)
        except BatchInterrupted:
            raise
        except LocalLLMError as exc:  # llama.cpp refused a file that passed the checks
            collected.failed(name, exc)
            continue
        ctx = open_context(model, n_seq_max=chunks.spec.slots)
        try:
            for start in range(0, len(chunks.texts), chunks.chunk):
                request = chunks.request(ctx, name, start)
                collected.add(name, request, (yield request))
        finally:
            ctx.close()
            if owned:
                model.close()
    return collected.exploration()


def exploration_plan(
    models: Any,
    samples: Samples,
    spec: ExploreSpec,
    *,
    sink: str | os.PathLike | AnnotationSink | None = None,
    on_result: Callable[[pd.DataFrame], Any] | None = None,
) -> Plan[Exploration]:
    """The plan of :func:`explore` over ``samples`` (:func:`samples_of` its texts) as
    ``spec`` says (other arguments as there)."""
    texts, sample_ids, gold = samples
    model_list = _checked_models(_models(models), spec.reuse_models)
    chunks = _Chunks(texts, sample_ids, gold, spec)
    plan = Plan(
        _steps(model_list, chunks, _Collected(on_result)),
        total=len(model_list) * len(texts),
        desc="explore",
        view=_annotation,
    )
    if sink is None:
        return plan
    columns = ["sample_id", "model_id", "label", "truth"]
    return annotation_sink_csv(sink).attach(plan, columns, key=("sample_id", "model_id"))


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
    n_seq_max: int = defaults.N_SEQ_MAX,
    batch_size: int | None = None,
    reuse_models: bool = True,
    sink: str | os.PathLike | AnnotationSink | None = None,
    clean: bool = defaults.CLEAN,
    max_tokens: int = defaults.MAX_TOKENS,
    cache: bool | None = None,
    progress: bool | Callable[[Progress], Any] | None = None,
    on_result: Callable[[pd.DataFrame], Any] | None = None,
    cancel: threading.Event | None = None,
    background: bool = False,
    cluster: Any = None,
) -> Exploration | Job:
    """Annotate the same texts with every model in ``models`` (references such as
    ``"default"``, paths, ``ollama:…``; loaded models; or a dict ``{name: model}``).

    Texts come from ``prompts`` or ``data[text_column]``; ``truth`` (a column of ``data`` or
    a list) fills the ``truth`` column. How each model annotates (``labels`` and their
    options, or generation) is documented on :class:`ExploreSpec`. ``sink`` (a CSV path or
    :func:`annotation_sink_csv`) gets each annotation row as it finishes. Every model file is
    checked before the first model runs; one that llama.cpp then refuses is skipped with a
    warning and named in :attr:`Exploration.errors`. ``progress``, ``cancel``, ``background``
    and ``cluster`` as in :func:`generate_parallel` (one result per annotation row);
    ``on_result`` gets each finished chunk's annotations (long format).
    """
    spec = ExploreSpec(
        labels,
        examples=examples,
        instruction=instruction,
        system_prompt=system_prompt,
        calibrate=calibrate,
        scoring=scoring,
        format=format,
        engine=engine,
        n_seq_max=n_seq_max,
        batch_size=batch_size,
        reuse_models=reuse_models,
        clean=clean,
        max_tokens=max_tokens,
        cache=cache,
    )
    plan = exploration_plan(
        models, samples_of(prompts, data, text_column, truth), spec, sink=sink, on_result=on_result
    )
    return execute(plan, background=background, progress=progress, cancel=cancel, cluster=cluster)
