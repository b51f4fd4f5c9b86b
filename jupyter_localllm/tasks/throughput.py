"""How fast this machine can run a batch: the rates it decodes at, a run's ideal time from
them, and the speed-up over a ``generate()`` loop that those rates allow.

Rates are measured on a context configured as the run being judged (n_ctx, slots, KV layout,
flash attention): prompt processing by tokens per decode (one row's prompt after the prompts'
shared prefix, and with several slots whole waves of rows), and batched decoding by batch
width, with rows as deep as a prompt at the start and at the end of an answer. A run's ideal
prices the prompt tokens it decoded at those rates and steps its rows' generated tokens
through its slots (:func:`schedule_time`). The loop's ideal over the batched run's is the
most batching can give on this machine (:class:`Speedup`): on a CPU, prompt-bound work
(short answers after long prompts) has little to gain, generation-heavy work much more.

``benchmarks/rates.py`` and ``notebooks/parallel_processing.ipynb`` use this module::

    ctx1 = ll.context_create(model, n_ctx=512)
    answers, decoded = [], []
    for p in prompts:
        answers.append(ll.generate(ctx1, p, max_tokens=5))
        decoded.append(ctx1.last_run.decoded_prompt_tokens)
    loop = ideal_time(ctx1, prompts, answers, max_tokens=5, decoded=decoded)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hardware import physical_cores

__all__ = [
    "Ideal",
    "Speedup",
    "agreement",
    "decodes_per_row",
    "ideal_time",
    "measure_decode_curve",
    "measure_pp",
    "measure_wave_pp",
    "prompt_shape",
    "prompt_time",
    "rate_at",
    "rate_at_depth",
    "rates_for",
    "row_depth",
    "run_config",
    "schedule_time",
]

RunConfig = tuple[int, int, bool, bool]  # n_ctx, slots, kv_unified, flash_attn

PP_SIZES = (256, 512)  # tokens per decode: rates rise to a plateau from ~256 on a CPU
PP_SIZES_ONE_ROW = (16, 32, 64, 128, 256, 512)  # a loop decodes one row's prompt per call
PP_TOTAL = 512  # tokens decoded per measurement


def _context(
    model: Any,
    n_ctx: int,
    n_seq: int,
    kv_unified: bool,
    flash_attn: bool = False,
    n_batch: int = 512,
    n_threads: int | None = None,
) -> Any:
    return model.new_context(
        n_ctx=n_ctx,
        n_seq_max=n_seq,
        n_batch=n_batch,
        n_threads=n_threads or physical_cores(),
        kv_unified=kv_unified,
        flash_attn=flash_attn,
    )


def prompt_shape(model: Any, prompts: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """The prompts' shared prefix (tokens all of them start with) and each row's own tokens
    after it: what a run decodes once, and what it decodes for every row."""
    rows = [model.tokenize(p, add_special=True) for p in prompts]
    n = min(len(r) for r in rows)
    shared = next((i for i in range(n) if any(r[i] != rows[0][i] for r in rows)), n)
    shared = min(shared, n - 1)  # every row decodes at least one token of its own
    return list(rows[0][:shared]), [list(r[shared:]) for r in rows]


def measure_pp(
    model: Any,
    flash_attn: bool,
    sizes: Sequence[int] = PP_SIZES,
    prompts: Sequence[str] | None = None,
) -> dict[int, float]:
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
    batch = model.new_batch(512, 1)
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


def _fill_prefix(ctx: Any, batch: Any, prefix: list[int], slots: int) -> None:
    """Decode ``prefix`` into sequence 0 and give it to every other slot."""
    for start in range(0, len(prefix), 512):
        batch.clear()
        batch.add(prefix[start : start + 512], start, 0, want_last_logits=False)
        ctx.decode(batch)
    for s in range(1, slots):
        ctx.seq_cp(0, s)


def measure_wave_pp(
    model: Any, config: RunConfig, prompts: Sequence[str], total: int = 2 * PP_TOTAL
) -> float:
    """Prompt processing (tok/s) in full waves on a context configured as the run
    (``config``: n_ctx, slots, KV layout, flash attention): the shared prefix of ``prompts``
    decoded once and given to every slot, then decodes each holding as many rows' own tokens
    as there are slots (up to 512 tokens), every row after the prefix in its own sequence, as
    a parallel run decodes prompts at best; ``total`` tokens in all."""
    n_ctx, slots, unified, fa = config
    prefix, rows = prompt_shape(model, prompts)
    ctx = _context(model, n_ctx, slots, unified, fa)
    batch = model.new_batch(512, slots)
    if prefix:
        _fill_prefix(ctx, batch, prefix, slots)
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


def prompt_time(decoded: Sequence[int], slots: int, pp: dict[int, float]) -> float:
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
    model: Any,
    n_ctx: int,
    n_seq: int,
    kv_unified: bool,
    depth: int,
    flash_attn: bool = False,
    widths: Sequence[int] | None = None,
    steps: int = 8,
) -> dict[int, float]:
    """Batched decode (tok/s) by batch width on a context configured as the engine's run
    (``n_ctx``, ``n_seq`` slots, KV layout, flash attention): one token for each of the first
    ``k`` sequences per decode (consecutive ids, as the scheduler keeps them), each sequence
    ``depth`` tokens deep (about a row's prompt and half its answer)."""
    per_seq = n_ctx // n_seq  # a shared cache holds n_seq rows too
    depth = max(8, min(depth, per_seq - steps - 8))
    ctx = _context(model, n_ctx, n_seq, kv_unified, flash_attn)
    batch = model.new_batch(max(512, n_seq), n_seq)
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


def decodes_per_row(results: Sequence[Any]) -> list[tuple[int, int]]:
    """Each row's prompt length and the generated tokens it had to decode: its first token
    comes from its prompt's decode; each later token, and the end-of-generation verdict, from
    decoding the one before (a row cut at ``max_tokens`` never decodes its last token)."""
    return [
        (x.n_prompt_tokens, x.n_tokens - (0 if x.finish_reason == "eog" else 1))
        for x in results
        if x.ok
    ]


def schedule_time(
    rows: Sequence[tuple[int, int]], slots: int, curves: dict[int, dict[int, float]]
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


def row_depth(prompts: Sequence[str], answer_tokens: float, model: Any) -> int:
    """Tokens a sequence holds mid-answer: a row's prompt (median) and half its answer."""
    n_prompt = np.median([len(model.tokenize(p, add_special=True)) for p in prompts])
    return int(n_prompt + answer_tokens / 2)


def _one_row_sizes(decoded: Sequence[int]) -> tuple[int, ...]:
    """The sizes of :data:`PP_SIZES_ONE_ROW` that bracket the prompt decodes of a loop (what
    :func:`rate_at` interpolates between), so no time goes into sizes no row had."""
    low, high = min(decoded), max(decoded)
    below = [s for s in PP_SIZES_ONE_ROW if s <= low] or [PP_SIZES_ONE_ROW[0]]
    above = [s for s in PP_SIZES_ONE_ROW if s >= high] or [PP_SIZES_ONE_ROW[-1]]
    return tuple(s for s in PP_SIZES_ONE_ROW if below[-1] <= s <= above[0])


def rates_for(
    model: Any,
    prompts: Sequence[str],
    max_tokens: int,
    config: RunConfig,
    pp_sizes: Sequence[int] | None = None,
) -> tuple[dict[int, float], dict[int, dict[int, float]]]:
    """The prompt rates by tokens per decode (with more than one slot also in full waves of
    rows, keyed 0) and the decode curves for a run's ``config``
    (n_ctx, slots, KV layout, flash attention), the curves keyed by depth: rows as deep as a
    prompt at the start of its answer and at ``max_tokens``. ``pp_sizes`` overrides the
    tokens per decode the prompt rate is measured at."""
    n_ctx, slots, unified, fa = config
    if slots == 1:
        pp = measure_pp(model, fa, pp_sizes or PP_SIZES_ONE_ROW, prompts)
    else:  # a long prompt's pieces, and full waves of rows (keyed 0)
        pp = measure_pp(model, fa, pp_sizes or PP_SIZES, prompts)
        pp[0] = measure_wave_pp(model, config, prompts)
    curves = {}
    for answer in (1, max_tokens):
        depth = row_depth(prompts, 2 * answer, model)  # row_depth counts half the answer
        curves[depth] = measure_decode_curve(
            model, n_ctx, slots, unified, depth, fa, _widths(slots)
        )
    return pp, curves


# -- a run's ideal and the limit of the speed-up -------------------------------------------


def run_config(ctx: Any) -> RunConfig:
    """The configuration of the last run on ``ctx`` (a context from ``context_create``):
    its n_ctx, the slots it used, its KV layout and whether flash attention was on."""
    stats = ctx.last_run
    return (stats.n_ctx or ctx.n_ctx, max(1, stats.n_slots), ctx.kv_unified, ctx.flash_attn)


@dataclass(frozen=True)
class Ideal:
    """The time this machine needs for the tokens a run decoded (:func:`ideal_time`):
    ``prompt_seconds`` for its ``prompt_tokens``, ``generate_seconds`` for its
    ``generated_decodes`` (one per generated token but the last of a row cut at max_tokens),
    on ``config`` (n_ctx, slots, KV layout, flash attention), at the measured ``prompt_rates``
    (tok/s by tokens per decode; key 0: full waves of rows) and ``decode_rates`` (by row depth,
    then tok/s by batch width)."""

    prompt_seconds: float
    generate_seconds: float
    prompt_tokens: int
    generated_decodes: int
    config: RunConfig
    prompt_rates: dict[int, float]
    decode_rates: dict[int, dict[int, float]]

    @property
    def seconds(self) -> float:
        """The whole run's ideal time."""
        return self.prompt_seconds + self.generate_seconds

    @property
    def prompt_rate(self) -> float:
        """Prompt tokens per second at the ideal (the rates at this run's decode sizes)."""
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else float("nan")

    @property
    def decode_rate(self) -> float:
        """Generated tokens per second at the ideal (the rates at this run's batch widths)."""
        if not self.generate_seconds:
            return float("nan")
        return self.generated_decodes / self.generate_seconds

    def describe(self) -> str:
        """The configuration in words."""
        n_ctx, slots, unified, _ = self.config
        layout = ", one shared KV cache" if unified and slots > 1 else ""
        return f"n_ctx={n_ctx}, {slots} slot{'s' if slots > 1 else ''}{layout}"

    def __str__(self) -> str:
        return (
            f"ideal {self.seconds:.1f} s ({self.prompt_seconds:.1f} s prompts, "
            f"{self.generate_seconds:.1f} s generated tokens) on {self.describe()}"
        )


def ideal_time(
    ctx: Any,
    prompts: Sequence[str],
    results: Sequence[Any],
    max_tokens: int,
    decoded: Sequence[int] | None = None,
) -> Ideal:
    """The ideal time of the run that gave ``results`` for ``prompts`` on ``ctx``, from rates
    measured now on its configuration (call it right after the run: the speed of a VM drifts
    within minutes). ``decoded``: the prompt tokens each call decoded, for a loop of
    ``generate()`` calls (``ctx.last_run.decoded_prompt_tokens`` after each); by default the
    last run's, for one ``generate_parallel`` call."""
    config = run_config(ctx)
    if decoded is None:
        decoded = [ctx.last_run.decoded_prompt_tokens]
    slots = config[1]
    sizes = _one_row_sizes(decoded) if slots == 1 else None
    pp, curves = rates_for(ctx.model, prompts, max_tokens, config, sizes)
    rows = decodes_per_row(results)
    return Ideal(
        prompt_time(decoded, slots, pp),
        schedule_time(rows, slots, curves),
        sum(decoded),
        sum(d for _, d in rows),
        config,
        pp,
        curves,
    )


@dataclass(frozen=True)
class Speedup:
    """A batched run against a loop: the ``measured`` speed-up (the loop's wall time over the
    run's), the ``limit`` the machine's rates allow (the loop's ideal over the run's) and the
    ``share`` of the limit reached."""

    loop_seconds: float
    parallel_seconds: float
    loop_ideal: Ideal
    parallel_ideal: Ideal

    @property
    def measured(self) -> float:
        """The loop's wall time over the batched run's."""
        return self.loop_seconds / self.parallel_seconds

    @property
    def limit(self) -> float:
        """The speed-up the measured rates allow: the loop's ideal over the run's."""
        return self.loop_ideal.seconds / self.parallel_ideal.seconds

    @property
    def share(self) -> float:
        """How much of :attr:`limit` the run reached."""
        return self.measured / self.limit

    def table(self) -> Any:
        """The two runs side by side (a DataFrame): configuration, tokens decoded, the rates at
        the ideal, the ideal and the wall time."""
        import pandas as pd

        rows = {}
        for name, ideal, wall in (
            ("generate() loop", self.loop_ideal, self.loop_seconds),
            ("generate_parallel", self.parallel_ideal, self.parallel_seconds),
        ):
            rows[name] = {
                "configuration": ideal.describe(),
                "prompt tokens": ideal.prompt_tokens,
                "prompt tok/s": round(ideal.prompt_rate),
                "generated tokens": ideal.generated_decodes,
                "generated tok/s": round(ideal.decode_rate),
                "ideal s": round(ideal.seconds, 1),
                "wall s": round(wall, 1),
                "wall / ideal": round(wall / ideal.seconds, 2),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    def explain(self) -> str:
        """What the rates say about this work, in a few sentences with the figures."""
        loop, par = self.loop_ideal, self.parallel_ideal
        share = loop.prompt_seconds / loop.seconds
        kind = (
            "prompt-bound: batching changes little for prompt tokens, so only the generated "
            "tokens' share can shrink"
            if share >= 0.5
            else "generation-heavy: every step of one row reads all the weights for one token, "
            "a batched step shares that read between its rows"
        )
        return (
            f"Prompt tokens are {share:.0%} of the loop's ideal time ({loop.prompt_tokens:,} at "
            f"{loop.prompt_rate:.0f} tok/s; the parallel run: {par.prompt_tokens:,} at "
            f"{par.prompt_rate:.0f} tok/s). Generated tokens: {loop.decode_rate:.0f} tok/s one "
            f"row at a time, {par.decode_rate:.0f} tok/s in steps of up to {par.config[1]} rows. "
            f"This work is {kind}. The measured rates allow {self.limit:.2f}x; this run "
            f"reached {self.measured:.2f}x ({self.share:.2f} of the limit)."
        )

    def __str__(self) -> str:
        return f"{self.measured:.2f}x (limit {self.limit:.2f}x, {self.share:.2f} of it)"


def agreement(loop: Sequence[str], parallel: Sequence[str]) -> str:
    """How many answers of a loop and a batched run are identical, and why the others differ."""
    same = sum(a == b for a, b in zip(loop, parallel, strict=True))
    line = f"{same}/{len(loop)} answers identical"
    if same == len(loop):
        return line
    return (
        f"{line}: the others differ because llama.cpp's CPU kernels round differently for "
        "different batch shapes, so where the model's two best tokens are nearly tied a batched "
        'row can take the other one (README, "Flash attention").'
    )
