"""Parallel generation benchmark: the localLLM seed tutorial's workload, side by side.

    .venv/bin/python benchmarks/bench_parallel.py [--rows 100] [--quick]

Workloads (default model, temperature 0):
  seed   the seed tutorial's AG News classification prompt on ../shared/data/ag_news_sample.csv
         (100 rows), chat template applied, max_tokens=50
  gen    48 prompts asking for a paragraph, max_tokens=120
Engines: (a) llama-cpp-python's high-level ``Llama`` in a loop, (b) our ``generate()`` in a
loop, (c) ``generate_parallel`` at n_seq_max 4, 8, 16.

"ideal" is the time this machine needs for the tokens the engine decoded, at rates measured in
this run: prompt tokens / the best prompt-processing rate (over 16-512 tokens per decode) +
generated tokens / the batched-decode rate measured on a context configured as the engine's own
run (its n_ctx, slot count and KV layout, sequences as deep as a row mid-answer). wall/ideal
near 1 means the scheduler keeps the CPU busy with useful work.
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


PP_CHUNKS = (16, 64, 256, 512)


def _context(model, n_ctx: int, n_seq: int, kv_unified: bool, n_batch: int = 512) -> Context:
    return Context(
        model,
        n_ctx=n_ctx,
        n_seq_max=n_seq,
        n_batch=n_batch,
        n_threads=ll.hardware_profile()["cores_physical"],
        kv_unified=kv_unified,
    )


def measure_pp(model, chunks=PP_CHUNKS) -> dict[int, float]:
    """Prompt processing (tok/s) as a function of the tokens in one decode: one sequence,
    per-sequence KV (the engine's layout), median of 3 decodes per size."""
    ctx = _context(model, 1024, 1, kv_unified=False)
    batch = Batch(512, 1, model.n_vocab)
    toks = np.random.default_rng(0).integers(100, 20000, size=512)
    rates = {}
    for n in chunks:
        times = []
        for _ in range(3):
            ctx.memory_clear()
            batch.clear()
            batch.add(toks[:n], 0, 0, want_last_logits=True)
            t0 = time.perf_counter()
            ctx.decode(batch)
            times.append(time.perf_counter() - t0)
        rates[n] = n / float(np.median(times))
    ctx.close()
    return rates


def measure_decode(model, n_ctx: int, n_seq: int, kv_unified: bool, depth: int) -> float:
    """Batched decode (tok/s) on a context configured as the engine's run (``n_ctx``,
    ``n_seq`` slots, KV layout): one token for each of ``n_seq`` sequences per decode, each
    sequence ``depth`` tokens deep (about a row's prompt and half its answer)."""
    per_seq = n_ctx if kv_unified else n_ctx // n_seq
    depth = max(8, min(depth, per_seq - 16))
    ctx = _context(model, n_ctx, n_seq, kv_unified)
    batch = Batch(max(512, n_seq), n_seq, model.n_vocab)
    toks = np.random.default_rng(1).integers(100, 20000, size=depth + 16)
    for s in range(n_seq):
        for start in range(0, depth, 512):
            batch.clear()
            batch.add(toks[start : min(depth, start + 512)], start, s, want_last_logits=False)
            ctx.decode(batch)
    steps, t0 = 12, time.perf_counter()
    for k in range(steps):
        batch.clear()
        for s in range(n_seq):
            batch.add([int(toks[depth + k])], depth + k, s, want_last_logits=True)
        ctx.decode(batch)
    rate = n_seq * steps / (time.perf_counter() - t0)
    ctx.close()
    return rate


def _depth(prompts, answers, model) -> int:
    """Tokens a sequence holds mid-answer: a row's prompt and half its answer (medians)."""
    n_prompt = np.median([len(model.tokenize(p, add_special=True)) for p in prompts])
    n_answer = np.median([x.n_tokens for x in answers])
    return int(n_prompt + n_answer / 2)


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
    """Our engine: a generate() loop (n_seq_max=1) or generate_parallel. Returns the
    results, the wall time, the prompt tokens actually decoded and the time outside
    llama_decode."""
    ctx = ll.context_create(model, n_seq_max=n_seq_max)
    decoded, in_decode = 0, 0.0
    t0 = time.perf_counter()
    if n_seq_max == 1:
        out = []
        for p in prompts:
            out.append(ll.generate(ctx, p, max_tokens=max_tokens))
            decoded += ctx.last_run.decoded_prompt_tokens
            in_decode += ctx.last_run.decode_time
    else:
        out = ll.generate_parallel(ctx, prompts, max_tokens=max_tokens, progress=False, cache=False)
        decoded, in_decode = ctx.last_run.decoded_prompt_tokens, ctx.last_run.decode_time
    wall = time.perf_counter() - t0
    config = (ctx.last_run.n_ctx or ctx.n_ctx, max(1, ctx.last_run.n_slots), ctx.kv_unified)
    ctx.close()
    return out, wall, decoded, 1 - in_decode / wall, config


def bench(name, model, prompts, max_tokens, slots, rounds):
    """Every engine once per round, in a rotated order, so that the machine's speed drifting
    during the run (shared VMs) does not favour one engine; medians over rounds."""
    engines = ["(a) Llama loop", "(b) generate loop"] + [
        f"(c) parallel n_seq_max={n}" for n in slots
    ]
    records = []
    for r in range(rounds):
        pp_curve = measure_pp(model)
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        outputs, configs = {}, {}
        for engine in order:
            if engine.startswith("(a)"):
                out, wall, _, n_gen = run_llama_loop(model, prompts, max_tokens)
                rec = dict(prompt_tok=None, gen_tok=n_gen, outside=None)
            else:
                n = 1 if engine.startswith("(b)") else int(engine.rsplit("=", 1)[1])
                out, wall, decoded, outside, configs[engine] = run_ours(
                    model, prompts, max_tokens, n
                )
                rec = dict(
                    prompt_tok=decoded, gen_tok=sum(x.n_tokens for x in out), outside=outside
                )
            outputs[engine] = out
            rec.update(engine=engine, round=r, wall=wall, pp=max(pp_curve.values()))
            records.append(rec)
        configs["(a) Llama loop"] = configs["(b) generate loop"]  # the same one-row decoding
        depth = _depth(prompts, outputs["(b) generate loop"], model)
        for rec in records[-len(engines) :]:
            n_ctx, n_seq, unified = configs[rec["engine"]]
            rec["dec"] = measure_decode(model, n_ctx, n_seq, unified, depth)
            rec["config"] = f"n_ctx={n_ctx} slots={n_seq} {'unified' if unified else 'per-seq'}"
        ref = outputs["(a) Llama loop"]
        for rec in records[-len(engines) :]:
            out = outputs[rec["engine"]]
            rec["agree"] = float(np.mean([str(x) == str(y) for x, y in zip(out, ref, strict=True)]))
    df = pd.DataFrame(records)
    # Llama reuses the prompt prefix of its previous call exactly as our generate loop does,
    # so (a) decodes the same prompt tokens as (b).
    b_tokens = df.loc[df.engine.str.startswith("(b)"), "prompt_tok"].iloc[0]
    df["prompt_tok"] = df["prompt_tok"].fillna(b_tokens)
    df["ideal"] = df.prompt_tok / df.pp + df.gen_tok / df.dec
    df["wall/ideal"] = df.wall / df.ideal
    table = df.groupby("engine", sort=False).agg(
        wall=("wall", "median"),
        prompt_tok=("prompt_tok", "first"),
        gen_tok=("gen_tok", "first"),
        agree=("agree", "first"),
        config=("config", "first"),
        wall_ideal=("wall/ideal", "median"),
        outside_decode=("outside", "median"),
    )
    table["gen_tok_s"] = table.gen_tok / table.wall
    table["speedup_vs_a"] = table.loc["(a) Llama loop", "wall"] / table.wall
    print(f"\n== {name}: {len(prompts)} prompts, max_tokens={max_tokens}, {rounds} round(s) ==")
    rates = ", ".join(f"{x:.0f}" for x in df.pp.unique())
    print(
        f"ideal: prompt tokens at each round's best prompt rate ({rates} tok/s over 16-512 "
        "tokens per decode), generated tokens at the decode rate measured on each engine's own "
        "context (n_ctx, slots, KV layout, context depth)"
    )
    print(table.to_string(float_format=lambda x: f"{x:.2f}"))
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--gen-rows", type=int, default=48)
    ap.add_argument("--slots", default="4,8,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=["seed", "gen"], default=None)
    ap.add_argument(
        "--models",
        default="default",
        help="comma-separated model references, each benchmarked in turn (e.g. "
        "default,qwen2.5-coder-0.5b-instruct-q4_k_m after make bench-model)",
    )
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent", file=sys.stderr)
        return 0
    slots = [int(s) for s in args.slots.split(",")]
    hw = ll.hardware_profile()
    print(
        f"machine: {hw['cpu_model']}, {hw['cores_physical']} cores, "
        f"{hw['ram_total'] / 2**30:.0f} GiB"
    )
    for ref in args.models.split(","):
        model = ll.model_load(ref.strip())
        print(f"\n#### model {model.name} ({model.path.name})")
        if args.only in (None, "seed"):
            prompts = seed_prompts(model, args.rows)
            bench("seed workload (AG News)", model, prompts, 50, slots, args.rounds)
        if args.only in (None, "gen"):
            prompts = gen_prompts(model, args.gen_rows)
            bench("generation-heavy", model, prompts, 120, slots, args.rounds)
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
