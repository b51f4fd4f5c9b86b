"""Label scoring: the log-probability of every candidate label as the continuation of each
prompt, instead of generating text and parsing it.

Rows run ``n_slots`` at a time on the context's slots, on top of the shared prompt prefix
(decoded once); the wave's prompt parts go into one batch. A label's first token is scored
from the prompt's own logits, so single-token labels cost nothing beyond the prompt. A
multi-token label is decoded after the prompt in the row's own sequence — every row of the
wave in one ``llama_decode`` — scored, and rolled back with ``seq_rm`` before the next label,
so no KV is copied and every label sees exactly the prompt's cache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from .runner import GenerationContext, Progress, RunStats
from .scheduler import Result

__all__ = ["score_labels"]


def _log_softmax_at(logits: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    m = logits.max()
    lse = m + np.log(np.exp(logits - m).sum())
    return logits[list(tokens)] - lse


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
) -> tuple[np.ndarray, dict[int, Result]]:
    """Log-probabilities ``[row, label]`` of each label's tokens after each prompt.

    Returns the matrix (NaN on rows that could not run) and the error results of those rows
    by row index. ``label_tokens`` must each be non-empty. Rows in ``first`` are scored before
    the others; ``on_wave(rows, scores)`` gets each wave's rows and their scores as it ends.
    """
    n_rows, n_labels = len(prompts), len(label_tokens)
    scores = np.full((n_rows, n_labels), np.nan)
    errors: dict[int, Result] = {}
    if n_rows == 0:
        return scores, errors
    longest = max(len(t) for t in label_tokens)
    with gctx.lock:
        t_start = time.perf_counter()
        stats = RunStats(rows=n_rows)
        gctx.last_run = stats
        plan = gctx._plan(prompts, invalid or {}, lambda i, own: own + longest, errors, stats)
        ctx, batch = plan.ctx, gctx._batch
        rows = []
        for i in plan.valid:
            own = len(prompts[i]) - plan.prefix_len
            if own + longest - 1 > plan.slot_capacity:
                errors[i] = Result.failed(
                    f"the prompt has {len(prompts[i])} tokens, more than the context holds "
                    "with the labels; use a larger n_ctx or a shorter prompt",
                    row=i,
                )
            else:
                rows.append(i)
        early = set(first)
        rows.sort(key=lambda i: i not in early)  # stable: otherwise in input order
        first_tokens = [t[0] for t in label_tokens]
        multi = [j for j, t in enumerate(label_tokens) if len(t) > 1]

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
                stats.batch_sizes.append(batch.n_tokens)
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
                for row in wave:
                    scores[row] = _log_softmax_at(logits[row][-1], first_tokens)
                for j in multi:
                    cont = label_tokens[j]
                    logits = decode(
                        [(row, seq_of[row], cont[:-1], ends[row], True) for row in wave]
                    )
                    for row in wave:
                        scores[row, j] += sum(
                            _log_softmax_at(lg, [tok])[0]
                            for lg, tok in zip(logits[row], cont[1:], strict=True)
                        )
                        ctx.seq_rm(seq_of[row], ends[row], -1)
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
