"""``explore()``: run the same annotation task with several models and collect the answers in
localLLM's long and wide formats, ready for :func:`jupyter_localllm.validate`."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..engine.llama import Model
from ..engine.scoring import check_scoring
from ..errors import InvalidParameterError
from ..session.manager import get_manager, open_context
from ..session.sinks import progress_callback
from ..types import Progress

if TYPE_CHECKING:
    from ..session.jobs import Job

__all__ = ["Exploration", "explore"]

_ENGINES = ("auto", "parallel", "single")


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


def _chat_prompts(
    model: Model, texts: Sequence[Any], instruction: str | None, system_prompt: str | None
) -> list[Any]:
    """Each text as a user turn (after ``instruction``) in the model's chat template."""
    from .generation import apply_chat_template

    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    user = (lambda t: f"{instruction}\n\n{t}") if instruction else (lambda t: t)
    return [
        apply_chat_template(model, [*head, {"role": "user", "content": user(t)}])
        if isinstance(t, str) and t.strip() and model.chat_template
        else t
        for t in texts
    ]


class _Tally:
    """Progress events of a whole exploration, made from those of its chunk runs."""

    def __init__(self, report: Callable[[Progress], Any] | None, total: int):
        self.report, self.total = report, total
        self.done = self.errors = self.tokens = 0
        self.last: Progress | None = None
        self.t_start = time.perf_counter()

    def chunk(self, size: int) -> Callable[[Progress], None] | bool:
        """The ``progress=`` argument for a run over ``size`` rows."""
        if self.report is None:
            return False
        self.last = None

        def forward(ev: Progress) -> None:
            self.last = ev
            self.report(
                Progress(
                    self.done + size - ev.total + ev.done,  # rows from the cache count as done
                    self.total,
                    self.errors + ev.errors,
                    self.tokens + ev.generated_tokens,
                    time.perf_counter() - self.t_start,
                )
            )

        return forward

    def chunk_done(self, size: int) -> None:
        """Count a finished run over ``size`` rows."""
        self.done += size
        if self.last is not None:
            self.errors += self.last.errors
            self.tokens += self.last.generated_tokens


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
    ``cancel`` stops the run. ``background=True`` returns a
    :class:`~jupyter_localllm.jobs.Job` at once: ``job.partial()`` holds the finished
    annotation rows (``{row: dict}``, numbered as in ``annotations``), ``job.result()`` the
    :class:`Exploration`.
    """
    call = dict(locals())  # the arguments as given, for a background run
    from .classification import classify
    from .generation import generate_parallel

    check_scoring(scoring)  # before any model loads
    if engine not in _ENGINES:
        raise InvalidParameterError(f"engine must be one of {', '.join(_ENGINES)}, got {engine!r}.")
    if (prompts is None) == (data is None):
        raise InvalidParameterError("Give either prompts or data (with text_column), not both.")
    if data is not None:
        if text_column not in data.columns:
            raise InvalidParameterError(
                f"Column {text_column!r} not found; columns are "
                f"{', '.join(map(str, data.columns))}."
            )
        texts = data[text_column].tolist()
        sample_ids = list(data.index)
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
    if background:
        return _in_background(call, texts, len(_models(models)) * len(texts))
    slots = 1 if engine == "single" else n_seq_max
    chunk = batch_size or max(1, len(texts))
    sink_path = Path(sink) if sink is not None else None
    if sink_path is not None and sink_path.exists():
        sink_path.unlink()  # a fresh file for this run

    manager = get_manager()
    frames, hashes, details = [], {}, {}
    model_list = _models(models)
    report, close_bar = progress_callback(progress, len(model_list) * len(texts), "explore")
    tally = _Tally(report, len(model_list) * len(texts))
    failed = True
    try:
        for name, ref in model_list:
            if isinstance(ref, Model):
                model, loaded_here = ref, False
            else:
                model = manager.load(ref, alias=name) if reuse_models else None
                loaded_here = not reuse_models
                if model is None:
                    from ..session.manager import open_model

                    model = open_model(ref)
            ctx = open_context(model, n_seq_max=slots)
            try:
                outputs: list[Any] = []
                for start in range(0, len(texts), chunk):
                    part = texts[start : start + chunk]
                    if labels is not None:
                        res = classify(
                            ctx,
                            part,
                            labels,
                            instruction=instruction,
                            examples=examples,
                            system_prompt=system_prompt,
                            calibrate=calibrate,
                            scoring=scoring,
                            format=format,
                            progress=tally.chunk(len(part)),
                            cancel=cancel,
                        )
                        got = res.label.tolist()
                        outputs.append(res)
                        hashes[name] = res.attrs["hashes"]
                    else:
                        res = generate_parallel(
                            ctx,
                            _chat_prompts(model, part, instruction, system_prompt),
                            max_tokens=max_tokens,
                            clean=clean,
                            progress=tally.chunk(len(part)),
                            cancel=cancel,
                            cache=cache,
                        )
                        got = [r.strip().split("\n")[0].strip() if r.ok else None for r in res]
                        outputs.append(list(res))
                        hashes[name] = res.hashes
                    tally.chunk_done(len(part))
                    frame = pd.DataFrame(
                        {
                            "sample_id": sample_ids[start : start + chunk],
                            "model_id": name,
                            "label": got,
                            "truth": gold[start : start + chunk],
                        }
                    )
                    frames.append(frame)
                    if sink_path is not None:
                        header = not sink_path.exists()
                        frame.to_csv(sink_path, mode="a", header=header, index=False)
                    if on_result is not None:
                        on_result(frame)
                details[name] = outputs
            finally:
                ctx.close()
                if loaded_here:
                    model.close()
        failed = False
    finally:
        close_bar(failed)
    annotations = pd.concat(frames, ignore_index=True)
    matrix = annotations.pivot_table(
        index="sample_id", columns="model_id", values="label", aggfunc="first", sort=False
    )
    matrix.columns.name = None
    return Exploration(annotations, matrix, hashes, details)


def _in_background(call: dict[str, Any], texts: list[Any], total: int) -> Job:
    """Start ``explore(**call)`` as a :class:`Job` whose rows are the annotation rows."""
    from ..session.jobs import start_job, tee_progress

    progress, user_on_result = call["progress"], call["on_result"]

    def work(cancel: threading.Event, deliver: Callable, report: Callable) -> Exploration:
        rows = itertools.count()

        def on_chunk(frame: pd.DataFrame) -> None:
            for record in frame.to_dict("records"):
                deliver(record, next(rows))
            if user_on_result is not None:
                user_on_result(frame)

        kwargs = {**call, "background": False, "on_result": on_chunk, "cancel": cancel}
        kwargs["progress"] = tee_progress(report, progress)
        return explore(**kwargs)

    if call["prompts"] is not None:
        call["prompts"] = texts  # a generator is spent by now
    return start_job(
        work,
        total=total,
        desc="explore",
        progress=None if callable(progress) else progress,
        cancel=call["cancel"],
    )
