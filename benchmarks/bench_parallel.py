"""Parallel generation benchmark: the localLLM seed tutorial's workload, side by side.

    .venv/bin/python benchmarks/bench_parallel.py [--rows 100] [--quick]

Workloads (default model, temperature 0):
  seed   the seed tutorial's AG News classification prompt on ../shared/data/ag_news_sample.csv
         (100 rows), chat template applied, max_tokens=50
  gen    48 prompts asking for a paragraph, max_tokens=120
Engines: (a) llama-cpp-python's high-level ``Llama`` in a loop, (b) our ``generate()`` in a
loop, (c) ``generate_parallel`` at n_seq_max 4, 8, 16.

"ideal" is the time this machine needs for the tokens the engine decoded, at rates measured in
this run: prompt tokens / prompt-processing rate + generated tokens / batched-decode rate at the
run's slot count. wall/ideal near 1 means the scheduler keeps the CPU busy with useful work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import jupyter_localllm as ll
from jupyter_localllm.engine.llama import Batch, Context

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news_sample.csv"
TOPICS = [
    "the history of the bicycle",
    "how bees make honey",
    "why the sky is blue",
    "the water cycle",
    "how vaccines work",
    "the invention of paper",
    "volcanoes",
    "the life of a star",
    "how trains changed travel",
    "coral reefs",
    "the moon landing",
    "how computers store numbers",
    "rainforests",
    "the printing press",
    "earthquakes",
    "how bread rises",
    "the Roman roads",
    "photosynthesis",
    "ocean tides",
    "the first cameras",
    "how airplanes fly",
    "glaciers",
    "the silk road",
    "how batteries work",
]


def seed_prompts(model, rows: int) -> list[str]:
    df = pd.read_csv(DATA).head(rows)
    return [
        ll.apply_chat_template(
            model,
            [
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": "Classify this news article into exactly one category: "
                    "World, Sports, Business, or Sci/Tech. Respond with only the category name."
                    f"\n\nTitle: {r.title}\nDescription: {r.description[:100]}\n\nCategory:",
                },
            ],
        )
        for r in df.itertuples()
    ]


def gen_prompts(model, n: int) -> list[str]:
    return [
        ll.apply_chat_template(
            model,
            [
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": f"Write a paragraph about {TOPICS[i % len(TOPICS)]}."
                    + (" Keep it simple." if i >= len(TOPICS) else ""),
                },
            ],
        )
        for i in range(n)
    ]


def measure_rates(model, n_seqs: list[int]) -> tuple[float, dict[int, float]]:
    """Prompt-processing tok/s (one 256-token sequence per decode) and batched-decode tok/s
    (one token for each of n sequences per decode, ~150 tokens of context each)."""
    ctx = Context(
        model,
        n_ctx=8192,
        n_seq_max=max(n_seqs),
        n_batch=512,
        n_threads=ll.hardware_profile()["cores_physical"],
    )
    batch = Batch(512, ctx.n_seq_max, model.n_vocab)
    rng = np.random.default_rng(0)
    toks = rng.integers(100, 20000, size=256)
    times = []
    for _ in range(4):
        ctx.memory_clear()
        batch.clear()
        batch.add(toks, 0, 0, want_last_logits=True)
        t0 = time.perf_counter()
        ctx.decode(batch)
        times.append(time.perf_counter() - t0)
    pp = 256 / min(times[1:])
    decode = {}
    for n in n_seqs:
        ctx.memory_clear()
        for s in range(n):
            batch.clear()
            batch.add(toks[:150], 0, s, want_last_logits=True)
            ctx.decode(batch)
        steps, t0 = 24, time.perf_counter()
        for k in range(steps):
            batch.clear()
            for s in range(n):
                batch.add([int(toks[k])], 150 + k, s, want_last_logits=True)
            ctx.decode(batch)
        decode[n] = n * steps / (time.perf_counter() - t0)
    ctx.close()
    return pp, decode


def run_llama_loop(model, prompts, max_tokens):
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    # Llama() has no use_extra_bufts argument (it swallows unknown keywords); on AMX CPUs the
    # repacked buffers crash, so hand its constructor default params with the field cleared.
    defaults = low_level.llama_model_default_params

    def params_without_extra_bufts():
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = params_without_extra_bufts
    try:
        llm = llama_cpp.Llama(
            model_path=str(model.path),
            n_ctx=2048,
            verbose=False,
            seed=1234,
            n_threads=ll.hardware_profile()["cores_physical"],
        )
    finally:
        low_level.llama_model_default_params = defaults
    t0 = time.perf_counter()
    out, n_prompt, n_gen = [], 0, 0
    for p in prompts:
        r = llm(p, max_tokens=max_tokens, temperature=0, repeat_penalty=1.0)
        out.append(r["choices"][0]["text"])
        n_prompt += r["usage"]["prompt_tokens"]
        n_gen += r["usage"]["completion_tokens"]
    wall = time.perf_counter() - t0
    llm.close()
    return out, wall, n_prompt, n_gen


def run_ours(model, prompts, max_tokens, n_seq_max):
    ctx = ll.context_create(model, n_seq_max=n_seq_max)
    t0 = time.perf_counter()
    if n_seq_max == 1:
        out = [ll.generate(ctx, p, max_tokens=max_tokens) for p in prompts]
        stats = None
    else:
        out = ll.generate_parallel(ctx, prompts, max_tokens=max_tokens, progress=False)
        stats = ctx.last_run
    wall = time.perf_counter() - t0
    ctx.close()
    return out, wall, stats


def bench(name, model, prompts, max_tokens, rates, slots):
    pp, dec = rates
    rows = []
    ref, wall_a, np_a, ng_a = run_llama_loop(model, prompts, max_tokens)
    rows.append(
        dict(
            engine="(a) Llama loop",
            wall=wall_a,
            prompt_tok=np_a,
            gen_tok=ng_a,
            agree=1.0,
            ideal=np_a / pp + ng_a / dec[1],
        )
    )
    out, wall, _ = run_ours(model, prompts, max_tokens, 1)
    ng = sum(r.n_tokens for r in out)
    npt = sum(r.n_prompt_tokens for r in out)
    rows.append(
        dict(
            engine="(b) generate loop",
            wall=wall,
            prompt_tok=npt,
            gen_tok=ng,
            agree=np.mean([a == b for a, b in zip(out, ref, strict=True)]),
            ideal=npt / pp + ng / dec[1],
        )
    )
    for n in slots:
        out, wall, st = run_ours(model, prompts, max_tokens, n)
        ng = sum(r.n_tokens for r in out)
        rows.append(
            dict(
                engine=f"(c) parallel n_seq_max={n}",
                wall=wall,
                prompt_tok=st.decoded_prompt_tokens,
                gen_tok=ng,
                agree=np.mean([a == b for a, b in zip(out, ref, strict=True)]),
                ideal=st.decoded_prompt_tokens / pp + ng / dec[n],
                outside_decode=st.overhead,
            )
        )
    df = pd.DataFrame(rows)
    df["tok_s"] = df.gen_tok / df.wall
    df["speedup_vs_a"] = wall_a / df.wall
    df["wall/ideal"] = df.wall / df.ideal
    print(f"\n== {name}: {len(prompts)} prompts, max_tokens={max_tokens} ==")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--gen-rows", type=int, default=48)
    ap.add_argument("--slots", default="4,8,16")
    ap.add_argument("--only", choices=["seed", "gen"], default=None)
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent", file=sys.stderr)
        return 0
    slots = [int(s) for s in args.slots.split(",")]
    model = ll.model_load("default")
    hw = ll.hardware_profile()
    print(
        f"machine: {hw['cpu_model']}, {hw['cores_physical']} physical cores, "
        f"{hw['ram_total'] / 2**30:.0f} GiB; model {model.name} ({model.path.name})"
    )
    pp, dec = measure_rates(model, [1, *slots])
    print(
        f"measured: prompt processing {pp:.0f} tok/s; batched decode "
        + ", ".join(f"n={n}: {r:.0f} tok/s" for n, r in dec.items())
    )
    if args.only in (None, "seed"):
        bench(
            "seed workload (AG News)", model, seed_prompts(model, args.rows), 50, (pp, dec), slots
        )
    if args.only in (None, "gen"):
        bench("generation-heavy", model, gen_prompts(model, args.gen_rows), 120, (pp, dec), slots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
