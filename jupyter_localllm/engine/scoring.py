"""Label scoring: the log-probability of every candidate label as the continuation of each
prompt, instead of generating text and parsing it.

Rows run ``n_slots`` at a time on the context's slots, on top of the shared prompt prefix
(decoded once); the wave's prompt parts go into one batch. A label's first token is scored
from the prompt's own logits. Where a label's later tokens must be scored, they are decoded
after the prompt in the row's own sequence — every row of the wave in one ``llama_decode`` —
and rolled back with ``seq_rm`` before the next label, so no KV is copied and every label
sees exactly the prompt's cache.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameterError
from ..types import Progress, Result
from .runner import GenerationContext, RunStats

__all__ = ["SCORINGS", "check_scoring", "label_steps", "score_labels"]

SCORINGS = ("constrained", "joint")


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
    *,
    invalid: Mapping[int, str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    first: Iterable[int] = (),
    on_wave: Callable[[list[int], np.ndarray], None] | None = None,
    scoring: str = "constrained",
) -> tuple[np.ndarray, dict[int, Result]]:
    """Log-probabilities ``[row, label]`` of each label after each prompt, under ``scoring``
    (``"constrained"`` or ``"joint"``, see the module notes).

    Returns the matrix (NaN on rows that could not run) and the error results of those rows
    by row index. ``label_tokens`` must each be non-empty. Rows in ``first`` are scored before
    the others; ``on_wave(rows, scores)`` gets each wave's rows and their scores as it ends.
    """
    steps = label_steps(label_tokens, scoring)
    # Tokens of each label decoded after the prompt: up to its deepest scored point.
    depth = [max((st.depth for st in label), default=0) for label in steps]
    need = max(depth)
    n_rows, n_labels = len(prompts), len(label_tokens)
    scores = np.full((n_rows, n_labels), np.nan)
    errors: dict[int, Result] = {}
    if n_rows == 0:
        return scores, errors
    with gctx.lock:
        t_start = time.perf_counter()
        stats = RunStats(rows=n_rows)
        gctx.last_run = stats
        plan = gctx._plan(prompts, invalid or {}, lambda i, own: own + need, errors, stats)
        ctx, batch = plan.ctx, gctx._batch
        rows = []
        for i in plan.valid:
            own = len(prompts[i]) - plan.prefix_len
            if own + need > plan.slot_capacity:
                errors[i] = Result.failed(
                    f"the prompt has {len(prompts[i])} tokens, more than the context holds "
                    "with the labels; use a larger n_ctx or a shorter prompt",
                    row=i,
                )
            else:
                rows.append(i)
        early = set(first)
        rows.sort(key=lambda i: i not in early)  # stable: otherwise in input order

        def decode(pieces: list[tuple[int, int, Sequence[int], int, bool]]) -> dict:
            """Decode (row, seq, tokens, start_pos, all_logits) pieces in as few batches as
            n_batch allows; return {row: [logits...]} for the positions asked for."""
            out: dict[int, list[np.ndarray]] = {}
            queue = [list(p) for p in pieces]
            while queue:
                batch.clear()
                wants = []
                while queue and batch.free > 0:
                    row, seq, toks, pos, all_logits = queue[0]
                    take = min(len(toks), batch.free)
                    last_piece = take == len(toks)
                    start = batch.n_tokens
                    batch.add(toks[:take], pos, seq, want_last_logits=last_piece)
                    if all_logits:
                        batch.logits[start : start + take] = 1
                        wants += [(row, k) for k in range(start, start + take)]
                    elif last_piece:
                        wants.append((row, start + take - 1))
                    if last_piece:
                        queue.pop(0)
                    else:
                        queue[0] = [row, seq, toks[take:], pos + take, all_logits]
                        break
                t0 = time.perf_counter()
                ctx.decode(batch)
                stats.decode_time += time.perf_counter() - t0
                stats.steps += 1
                for row, k in wants:  # logits are addressed by the token's batch index
                    out.setdefault(row, []).append(ctx.logits(k))
            return out

        try:
            gctx._set_prefix(ctx, plan.prefix, plan.n_slots, stats)
            done = len(errors)
            for w0 in range(0, len(rows), plan.n_slots):
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                wave = rows[w0 : w0 + plan.n_slots]
                seq_of = {row: s for s, row in enumerate(wave)}
                ends = {row: len(prompts[row]) for row in wave}
                logits = decode(
                    [
                        (row, seq_of[row], prompts[row][plan.prefix_len :], plan.prefix_len, False)
                        for row in wave
                    ]
                )
                at_prompt = {row: _log_softmax(logits[row][-1]) for row in wave}
                scores[wave] = 0.0
                for j, label in enumerate(steps):
                    # log-probabilities after the prompt, then after each decoded label token
                    after = {row: [at_prompt[row]] for row in wave}
                    if depth[j]:
                        cont = label_tokens[j][: depth[j]]
                        decoded = decode(
                            [(row, seq_of[row], cont, ends[row], True) for row in wave]
                        )
                        for row in wave:
                            after[row] += [_log_softmax(lg) for lg in decoded[row]]
                            ctx.seq_rm(seq_of[row], ends[row], -1)
                    for row in wave:
                        scores[row, j] = sum(
                            _step_logprob(st, after[row][st.depth]) for st in label
                        )
                for row in wave:
                    ctx.seq_rm(seq_of[row], plan.prefix_len, -1)
                if on_wave is not None:
                    on_wave(wave, scores[wave])
                done += len(wave)
                stats.decoded_prompt_tokens += sum(ends[r] - plan.prefix_len for r in wave)
                if on_progress is not None:
                    on_progress(
                        Progress(done, n_rows, len(errors), 0, time.perf_counter() - t_start)
                    )
        finally:
            for s in range(plan.n_slots):
                ctx.seq_rm(s, plan.prefix_len, -1)
            gctx._end_run(ctx, plan.n_slots, None)
            stats.wall = time.perf_counter() - t_start
        stats.decoded_prompt_tokens += stats.prefix_tokens_decoded
    return scores, errors
