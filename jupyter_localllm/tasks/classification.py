"""``classify``: pick one of a set of labels for each text by label scoring, with
probabilities. A short builder of a ``"score"``
:class:`~jupyter_localllm.session.pipeline.BatchRequest`; the session runs it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..engine.runner import GenerationContext
from ..engine.scoring import check_label_sizes, check_scoring
from ..errors import InvalidParameterError, PromptError
from ..session.executors import Plan, execute, single
from ..session.pipeline import BatchRequest
from ..session.sinks import rows_to_sink
from ..types import Progress, Result, Results
from .calibration import contextual_calibration
from .generation import check_context
from .options import check_text_option, checked_names, field_names
from .prompts import as_texts, check_format, render_prompt, render_rows, resolve_format

if TYPE_CHECKING:
    from ..session.jobs import Job

__all__ = [
    "CONTENT_FREE",
    "LabelSpec",
    "cascade_classify",
    "classify",
    "classify_plan",
    "label_frame",
    "label_request",
]

# The content-free input of contextual calibration (Zhao et al. 2021). The paper averages
# "N/A", "[MASK]" and "", which measured worse here with SmolLM2 (AG News 4-shot: 49% vs 53%;
# tweets: 49% vs 52%), so one is the default and a list can be given.
CONTENT_FREE = ("N/A",)


def _content_free(calibrate: bool | Sequence[str]) -> list[str]:
    if calibrate is True:
        return list(CONTENT_FREE)
    if calibrate is False or calibrate is None:
        return []
    texts = list(calibrate) if isinstance(calibrate, (list, tuple)) else None
    if texts is None or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InvalidParameterError(
            "calibrate must be True, False or a list of content-free texts like ['N/A']."
        )
    return texts


_EXAMPLES_FORM = (
    "give examples as (text, label) pairs, dicts with 'text' and 'label', or a DataFrame "
    "with those columns"
)


def _example_pair(example: Any, index: int) -> tuple[Any, Any]:
    """One example as ``(text, label)``; a malformed one is an :class:`InvalidParameterError`."""
    if isinstance(example, Mapping):
        if "text" not in example or "label" not in example:
            keys = ", ".join(map(repr, example)) or "none"
            raise InvalidParameterError(
                f"Example {index} has keys {keys} but needs 'text' and 'label'; {_EXAMPLES_FORM}."
            )
        return example["text"], example["label"]
    if isinstance(example, (str, bytes)) or not isinstance(example, Sequence) or len(example) != 2:
        raise InvalidParameterError(f"Example {index} is {example!r}; {_EXAMPLES_FORM}.")
    return example[0], example[1]


def _normalize_examples(examples: Any, labels: Sequence[str]) -> list[tuple[str, str]]:
    if examples is None:
        return []
    if isinstance(examples, pd.DataFrame):
        missing = {"text", "label"} - set(examples.columns)
        if missing:
            raise InvalidParameterError(
                "examples needs columns 'text' and 'label'; columns are "
                f"{', '.join(map(str, examples.columns))}."
            )
        pairs = list(zip(examples["text"], examples["label"], strict=True))
    elif isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Iterable):
        raise InvalidParameterError(f"examples is a {type(examples).__name__}; {_EXAMPLES_FORM}.")
    else:
        pairs = [_example_pair(e, i) for i, e in enumerate(examples)]
    for text, label in pairs:
        if str(label) not in labels:
            raise InvalidParameterError(
                f"Example label {label!r} is not one of the labels ({', '.join(labels)})."
            )
        if not isinstance(text, str):
            raise InvalidParameterError("Example texts must be strings.")
    return [(str(t), str(lab)) for t, lab in pairs]


def _check_labels(labels: Any) -> list[str]:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise InvalidParameterError(
            f"labels must be a list of label names like ['positive', 'negative'], got {labels!r}."
        )
    labels = list(labels)
    if not all(isinstance(lab, (str, int)) and not isinstance(lab, bool) for lab in labels):
        raise InvalidParameterError(f"Labels must be strings, got {labels!r}.")
    labels = [str(lab) for lab in labels]
    check_label_sizes(labels)
    if any(not lab.strip() for lab in labels):
        raise InvalidParameterError(f"Labels cannot be empty or blank, got {labels!r}.")
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InvalidParameterError("labels must hold at least two distinct labels.")
    if "label" in labels or "error" in labels:
        raise InvalidParameterError('Labels cannot be named "label" or "error".')
    return labels


@dataclass(frozen=True)
class LabelSpec:
    """What :func:`classify` asks of every row, checked once when built (a bad option is an
    :class:`InvalidParameterError` before any model runs). Each public function that labels
    (``classify``, ``explore``, ``df.llm.classify``, ``ddf.llm.classify``, the command) builds
    one and passes it down; copy it with :func:`dataclasses.replace`. Picklable, so Dask
    sends it to workers."""

    labels: tuple[str, ...]
    """The label names: at least two, distinct, none blank (ints become strings)."""

    examples: tuple[tuple[str, str], ...] = ()
    """Few-shot examples as ``(text, label)`` pairs; given as pairs, dicts with ``text`` and
    ``label``, or a DataFrame with those columns. Each label must be one of ``labels``."""

    instruction: str | None = None
    """The instruction before each text; ``None`` is one naming the labels (none for
    ``format="raw"``)."""

    system_prompt: str | None = None
    """The system prompt (``"chat"``), or the first paragraph (``"plain"``)."""

    format: str = "auto"
    """``"chat"``, ``"plain"``, ``"raw"``, or ``"auto"``: chat when the model has a template."""

    calibrate: tuple[str, ...] = ()
    """The content-free texts of contextual calibration: ``True`` is ``("N/A",)``, ``False``
    none (no calibration)."""

    scoring: str = "constrained"
    """``"constrained"`` gives each label the probability that decoding constrained to the
    labels produces it: only the points where labels part count, so labels that differ in
    their first token cost one prompt pass and nothing more. ``"joint"`` uses each label's
    full token-sequence probability (a decode step per extra token; longer labels score
    lower)."""

    def __post_init__(self) -> None:
        labels = _check_labels(self.labels)
        object.__setattr__(self, "labels", tuple(labels))
        object.__setattr__(self, "examples", tuple(_normalize_examples(self.examples, labels)))
        object.__setattr__(self, "calibrate", tuple(_content_free(self.calibrate)))
        check_text_option("instruction", self.instruction)
        check_text_option("system_prompt", self.system_prompt)
        check_format(self.format)
        check_scoring(self.scoring)

    @classmethod
    def from_kwargs(cls, labels: Any, **options: Any) -> LabelSpec:
        """The spec of ``labels`` with ``options`` by name (a front-end's keywords); an
        unknown name is an :class:`InvalidParameterError` naming the accepted ones."""
        return cls(labels, **checked_names("classify", field_names(cls), options))


def _instruction(spec: LabelSpec, fmt: str) -> str | None:
    """The instruction used in format ``fmt``: the spec's, or one naming the labels."""
    if spec.instruction is None and fmt != "raw":
        return (
            "Classify the text into exactly one of these categories: "
            f"{', '.join(spec.labels)}. Answer with the category name only."
        )
    return spec.instruction


def label_request(
    context: GenerationContext,
    texts: Sequence[Any],
    spec: LabelSpec,
    *,
    errors: Mapping[int, str] | None = None,
    cache: bool | None = None,
) -> BatchRequest:
    """The label-scoring request of :func:`classify` (``errors`` marks rows known to be bad,
    with their messages; ``cache=True`` uses the result cache)."""
    check_context(context)
    model = context.model
    texts = as_texts(texts)
    labels, shots, system_prompt = list(spec.labels), list(spec.examples), spec.system_prompt
    fmt = resolve_format(model, spec.format)
    instruction = _instruction(spec, fmt)
    _check_shared_part(context, fmt, instruction, system_prompt, shots)
    rows, bad = render_rows(model, fmt, texts, instruction, system_prompt, shots)
    # Chat replies start right after the template's newline; plain prompts end with "Answer:"
    # and the label follows after a space.
    first = next((r for r in rows if r is not None), "")
    glued = fmt == "chat" or (fmt == "raw" and first[-1:].isspace())
    return BatchRequest(
        context,
        rows,
        kind="score",
        labels=labels,
        label_prefix="" if glued else " ",
        scoring=spec.scoring,
        calibration=[
            render_prompt(model, fmt, t, instruction, system_prompt, shots) for t in spec.calibrate
        ],
        calibrate=contextual_calibration,
        errors={**bad, **(errors or {})},
        cache=cache,
        what="text",
        function="classify",
        log_params={
            "labels": labels,
            "instruction": instruction,
            "system_prompt": system_prompt,
            "examples": shots,
            "format": fmt,
            "calibrate": list(spec.calibrate),
            "scoring": spec.scoring,
            "n_seq_max": context.n_seq_max,
        },
        tag={"texts": texts},
    )


def _check_shared_part(
    context: GenerationContext,
    fmt: str,
    instruction: str | None,
    system_prompt: str | None,
    shots: list[tuple[str, str]],
) -> None:
    """Raise :class:`PromptError` when what every row repeats (system prompt, instruction,
    examples) does not fit the context alone: every row would fail, each after rendering and
    tokenizing it. Sizes by characters first, so a huge set of examples is never rendered."""
    parts = [system_prompt or "", instruction or "", *(t + lab for t, lab in shots)]
    problem = context.text_problem("".join(parts))
    if problem is None:
        shared = render_prompt(context.model, fmt, "", instruction, system_prompt, shots)
        problem = context.text_problem(shared)
    if problem is None:
        n, limit = len(context.model.tokenize(shared)), context.max_row_cells()
        if n + 1 > limit:
            problem = f"the prompt of {n} tokens does not fit the context of {limit} tokens"
    if problem is not None:
        raise PromptError(
            f"The instruction, system prompt and {len(shots)} examples that every row repeats "
            f"are too long: {problem.split(';')[0]}; give fewer or shorter examples."
        )


def label_record(result: Result, labels: Sequence[str]) -> dict[str, Any]:
    """One scored row as a record: ``label``, a probability per label, ``error``."""
    if not result.ok:
        return {"label": None, **dict.fromkeys(labels, np.nan), "error": result.error}
    return {"label": str(result), **result.probs, "error": None}


def label_frame(request: BatchRequest, results: Results) -> pd.DataFrame:
    """The scored rows as :func:`classify`'s DataFrame (``attrs``: ``logprobs``, ``hashes``)."""
    labels = request.labels
    out = pd.DataFrame(
        [[r.probs[lab] if r.ok else np.nan for lab in labels] for r in results],
        columns=labels,
        dtype=float,
    )
    out.insert(0, "label", [str(r) if r.ok else None for r in results])
    out["error"] = [r.error for r in results]
    out.attrs["logprobs"] = np.array(
        [r.logprobs if r.ok else [np.nan] * len(labels) for r in results], dtype=float
    ).reshape(len(results), len(labels))
    out.attrs["hashes"] = results.hashes
    return out


def classify_plan(
    context: GenerationContext,
    texts: Sequence[Any],
    spec: LabelSpec,
    *,
    errors: Mapping[int, str] | None = None,
    cache: bool | None = None,
) -> Plan[pd.DataFrame]:
    """The plan of :func:`classify` (for front-ends that run it their own way): rows are
    seen as records (``label``, probabilities, ``error``)."""
    request = label_request(context, texts, spec, errors=errors, cache=cache)
    return single(
        request,
        lambda results: label_frame(request, results),
        desc="classify",
        view=lambda req, res: label_record(res, req.labels),
    )


def cascade_classify(
    context: GenerationContext,
    texts: Sequence[Any],
    spec: LabelSpec,
    proxy: Any,
    options: Mapping[str, Any],
    *,
    errors: Mapping[int, str] | None = None,
    sink: Any = None,
    cache: bool | None = None,
    **run: Any,
) -> Any:
    """:func:`classify` of ``texts`` through a model cascade: ``proxy`` (a cheaper model:
    a context, a loaded model or a reference) and the cascade keywords ``options``
    (``target_accuracy``, ...; see :class:`~jupyter_localllm.tasks.cascade.CascadeSpec`),
    checked before anything runs (a target without a proxy, or a sink, is an
    :class:`InvalidParameterError`); ``errors`` (row -> why) are rows that cannot run;
    ``run`` are :func:`~jupyter_localllm.session.executors.execute`'s keywords."""
    from ..session.manager import resolve_context
    from .cascade import CascadeSpec, run_cascade

    cascade = CascadeSpec.from_kwargs(**options)
    if proxy is None:
        raise InvalidParameterError(
            f"{', '.join(options)} set the quality of a cascade; give proxy= (a cheaper model)."
        )
    if sink is not None:
        raise InvalidParameterError("sink= is not available with proxy=; save the result instead.")
    check_context(context)
    proxy_context = resolve_context(proxy, n_seq_max=context.n_seq_max)
    return run_cascade(
        context, proxy_context, texts, spec, cascade, errors=errors, cache=cache, **run
    )


def classify(
    context: GenerationContext,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    examples: Any = None,
    instruction: str | None = None,
    system_prompt: str | None = None,
    format: str = "auto",
    calibrate: bool | Sequence[str] = False,
    scoring: str = "constrained",
    progress: bool | Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
    on_result: Callable[[dict[str, Any]], Any] | None = None,
    background: bool = False,
    cluster: Any = None,
    sink: Any = None,
    cache: bool | None = None,
    proxy: Any = None,
    **cascade: Any,
) -> pd.DataFrame | Job:
    """Pick one of ``labels`` for each text by scoring every label as the model's answer.

    Instead of generating text and parsing it, each label is scored as the answer after the
    prompt (the shared instructions and examples are decoded once): always a valid label.

    ``prompts`` are the texts to label. ``format``: ``"chat"`` wraps each in the model's chat
    template (``system_prompt``, ``examples`` as earlier user/assistant turns, then
    ``instruction`` + text), ``"plain"`` writes ``Text: …\\nAnswer:`` blocks for base models,
    ``"raw"`` uses the prompts as they are, ``"auto"`` is chat when the model has a template.
    ``instruction`` defaults to one naming the labels. ``examples``: ``(text, label)`` pairs,
    dicts or a DataFrame with ``text`` and ``label`` columns. ``calibrate=True`` divides the
    probabilities by those the prompt gives a content-free text (``"N/A"``; a list of texts
    as ``calibrate`` uses the mean over them): contextual calibration (Zhao et al. 2021),
    which removes a small model's bias towards one label word.
    ``scoring``: ``"constrained"`` (default; one prompt pass when labels differ in their
    first token) or ``"joint"`` (longer labels score lower), see :class:`LabelSpec`.

    Returns a DataFrame in input order: ``label`` (the most probable), one probability column
    per label (summing to 1), and ``error`` (``None`` or why the row failed).
    ``on_result`` gets each row's record (``row``, ``label``, probabilities, ``error``) as
    soon as its wave is scored; Ctrl-C (or ``cancel``) raises :class:`BatchInterrupted` with
    every scored row (label as text, ``probs``). ``background=True`` returns a
    :class:`~jupyter_localllm.Job` (``job.partial()``: the scored rows' records) and
    ``cluster`` scores on a Dask cluster and ``sink`` appends each scored row to a CSV file
    (see :func:`~jupyter_localllm.annotation_sink_csv`), as in ``generate_parallel``;
    ``cache=True`` keeps each row's scores in the result cache. ``proxy`` (a cheaper model)
    with ``target_accuracy`` (or ``target_precision``/``target_recall`` and ``positive``),
    ``delta``, ``label_budget`` and ``ranking`` runs a model cascade with a stated guarantee on
    agreement with this call's model: see :class:`~jupyter_localllm.tasks.cascade.CascadeSpec`
    and :func:`~jupyter_localllm.tasks.cascade.run_cascade`."""
    spec = LabelSpec(labels, examples, instruction, system_prompt, format, calibrate, scoring)
    run = dict(background=background, progress=progress, cancel=cancel, cluster=cluster, sink=sink)
    if proxy is not None or cascade:
        return cascade_classify(context, prompts, spec, proxy, cascade, cache=cache, **run)
    plan = classify_plan(context, prompts, spec, cache=cache)
    plan = rows_to_sink(plan, run.pop("sink"), ["label", *spec.labels, "error"])
    if on_result is not None:
        plan = plan.also_on_result(lambda row, rec: on_result({"row": row, **rec}))
    return execute(plan, **run)
