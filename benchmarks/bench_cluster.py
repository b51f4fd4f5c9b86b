"""Scale-out benchmark: in-process vs a Dask LocalCluster, side by side in one run.

    .venv/bin/python benchmarks/bench_cluster.py [--rows 64] [--repeat 2] [--model default]

On this machine's cores, the same work three ways:
  (a) in-process: one context with n_threads = all cores (the kernel's way);
  (b) LocalCluster(n_workers=2, threads_per_worker=1): one model per worker process;
  (c) LocalCluster(n_workers=1, threads_per_worker=2).
Two workloads: generation-heavy (short prompts, 64 new tokens each) and prompt-heavy (news
items of ~300 prompt tokens, 4 new tokens). Then the per-partition overhead of the cluster:
the same 32 one-token rows on one worker as 32 one-row partitions vs one partition of 32,
(time difference) / 31. Prints wall times, ratios to (a), and an estimate of the wall time of
1M rows on 1, 8 and 64 workers of this kind, from the measured per-row throughput of one
worker in (b), assuming partitions large enough to amortise the overhead and the data in place.
The result cache is off (LOCALLLM_RESULT_CACHE=0); the workers load the model once, before
timing (a warm-up run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["LOCALLLM_RESULT_CACHE"] = "0"  # measure decoding, not the cache (also in workers)

import jupyter_localllm as ll
from jupyter_localllm.datasets import news_sample
from jupyter_localllm.session.cluster import DaskRunner
from jupyter_localllm.session.pipeline import BatchRequest


def workloads(model, rows: int) -> dict[str, tuple[list[str], int]]:
    """name -> (prompts, max_tokens)."""
    short = [
        ll.apply_chat_template(model, f"Write a short story about a {w} in one paragraph.")
        for w in ("cat", "ship", "robot", "garden", "river", "violin", "lamp", "storm")
    ]
    news = news_sample()
    long = [
        ll.apply_chat_template(
            model,
            "Read the news item and answer with its topic (World, Sports, Business or "
            f"Sci/Tech).\n\nTitle: {t}\nDescription: {d}\n" + "Context: " + d * 3,
        )
        for t, d in zip(news.title, news.description, strict=True)
    ]
    return {
        "generation-heavy (64 new tokens)": ((short * rows)[:rows], 64),
        "prompt-heavy (~300 prompt tokens, 4 new)": ((long * rows)[:rows], 4),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(ctx, prompts, max_tokens, cluster, repeat: int) -> float:
    """Median wall seconds of generate_parallel (greedy)."""
    run = lambda: ll.generate_parallel(  # noqa: E731
        ctx, prompts, max_tokens=max_tokens, progress=False, cache=False, cluster=cluster
    )
    return statistics.median(timed(run) for _ in range(repeat))


def partition_overhead(model, client, cores: int) -> float:
    """Seconds a partition costs beyond its rows, on a one-worker cluster: 32 one-token rows
    as 32 one-row partitions vs one partition of 32, one row at a time (n_seq_max=1, so both
    decode the same way), (difference) / 31."""
    ctx = ll.context_create(model, n_seq_max=1, n_threads=cores)
    prompts = [ll.apply_chat_template(model, f"Say {i}.") for i in range(32)]
    params = ll.SamplingParams(max_tokens=1)

    def run(size: int) -> float:
        request = BatchRequest(ctx, prompts, sampling=params, cache=False)
        return timed(lambda: DaskRunner(client, partition_size=size)(request))

    run(32)  # warm: the worker makes this context
    many = statistics.median(run(1) for _ in range(3))
    one = statistics.median(run(32) for _ in range(3))
    return (many - one) / 31


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="default")
    parser.add_argument("--n-seq-max", type=int, default=16)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    model = ll.model_load(args.model)
    ctx = ll.context_create(model, n_seq_max=args.n_seq_max, n_threads=cores)
    setups = {"in-process": None}
    clusters = []
    for workers, threads in ((2, 1), (1, 2)):
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=":0"
        )
        clusters.append(cluster)
        setups[f"LocalCluster {workers}x{threads}"] = Client(cluster)

    print(f"{args.rows} rows, n_seq_max={args.n_seq_max}, {cores} cores, model {model.name}")
    per_row: dict[str, float] = {}
    for name, (prompts, max_tokens) in workloads(model, args.rows).items():
        for client in setups.values():  # warm-up: workers load the model, caches warm
            ll.generate_parallel(
                ctx, prompts[:4], max_tokens=2, progress=False, cache=False, cluster=client
            )
        walls = {
            setup: measure(ctx, prompts, max_tokens, client, args.repeat)
            for setup, client in setups.items()
        }
        base = walls["in-process"]
        print(f"\n{name}")
        for setup, wall in walls.items():
            print(f"  {setup:24s} {wall:7.2f} s   {wall / base:5.2f}x in-process")
        per_row[name] = walls["LocalCluster 2x1"] / args.rows * 2  # seconds per row per worker

    overhead = partition_overhead(model, setups["LocalCluster 1x2"], cores)
    print(f"\nper-partition overhead (one worker): {overhead * 1000:.0f} ms")
    print("\nestimate for 1,000,000 rows (one worker = one process on 1 core of this machine):")
    for name, seconds in per_row.items():
        cells = ", ".join(f"{n} workers {seconds * 1e6 / n / 3600:.1f} h" for n in (1, 8, 64))
        print(f"  {name}: {cells}")
    for client in setups.values():
        if client is not None:
            client.close()
    for cluster in clusters:
        cluster.close()


if __name__ == "__main__":
    main()
