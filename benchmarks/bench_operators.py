"""Semantic operators and model cascades, measured (issue 28, "Measured").

    .venv/bin/python benchmarks/bench_operators.py [--tweets 300] [--splits 1000] [--skip topk]
        [--budget 0.4] [--scale 2000] [--reuse]

Oracle: Qwen2.5-Coder-0.5B-Instruct (``make bench-model``); proxies: the default
SmolLM2-135M and gemma-3-270m (when installed). Data: ``../shared/data`` (AG News, 100 rows;
the first ``--tweets`` tweets). Label scoring with defaults (zero-shot, the instructions of
``bench_classify.py``), ``n_seq_max`` 4.

Cascade: every model scores every row once (timed: the per-row costs); then for each target
the threshold learner of ``tasks/thresholds.py`` runs on ``--splits`` random oracle samples of
``--budget`` of the rows (the scores are reused, only the sample, its pilot and the test's draw
change), with the label-aware ranking the cascade uses by default and with the proxy's top
probability (``ranking="confidence"``), reporting the share of rows the proxy answers next to
the issue's oracle-known optimum (the lowest threshold on the top probability whose rows above
it hold at most ``(1-target)·N`` disagreements, chosen knowing every oracle answer) and next to
the label-aware optimum (the same on the agreement scores fitted on every oracle answer), the
agreement reached, in how many splits the target held (it should in at least ``1 - delta``),
and the time: measured per-row costs (proxy on every row + oracle on the rows it labels)
against the oracle alone, and the same projected to an oracle 10x the proxy's per-row cost. A
row "shuffled" gives the proxy's answers (labels and probabilities) to random rows: a proxy
that says nothing. Rows "×k" project to a user's table: ``--scale`` rows drawn with
replacement from the scored ones (the same joint behaviour of the proxy's answers and
agreement) with the default ``label_budget``. One real ``classify(proxy=...)`` run per data
set checks the simulation's time against the pipeline's.

Then filter, topk and join on the public API (``df.llm.filter/topk/join``), each printing
"not available" when it is missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import jupyter_localllm as ll
from jupyter_localllm.defaults import LABEL_BUDGET
from jupyter_localllm.tasks.cascade import (
    agreement_scores,
    draw_pilot,
    learn_accuracy,
    learn_ranked_accuracy,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_classify import DATA, TASKS

ORACLE = "qwen2.5-coder-0.5b"
TARGETS = (0.90, 0.95, 0.97)
DELTA = 0.05
N_SEQ_MAX = 4
REUSE = False  # --reuse: scores from an earlier run (.bench/operators/)
SCALE = 0  # --scale: rows of the projected table (0: none)


def load(ref: str):
    try:
        return ll.model_load(ref)
    except Exception as exc:  # a missing model is reported, not fatal
        print(f"({ref}: not available: {exc})")
        return None


SCORES = Path(__file__).resolve().parents[1] / ".bench" / "operators"


def score(model, task: dict, texts: list[str]) -> tuple[pd.DataFrame, float]:
    """Every row scored by ``model`` (a fresh context), and the wall seconds; kept in
    ``.bench/operators/`` so that ``--reuse`` re-analyses without scoring again."""
    path = SCORES / f"{task['file']}-{len(texts)}-{Path(model.path).stem}.csv"
    if REUSE and path.is_file():
        out = pd.read_csv(path)
        return out, float(out.pop("wall").iloc[0])
    ctx = ll.context_create(model, n_seq_max=N_SEQ_MAX)
    t0 = time.perf_counter()
    out = ll.classify(ctx, texts, task["labels"], instruction=task["instruction"], progress=False)
    wall = time.perf_counter() - t0
    ctx.close()
    SCORES.mkdir(parents=True, exist_ok=True)
    out.assign(wall=wall).to_csv(path, index=False)
    return out, wall


def optimum_share(conf: np.ndarray, agree: np.ndarray, target: float, sampled=None) -> float:
    """The largest share of rows a threshold can give the proxy with at most
    ``(1-target)·N`` disagreements among them, knowing every oracle answer. ``sampled`` (a
    mask): rows the oracle answers anyway, neither the proxy's nor errors (the optimum of one
    split, comparable with the cascade's share)."""
    free = np.ones(len(conf), bool) if sampled is None else ~sampled
    order = np.argsort(-conf, kind="stable")
    wrong = np.cumsum((~agree & free)[order])
    answered = np.cumsum(free[order])
    allowed = int(np.floor((1 - target) * len(conf) + 1e-9))
    ranked = conf[order]
    ends = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold cannot split tied confidences
    ok = ends & (wrong <= allowed)
    return float(answered[ok].max() / len(conf)) if ok.any() else 0.0


def splits(probs, agree, target, budget, n_splits, seed=0) -> dict:
    """The learner over ``n_splits`` random samples (each with its own draw and pilot, as the
    cascade draws them), with the label-aware ranking (``label``, the cascade's default) and
    the proxy's top probability (``confidence``): mean proxy share, agreement, held."""
    rng = np.random.default_rng(seed)
    n, top = len(probs), probs.max(axis=1)
    runs = {"label": [], "confidence": []}  # per split: (share, agreement, oracle rows)
    for _ in range(n_splits):
        sample = rng.choice(n, budget, replace=False)
        draw, pilot = rng.random(), draw_pilot(rng, budget)
        sampled = np.zeros(n, bool)
        sampled[sample] = True
        bound, score = learn_ranked_accuracy(
            probs, sample, agree[sample], target, DELTA, pilot=pilot, draw=draw
        )
        plain = learn_accuracy(top, sample, agree[sample], target, DELTA, draw=draw)
        for name, answered in (
            ("label", score >= bound.threshold),
            ("confidence", top >= plain.threshold),
        ):
            proxy = answered & ~sampled
            runs[name].append((proxy.mean(), 1 - (proxy & ~agree).sum() / n, n - proxy.sum()))
    out = {}
    for name, values in runs.items():
        share, agreement, oracle_rows = np.array(values).T
        out |= {
            f"share {name}": float(share.mean()),
            f"agreement {name}": float(agreement.mean()),
            f"held {name}": float(np.mean(agreement >= target)),
            f"oracle_rows {name}": float(oracle_rows.mean()),
        }
    return out


def scaled(probs: np.ndarray, agree: np.ndarray, rows: int, seed: int = 7):
    """A table of ``rows`` drawn with replacement from the scored rows (the same joint
    behaviour of the proxy's probabilities and agreement, at a user's size); probabilities
    jittered by at most 1e-9 so that copies of one row are not one tied block."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(probs), rows)
    return probs[idx] + rng.uniform(0, 1e-9, (rows, probs.shape[1])), agree[idx]


def cascade_rows(data, label, probs, agree, budget, n_splits, c_p, c_o) -> list[dict]:
    """One table row per target: the learner on ``n_splits`` samples of ``budget`` rows."""
    n, rows = len(probs), []
    # the best a label-aware ranking could do: fitted knowing every oracle answer
    known = agreement_scores(probs, np.arange(n), agree)
    for target in TARGETS:
        s = splits(probs, agree, target, budget, n_splits)
        best = optimum_share(probs.max(axis=1), agree, target)
        best_known = optimum_share(known, agree, target)
        cascade_s = n * c_p + s["oracle_rows label"] * c_o
        projected = (n * c_p + s["oracle_rows label"] * 10 * c_p) / (n * 10 * c_p)
        rows.append(
            {
                "data": data,
                "rows": n,
                "sample": budget,
                "proxy": label,
                "target": target,
                "proxy share": s["share label"],
                "confidence ranking": s["share confidence"],
                "optimum": best,
                "of optimum": s["share label"] / best if best else float("nan"),
                "label-aware optimum": best_known,
                "of it": s["share label"] / best_known if best_known else float("nan"),
                "agreement": s["agreement label"],
                "held": s["held label"],
                "held, confidence": s["held confidence"],
                "time cascade/oracle": cascade_s / (n * c_o),
                "projected (oracle 10x)": projected,
            }
        )
    return rows


def cascade_section(
    name, task, texts, models, oracle, budget_share, n_splits, real_run=True
) -> list[dict]:
    """The cascade table's rows for one data set."""
    o_scores, o_wall = score(oracle, task, texts)
    n = len(texts)
    c_o = o_wall / n
    truth = pd.read_csv(DATA / task["file"])[task["truth"]].astype(str).head(n).to_numpy()
    print(
        f"\n{name}: {n} rows; oracle {oracle.name}: {o_wall:.1f} s "
        f"({c_o * 1000:.0f} ms/row), accuracy vs gold {np.mean(o_scores.label == truth):.0%}"
    )
    budget = max(1, round(budget_share * n))
    rows = []
    for pname, pmodel in models:
        p_scores, p_wall = score(pmodel, task, texts)
        c_p = p_wall / n
        agree = (p_scores.label == o_scores.label).to_numpy()
        probs = p_scores[task["labels"]].to_numpy()
        print(
            f"  proxy {pname}: {p_wall:.1f} s ({c_p * 1000:.0f} ms/row), agrees with the "
            f"oracle on {agree.mean():.0%}, accuracy vs gold {np.mean(p_scores.label == truth):.0%}"
        )
        rows += cascade_rows(name, pname, probs, agree, budget, n_splits, c_p, c_o)
        shuffled = np.random.default_rng(1).permutation(probs)  # labels and confidences
        label = f"{pname}, shuffled"
        rows += cascade_rows(name, label, shuffled, agree, budget, n_splits, c_p, c_o)
        if SCALE:  # the same behaviour at a user's size, with the default label budget
            big_probs, big_agree = scaled(probs, agree, SCALE)
            rows += cascade_rows(
                f"{name} ×{SCALE // n}",
                pname,
                big_probs,
                big_agree,
                LABEL_BUDGET,
                max(100, n_splits // 4),
                c_p,
                c_o,
            )
    if not real_run:
        return rows
    # one real cascade through the pipeline: its time against the simulation's
    pname, pmodel = models[0]
    ctx = ll.context_create(oracle, n_seq_max=N_SEQ_MAX)
    proxy_ctx = ll.context_create(pmodel, n_seq_max=N_SEQ_MAX)
    t0 = time.perf_counter()
    real = ll.classify(
        ctx,
        texts,
        task["labels"],
        instruction=task["instruction"],
        proxy=proxy_ctx,
        target_accuracy=0.9,
        label_budget=budget,
        progress=False,
    )
    wall = time.perf_counter() - t0
    info = real.attrs["llm"]
    print(
        f"  real cascade ({pname} -> oracle, target 0.90, budget {budget}): {wall:.1f} s vs "
        f"oracle alone {o_wall:.1f} s; oracle rows {info['oracle_rows']}, proxy rows "
        f"{info['proxy_rows']}, threshold {info['threshold']['accuracy']:.3f}, estimate "
        f"{info['estimate']['accuracy']:.3f}, bound {info['bound']['accuracy']:.3f}, agreement "
        f"with the oracle-alone run {np.mean(real.label == o_scores.label):.0%}"
    )
    ctx.close()
    proxy_ctx.close()
    return rows


def markdown(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    keep = ("data", "rows", "sample", "proxy", "target")
    pct = [c for c in frame.columns if c not in keep and "time" not in c]
    pct.remove("projected (oracle 10x)")
    for col in pct:
        digits = 1 if col.startswith("held") else 0  # held sits near 1 - delta: show it
        frame[col] = frame[col].map(lambda v, d=digits: "–" if pd.isna(v) else f"{v:.{d}%}")
    for col in ("time cascade/oracle", "projected (oracle 10x)"):
        frame[col] = frame[col].map(lambda v: f"{v:.2f}")
    frame["target"] = frame["target"].map(lambda v: f"{v:.2f}")
    return table(frame)


def table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "|".join("---" for _ in frame.columns) + "|")
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def available(name: str) -> bool:
    if hasattr(pd.DataFrame().llm, name):
        return True
    print(f"\n{name}: not available (no df.llm.{name} in this tree)")
    return False


def news() -> pd.DataFrame:
    frame = pd.read_csv(DATA / "ag_news_sample.csv")
    frame["description"] = frame["description"].astype(str).str.slice(0, 160)
    return frame


def filter_section(oracle) -> None:
    """df.llm.filter against gold labels, and its time against 4-way classify."""
    if not available("filter"):
        return
    frame = news()
    gold = (frame["class"] == "Sports").to_numpy()
    ctx = ll.context_create(oracle, n_seq_max=N_SEQ_MAX)
    t0 = time.perf_counter()
    kept = frame.llm.filter(
        "The news article is about sports: {title}. {description}", model=ctx, progress=False
    )
    t_filter = time.perf_counter() - t0
    task = TASKS["ag_news"]
    texts = [task["text"](r) for r in frame.itertuples()]
    t0 = time.perf_counter()
    labels = ll.classify(
        ctx, texts, task["labels"], instruction=task["instruction"], progress=False
    ).label
    t_classify = time.perf_counter() - t0
    ctx.close()
    said = frame.index.isin(kept.index)
    by_class = (labels == "Sports").to_numpy()

    def pr(pred):
        tp = (pred & gold).sum()
        return tp / max(pred.sum(), 1), tp / gold.sum()

    (p1, r1), (p2, r2) = pr(said), pr(by_class)
    print(f"\nfilter ({oracle.name}, AG News {len(frame)} rows, 'about sports' vs gold Sports):")
    print(
        table(
            pd.DataFrame(
                [
                    {
                        "run": "df.llm.filter",
                        "precision": f"{p1:.0%}",
                        "recall": f"{r1:.0%}",
                        "kept": int(said.sum()),
                        "seconds": f"{t_filter:.1f}",
                    },
                    {
                        "run": "classify 4-way, label == Sports",
                        "precision": f"{p2:.0%}",
                        "recall": f"{r2:.0%}",
                        "kept": int(by_class.sum()),
                        "seconds": f"{t_classify:.1f}",
                    },
                ]
            )
        )
    )


def ndcg(found: list, ideal: list) -> float:
    """NDCG@k of ``found`` against the ranking ``ideal`` (relevance: k - place in ideal)."""
    k = len(ideal)
    rel = {row: k - place for place, row in enumerate(ideal)}
    dcg = sum(rel.get(row, 0) / np.log2(i + 2) for i, row in enumerate(found))
    best = sum((k - i) / np.log2(i + 2) for i in range(k))
    return dcg / best


def topk_section(model, n: int, k: int) -> None:
    """topk against a full sort by the same comparisons."""
    if not available("topk"):
        return
    frame = news().head(n)
    criterion = "Which headline is most about sports? {title}"
    ctx = ll.context_create(model, n_seq_max=N_SEQ_MAX)
    full = frame.llm.topk(criterion, n, model=ctx, progress=False)
    top = frame.llm.topk(criterion, k, model=ctx, progress=False)
    ctx.close()
    ideal, found = list(full.index[:k]), list(top.index)
    c_top, c_full = top.attrs["llm"]["comparisons"], full.attrs["llm"]["comparisons"]
    print(f"\ntopk ({model.name}, {n} AG News headlines, k={k}, 'most about sports'):")
    print(
        table(
            pd.DataFrame(
                [
                    {
                        "overlap@k": f"{len(set(ideal) & set(found)) / k:.0%}",
                        "NDCG@k": f"{ndcg(found, ideal):.2f}",
                        "comparisons (top-k)": c_top,
                        "comparisons (full sort)": c_full,
                        "n log2 n": int(n * np.log2(n)),
                        "n²": n * n,
                    }
                ]
            )
        )
    )


def join_section(model, n: int, candidates: int) -> None:
    """join of headlines with their descriptions: pairs scored and recall of true pairs."""
    if not available("join"):
        return
    frame = news().head(n)
    left = frame[["title"]]
    right = frame[["description"]].sample(frac=1, random_state=0)
    predicate = "{left.title} is the headline of the news article {right.description}"
    ctx = ll.context_create(model, n_seq_max=N_SEQ_MAX)
    t0 = time.perf_counter()
    pairs = left.llm.join(right, predicate, model=ctx, candidates=candidates, progress=False)
    wall = time.perf_counter() - t0
    ctx.close()
    info = pairs.attrs["llm"]
    found = set(zip(pairs["left"], pairs["right"], strict=True))
    true = {(i, i) for i in frame.index}
    print(
        f"\njoin ({model.name}, {n} headlines x {n} descriptions, embedding blocking, "
        f"{candidates} candidates per headline):"
    )
    print(
        table(
            pd.DataFrame(
                [
                    {
                        "pairs scored": info["pairs_scored"],
                        "n×m": n * n,
                        "pairs returned": len(found),
                        "recall of true pairs": f"{len(found & true) / n:.0%}",
                        "precision": f"{len(found & true) / max(len(found), 1):.0%}",
                        "seconds": f"{wall:.1f}",
                    }
                ]
            )
        )
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=300)
    # an exact test misses its target in up to delta of the splits: many splits show it
    parser.add_argument("--splits", type=int, default=1000)
    parser.add_argument("--budget", type=float, default=0.4, help="oracle sample, share of rows")
    parser.add_argument("--skip", default="", help="comma-separated: cascade,filter,topk,join")
    parser.add_argument(
        "--reuse", action="store_true", help="scores of an earlier run, no real run"
    )
    parser.add_argument(
        "--scale", type=int, default=2000, help="rows of the projected table (0: none)"
    )
    args = parser.parse_args(argv)
    global REUSE, SCALE
    REUSE, SCALE = args.reuse, args.scale
    skip = set(filter(None, args.skip.split(",")))
    if not DATA.is_dir():
        print(f"{DATA} is not there; nothing to measure.")
        return 0
    oracle = load(ORACLE)
    if oracle is None:
        print("Run `make bench-model` first.")
        return 1
    small = ll.model_load("default")
    models = [("SmolLM2-135M", small)]
    gemma = load("gemma-3-270m")
    if gemma is not None:
        models.append(("gemma-3-270m", gemma))
    if "cascade" not in skip:
        rows = []
        for name, n in (("ag_news", None), ("tweets", args.tweets)):
            task = TASKS[name]
            frame = pd.read_csv(DATA / task["file"])
            frame = frame if n is None else frame.head(n)
            texts = [task["text"](r) for r in frame.itertuples()]
            rows += cascade_section(
                name, task, texts, models, oracle, args.budget, args.splits, not args.reuse
            )
        print(
            f"\nCascade vs oracle alone (delta {DELTA}, oracle sample {args.budget:.0%} of the "
            f"rows, {args.splits} random splits; held: share of splits "
            "reaching the target; confidence ranking: ranking='confidence' on the same splits; "
            "label-aware optimum: the agreement scores fitted on every oracle answer; "
            f"×k rows: {args.scale} rows drawn from the scored ones, a {LABEL_BUDGET}-row "
            f"sample (the default label_budget), {max(100, args.splits // 4)} splits; "
            f"an exact test fails in up to delta of the splits, so held carries a binomial "
            f"standard error of {100 * np.sqrt(DELTA * (1 - DELTA) / args.splits):.1f} points):"
        )
        print(markdown(rows))
    if "filter" not in skip:
        filter_section(oracle)
    if "topk" not in skip:
        topk_section(small, 24, 5)
    if "join" not in skip:
        join_section(small, 30, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
