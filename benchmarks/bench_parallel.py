"""Parallel generation benchmark: our engine, llama-cpp-python and llama-server, side by side.

    .venv/bin/python benchmarks/bench_parallel.py [--models default,qwen2.5-coder-0.5b]
        [--rounds 3] [--seed-rounds 4] [--only seed|gen] [--markdown FILE]

``make bench`` runs it on both benchmark models after ``make bench-model`` (the 0.5B model)
and ``make bench-server`` (``.bench/llama-server``); without the server binary the server rows
are left out, with a note.

Workloads (temperature 0, so every engine decodes greedily):
  seed  the localLLM seed tutorial's classification workload as written: 100 AG News rows of
        ../shared/data/ag_news_sample.csv, its chat prompt, max_tokens=5; the loop on
        ``context_create(model, n_ctx=512)``, the parallel run on ``n_ctx=1048, n_seq_max=10``
  gen   48 prompts asking for a paragraph, max_tokens=120
Engines: (a) llama-cpp-python's high-level ``Llama`` in a loop, (b) our ``generate()`` in a
loop, (c) ``generate_parallel``, (d) ``generate_parallel`` with ``deterministic=True`` (README,
"Reproducibility"), (s) llama-server ``-np 8`` with 8 concurrent HTTP clients
(continuous batching and its prompt cache on, flash attention on as in our contexts and its own
``auto``, its other settings at their defaults). ``Llama`` runs with flash attention on too
(its default is off): the same kernels everywhere, so speed ratios compare engines, not
kernels. Greedy answers still differ where batch shapes round a near-tied token differently;
the agreement columns show it.

Every engine runs once per round, in an order rotated between rounds (the VM's speed drifts by
up to 1.5x within minutes); the table shows medians over rounds.

"ideal" is the time this machine needs for the tokens an engine of ours decoded, at rates
measured on that run's own configuration (n_ctx, slots, KV layout, flash attention) right
around it, since the VM's speed drifts within minutes. Prompt tokens: with several slots at
the best prompt-processing rate (256 or 512 tokens per decode); with one slot (a loop) each
row's prompt at the rate measured for a decode of its size, since one sequence cannot decode
it in bigger pieces. Generated tokens are stepped through the slots: each row decodes its
tokens one after another (counted per row: its first token comes from its prompt's decode, its
last is decoded only when the model must then say it is done), a freed slot takes the next
row, and every step costs what a decode of that many rows measured (by batch width, at the
rows' mean depth: measured with rows at the start and at the end of an answer, since attention
reads every cell a row holds, and interpolated). Near a run's end fewer rows than slots remain:
no scheduler without speculative decoding fills those steps, so the ideal counts them at their
own width. "wall/ideal, full batches" is the stricter figure that pretends every generated
token ran in a full batch; "tail s" is the time the run spent in decodes holding fewer rows
than its slots. "× (b) at the limit" is the speed-up over our generate() loop that the
measured rates allow: the loop's ideal over this configuration's, in the same round.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import jupyter_localllm as ll
from jupyter_localllm.engine import llama as engine_llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server as llama_server  # benchmarks/server.py
from bench_tables import cost_markdown, markdown
from rates import (
    decodes_per_row,
    layout_markdown,
    layouts,
    prompt_time,
    rates_for,
    schedule_time,
)

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


def seed_prompts(model, rows: int, data: Path = DATA) -> list[str]:
    df = pd.read_csv(data).head(rows)
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


@dataclass(frozen=True)
class Engine:
    """One column of the comparison: ``kind`` is ``llama`` (llama-cpp-python loop), ``loop``
    (our ``generate`` loop), ``parallel`` (``generate_parallel``) or ``server``."""

    label: str
    kind: str
    n_seq_max: int = 1
    n_ctx: int | None = None
    deterministic: bool = False
    """``deterministic=True`` (its own copy of the model, weights not repacked)."""


@dataclass(frozen=True)
class Workload:
    """Prompts, answer length and the engines compared on them."""

    name: str
    prompts: Callable[..., list[str]]
    max_tokens: int
    engines: tuple[Engine, ...]
    seed: int | None = None


@dataclass
class Run:
    """What one engine did in one round."""

    texts: list[str]
    wall: float
    gen_tok: int
    prompt_tok: float = float("nan")  # prompt tokens decoded (after prefix reuse)
    prompt_decodes: list[int] = field(default_factory=list)  # loops: each row's, else the sum
    gen_decoded: float = float("nan")  # generated tokens decoded (our runs: from the log)
    config: tuple[int, int, bool, bool] | None = None  # our runs' (n_ctx, slots, kv_unified,
    # flash_attn)
    outside: float = float("nan")  # share of wall outside llama_decode
    tail: float = float("nan")  # seconds in decodes holding fewer rows than slots
    steps: list[tuple[int, float]] = field(default_factory=list)
    decodes: list[tuple[int, int]] = field(default_factory=list)  # per row: prompt, decodes
    pp: dict[int, float] = field(default_factory=dict)  # prompt rate by tokens per decode,
    # measured just before and after the run
    curves: dict[int, dict[int, float]] = field(default_factory=dict)  # by depth: rate by
    # batch width, likewise


def workloads(gen_rows: int, seed_rows: int, slots: list[int], data: Path = DATA) -> list[Workload]:
    """The two workloads and their engines (see the module docstring)."""
    server = Engine("(s) llama-server -np 8, 8 clients", "server", 8)
    seed = Workload(
        "seed tutorial workload (AG News, as written)",
        lambda model: seed_prompts(model, seed_rows, data),
        5,
        (
            Engine("(a) Llama loop", "llama", 1, 512),
            Engine("(b) generate loop, n_ctx=512", "loop", 1, 512),
            Engine("(c) generate_parallel n_ctx=1048 n_seq_max=10", "parallel", 10, 1048),
            Engine("(c) generate_parallel n_seq_max=16", "parallel", 16),
            Engine("(d) (c) n_ctx=1048 n_seq_max=10, deterministic", "parallel", 10, 1048, True),
            server,
        ),
        seed=92092,
    )
    gen = Workload(
        "generation-heavy",
        lambda model: gen_prompts(model, gen_rows),
        120,
        (
            Engine("(a) Llama loop", "llama", 1, 2048),
            Engine("(b) generate loop", "loop", 1),
            *(Engine(f"(c) generate_parallel n_seq_max={n}", "parallel", n) for n in slots),
            Engine("(d) generate_parallel n_seq_max=8, deterministic", "parallel", 8, None, True),
            server,
        ),
    )
    return [seed, gen]


def llama_cpp_model(model, n_ctx: int):
    """llama-cpp-python's ``Llama`` on ``model``, with weight repacking as our engine loaded
    it (off on AMX CPUs, where it crashes), flash attention on."""
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    # Llama() has no use_extra_bufts argument (it swallows unknown keywords); on AMX CPUs the
    # repacked buffers crash, so hand its constructor default params with our engine's choice.
    defaults = low_level.llama_model_default_params

    def params_like_ours():
        params = defaults()
        params.use_extra_bufts = model.use_extra_bufts
        return params

    low_level.llama_model_default_params = params_like_ours
    try:
        return llama_cpp.Llama(
            model_path=str(model.path),
            n_ctx=n_ctx,
            verbose=False,
            seed=1234,
            n_threads=ll.hardware_profile()["cores_physical"],
            # the layers our engine put on the GPU (0 on a CPU build), so both run alike
            n_gpu_layers=getattr(model, "n_gpu_layers", 0),
            flash_attn=True,  # as our contexts: the same kernels, a like-for-like speed
        )
    finally:
        low_level.llama_model_default_params = defaults


def run_llama_loop(model, prompts, max_tokens, n_ctx: int = 2048) -> Run:
    """llama-cpp-python's ``Llama`` called once per prompt (it reuses the previous prompt's
    cached prefix, as our generate loop does)."""
    llm = llama_cpp_model(model, n_ctx)
    t0 = time.perf_counter()
    out, n_gen = [], 0
    for p in prompts:
        r = llm(p, max_tokens=max_tokens, temperature=0, repeat_penalty=1.0)
        out.append(r["choices"][0]["text"])
        n_gen += r["usage"]["completion_tokens"]
    wall = time.perf_counter() - t0
    llm.close()
    return Run(out, wall, n_gen)


@contextmanager
def decode_log() -> Iterator[list[tuple[int, float]]]:
    """Record (tokens, seconds) of every llama_decode our engine makes inside the block."""
    log: list[tuple[int, float]] = []
    original = engine_llama.Context.decode

    def timed(self, batch):
        t0 = time.perf_counter()
        original(self, batch)
        log.append((batch.n_tokens, time.perf_counter() - t0))

    engine_llama.Context.decode = timed
    try:
        yield log
    finally:
        engine_llama.Context.decode = original


def run_ours(model, prompts, max_tokens, engine: Engine, seed: int | None = None, hint=None) -> Run:
    """Our engine: a generate() loop or generate_parallel, as ``engine`` says. The rates its
    ideal needs are measured on its configuration right before and right after it, and
    averaged: the VM's speed drifts by a third within a minute. A parallel run picks its
    configuration from the work, so ``hint`` (the configuration of its previous round) says
    what to measure before it; without one only the rates after count."""
    own = ll.model_load(model.path, use_extra_bufts=False) if engine.deterministic else None
    ctx = ll.context_create(
        own or model,
        n_seq_max=engine.n_seq_max,
        n_ctx=engine.n_ctx,
        deterministic=engine.deterministic,
    )
    if engine.kind == "loop" and ctx.n_ctx is not None:
        hint = (ctx.n_ctx, 1, ctx.kv_unified, ctx.flash_attn)
    before = rates_for(model, prompts, max_tokens, hint) if hint else None
    options = dict(max_tokens=max_tokens, seed=seed)
    decoded: list[int] = []
    with decode_log() as steps:
        t0 = time.perf_counter()
        if engine.kind == "loop":
            out = []
            for p in prompts:
                out.append(ll.generate(ctx, p, **options))
                decoded.append(ctx.last_run.decoded_prompt_tokens)
        else:
            out = ll.generate_parallel(ctx, prompts, progress=False, cache=False, **options)
            decoded = [ctx.last_run.decoded_prompt_tokens]
        wall = time.perf_counter() - t0
    failed = [x for x in out if not x.ok]
    if failed:
        print(f"   {engine.label}: {len(failed)} row(s) failed: {failed[0].error}")
    slots = max(1, ctx.last_run.n_slots)
    config = (ctx.last_run.n_ctx or ctx.n_ctx, slots, ctx.kv_unified, ctx.flash_attn)
    ctx.close()
    if own is not None:
        own.close()  # its ideal uses the rates of the shared model's kernels
    after = rates_for(model, prompts, max_tokens, config)
    pp, curves = after
    if before is not None and hint == config:
        pp = {n: (before[0][n] + rate) / 2 for n, rate in pp.items()}
        curves = {
            d: {k: (before[1][d][k] + curve[k]) / 2 for k in curve} for d, curve in curves.items()
        }
    return Run(
        [str(x) for x in out],
        wall,
        sum(x.n_tokens for x in out),
        prompt_tok=sum(decoded),
        prompt_decodes=decoded,
        gen_decoded=sum(n for n, _ in steps) - sum(decoded),
        config=config,
        outside=1 - sum(dt for _, dt in steps) / wall,
        tail=sum(dt for n, dt in steps if n < slots),
        steps=steps,
        decodes=decodes_per_row(out),
        pp=pp,
        curves=curves,
    )


def run_server(model, prompts, max_tokens, n_parallel: int, url: str) -> Run:
    """The prompts through a running llama-server from ``n_parallel`` concurrent clients."""
    r = llama_server.run_prompts(url, prompts, n_clients=n_parallel, n_predict=max_tokens)
    return Run(r.texts, r.wall, r.generated_tokens, prompt_tok=r.prompt_tokens)


@contextmanager
def maybe_server(model, engines) -> Iterator[str | None]:
    """A llama-server for the workload's server engine (None when there is none or the binary
    is missing: those rows are skipped)."""
    server = next((e for e in engines if e.kind == "server"), None)
    if server is None or not llama_server.SERVER.is_file():
        yield None
        return
    threads = ll.hardware_profile()["cores_physical"]
    # Flash attention on, as in our contexts (and as the server's own "auto" picks on CPUs);
    # weights repacked where our engine repacks them.
    with llama_server.running_server(
        model.path,
        server.n_seq_max,
        n_threads=threads,
        flash_attn="on",
        repack=model.use_extra_bufts,  # as our engine loaded the weights
    ) as url:
        yield url


def _agreement(texts: list[str], reference: list[str] | None) -> float:
    """The share of ``texts`` equal to ``reference``'s (NaN when --engines left it out)."""
    if reference is None:
        return float("nan")
    return float(np.mean([x == y for x, y in zip(texts, reference, strict=True)]))


def _record(engine: Engine, r: int, runs: dict[str, Run], engines: list[Engine]) -> dict:
    """One engine's figures in round ``r``: its run, ideal and agreement with (a) and (b)."""
    run = runs[engine.label]
    llama = next((e.label for e in engines if e.kind == "llama"), None)
    loop = next((e.label for e in engines if e.kind == "loop"), None)
    reference = runs[llama].texts if llama else None  # (a), the Llama loop
    ours = runs[loop].texts if loop else None  # (b), our generate() loop
    rec = dict(
        engine=engine.label,
        round=r,
        wall=run.wall,
        prompt_tok=run.prompt_tok,
        gen_tok=run.gen_tok,
        gen_decoded=run.gen_decoded,
        outside=run.outside,
        tail=run.tail,
        pp=max(run.pp.values(), default=float("nan")),
        agree=_agreement(run.texts, reference),
        agree_b=_agreement(run.texts, ours),
    )
    if engine.kind == "llama" and loop:  # it decodes what our loop does (both reuse the prefix)
        rec["prompt_tok"] = runs[loop].prompt_tok
    config = run.config
    if config is not None:
        n_ctx, slots, unified, fa = config
        rec["dec"] = float(np.mean([curve[slots] for curve in run.curves.values()]))
        rec["prompt_ideal"] = prompt_time(run.prompt_decodes, slots, run.pp)
        rec["gen_ideal"] = schedule_time(run.decodes, slots, run.curves)
        decodes = sum(d for _, d in run.decodes)
        if decodes != run.gen_decoded:
            print(
                f"   {engine.label}: rows say {decodes} generated tokens "
                f"were decoded, the decode log {run.gen_decoded:.0f}"
            )
        layout = "unified" if unified else "per-seq"
        fa_name = "on" if fa else "off"
        rec["config"] = f"n_ctx={n_ctx}, {slots} slot(s), {layout} KV, FA {fa_name}"
    elif engine.kind == "llama":
        rec["dec"], rec["config"] = float("nan"), f"n_ctx={engine.n_ctx}, defaults"
    else:
        rec["dec"], rec["config"] = float("nan"), "server defaults, -fa on"
    return rec


ENGINES = set("abcds")
"""Letters of the engines :func:`bench` runs (``--engines``)."""


def bench(model, workload: Workload, rounds: int) -> pd.DataFrame:
    """Every engine of ``workload`` once per round in a rotated order; medians over rounds."""
    prompts = workload.prompts(model)
    engines = [e for e in workload.engines if e.label[1] in ENGINES]
    if not llama_server.SERVER.is_file() and "s" in ENGINES:
        print(f"   (no {llama_server.SERVER}: `make bench-server` builds it; server rows skipped)")
        engines = [e for e in engines if e.kind != "server"]
    records = []
    configs: dict[str, tuple] = {}  # our runs' configurations, from their previous round
    for r in range(rounds):
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        runs: dict[str, Run] = {}
        with maybe_server(model, engines) as url:
            for engine in order:
                if engine.kind == "llama":
                    run = run_llama_loop(model, prompts, workload.max_tokens, engine.n_ctx)
                elif engine.kind == "server":
                    run = run_server(model, prompts, workload.max_tokens, engine.n_seq_max, url)
                else:
                    hint = configs.get(engine.label)
                    run = run_ours(model, prompts, workload.max_tokens, engine, workload.seed, hint)
                    configs[engine.label] = run.config
                runs[engine.label] = run
                print(f"   round {r + 1}: {engine.label}: {run.wall:.1f} s", flush=True)
        for engine in engines:
            records.append(_record(engine, r, runs, engines))
    df = pd.DataFrame(records)
    rows = len(prompts)
    df["ideal"] = df.prompt_ideal + df.gen_ideal
    df["wall/ideal"] = df.wall / df.ideal
    # the ideal if every generated token ran in a full batch (rows all the same length)
    df["wall/full"] = df.wall / (df.prompt_ideal + df.gen_decoded / df.dec)
    # the speed-up over our generate() loop that the measured rates allow: its ideal over this
    # configuration's, in the same round
    loop = next((e.label for e in engines if e.kind == "loop"), None)
    if loop is not None:
        loop_ideal = df[df.engine == loop].set_index("round").ideal
        df["limit"] = df["round"].map(loop_ideal) / df.ideal
    else:
        df["limit"] = np.nan
    table = df.groupby("engine", sort=False).agg(
        config=("config", "first"),
        wall=("wall", "median"),
        prompt_tok=("prompt_tok", "median"),
        gen_tok=("gen_tok", "median"),
        ideal=("ideal", "median"),
        wall_ideal=("wall/ideal", "median"),
        wall_ideal_lo=("wall/ideal", "min"),
        wall_ideal_hi=("wall/ideal", "max"),
        wall_full=("wall/full", "median"),
        x_loop_limit=("limit", "median"),
        tail=("tail", "median"),
        outside=("outside", "median"),
        agree=("agree", "median"),
        agree_b=("agree_b", "median"),
    )
    for engine in engines:
        if engine.kind in ("llama", "loop", "server"):
            table[f"x_{engine.kind}"] = table.loc[engine.label, "wall"] / table.wall
    table.attrs["deterministic"] = deterministic_cost(df, engines)
    rates = ", ".join(f"{x:.0f}" for x in df.pp.dropna())
    print(f"\n== {model.name}: {workload.name}: {rows} prompts, max_tokens={workload.max_tokens}")
    print(
        f"   best prompt-processing rate around each run: {rates} tok/s; {rounds} round(s), medians"
    )
    print(table.to_string(float_format=lambda x: f"{x:.2f}"))
    table.attrs.update(model=model.name, workload=workload.name, rows=rows)
    return table


def deterministic_cost(df: pd.DataFrame, engines: list[Engine]) -> dict | None:
    """The (d) engine's wall over its (c) twin's (same slots and n_ctx), run in the same
    rounds: median and range of the per-round ratios; None without both."""
    det = next((e for e in engines if e.deterministic), None)
    twin = next(
        (
            e
            for e in engines
            if det and e.kind == "parallel" and not e.deterministic
            and (e.n_seq_max, e.n_ctx) == (det.n_seq_max, det.n_ctx)
        ),
        None,
    )  # fmt: skip
    if twin is None:
        return None
    walls = df.pivot(index="round", columns="engine", values="wall")
    ratio = walls[det.label] / walls[twin.label]
    return dict(
        default=twin.label,
        wall_default=float(walls[twin.label].median()),
        wall_det=float(walls[det.label].median()),
        median=float(ratio.median()),
        lo=float(ratio.min()),
        hi=float(ratio.max()),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100, help="seed workload rows")
    ap.add_argument("--gen-rows", type=int, default=48)
    ap.add_argument("--slots", default="8,16,48", help="n_seq_max values on the gen workload")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the gen workload")
    ap.add_argument(
        "--seed-rounds",
        type=int,
        default=4,
        help="rounds of the seed workload (short runs whose ratios sit near 1, so more of them)",
    )
    ap.add_argument("--only", choices=["seed", "gen"], default=None)
    ap.add_argument(
        "--engines",
        default="abcds",
        help="letters of the engines to run (a, b, c, d, s); e.g. cd measures the "
        "deterministic mode's cost against its default-mode twin alone",
    )
    ap.add_argument(
        "--models",
        default="default",
        help="comma-separated model references, each benchmarked in turn (e.g. "
        "default,qwen2.5-coder-0.5b after make bench-model)",
    )
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    ap.add_argument("--data", type=Path, default=DATA, help="the AG News sample (CSV)")
    ap.add_argument(
        "--n-gpu-layers",
        default="auto",
        help='layers offloaded to a GPU ("auto": all when the build has a GPU backend)',
    )
    args = ap.parse_args(argv)
    global ENGINES
    ENGINES = set(args.engines)
    if not args.data.exists():
        print(f"skipped: {args.data} is absent", file=sys.stderr)
        return 0
    hw = ll.hardware_profile()
    gpus = ", ".join(g["name"] for g in hw.get("gpus") or []) or "no GPU"
    print(
        f"machine: {hw['cpu_model']}, {hw['cores_physical']} cores, "
        f"{hw['ram_total'] / 2**30:.0f} GiB, {gpus}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    slots = [int(s) for s in args.slots.split(",")]
    tables, layout_tables = [], []
    for ref in args.models.split(","):
        layers = args.n_gpu_layers if args.n_gpu_layers == "auto" else int(args.n_gpu_layers)
        model = ll.model_load(ref.strip(), n_gpu_layers=layers)
        print(f"\n#### model {model.name} ({model.path.name})", flush=True)
        if args.only is None and set("bc") <= ENGINES:
            layout_tables.append(layouts(model))
        for workload in workloads(args.gen_rows, args.rows, slots, args.data):
            if args.only is None or workload.name.startswith(args.only):
                rounds = args.seed_rounds if workload.name.startswith("seed") else args.rounds
                tables.append(bench(model, workload, rounds))
        model.close()
    table = markdown(tables) + "".join("\n" + layout_markdown(t) for t in layout_tables)
    cost = cost_markdown(tables)
    if cost:
        table += "\ndeterministic=True against the same engine in the default mode:\n\n" + cost
    print("\n" + table)
    if args.markdown is not None:
        args.markdown.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
