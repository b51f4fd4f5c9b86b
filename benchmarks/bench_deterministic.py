"""``deterministic=True``: how many rows keep their text however they are batched, and its cost.

    .venv/bin/python benchmarks/bench_deterministic.py [--models default,qwen2.5-coder-0.5b]
        [--rows 24] [--max-tokens 80] [--only same|cost] [--rounds 2] [--no-dask]

Same text: 24 paragraph prompts (``bench_parallel.gen_prompts``), 80 tokens, greedy and at
temperature 0.8 with a seed, in the eight ways of issue 29, each against
``generate_parallel`` at ``n_seq_max=8``: the same call again, a ``generate()`` loop,
``n_seq_max`` 4 and 16, the rows reversed, the rows in two calls of half, and on a 2-worker
``LocalCluster``. A row's seed comes from its place in the input (``derive_seed``), so at
temperature 0.8 the loop passes each row its seed, and the reversed and two-call runs are
compared with a loop over the same order (what is measured is whether the text depends on
the batch, not on the seed). Default mode and deterministic mode on each model.

Cost: wall time of ``generate_parallel`` in default and deterministic mode, rotated within
each round and run in fresh processes: the generation-heavy workload (the rows above,
n_seq_max=8) and the seed tutorial's (100 AG News rows, max_tokens=5, n_ctx=1048,
n_seq_max=10; skipped without ``../shared/data``). "default, tiled on" is the default mode as
llama.cpp ships it (its tiled K-quant matmul on, ``GGML_CPU_TILED_MM=1``); this package now
turns that path off in every mode (see README, "Reproducibility").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODES = {  # name: (deterministic, extra environment)
    "default, tiled on": (False, {"GGML_CPU_TILED_MM": "1"}),
    "default": (False, {}),
    "deterministic": (True, {}),
}


def load(ref: str, deterministic: bool):
    import jupyter_localllm as ll

    # deterministic mode needs weights that are not repacked (the 0.5B model's Q4_K ones are)
    return ll.model_load(ref, use_extra_bufts=False if deterministic else None)


def texts_ways(
    ref: str, deterministic: bool, rows: int, max_tokens: int, dask: bool, samplings: list[str]
) -> dict:
    """Identical-text counts of the eight ways, greedy and sampled, in one mode."""
    from bench_parallel import gen_prompts

    import jupyter_localllm as ll
    from jupyter_localllm.engine.sampling import derive_seed

    model = load(ref, deterministic)
    prompts = gen_prompts(model, rows)
    half = rows // 2
    out = {}
    for name, temp in (("greedy", 0.0), ("temperature 0.8", 0.8)):
        if name.split()[0] not in samplings:
            continue
        opts = dict(max_tokens=max_tokens, temperature=temp, seed=4321, progress=False, cache=False)

        def par(n, ps, cluster=None, opts=opts):
            ctx = ll.context_create(model, n_seq_max=n, deterministic=deterministic)
            res = ll.generate_parallel(ctx, ps, cluster=cluster, **opts)
            return [str(r) for r in res]

        def loop(ps, opts=opts):
            ctx = ll.context_create(model, n_seq_max=1, deterministic=deterministic)
            # deterministic: the engine derives a row's stream from its prompt, so a plain
            # loop with the same seed; default: from its place, so each row its own
            base = opts["seed"]
            seeds = [base if deterministic else derive_seed(base, i) for i in range(len(ps))]
            kw = {k: v for k, v in opts.items() if k not in ("seed", "progress", "cache")}
            return [str(ll.generate(ctx, p, seed=s, **kw)) for p, s in zip(ps, seeds, strict=True)]

        ref_texts = par(8, prompts)
        rev = list(reversed(prompts))
        ways = {
            "same call again": (par(8, prompts), ref_texts),
            "generate() loop": (loop(prompts), ref_texts),
            "n_seq_max=4": (par(4, prompts), ref_texts),
            "n_seq_max=16": (par(16, prompts), ref_texts),
        }
        # default mode: seeds follow positions, so compare with a loop over the same order
        seeded = temp > 0 and not deterministic
        ways["reversed"] = (par(8, rev), loop(rev) if seeded else ref_texts[::-1])
        two = par(8, prompts[:half]) + par(8, prompts[half:])
        ways["two calls"] = (
            two,
            loop(prompts[:half]) + loop(prompts[half:]) if seeded else ref_texts,
        )
        if dask:
            ways["LocalCluster, 2 workers"] = (cluster_run(par, prompts), ref_texts)
        out[name] = {
            k: sum(a == b for a, b in zip(x, y, strict=True)) for k, (x, y) in ways.items()
        }
    return out


def cluster_run(par, prompts):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        return par(8, prompts, cluster=client)


def timed(ref: str, deterministic: bool, workload: str, rows: int, max_tokens: int) -> float:
    """Seconds of one generate_parallel run of ``workload`` (the model loaded first)."""
    from bench_parallel import DATA, gen_prompts, seed_prompts

    import jupyter_localllm as ll

    model = load(ref, deterministic)
    if workload == "gen":
        prompts, n_ctx, n_seq, opts = gen_prompts(model, rows), None, 8, {"max_tokens": max_tokens}
    else:
        prompts, n_ctx, n_seq = seed_prompts(model, 100, DATA), 1048, 10
        opts = {"max_tokens": 5, "seed": 92092}
    ctx = ll.context_create(model, n_ctx=n_ctx, n_seq_max=n_seq, deterministic=deterministic)
    t0 = time.perf_counter()
    ll.generate_parallel(ctx, prompts, progress=False, cache=False, **opts)
    return time.perf_counter() - t0


def child(args: list[str]) -> object:
    """Run one measurement in a fresh process (its own GGML_CPU_TILED_MM)."""
    kind, ref, mode, *rest = args
    env = MODES[mode][1]
    cmd = [sys.executable, __file__, "--child", json.dumps([kind, ref, mode, *rest])]
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(spec: str) -> None:
    kind, ref, mode, *rest = json.loads(spec)
    deterministic = MODES[mode][0]
    if kind == "same":
        print(json.dumps(texts_ways(ref, deterministic, *rest)))
    else:
        workload, rows, max_tokens = rest
        print(json.dumps(timed(ref, deterministic, workload, rows, max_tokens)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="default,qwen2.5-coder-0.5b")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=("same", "cost"))
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--workloads", default="gen,seed", help="cost workloads: gen and/or seed")
    p.add_argument("--modes", default="default,deterministic", help="modes of the same-text runs")
    p.add_argument("--samplings", default="greedy,temperature", help="greedy and/or temperature")
    p.add_argument("--child")
    a = p.parse_args(argv)
    if a.child:
        run_child(a.child)
        return 0
    from bench_parallel import DATA

    dask = not a.no_dask
    try:
        import distributed  # noqa: F401
    except ImportError:
        dask = False
    for ref in a.models.split(","):
        if a.only != "cost":
            for mode in a.modes.split(","):
                samplings = a.samplings.split(",")
                counts = child(["same", ref, mode, a.rows, a.max_tokens, dask, samplings])
                for sampling, ways in counts.items():
                    cells = ", ".join(f"{k} {v}/{a.rows}" for k, v in ways.items())
                    print(f"{ref} | {mode} | {sampling} | {cells}", flush=True)
        if a.only == "same":
            continue
        chosen = a.workloads.split(",")
        for workload in [w for w in chosen if w == "gen" or DATA.is_file()]:
            walls: dict[str, list[float]] = {m: [] for m in MODES}
            names = list(MODES)
            for r in range(a.rounds):
                for mode in names[r % 3 :] + names[: r % 3]:  # rotated: the VM drifts
                    walls[mode].append(child(["cost", ref, mode, workload, a.rows, a.max_tokens]))
            med = {m: statistics.median(w) for m, w in walls.items()}
            base = med["default"]
            cells = ", ".join(f"{m} {med[m]:.1f} s ({med[m] / base:.2f}x)" for m in names)
            print(f"{ref} | cost, {workload} | {cells} | rounds {a.rounds}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
