"""What this machine does per decode, and the ideal time of a run from it.

Rates are measured on a context configured as the run being judged (n_ctx, slots, KV layout,
flash attention): prompt processing by tokens per decode, batched decode by batch width. The
ideal steps a run's rows through its slots at those rates (see ``bench_parallel``'s
docstring). ``layouts`` is the table the KV layout and flash attention defaults came from.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

import jupyter_localllm as ll
from jupyter_localllm.engine.llama import Batch, Context


def _context(
    model, n_ctx: int, n_seq: int, kv_unified: bool, flash_attn: bool = False, n_batch: int = 512
) -> Context:
    return Context(
        model,
        n_ctx=n_ctx,
        n_seq_max=n_seq,
        n_batch=n_batch,
        n_threads=ll.hardware_profile()["cores_physical"],
        kv_unified=kv_unified,
        flash_attn=flash_attn,
    )


PP_SIZES = (256, 512)  # tokens per decode: rates rise to a plateau from ~256 on this CPU
PP_SIZES_ONE_ROW = (16, 32, 64, 128, 256, 512)  # a loop decodes one row's prompt per call
PP_TOTAL = 512  # tokens decoded per measurement


def prompt_shape(model, prompts) -> tuple[list[int], list[list[int]]]:
    """The prompts' shared prefix (tokens all of them start with) and each row's own tokens
    after it: what a run decodes once, and what it decodes for every row."""
    rows = [model.tokenize(p, add_special=True) for p in prompts]
    n = min(len(r) for r in rows)
    shared = next((i for i in range(n) if any(r[i] != rows[0][i] for r in rows)), n)
    shared = min(shared, n - 1)  # every row decodes at least one token of its own
    return list(rows[0][:shared]), [list(r[shared:]) for r in rows]


def measure_pp(model, flash_attn: bool, sizes=PP_SIZES, prompts=None) -> dict[int, float]:
    """Prompt processing (tok/s) as a function of the tokens in one decode: ``PP_TOTAL``
    tokens decoded ``size`` at a time on per-sequence KV (the engine's layout), each decode
    a row's prompt as a run decodes it: right after the shared prefix of ``prompts``, with the
    rows' own tokens (random tokens and no prefix without ``prompts``). Each figure times ~2 s of
    decoding: a single short decode is at the mercy of the VM's drift, and the best of several
    such noisy figures overstates the rate."""
    if prompts is None:
        prefix, rows = [], np.random.default_rng(0).integers(100, 20000, size=PP_TOTAL)
    else:
        prefix, own = prompt_shape(model, prompts)
        prefix, rows = prefix[: 1024 - PP_TOTAL], np.concatenate(own)
    toks = np.resize(rows, PP_TOTAL)  # repeated if the prompts hold fewer
    ctx = _context(model, 1024, 1, kv_unified=False, flash_attn=flash_attn)
    batch = Batch(512, 1, model.n_vocab)
    if prefix:
        batch.add(prefix, 0, 0, want_last_logits=False)
        ctx.decode(batch)
    rates = {}
    for n in sizes:
        elapsed = 0.0
        for start in range(0, PP_TOTAL, n):
            ctx.seq_rm(0, len(prefix), -1)
            batch.clear()
            batch.add(toks[start : start + n], len(prefix), 0, want_last_logits=True)
            t0 = time.perf_counter()
            ctx.decode(batch)
            elapsed += time.perf_counter() - t0
        rates[n] = PP_TOTAL / elapsed
    ctx.close()
    return rates


def measure_wave_pp(model, config, prompts, total: int = 2 * PP_TOTAL) -> float:
    """Prompt processing (tok/s) in full waves on a context configured as the run
    (``config``: n_ctx, slots, KV layout, flash attention): the shared prefix of ``prompts``
    decoded once and given to every slot, then decodes each holding as many rows' own tokens
    as there are slots (up to 512 tokens), every row after the prefix in its own sequence, as
    a parallel run decodes prompts at best; ``total`` tokens in all."""
    n_ctx, slots, unified, fa = config
    prefix, rows = prompt_shape(model, prompts)
    ctx = _context(model, n_ctx, slots, unified, fa)
    batch = Batch(512, slots, model.n_vocab)
    if prefix:
        for start in range(0, len(prefix), 512):
            batch.clear()
            batch.add(prefix[start : start + 512], start, 0, want_last_logits=False)
            ctx.decode(batch)
        for s in range(1, slots):
            ctx.seq_cp(0, s)
    room = ctx.n_ctx // (1 if unified else slots) - len(prefix)  # a row's cells after it
    elapsed, done, i = 0.0, 0, 0
    while done < total:
        batch.clear()
        used = []
        for s in range(slots):
            row = rows[i % len(rows)][: min(room, 512)]
            if used and batch.n_tokens + len(row) > 512:
                break
            batch.add(row, len(prefix), s, want_last_logits=True)
            used.append(s)
            i += 1
        t0 = time.perf_counter()
        ctx.decode(batch)
        elapsed += time.perf_counter() - t0
        done += batch.n_tokens
        for s in used:
            ctx.seq_rm(s, len(prefix), -1)
    ctx.close()
    return done / elapsed


def prompt_time(decoded: list[int], slots: int, pp: dict[int, float]) -> float:
    """Seconds the prompt tokens a run decoded need at the rates ``pp`` (tok/s by tokens per
    decode). With one slot each row's prompt is a decode of its own, priced at the rate for its
    size: no engine of one sequence decodes it in bigger pieces. With more slots an engine can
    decode many rows' prompts together, so every token is priced at the best rate measured."""
    if slots == 1:
        return sum(n / rate_at(pp, n) for n in decoded if n > 0)
    return sum(decoded) / max(pp.values())


def _widths(slots: int) -> list[int]:
    """Batch widths a decode curve is measured at: powers of two below ``slots``, and it."""
    return sorted({k for k in (1, 2, 4, 8, 16, 32) if k < slots} | {slots})


def measure_decode_curve(
    model,
    n_ctx: int,
    n_seq: int,
    kv_unified: bool,
    depth: int,
    flash_attn: bool = False,
    widths: list[int] | None = None,
    steps: int = 8,
) -> dict[int, float]:
    """Batched decode (tok/s) by batch width on a context configured as the engine's run
    (``n_ctx``, ``n_seq`` slots, KV layout, flash attention): one token for each of the first
    ``k`` sequences per decode (consecutive ids, as the scheduler keeps them), each sequence
    ``depth`` tokens deep (about a row's prompt and half its answer)."""
    per_seq = n_ctx // n_seq  # a shared cache holds n_seq rows too
    depth = max(8, min(depth, per_seq - steps - 8))
    ctx = _context(model, n_ctx, n_seq, kv_unified, flash_attn)
    batch = Batch(max(512, n_seq), n_seq, model.n_vocab)
    toks = np.random.default_rng(1).integers(100, 20000, size=depth + steps)
    for s in range(1 if not kv_unified else n_seq):
        for start in range(0, depth, 512):
            batch.clear()
            batch.add(toks[start : min(depth, start + 512)], start, s, want_last_logits=False)
            ctx.decode(batch)
    if not kv_unified:
        # streams are separate: a whole-stream copy gives each row its own cells, no decode;
        # in a shared cache a copy would share the cells, so each row decodes its own
        for s in range(1, n_seq):
            ctx.seq_cp(0, s)
    rates = {}
    for k in widths or [n_seq]:
        t0 = time.perf_counter()
        for i in range(steps):
            batch.clear()
            for s in range(k):
                batch.add([int(toks[depth + i])], depth + i, s, want_last_logits=True)
            ctx.decode(batch)
        rates[k] = k * steps / (time.perf_counter() - t0)
        for s in range(k):
            ctx.seq_rm(s, depth, -1)
    ctx.close()
    return rates


def measure_decode(
    model, n_ctx: int, n_seq: int, kv_unified: bool, depth: int, flash_attn: bool = False
) -> float:
    """Batched decode (tok/s) with all ``n_seq`` sequences in every decode (see
    :func:`measure_decode_curve`)."""
    return measure_decode_curve(model, n_ctx, n_seq, kv_unified, depth, flash_attn, steps=12)[n_seq]


def rate_at(curve: dict[int, float], k: int) -> float:
    """``curve``'s rate at ``k`` (a batch width, or tokens per decode), interpolated linearly
    in log2(k) and clamped at the ends of what was measured."""
    widths = sorted(curve)
    x = np.log2([max(1, min(k, widths[-1]))])
    return float(np.interp(x, np.log2(widths), [curve[w] for w in widths])[0])


def rate_at_depth(curves: dict[int, dict[int, float]], k: int, depth: float) -> float:
    """The decode rate at batch width ``k`` for rows ``depth`` tokens deep, interpolated
    linearly between the depths ``curves`` were measured at (clamped at their ends)."""
    depths = sorted(curves)
    return float(np.interp(depth, depths, [rate_at(curves[d], k) for d in depths]))


def decodes_per_row(results) -> list[tuple[int, int]]:
    """Each row's prompt length and the generated tokens it had to decode: its first token
    comes from its prompt's decode; each later token, and the end-of-generation verdict, from
    decoding the one before (a row cut at ``max_tokens`` never decodes its last token)."""
    return [
        (x.n_prompt_tokens, x.n_tokens - (0 if x.finish_reason == "eog" else 1))
        for x in results
        if x.ok
    ]


def schedule_time(
    rows: list[tuple[int, int]], slots: int, curves: dict[int, dict[int, float]]
) -> float:
    """Seconds the generated tokens of ``rows`` ((prompt length, decodes) each) need when
    every step decodes every running row at the rate measured for that batch width and the
    rows' mean depth (attention reads every cell a row holds, so deep rows cost more), rows
    taking a free slot the step after one ends, in input order. A row's tokens come one after
    another, so near the end of a run steps hold fewer rows than slots: no scheduler without
    speculation decodes them faster."""
    waiting = [[depth, d] for depth, d in rows if d > 0]
    running: list[list[int]] = []
    seconds = 0.0
    while waiting or running:
        while waiting and len(running) < slots:
            running.append(waiting.pop(0))
        k = len(running)
        depth = sum(row[0] for row in running) / k
        seconds += k / rate_at_depth(curves, k, depth)
        running = [[depth + 1, d - 1] for depth, d in running if d > 1]
    return seconds


def row_depth(prompts, answer_tokens: float, model) -> int:
    """Tokens a sequence holds mid-answer: a row's prompt (median) and half its answer."""
    n_prompt = np.median([len(model.tokenize(p, add_special=True)) for p in prompts])
    return int(n_prompt + answer_tokens / 2)


LAYOUT_SLOTS = (1, 8, 16, 48)


def layouts(model, depth: int = 100) -> pd.DataFrame:
    """Batched decode rates (tok/s) for each KV layout with flash attention on and off, at
    ``LAYOUT_SLOTS`` sequences of ``depth`` tokens (256 cells per sequence): the figures the
    defaults (per-sequence streams, flash attention on) were chosen from."""
    rows = {}
    for n in LAYOUT_SLOTS:
        rows[n] = {
            f"{'unified' if unified else 'per-seq'}, FA {'on' if fa else 'off'}": measure_decode(
                model, 256 * n, n, unified, depth, fa
            )
            for unified in (False, True)
            for fa in (True, False)
        }
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("sequences")
    print(f"\n== {model.name}: batched decode, tok/s, by KV layout and flash attention (FA)")
    print(table.to_string(float_format=lambda x: f"{x:.0f}"))
    table.attrs.update(model=model.name)
    return table


def rates_for(
    model, prompts, max_tokens, config
) -> tuple[dict[int, float], dict[int, dict[int, float]]]:
    """The prompt rates by tokens per decode (with more than one slot also in full waves of
    rows, keyed 0) and the decode curves for a run's ``config``
    (n_ctx, slots, KV layout, flash attention), the curves keyed by depth: rows as deep as a
    prompt at the start of its answer and at ``max_tokens``."""
    n_ctx, slots, unified, fa = config
    if slots == 1:
        pp = measure_pp(model, fa, PP_SIZES_ONE_ROW, prompts)
    else:  # a long prompt's pieces, and full waves of rows (keyed 0)
        pp = measure_pp(model, fa, PP_SIZES, prompts) | {0: measure_wave_pp(model, config, prompts)}
    curves = {}
    for answer in (1, max_tokens):
        depth = row_depth(prompts, 2 * answer, model)  # row_depth counts half the answer
        curves[depth] = measure_decode_curve(
            model, n_ctx, slots, unified, depth, fa, _widths(slots)
        )
    return pp, curves


def layout_markdown(table: pd.DataFrame) -> str:
    """A :func:`layouts` table as Markdown."""
    cols = list(table.columns)
    lines = [
        f"| {table.attrs['model']}: sequences | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for n, row in table.iterrows():
        lines.append(f"| {n} | " + " | ".join(f"{row[c]:.0f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"
