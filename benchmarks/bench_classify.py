"""Classification benchmark: generate-and-parse vs label scoring, side by side.

    .venv/bin/python benchmarks/bench_classify.py [--n-seq-max 8] [--repeat 3] [--tasks ag_news]

On ../shared/data/ag_news_sample.csv (4 classes) and tweets_sentiment.csv (3 classes), default
model, same n_seq_max for all:
  (a) the seed tutorial's approach: generate_parallel(max_tokens=5), first line compared to
      the class
  (b) classify() zero-shot (label scoring)
  (c) classify() with 4 short examples written for this benchmark: chat turns (the default
      for a chat model), with contextual calibration (calibrate=True), as a plain
      "Text:/Answer:" prompt (format="plain"), and with joint instead of constrained scoring
Each variant runs --repeat times, interleaved; the table shows median walls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

import jupyter_localllm as ll

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TASKS = {
    "ag_news": dict(
        file="ag_news_sample.csv",
        labels=["World", "Sports", "Business", "Sci/Tech"],
        text=lambda r: f"Title: {r.title}\nDescription: {str(r.description)[:100]}",
        truth="class",
        instruction="Classify this news article into exactly one category: World, Sports, "
        "Business, or Sci/Tech. Respond with only the category name.",
        examples=[
            (
                "Title: Rebels and government sign ceasefire in capital\nDescription: Talks "
                "brokered by neighbouring states end months of fighting.",
                "World",
            ),
            (
                "Title: Striker scores twice as champions stay top\nDescription: The league "
                "leaders won 3-1 away on Saturday.",
                "Sports",
            ),
            (
                "Title: Retailer's quarterly profit beats forecasts\nDescription: Shares rose "
                "after the chain reported higher sales and margins.",
                "Business",
            ),
            (
                "Title: New chip doubles battery life of laptops\nDescription: Engineers "
                "unveiled a processor built on a smaller transistor process.",
                "Sci/Tech",
            ),
        ],
    ),
    "tweets": dict(
        file="tweets_sentiment.csv",
        labels=["negative", "neutral", "positive"],
        text=lambda r: str(r.text),
        truth="label",
        instruction="What is the sentiment of this tweet: negative, neutral, or positive? "
        "Respond with only the sentiment.",
        examples=[
            ("Ugh, my flight got cancelled again. Worst day.", "negative"),
            ("The meeting is moved to 3pm on Thursday.", "neutral"),
            ("Just got the job offer!! So happy right now :)", "positive"),
            ("Lost my keys and it's pouring rain.", "negative"),
        ],
    ),
}


VARIANTS = (  # name, classify options (None: generate and parse)
    ("(a) generate + parse", None),
    ("(b) classify zero-shot", dict()),
    ("(c) classify 4-shot", dict(examples=True)),
    ("(c) classify 4-shot, calibrated", dict(examples=True, calibrate=True)),
    ("(c) classify 4-shot, plain prompt", dict(examples=True, format="plain")),
    ("(c) classify 4-shot, joint scoring", dict(examples=True, scoring="joint")),
)


def run_variant(model, spec: dict, texts: list[str], options: dict | None, n_seq_max: int):
    """One timed run on a fresh context (so the shared prefix is decoded inside the timing);
    returns (wall seconds, predicted labels)."""
    ctx = ll.context_create(model, n_seq_max=n_seq_max)
    if options is None:  # the seed tutorial's way
        prompts = [
            ll.apply_chat_template(
                model,
                [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": f"{spec['instruction']}\n\n{t}"},
                ],
            )
            for t in texts
        ]
        t0 = time.perf_counter()
        out = ll.generate_parallel(
            ctx, prompts, max_tokens=5, clean=True, progress=False, cache=False
        )
        wall = time.perf_counter() - t0
        return wall, [o.strip().split("\n")[0].strip() for o in out]
    options = dict(options)
    if options.pop("examples", False):
        options["examples"] = spec["examples"]
    t0 = time.perf_counter()
    res = ll.classify(
        ctx,
        texts,
        spec["labels"],
        instruction=spec["instruction"],
        system_prompt="You are a helpful assistant.",
        progress=False,
        **options,
    )
    return time.perf_counter() - t0, res.label.tolist()


def run_task(model, name: str, spec: dict, n_seq_max: int, repeat: int) -> pd.DataFrame:
    """Every variant ``repeat`` times, interleaved (round 1: all variants, round 2: …) so slow
    spells of a shared machine hit them alike; walls are the median per variant."""
    df = pd.read_csv(DATA / spec["file"])
    texts = [spec["text"](r) for r in df.itertuples()]
    truth = df[spec["truth"]].astype(str).tolist()
    walls: dict[str, list[float]] = {v: [] for v, _ in VARIANTS}
    preds: dict[str, list[str]] = {}
    for _ in range(repeat):
        for variant, options in VARIANTS:
            wall, pred = run_variant(model, spec, texts, options, n_seq_max)
            walls[variant].append(wall)
            if variant in preds and pred != preds[variant]:  # greedy: rounds should agree
                print(f"warning: {variant} changed its answers between rounds", file=sys.stderr)
            preds[variant] = pred
    table = pd.DataFrame(
        [
            {
                "engine": v,
                "wall_s": statistics.median(walls[v]),
                "correct": sum(p == t for p, t in zip(preds[v], truth, strict=True)),
                "valid_labels": sum(p in spec["labels"] for p in preds[v]),
                "walls_s": " ".join(f"{w:.1f}" for w in walls[v]),
            }
            for v, _ in VARIANTS
        ]
    ).set_index("engine")
    table.insert(3, "accuracy", table.correct / len(df))
    table.insert(1, "wall_vs_a", table.wall_s / table.loc[VARIANTS[0][0], "wall_s"])
    print(
        f"\n== {name}: {len(df)} rows, {len(spec['labels'])} labels, n_seq_max={n_seq_max}, "
        f"median of {repeat} interleaved runs =="
    )
    print(table.to_string(float_format=lambda x: f"{x:.2f}"))
    return table


def run_cache(model, n_seq_max: int) -> None:
    """The result cache: the same generate_parallel call twice on a fresh cache folder."""
    import os
    import tempfile

    df = pd.read_csv(DATA / "ag_news_sample.csv")
    prompts = [
        ll.apply_chat_template(model, [{"role": "user", "content": f"Summarise: {t}"}])
        for t in df.title
    ]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LOCALLLM_CACHE_DIR"] = tmp
        ctx = ll.context_create(model, n_seq_max=n_seq_max)
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = ll.generate_parallel(ctx, prompts, max_tokens=20, progress=False, cache=True)
            walls.append(time.perf_counter() - t0)
        del os.environ["LOCALLLM_CACHE_DIR"]
    print(f"\n== result cache: {len(prompts)} prompts, max_tokens=20 ==")
    print(
        f"first run {walls[0]:.2f} s, identical second run {walls[1]:.3f} s: "
        f"{walls[0] / walls[1]:.0f}x faster; same output hash: "
        f"{res.hashes['output_sha256'][:12]}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-seq-max", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per variant")
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent", file=sys.stderr)
        return 0
    model = ll.model_load("default")
    for name in args.tasks:
        run_task(model, name, TASKS[name], args.n_seq_max, args.repeat)
    run_cache(model, args.n_seq_max)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
