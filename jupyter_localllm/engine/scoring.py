"""Label scoring: the log-probability of every candidate label as the continuation of each
prompt, instead of generating text and parsing it.

:meth:`~jupyter_localllm.engine.runner.GenerationContext.score_labels` runs it on a
:class:`~jupyter_localllm.engine.runner.KVSession`. Rows run ``n_slots`` at a time on the
context's slots, on top of the shared prompt prefix (decoded once); the wave's prompt parts go
into one batch. A label's first token is scored from the prompt's own logits. Where a label's
later tokens must be scored, they are decoded after the prompt in the row's own sequence —
every row of the wave in one decode — and rolled back with ``seq_rm`` before the next label, so
no KV is copied and every label sees exactly the prompt's cache.

Two scorings (see :func:`label_steps`):

``"constrained"``
    the probability that decoding constrained to the label set produces the label: at each
    point where labels part, the model's probabilities renormalised over the labels' next
    tokens. Tokens that no other label shares are certain once the label has begun, so labels
    whose first tokens differ cost nothing beyond the prompt.
``"joint"``
    the full sequence probability ``P(t1) P(t2|t1) …`` of each label's tokens; every token
    after the first costs a decode step, and longer labels are penalised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidParameterError
from ..types import Progress, Result

if TYPE_CHECKING:
    from .backend import BackendBatch
    from .runner import GenerationContext, KVSession

__all__ = [
    "MAX_LABELS",
    "MAX_LABEL_CHARS",
    "MAX_LABEL_TOKENS",
    "SCORINGS",
    "LabelScorer",
    "Step",
    "check_label_sizes",
    "check_scoring",
    "label_steps",
    "score_labels",
]

SCORINGS = ("constrained", "joint")
# How many labels, and how long, label scoring takes: every label may cost a decode per wave
# of rows and a vocabulary-sized softmax per row and token, and where labels share a first
# token the planning is quadratic in their number (10,000 labels: minutes and 10 GB).
MAX_LABELS = 1000
MAX_LABEL_CHARS = 500  # checked before tokenizing
MAX_LABEL_TOKENS = 64


@dataclass(frozen=True)
class Step:
    """One term of a label's score: the log-probability at ``depth`` (tokens of the label
    already decoded after the prompt) of the label's next token, or, at the label's end, of
    stopping there."""

    depth: int
    token: int | None
    """The label's token at ``depth``; None for the end of a label that a longer one
    continues."""
    among: tuple[int, ...] | None
    """Tokens to renormalise over (the labels' continuations here); None for the plain
    log-softmax over the vocabulary."""


def check_scoring(scoring: str) -> None:
    """Raise :class:`InvalidParameterError` unless ``scoring`` is one of :data:`SCORINGS`."""
    if scoring not in SCORINGS:
        raise InvalidParameterError(
            f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}."
        )


def check_label_sizes(labels: Sequence[str]) -> None:
    """Raise :class:`InvalidParameterError` naming the limit when there are more than
    :data:`MAX_LABELS` labels or one is longer than :data:`MAX_LABEL_CHARS` characters."""
    if len(labels) > MAX_LABELS:
        raise InvalidParameterError(
            f"Got {len(labels)} labels, more than the {MAX_LABELS} label scoring takes (each "
            "is scored for every row); group them into fewer labels, or classify in two steps."
        )
    longest = max(labels, key=len, default="")
    if len(longest) > MAX_LABEL_CHARS:
        raise InvalidParameterError(
            f"The label {longest[:40]!r}... has {len(longest)} characters, more than the "
            f"{MAX_LABEL_CHARS} a label may have; use a short name for it."
        )


def label_steps(label_tokens: Sequence[Sequence[int]], scoring: str) -> list[list[Step]]:
    """The terms that make up each label's score under ``scoring`` (see the module notes).

    In ``"constrained"`` scoring a point where only one label token can follow contributes
    nothing and is skipped; where a label ends but a longer label goes on, the label's end
    has the probability of every token that does not continue the longer ones.
    """
    check_scoring(scoring)
    labels = [tuple(t) for t in label_tokens]
    complete = set(labels)
    plans = []
    for lab in labels:
        steps = []
        for depth in range(len(lab) + 1):
            node = lab[:depth]
            nexts = tuple(
                sorted({o[depth] for o in labels if len(o) > depth and o[:depth] == node})
            )
            if depth < len(lab):
                if scoring == "joint" or node in complete:
                    # where a shorter label may also end, the options (its end and these
                    # tokens) hold all the mass: the plain log-softmax is already normalised
                    steps.append(Step(depth, lab[depth], None))
                elif len(nexts) > 1:
                    steps.append(Step(depth, lab[depth], nexts))
            elif scoring == "constrained" and nexts:
                steps.append(Step(depth, None, nexts))
        plans.append(steps)
    return plans


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    return logits - np.logaddexp.reduce(logits)


def _step_logprob(step: Step, logp: np.ndarray) -> float:
    """``step``'s term from the log-probabilities ``logp`` at its depth."""
    if step.among is None:
        return float(logp[step.token])
    mass = float(np.exp(logp[list(step.among)]).sum())
    if step.token is None:  # stopping: every token that continues no longer label
        return float(np.log(max(1.0 - mass, 1e-30)))
    return float(logp[step.token] - np.log(mass))


def score_labels(
    gctx: GenerationContext,
    prompts: Sequence[Sequence[int]],
    label_tokens: Sequence[Sequence[int]],
    **options: Any,
) -> tuple[np.ndarray, dict[int, Result]]:
    """``gctx.score_labels(prompts, label_tokens, **options)``, as a function: see
    :meth:`~jupyter_localllm.engine.runner.GenerationContext.score_labels` for the options."""
    return gctx.score_labels(prompts, label_tokens, **options)


# A piece of work for one decode: (row, sequence, tokens, start position, logits of every
# token (True) or of the last one only).
_Piece = tuple[int, int, Sequence[int], int, bool]


def _fill(batch: BackendBatch, queue: list[_Piece]) -> list[tuple[int, int]]:
    """Move pieces from the head of ``queue`` into the empty ``batch`` until it is full (a
    piece that does not fit whole is split); returns ``(row, output row)`` of the logits
    asked for."""
    wants: list[tuple[int, int]] = []
    while queue and batch.free > 0:
        row, seq, toks, pos, all_logits = queue[0]
        take = min(len(toks), batch.free)
        whole = take == len(toks)
        start = batch.n_tokens
        batch.add(toks[:take], pos, seq, want_last_logits=whole, want_all_logits=all_logits)
        if all_logits:
            wants += [(row, k) for k in range(start, start + take)]
        elif whole:
            wants.append((row, start + take - 1))
        if not whole:
            queue[0] = (row, seq, toks[take:], pos + take, all_logits)
            break
        queue.pop(0)
    return wants


def _decode_pieces(kv: KVSession, pieces: list[_Piece]) -> dict[int, list[np.ndarray]]:
    """Decode ``pieces`` in as few batches as ``n_batch`` allows; returns
    ``{row: [logits, ...]}`` for the positions asked for, in order."""
    out: dict[int, list[np.ndarray]] = {}
    queue = list(pieces)
    while queue:
        kv.batch.clear()
        wants = _fill(kv.batch, queue)
        kv.decode()
        for row, k in wants:  # logits are addressed by the token's batch index
            out.setdefault(row, []).append(kv.ctx.logits(k))
    return out


class LabelScorer:
    """Scores ``label_tokens`` (each non-empty) under ``scoring`` after prompts, on a
    :class:`~jupyter_localllm.engine.runner.KVSession` (see the module notes)."""

    def __init__(self, label_tokens: Sequence[Sequence[int]], scoring: str):
        longest = max(map(len, label_tokens), default=0)
        if len(label_tokens) > MAX_LABELS or longest > MAX_LABEL_TOKENS:
            raise InvalidParameterError(
                f"Got {len(label_tokens)} labels of up to {longest} tokens; label scoring takes "
                f"at most {MAX_LABELS} labels of at most {MAX_LABEL_TOKENS} tokens each."
            )
        self.label_tokens = label_tokens
        self.steps = label_steps(label_tokens, scoring)
        """Each label's terms (:func:`label_steps`)."""
        self.depth = [max((st.depth for st in label), default=0) for label in self.steps]
        """Tokens of each label decoded after the prompt: up to its deepest scored point."""
        self.need = max(self.depth)
        """KV cells a row needs after its prompt."""

    def run(
        self,
        kv: KVSession,
        prompts: Sequence[Sequence[int]],
        *,
        first: Iterable[int] = (),
        on_wave: Callable[[list[int], np.ndarray], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[np.ndarray, dict[int, Result]]:
        """Score every row of ``prompts`` that ``kv`` can run, ``kv.n_slots`` rows a wave, and
        end the session. Returns the scores (NaN on rows that could not run) and the error
        results of those rows."""
        n_rows = len(prompts)
        scores = np.full((n_rows, len(self.label_tokens)), np.nan)
        errors = kv.errors
        rows = self._runnable(kv, prompts, first)
        try:
            kv.load_prefix()
            done = len(errors)
            for w0 in range(0, len(rows), kv.n_slots):
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                wave = rows[w0 : w0 + kv.n_slots]
                self._score_wave(kv, prompts, wave, scores)
                if on_wave is not None:
                    on_wave(wave, scores[wave])
                done += len(wave)
                kv.stats.decoded_prompt_tokens += sum(len(prompts[r]) - kv.prefix_len for r in wave)
                if on_progress is not None:
                    elapsed = time.perf_counter() - kv.t_start
                    on_progress(Progress(done, n_rows, len(errors), 0, elapsed))
        finally:
            kv.end()
        kv.stats.decoded_prompt_tokens += kv.stats.prefix_tokens_decoded
        return scores, errors

    def _runnable(
        self, kv: KVSession, prompts: Sequence[Sequence[int]], first: Iterable[int]
    ) -> list[int]:
        """The rows whose prompt and labels fit (rows in ``first`` first); the others get an
        error result in ``kv.errors``."""
        rows = []
        for i in kv.valid:
            if len(prompts[i]) - kv.prefix_len + self.need > kv.slot_capacity:
                kv.errors[i] = Result.failed(
                    f"the prompt has {len(prompts[i])} tokens, more than the context holds "
                    "with the labels; use a larger n_ctx or a shorter prompt",
                    row=i,
                )
            else:
                rows.append(i)
        early = set(first)
        rows.sort(key=lambda i: i not in early)  # stable: otherwise in input order
        return rows

    def _score_wave(
        self, kv: KVSession, prompts: Sequence[Sequence[int]], wave: list[int], scores: np.ndarray
    ) -> None:
        """Fill ``scores[wave]``: the wave's prompts in one decode, row ``k`` of the wave in
        sequence ``k``, then each label's decoded tokens; leaves only the prefix in the
        sequences."""
        p = kv.prefix_len
        logits = _decode_pieces(
            kv, [(row, k, prompts[row][p:], p, False) for k, row in enumerate(wave)]
        )
        at_prompt = [_log_softmax(logits[row][-1]) for row in wave]
        scores[wave] = 0.0
        for j, label in enumerate(self.steps):
            after = self._after_label(kv, prompts, wave, j, at_prompt)
            for k, row in enumerate(wave):
                scores[row, j] = sum(_step_logprob(st, after[k][st.depth]) for st in label)
        for k in range(len(wave)):
            kv.release(k)

    def _after_label(
        self,
        kv: KVSession,
        prompts: Sequence[Sequence[int]],
        wave: list[int],
        j: int,
        at_prompt: list[np.ndarray],
    ) -> list[list[np.ndarray]]:
        """For each row of the wave, the log-probabilities after its prompt and after each
        token of label ``j`` that is decoded (rolled back after)."""
        after = [[lp] for lp in at_prompt]
        if not self.depth[j]:
            return after
        cont = self.label_tokens[j][: self.depth[j]]
        ends = [len(prompts[row]) for row in wave]
        decoded = _decode_pieces(kv, [(row, k, cont, ends[k], True) for k, row in enumerate(wave)])
        for k, row in enumerate(wave):
            after[k] += [_log_softmax(lg) for lg in decoded[row]]
            kv.ctx.seq_rm(k, ends[k], -1)
        return after
