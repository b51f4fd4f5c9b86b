"""Old-vs-new wall times of the benchmark workloads, paired in ONE process.

``compare_revisions.py`` runs each benchmark script whole, old then new: minutes apart, so a
shared VM's speed drift (±15% between minutes here, even in the control row that runs no code
of ours) swamps a few per cent. This script imports the previous revision's package under
another name (``jupyter_localllm_old``, copied from a ``git worktree`` of ``--base``), loads
the model through each package, and runs every workload of ``bench_parallel.py`` (the seed
tutorial's AG News prompts: the ``generate`` loop and ``generate_parallel`` at each
``n_seq_max``) and ``bench_classify.py`` (each classification variant on AG News) with the
scripts' own functions, old and new back to back (alternating which goes first), ``--rounds``
times. It prints the median new/old wall ratio per row.

Usage::

    .venv/bin/python benchmarks/paired_revisions.py --base 25b29f1 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
OLD_NAME = "jupyter_localllm_old"


def old_package(base: str, workdir: Path) -> Path:
    """``base``'s package copied as ``jupyter_localllm_old`` under ``workdir``; its folder."""
    tree = workdir / "tree"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), base],
            check=True,
            capture_output=True,
        )
    target = workdir / "pkg" / OLD_NAME
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(tree / "jupyter_localllm", target)
    for path in target.rglob("*.py"):  # absolute self-imports and module-name strings
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"\bjupyter_localllm\b", OLD_NAME, text), encoding="utf-8")
    return target.parent


def generation_wall(ll, model, prompts: list[str], n_seq_max: int) -> float:
    """Seconds of ``bench_parallel.py``'s run of ``prompts`` (50 tokens each) with the package
    ``ll``: the ``generate`` loop on ``n_ctx=512`` when ``n_seq_max`` is 1, else
    ``generate_parallel`` on a context sized from the work (its rate measurements left out)."""
    ctx = ll.context_create(model, n_seq_max=n_seq_max, n_ctx=512 if n_seq_max == 1 else None)
    t0 = time.perf_counter()
    if n_seq_max == 1:
        for prompt in prompts:
            ll.generate(ctx, prompt, max_tokens=50)
    else:
        ll.generate_parallel(ctx, prompts, max_tokens=50, progress=False, cache=False)
    wall = time.perf_counter() - t0
    ctx.close()
    return wall


def workloads(bp, bc, model, rows: int, texts_max: int) -> dict[str, Callable[[], float]]:
    """Each benchmark row as a function timing one run with the module ``ll`` the bench
    modules currently hold."""
    prompts = bp.seed_prompts(model, rows)
    spec = bc.TASKS["ag_news"]
    frame = bc.pd.read_csv(bc.DATA / spec["file"])
    texts = [spec["text"](r) for r in frame.itertuples()][:texts_max]
    rows_of = {"generate loop": 1, "parallel n_seq_max=4": 4, "parallel n_seq_max=8": 8}
    rows_of["parallel n_seq_max=16"] = 16
    out: dict[str, Callable[[], float]] = {}
    for name, n in rows_of.items():
        out[f"bench_parallel: {name}"] = lambda n=n: generation_wall(bp.ll, model, prompts, n)
    for variant, options in bc.VARIANTS:
        out[f"bench_classify: {variant}"] = lambda o=options: bc.run_variant(
            model, spec, texts, o, 8
        )[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="25b29f1", help="old revision")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=100, help="seed workload prompts")
    ap.add_argument("--texts", type=int, default=100, help="AG News texts to classify")
    ap.add_argument("--row", action="append", help="run only the rows named so (repeatable)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "paired")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(old_package(args.base, args.workdir)))
    sides = {
        "old": importlib.import_module(OLD_NAME),
        "new": importlib.import_module("jupyter_localllm"),
    }
    bp, bc = importlib.import_module("bench_parallel"), importlib.import_module("bench_classify")
    if not bc.DATA.exists():
        print(f"skipped: {bc.DATA} is missing")
        return 0
    runs = {}
    for side, ll in sides.items():
        bp.ll = bc.ll = ll
        runs[side] = workloads(bp, bc, ll.model_load("default"), args.rows, args.texts)
        print(f"{side}: {ll.__file__}", flush=True)
    rows = [row for row in runs["new"] if not args.row or row in args.row]
    walls: dict[str, dict[str, list[float]]] = {row: {"old": [], "new": []} for row in rows}
    for r in range(args.rounds):
        for i, row in enumerate(walls):
            order = ("old", "new") if (r + i) % 2 == 0 else ("new", "old")
            for side in order:
                bp.ll = bc.ll = sides[side]
                walls[row][side].append(runs[side][row]())
            old, new = walls[row]["old"][-1], walls[row]["new"][-1]
            print(f"[{r + 1}/{args.rounds}] {row}: old {old:.2f} s, new {new:.2f} s", flush=True)
    report(walls, args)
    return 0


def report(walls: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    """The table of median walls and median paired ratios, and the raw numbers as JSON."""
    print(f"\nOld {args.base} vs new (working tree), {args.rounds} paired round(s), one process.\n")
    print("| row | old median s | new median s | median new/old | per round |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for row, w in walls.items():
        ratios = [n / o for o, n in zip(w["old"], w["new"], strict=True)]
        ratio = statistics.median(ratios)
        worst = max(worst, ratio)
        each = ", ".join(f"{x:.3f}" for x in ratios)
        old, new = statistics.median(w["old"]), statistics.median(w["new"])
        print(f"| {row} | {old:.2f} | {new:.2f} | {ratio:.3f} | {each} |")
    print(f"\nlargest median new/old: {worst:.3f}")
    out = args.workdir / f"paired-{args.base}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(walls, indent=1))
    print(f"raw walls: {out}")


if __name__ == "__main__":
    sys.exit(main())
