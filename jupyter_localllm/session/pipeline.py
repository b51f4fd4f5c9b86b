"""The batch pipeline: the one function, :func:`run_batch`, that runs every batch of rows
through a model, whatever the entry point (``generate_parallel``, ``classify``, ``extract``,
``explore``, the accessors, the magics).

It alone turns bad rows into error results in place, looks rows up in the result cache and
stores finished ones, maps rows to their seeds, hands progress events (counting the caller's
rows only) to a sink, and writes the run log and hashes. Its rows are kept in a
:class:`~jupyter_localllm.session.ledger.RunLedger`, which turns Ctrl-C or a cancel into
:class:`BatchInterrupted` holding every finished row. The engine does the decoding; a
:class:`BatchRequest` says what to decode.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.repro import file_sha256, log_call
from ..engine.embedding import embed_tokens, resolve_pooling
from ..engine.sampling import SamplingParams
from ..errors import InvalidParameterError
from ..types import Progress, Result, Results
from .cache import cache_enabled, get_cache
from .ledger import RunLedger

if TYPE_CHECKING:
    from ..engine.runner import GenerationContext

__all__ = [
    "KINDS",
    "BatchRequest",
    "input_problem",
    "prompt_tokens",
    "record_run",
    "resolve_sampling",
    "run_batch",
]

KINDS = ("generate", "score", "extract", "embed")


@dataclass
class BatchRequest:
    """One batch of rows for one context: what to run, not how to show it."""

    context: GenerationContext
    """Where the rows run (its model and ``n_seq_max`` slots)."""
    rows: list[Any]
    """The prompts, fully rendered; a row that is not a non-empty string becomes an error."""
    kind: str = "generate"
    """``"generate"`` text, ``"score"`` the labels (label scoring), ``"extract"`` JSON
    under ``sampling``'s grammar, parsed and checked against ``schema``, or ``"embed"`` one
    pooled vector per row (the result's ``value``, a list of floats; not normalised)."""
    sampling: SamplingParams | list[SamplingParams] = field(default_factory=SamplingParams)
    """One parameter set for every row, or one per row."""
    labels: list[str] = field(default_factory=list)
    """``"score"``: the candidate labels."""
    label_prefix: str = ""
    """``"score"``: text between the prompt and a label (a space after ``Answer:``)."""
    scoring: str = "constrained"
    """``"score"``: ``"constrained"`` or ``"joint"`` (see the engine's scoring module)."""
    calibration: list[str] = field(default_factory=list)
    """``"score"``: reference prompts (content-free ones) scored first, as extra rows that
    progress does not count; ``calibrate`` turns their scores into each row's adjustment."""
    calibrate: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    """``"score"`` with ``calibration``: ``calibrate(reference, scores)`` gives a row's scores
    adjusted by the reference prompts' ``[prompt, label]`` scores (contextual calibration:
    ``tasks/calibration.py``); the pipeline only scores rows and applies it."""
    schema: dict[str, Any] | None = None
    """``"extract"``: the JSON schema each output must match."""
    pooling: str | None = None
    """``"embed"``: ``"mean"``, ``"cls"`` or ``"last"``; ``None`` takes the model file's own
    (mean when it names none) and is resolved when the request is made."""
    clean: bool = False
    """``"generate"``: strip chat control tokens and ``<think>`` blocks from answers."""
    cache: bool | None = None
    """Use the result cache (``None``: ``$LOCALLLM_RESULT_CACHE``); ``"score"`` only when
    ``True``."""
    errors: Mapping[int, str] = field(default_factory=dict)
    """Rows known to be bad before the run, with the message of their error result."""
    what: str = "prompt"
    """The noun in messages about a bad row (``"the text is empty"``)."""
    seed_rows: list[int] | None = None
    """Row ``i`` samples with the seed derived from ``seed_rows[i]`` (default ``i``)."""
    stream: Callable[[int, str], Any] | None = None
    """Called with ``(row, piece)`` as generated text arrives."""
    function: str = "generate_parallel"
    """The name the run log and the input hash give this call."""
    log_params: dict[str, Any] = field(default_factory=dict)
    """The parameters the input hash covers (what, besides the rows, decides the output)."""
    tag: dict[str, Any] = field(default_factory=dict)
    """The caller's notes about this request (e.g. which model of an exploration)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidParameterError(f"kind must be one of {', '.join(KINDS)}.")
        if self.kind == "embed":  # resolved once: the cache key and the run log name it
            meta = self.context.model.metadata if self.pooling is None else {}
            self.pooling = resolve_pooling(meta, self.pooling)
        self.rows = list(self.rows)
        if isinstance(self.sampling, list) and len(self.sampling) != len(self.rows):
            raise InvalidParameterError(
                f"Got {len(self.sampling)} sampling parameter sets for {len(self.rows)} rows; "
                "give one, or one per row."
            )

    def params_of(self, row: int) -> SamplingParams:
        """The sampling parameters of ``row``."""
        return self.sampling[row] if isinstance(self.sampling, list) else self.sampling


def resolve_sampling(
    sampling: SamplingParams | Sequence[SamplingParams | Mapping[str, Any]] | None,
    shorthand: Mapping[str, Any],
    *,
    base: SamplingParams | None = None,
) -> SamplingParams | list[SamplingParams]:
    """The parameters of a call: ``sampling`` (one :class:`SamplingParams`, or a list with one
    per row, as objects or dicts) updated by the keyword shorthand (``max_tokens=...``), or
    ``base`` (the defaults) updated by it."""
    if sampling is None or isinstance(sampling, SamplingParams):
        return SamplingParams.from_kwargs(sampling or base, **shorthand)
    if isinstance(sampling, (str, Mapping)) or not isinstance(sampling, Sequence):
        raise InvalidParameterError(
            "sampling must be a SamplingParams or a list of them (one per row), "
            f"got {type(sampling).__name__}."
        )
    return [
        SamplingParams.from_kwargs(
            p if isinstance(p, SamplingParams) else SamplingParams.from_kwargs(base, **p),
            **shorthand,
        )
        for p in sampling
    ]


def input_problem(value: Any, what: str = "prompt") -> str | None:
    """Why ``value`` cannot run as a row (the message of its error result), or ``None``."""
    if not isinstance(value, str):
        return f"the {what} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"the {what} is empty; give some text"
    return None


def prompt_tokens(model: Any, prompt: str) -> list[int]:
    """Tokens of one prompt, with BOS added unless the text already starts with it (a chat
    template may write the BOS text itself)."""
    bos_text = model.token_text(model.bos_token) if model.add_bos and model.bos_token >= 0 else ""
    return model.tokenize(prompt, add_special=not (bos_text and prompt.startswith(bos_text)))


def run_batch(
    request: BatchRequest,
    *,
    on_result: Callable[[Result], Any] | None = None,
    on_progress: Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
) -> Results:
    """Run ``request``; return one :class:`Result` per row, in row order, with ``hashes``.

    ``on_result`` gets each row's final result as soon as it exists (rows from the cache and
    bad rows first); ``on_progress`` gets :class:`Progress` events over the request's rows.
    Ctrl-C, or ``cancel`` being set, raises :class:`BatchInterrupted` whose ``results`` hold
    every finished row and a ``"cancelled"`` result in the place of each other row.
    """
    run = _BatchRun(request, on_result, on_progress)
    try:
        run.start()
        if run.todo:
            _ENGINES[request.kind](run, cancel)
        return run.finish()
    except KeyboardInterrupt as exc:
        raise run.ledger.interrupted() from exc
    finally:
        # The ledger calls back into the run: without this the cycle keeps the request (and
        # its context's KV memory) alive until the garbage collector happens to run.
        run.ledger.prepare = run.ledger.on_result = None


class _BatchRun:
    """The state of one :func:`run_batch` call: its ledger of rows, counts, the cache."""

    def __init__(
        self,
        request: BatchRequest,
        on_result: Callable[[Result], Any] | None,
        on_progress: Callable[[Progress], Any] | None,
    ):
        self.request = request
        self.model = request.context.model
        self.n = len(request.rows)
        self.ledger = RunLedger(self.n, prepare=self._prepare, on_result=on_result)
        self.todo: list[int] = []
        self.tokens = 0
        self.on_progress = on_progress
        self.t_start = time.perf_counter()
        self.store: Any = None
        self.keys: dict[int, str] = {}
        self.cached: set[int] = set()

    # -- set-up ----------------------------------------------------------------------------
    def start(self) -> None:
        """Error results for bad rows, cached rows delivered, the rest left to run."""
        req = self.request
        bad = {}
        for i, row in enumerate(req.rows):
            problem = req.errors.get(i) or input_problem(row, req.what)
            if problem is not None:
                bad[i] = problem
        cached = self._from_cache(bad)
        self.todo = [i for i in range(self.n) if i not in bad and i not in cached]
        self.cached = set(cached)
        for i, res in cached.items():
            self.ledger.record(res, i)
        self.emit()  # rows from the cache count as done from the start
        for i, message in bad.items():
            self.ledger.record(Result.failed(message, row=i))

    def _from_cache(self, bad: Mapping[int, str]) -> dict[int, Result]:
        req = self.request
        # Label scores are cached only when asked (cache=True, the semantic operators): a
        # score depends a little on its wave's neighbours, so classify computes them afresh.
        if (req.kind == "score" and req.cache is not True) or not cache_enabled(req.cache):
            return {}
        self.store = get_cache()
        digest = file_sha256(self.model.path)
        found = {}
        for i, row in enumerate(req.rows):
            if i in bad:
                continue
            params = req.params_of(i).as_dict() if req.kind != "embed" else {"embed": req.pooling}
            if req.kind == "score":  # what decides a row's scores besides its prompt
                params = {
                    "labels": req.labels,
                    "prefix": req.label_prefix,
                    "scoring": req.scoring,
                    "calibration": req.calibration,
                }
            self.keys[i] = self.store.key(digest, params, req.context.n_seq_max, row)
            hit = self.store.get(self.keys[i])
            if hit is not None:
                found[i] = hit
        return found

    def tokens_of(self, rows: Sequence[int], texts: Sequence[str]) -> list[list[int]]:
        """Each text's tokens; a text that cannot be encoded (a lone surrogate), or that is
        too long for the context by its length alone (not tokenized, however large), makes its
        row an error result and gets no tokens (``rows[k] < 0``: not a row of the request)."""
        out = []
        context = self.request.context
        for i, text in zip(rows, texts, strict=True):
            try:
                problem = context.text_problem(text)
                out.append(prompt_tokens(self.model, text) if problem is None else [])
            except UnicodeEncodeError as exc:
                problem = f"the {self.request.what} is not valid text ({exc.reason})"
                out.append([])
            if problem is not None and i >= 0:
                self.ledger.record(Result.failed(problem, row=i))
        return out

    # -- rows ------------------------------------------------------------------------------
    def _prepare(self, res: Result) -> Result:
        """A new row as the ledger keeps it: stored in the cache (unless it came from
        there), post-processed."""
        fresh = res.row not in self.cached
        if fresh and self.store is not None and res.ok and res.row in self.keys:
            self.store.put(self.keys[res.row], res)
        return _FINISHERS[self.request.kind](self.request, res)

    def engine_progress(self, event: Progress) -> None:
        """An engine event, re-counted over the request's rows."""
        self.tokens = event.generated_tokens
        self.emit()

    def emit(self) -> None:
        """Send a progress event over the request's rows."""
        if self.on_progress is not None:
            elapsed = time.perf_counter() - self.t_start
            ledger = self.ledger
            self.on_progress(Progress(len(ledger), self.n, ledger.errors, self.tokens, elapsed))

    # -- the end ---------------------------------------------------------------------------
    def finish(self) -> Results:
        """The results in row order, hashed and logged."""
        req = self.request
        results = self.ledger.complete()  # rows the engine could not start (e.g. too long)
        results.hashes = record_run(req, results, time.perf_counter() - self.t_start, self.model)
        self.emit()
        return results


def record_run(request: BatchRequest, results: Results, seconds: float, model: Any = None) -> dict:
    """The input and output hashes of ``request``'s finished ``results`` (one per row, in
    order), the call appended to the run log when one is open; ``model`` defaults to the
    request's context's."""
    return log_call(
        request.function,
        model if model is not None else request.context.model,
        request.log_params,
        request.rows,
        _hashed_outputs(request, results),
        seconds,
    )


# -- engines per kind ----------------------------------------------------------------------
def _tokenized(run: _BatchRun) -> tuple[list[int], list[list[int]]]:
    """The rows left to run and their tokens (rows that cannot be encoded are error rows)."""
    req, todo = run.request, run.todo
    tokens = run.tokens_of(todo, [req.rows[i] for i in todo])
    keep = [k for k, i in enumerate(todo) if i not in run.ledger]
    return [todo[k] for k in keep], [tokens[k] for k in keep]


def _generate(run: _BatchRun, cancel: threading.Event | None) -> None:
    req = run.request
    rows, tokens = _tokenized(run)
    if not rows:
        return
    params = [req.params_of(i) for i in rows]
    on_text = None
    if req.stream is not None:
        stream = req.stream

        def on_text(k: int, piece: str) -> None:
            stream(rows[k], piece)

    seeds = req.seed_rows
    req.context.run(
        tokens,
        params if isinstance(req.sampling, list) else req.sampling,
        on_progress=run.engine_progress,
        on_result=run.ledger.mapped(rows),
        on_text=on_text,
        cancel=cancel,
        seed_rows=[seeds[i] for i in rows] if seeds is not None else rows,
    )


def _score(run: _BatchRun, cancel: threading.Event | None) -> None:
    req, todo, model = run.request, run.todo, run.model
    if req.calibration and req.calibrate is None:
        raise InvalidParameterError(
            "A score request with calibration prompts needs calibrate=, the function that "
            "adjusts scores by theirs (tasks/calibration.py: contextual_calibration)."
        )
    texts = [req.rows[i] for i in todo] + list(req.calibration)
    tokens = run.tokens_of(todo + [-1] * len(req.calibration), texts)
    label_tokens = [model.tokenize(req.label_prefix + lab, add_special=False) for lab in req.labels]
    invalid = {k: "skipped" for k, t in enumerate(tokens) if not t}
    scored = _ScoredRows(run, invalid)
    _, errors = req.context.score_labels(
        tokens,
        label_tokens,
        invalid=invalid,
        on_progress=run.engine_progress,
        cancel=cancel,
        first=range(len(todo), len(texts)),  # the reference prompts first
        on_wave=scored.add,
        scoring=req.scoring,
    )
    scored.flush()
    for k, res in errors.items():
        if k < len(todo) and k not in invalid:
            run.ledger.record(res, todo[k])


class _ScoredRows:
    """A score request's rows as the engine scores them: each recorded with its scores
    adjusted by the request's ``calibrate``, which waits for every reference prompt (scored
    first) that can run."""

    def __init__(self, run: _BatchRun, invalid: Mapping[int, str]):
        self.run, self.n_rows = run, len(run.todo)
        n_texts = self.n_rows + len(run.request.calibration)
        self.waiting_for = {k for k in range(self.n_rows, n_texts) if k not in invalid}
        self.reference: list[np.ndarray] = []
        self.held: list[tuple[int, np.ndarray]] = []

    def add(self, rows: list[int], scores: np.ndarray) -> None:
        """The rows (positions among the request's texts) scored in one engine step."""
        for k, row_scores in zip(rows, scores, strict=True):
            if k < self.n_rows:
                self.held.append((k, row_scores))
            else:
                self.reference.append(row_scores)
                self.waiting_for.discard(k)
        if not self.waiting_for:
            self.flush()

    def flush(self) -> None:
        """Record the rows held (at the end: whatever reference prompts could run)."""
        held, self.held = self.held, []
        if not held:
            return
        req, todo = self.run.request, self.run.todo
        scores = np.array([s for _, s in held])
        if req.calibrate is not None:
            scores = req.calibrate(np.array(self.reference).reshape(-1, len(req.labels)), scores)
        for (k, _), row_scores in zip(held, scores, strict=True):
            self.run.ledger.record(_label_result(row_scores, req.labels, todo[k]))


def _embed(run: _BatchRun, cancel: threading.Event | None) -> None:
    rows, tokens = _tokenized(run)
    if rows:
        embed_tokens(
            run.request.context,
            tokens,
            pooling=run.request.pooling,
            on_result=run.ledger.mapped(rows),
            on_progress=run.engine_progress,
            cancel=cancel,
        )


_ENGINES = {"generate": _generate, "extract": _generate, "score": _score, "embed": _embed}


def _label_result(scores: np.ndarray, labels: Sequence[str], row: int) -> Result:
    """A scored row: the most probable label, its probabilities and the (calibrated) scores."""
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    return Result(
        labels[int(scores.argmax())],
        finish_reason="stop",
        row=row,
        probs=dict(zip(labels, probs.tolist(), strict=True)),
        logprobs=[float(s) for s in scores],
    )


# -- post-processing per kind --------------------------------------------------------------
def _finish_generated(request: BatchRequest, res: Result) -> Result:
    if not request.clean or res.error is not None:
        return res
    from ..engine.text import clean

    return Result(
        clean(res),
        finish_reason=res.finish_reason,
        n_prompt_tokens=res.n_prompt_tokens,
        n_tokens=res.n_tokens,
        row=res.row,
    )


def _finish_extracted(request: BatchRequest, res: Result) -> Result:
    """The output parsed as JSON and checked against the schema (or an error result)."""
    if res.error is not None:
        return res
    try:
        value = json.loads(res)
    except json.JSONDecodeError as exc:
        reason = "the output was cut at max_tokens" if res.finish_reason == "length" else exc
        return Result.failed(f"invalid JSON ({reason})", row=res.row)
    import jsonschema

    try:
        jsonschema.validate(value, request.schema or {})
    except jsonschema.ValidationError as exc:
        return Result.failed(f"the JSON does not match the schema: {exc.message}", row=res.row)
    return res.replace(value=value)


_FINISHERS = {
    "generate": _finish_generated,
    "extract": _finish_extracted,
    "score": lambda request, res: res,
    "embed": lambda request, res: res,
}


def _hashed_outputs(request: BatchRequest, results: Results) -> Any:
    """What the output hash covers: the texts, or for label scoring the labels and their
    probabilities, or the embeddings' vectors (rounded, so the hash does not depend on the last
    bits of a float)."""
    if request.kind == "embed":
        return [[round(x, 5) for x in r.value] if r.ok else str(r) for r in results]
    if request.kind != "score":
        return [str(r) for r in results]
    out: dict[str, list[Any]] = {"label": [str(r) if r.ok else None for r in results]}
    for lab in request.labels:
        out[lab] = [round(r.probs[lab], 6) if r.ok else None for r in results]
    return out
