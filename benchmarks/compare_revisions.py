"""Old-vs-new wall times: the benchmark scripts against a previous revision, interleaved.

    .venv/bin/python benchmarks/compare_revisions.py [--base 25b29f1] [--rounds 3]
        [--scripts bench_parallel.py bench_classify.py] [--only seed] [--tasks ag_news]
        [--args 'bench_parallel.py=--rows 20'] [--workdir DIR] [--dry-run]

The previous revision is checked out as a detached ``git worktree`` in ``<workdir>/tree``
(reused when it is already there at that commit); ``<workdir>/shared`` links to the checkout's
``../shared`` so the scripts find ``../shared/data`` from the worktree as well. Every round runs
each script once from the old tree and once from the current working tree, in a fresh process
of the same interpreter (``.venv/bin/python``) with ``PYTHONPATH`` set to that tree alone and
``LOCALLLM_RESULT_CACHE=0``. Which side goes first alternates per round and per script (ABBA),
so a machine whose speed drifts does not favour one side. Scripts that repeat their variants
internally get ``--repeat 1`` / ``--rounds 1``: the rounds here are the repeats.

PYTHONPATH wins over the editable install: the venv's ``_editable_impl_jupyter_localllm.pth``
appends the checkout to ``sys.path`` after site-packages, while ``PYTHONPATH`` entries come
right after the script's folder. Before any timing, each side prints the
``jupyter_localllm.__file__`` it imports, and the run stops if that is not inside its tree.

Each row of a script's printed table (one engine or variant; the first column is its wall
time) is a row here, keyed by the table's section. The output is a markdown table (old and new
median wall, median of the per-round new/old ratios) and a verdict line: every row at most
``--threshold`` (1.03). Raw per-round numbers go to a JSON file beside the markdown file, both
in the workdir, rewritten after every run; per-run logs are kept there too.

The "(a) Llama loop" row of bench_parallel.py times llama-cpp-python alone (no code of this
package inside its timing), so its ratio shows how much the machine itself drifted.

The estimate printed first comes from the README's figures (2-core Sapphire Rapids VM,
SmolLM2-135M), scaled by a ~10 s prompt-processing probe of this machine as loaded right now
(``--no-probe`` skips it); after each run the time left is re-estimated from the pace so far.
On the README's machine, both scripts at their defaults take about 90 minutes for 3 rounds;
``--only seed --tasks ag_news`` (the AG News rows of both scripts) about 36.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "25b29f1"
REPEAT_FLAGS = ("--repeat", "--rounds")  # a script's own repeat option, set to 1 here
WALL_COLUMNS = ("wall", "wall_s")
SECTION = re.compile(r"^== (?P<name>.+?): .* ==\s*$")
WALL_HEADER = re.compile(r"(?<!\S)(?:" + "|".join(WALL_COLUMNS) + r")(?!\S)")
CACHE_LINE = re.compile(r"first run (?P<first>[\d.]+) s, identical second run (?P<second>[\d.]+) s")
CACHE_HIT_ROW = "result cache: cached second run"  # milliseconds: reported, not judged
STARTUP_S = 8.0  # interpreter, imports and model load per process

# Median walls (s) from README.md, 2-core VM, SmolLM2-135M Q4_1.
PARALLEL_S = {  # workload: (rows in the figures, seconds per engine)
    "seed": (100, {"a": 39.6, "b": 36.1, 4: 30.9, 8: 31.8, 16: 32.6}),
    "gen": (48, {"a": 66.4, "b": 62.4, 4: 43.7, 8: 39.4, 16: 39.6}),
}
RATES_S = (2.0, 0.6)  # measure_rates: fixed + per sequence (96 prompt tokens, 12 decode steps)
CLASSIFY_S = {  # task: wall of (a), then variants' walls relative to (a)
    "ag_news": (23.0, (1.0, 0.82, 0.92, 1.03, 0.80, 0.97)),
    "tweets": (56.3, (1.0, 0.81, 0.78, 0.88, 0.64, 0.78)),
}
CLASSIFY_CACHE_S = 22.0
README_PP = 230.0  # prompt-processing tok/s of the README's machine (150-290 as it drifted)
PROBE = """
import time, numpy as np, jupyter_localllm as ll
from jupyter_localllm.engine.llama import Batch, Context
m = ll.model_load("default")
ctx = Context(m, n_ctx=256, n_seq_max=1, n_batch=512,
              n_threads=ll.hardware_profile()["cores_physical"])
b, toks, ts = Batch(512, 1, m.n_vocab), np.arange(100, 164), []
for _ in range(8):
    ctx.memory_clear(); b.clear(); b.add(toks, 0, 0, want_last_logits=True)
    t0 = time.perf_counter(); ctx.decode(b); ts.append(time.perf_counter() - t0)
print(64 / sorted(ts)[4])
"""  # bench_parallel's prompt-processing probe, run against the old tree (a fixed commit)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=DEFAULT_BASE, help="old revision (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scripts", nargs="+", default=["bench_parallel.py", "bench_classify.py"])
    ap.add_argument("--only", choices=["seed", "gen"], help="bench_parallel.py --only")
    ap.add_argument("--tasks", nargs="+", help="bench_classify.py --tasks")
    ap.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="SCRIPT=ARGS",
        help="extra arguments for one script, e.g. 'bench_parallel.py=--rows 20 --slots 4'",
    )
    ap.add_argument("--workdir", type=Path, help="worktree, logs and results (default: a tmp dir)")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--threshold", type=float, default=1.03)
    ap.add_argument("--no-probe", action="store_true", help="skip the ~10 s speed probe")
    ap.add_argument("--dry-run", action="store_true", help="set up, verify, estimate; no runs")
    args = ap.parse_args(argv)
    args.workdir = args.workdir or Path(tempfile.gettempdir()) / f"localllm-compare-{args.base}"
    return args


def script_args(args) -> dict[str, list[str]]:
    """Each script's command-line arguments: its own repeat option at 1, then the shortcuts
    and --args."""
    extra: dict[str, list[str]] = {name: [] for name in args.scripts}
    for item in args.args:
        name, sep, rest = item.partition("=")
        if not sep or name not in extra:
            raise SystemExit(f"--args {item!r}: expected SCRIPT=ARGS with SCRIPT in --scripts")
        extra[name] += shlex.split(rest)
    if args.only and "bench_parallel.py" in extra:
        extra["bench_parallel.py"] += ["--only", args.only]
    if args.tasks and "bench_classify.py" in extra:
        extra["bench_classify.py"] += ["--tasks", *args.tasks]
    out = {}
    for name, rest in extra.items():
        source = (REPO / "benchmarks" / name).read_text()
        own = [f for f in REPEAT_FLAGS if f'"{f}"' in source and f not in rest]
        out[name] = [x for f in own for x in (f, "1")] + rest
    return out


def git(*cmd: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *cmd], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def ensure_worktree(base: str, workdir: Path) -> tuple[Path, str]:
    """A detached worktree of ``base`` at ``workdir/tree`` (created, or reused when it is at
    that commit), and ``workdir/shared`` linked to the checkout's ../shared."""
    commit = git("rev-parse", "--verify", f"{base}^{{commit}}")
    tree = workdir / "tree"
    workdir.mkdir(parents=True, exist_ok=True)
    if tree.exists():
        if git("rev-parse", "HEAD", cwd=tree) != commit:
            raise SystemExit(
                f"{tree} is not at {base} ({commit[:12]}); remove it or pick --workdir"
            )
        if git("status", "--porcelain", "--untracked-files=no", cwd=tree):
            raise SystemExit(f"{tree} has local changes; remove it or pick --workdir")
        print(f"reusing worktree {tree} at {commit[:12]}")
    else:
        git("worktree", "add", "--detach", str(tree), commit)
        print(f"created worktree {tree} at {commit[:12]} (git worktree remove {tree} to drop it)")
    shared = workdir / "shared"
    if not shared.exists():
        shared.symlink_to(REPO.parent / "shared")
    return tree, commit


def side_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)  # replaces any inherited value: this tree only
    env["LOCALLLM_RESULT_CACHE"] = "0"
    return env


def verify_import(python: str, tree: Path, label: str, cwd: Path) -> str:
    """Which jupyter_localllm a process of this side imports, and where its tree and the
    checkout (the editable install's .pth entry) sit in sys.path; stops unless the package
    comes from the tree."""
    code = "import sys, json, jupyter_localllm as m; print(json.dumps([m.__file__, sys.path]))"
    out = subprocess.run(
        [python, "-c", code],
        env=side_env(tree),
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    file, path = json.loads(out)
    where = Path(file).resolve()
    at = {
        str(p): [i for i, e in enumerate(path) if e and Path(e).resolve() == p]
        for p in (tree.resolve(), REPO)
    }
    print(f"{label}: jupyter_localllm from {where}; sys.path indexes {at} of {len(path)}")
    if not where.is_relative_to(tree.resolve()):
        raise SystemExit(f"{label}: expected the package from {tree}, got {where}")
    return str(where)


def estimate_parallel(argv: list[str]) -> float:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--gen-rows", type=int, default=48)
    ap.add_argument("--slots", default="4,8,16")
    ap.add_argument("--only")
    a, _ = ap.parse_known_args(argv)
    slots = [int(s) for s in a.slots.split(",")]
    total = STARTUP_S
    for workload, rows in (("seed", a.rows), ("gen", a.gen_rows)):
        if a.only not in (None, workload):
            continue
        ref_rows, secs = PARALLEL_S[workload]
        sizes = [k for k in secs if isinstance(k, int)]
        per_slot = [secs[min(sizes, key=lambda k, n=n: abs(k - n))] for n in slots]
        total += (secs["a"] + secs["b"] + sum(per_slot)) * rows / ref_rows
        total += RATES_S[0] + RATES_S[1] * (1 + sum(slots))
    return total


def estimate_classify(argv: list[str]) -> float:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--tasks", nargs="+", default=list(CLASSIFY_S))
    a, _ = ap.parse_known_args(argv)
    total = STARTUP_S + CLASSIFY_CACHE_S
    for task in a.tasks:
        wall_a, factors = CLASSIFY_S.get(task, (60.0, (1.0,) * 6))
        total += wall_a * sum(factors)
    return total


def probe_scale(python: str, old_tree: Path, cwd: Path) -> float:
    """This machine's speed against the README's: README prompt-processing rate over the rate
    measured now (64-token decodes of the default model, median of 8)."""
    out = subprocess.run(
        [python, "-c", PROBE], env=side_env(old_tree), cwd=cwd, capture_output=True, text=True
    )
    try:
        pp = float(out.stdout.split()[-1])
    except (IndexError, ValueError):
        print(f"speed probe failed, estimate unscaled: {out.stderr.strip()[-300:]}")
        return 1.0
    print(f"speed probe: prompt processing {pp:.0f} tok/s here, README machine ~{README_PP:.0f}")
    return README_PP / pp


def estimate(per_script: dict[str, list[str]], rounds: int, scale: float) -> dict[str, float]:
    """Seconds for one run of each script: the README figures times ``scale``; prints them and
    the whole comparison's total (both sides, all rounds)."""
    known = {"bench_parallel.py": estimate_parallel, "bench_classify.py": estimate_classify}
    print(f"estimate ({rounds} round(s), both sides), README figures x {scale:.2f}:")
    one = {}
    for name, argv in per_script.items():
        one[name] = scale * known[name](argv) if name in known else float("nan")
        print(f"  one run of {name} {shlex.join(argv)}: ~{one[name] / 60:.1f} min")
    print(f"  total ~{2 * rounds * sum(one.values()) / 60:.0f} min")
    return one


def parse_rows(text: str) -> dict[str, float]:
    """Wall seconds per table row of a script's output, keyed 'section: row'.

    A section starts at a '== name: … ==' line; its table's header names the wall column
    ('wall' or 'wall_s'). pandas right-aligns values under their header, so the wall value is
    the last token of the row cut at the header's column end, and the row name is what
    precedes it (names may hold spaces, digits and commas)."""
    rows: dict[str, float] = {}
    section, end = None, None
    for line in text.splitlines():
        if m := SECTION.match(line):
            section, end = m["name"], None
            continue
        if m := CACHE_LINE.search(line):
            rows["result cache: first run"] = float(m["first"])
            rows[CACHE_HIT_ROW] = float(m["second"])
            continue
        if section is None or not line.strip():
            continue
        if end is None:
            col = WALL_HEADER.search(line)
            end = col.end() if col and not line.lstrip().startswith("(") else None
            continue
        if line.startswith("("):
            name, _, value = line[:end].rstrip().rpartition(" ")
            rows[f"{section}: {name.strip()}"] = float(value)
    return rows


def run_once(python: str, tree: Path, script: str, argv: list[str], log: Path, cwd: Path):
    """One fresh process of ``tree/benchmarks/script``; returns (process wall, rows)."""
    cmd = [python, str(tree / "benchmarks" / script), *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=side_env(tree), cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(
        f"$ PYTHONPATH={tree} {shlex.join(cmd)}\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    if proc.returncode != 0 or "skipped:" in proc.stderr:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"\n{shlex.join(cmd)} failed (rc {proc.returncode}):\n{tail}\nlog: {log}")
    rows = parse_rows(proc.stdout)
    if not rows:
        raise SystemExit(f"no table rows parsed from {script}; see {log}")
    return wall, rows


def summarize(runs: list[dict], threshold: float) -> list[dict]:
    """Per script and row: median walls of each side and the median of per-round ratios."""
    out = []
    for script in dict.fromkeys(r["script"] for r in runs):
        mine = [r for r in runs if r["script"] == script]
        names = list(dict.fromkeys(n for r in mine for n in r["rows"]))
        for name in [*names, "whole process"]:
            walls = {"old": {}, "new": {}}
            for r in mine:
                value = r["process_wall"] if name == "whole process" else r["rows"].get(name)
                if value is not None:
                    walls[r["side"]][r["round"]] = value
            common = sorted(set(walls["old"]) & set(walls["new"]))
            ratios = [walls["new"][k] / walls["old"][k] for k in common if walls["old"][k] > 0]
            judged = name not in (CACHE_HIT_ROW, "whole process")
            ratio = statistics.median(ratios) if ratios else float("nan")
            out.append(
                dict(
                    script=script,
                    row=name,
                    old=statistics.median(walls["old"].values()) if walls["old"] else None,
                    new=statistics.median(walls["new"].values()) if walls["new"] else None,
                    ratios=ratios,
                    ratio=ratio,
                    judged=judged,
                    ok=(ratio <= threshold) if judged and ratios else None,
                )
            )
    return out


def markdown(summary: list[dict], threshold: float, meta: dict) -> str:
    def fmt(x, spec):
        return "–" if x is None else format(x, spec if x >= 1 else ".3f")

    lines = [
        f"Old {meta['base']} ({meta['base_commit'][:12]}) vs new {meta['new']}; "
        f"{meta['rounds_done']} round(s), interleaved; LOCALLLM_RESULT_CACHE=0.",
        "",
        "| script | row | old median wall s | new median wall s | median new/old |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        note = "" if s["judged"] else " (not judged)"
        pairs = len(s["ratios"])
        short = f" ({pairs} of {meta['rounds_done']} rounds)" if pairs < meta["rounds_done"] else ""
        lines.append(
            f"| {s['script']} | {s['row']}{note} | {fmt(s['old'], '.2f')} | "
            f"{fmt(s['new'], '.2f')} | {fmt(s['ratio'], '.3f')}{short} |"
        )
    judged = [s for s in summary if s["judged"]]
    bad = [s for s in judged if not s["ok"]]
    verdict = "yes" if judged and not bad else "NO"
    lines += ["", f"Every row's median new/old ratio ≤ {threshold}: **{verdict}**"]
    if bad:
        lines.append("Above: " + "; ".join(f"{s['script']} {s['row']}" for s in bad))
    return "\n".join(lines)


def save(path: Path, meta: dict, runs: list[dict], threshold: float) -> str:
    summary = summarize(runs, threshold) if runs else []
    table = markdown(summary, threshold, meta)
    path.with_suffix(".json").write_text(
        json.dumps(dict(meta, runs=runs, summary=summary), indent=1)
    )
    path.with_suffix(".md").write_text(table + "\n")
    return table


def new_label() -> str:
    head = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"working tree at {head}" + (" with uncommitted changes" if dirty else "")


def package_state(tree: Path) -> str:
    """A fingerprint of the package's files as they are now (tracked changes and untracked
    files), to notice a working tree edited while the comparison runs."""
    import hashlib

    digest = hashlib.sha256(git("diff", "HEAD", "--", "jupyter_localllm", cwd=tree).encode())
    for name in git(
        "ls-files", "--others", "--exclude-standard", "jupyter_localllm", cwd=tree
    ).split():
        digest.update(name.encode() + (tree / name).read_bytes())
    return digest.hexdigest()[:12]


def main(argv=None) -> int:
    args = parse_args(argv)
    per_script = script_args(args)
    old_tree, base_commit = ensure_worktree(args.base, args.workdir)
    trees = {"old": old_tree, "new": REPO}
    files = {side: verify_import(args.python, t, side, args.workdir) for side, t in trees.items()}
    scale = 1.0 if args.no_probe else probe_scale(args.python, old_tree, args.workdir)
    one_run = estimate(per_script, args.rounds, scale)
    if args.dry_run:
        return 0
    subprocess.run([args.python, "-m", "compileall", "-q", str(old_tree / "jupyter_localllm")])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.workdir / f"compare-{args.base}-{stamp}"
    meta = dict(base=args.base, base_commit=base_commit, new=new_label(), imports=files)
    meta.update(args=per_script, python=args.python, rounds=args.rounds, rounds_done=0)
    runs: list[dict] = []
    t_start, total = time.perf_counter(), 2 * args.rounds * sum(one_run.values())
    left = total
    for rnd in range(args.rounds):
        for i, (script, argv_) in enumerate(per_script.items()):
            order = ("old", "new") if (rnd + i) % 2 == 0 else ("new", "old")
            for side in order:
                log = args.workdir / f"{stamp}-r{rnd + 1}-{side}-{script}.log"
                print(f"[round {rnd + 1}/{args.rounds}] {side} {script} …", end=" ", flush=True)
                wall, rows = run_once(args.python, trees[side], script, argv_, log, args.workdir)
                left -= one_run[script]
                eta = left * (time.perf_counter() - t_start) / (total - left)
                print(f"{wall:.0f} s, {len(rows)} rows; ~{eta / 60:.0f} min left at this pace")
                runs.append(dict(round=rnd, script=script, side=side, process_wall=wall, rows=rows))
                runs[-1].update(log=str(log), package_state=package_state(trees[side]))
                save(out, meta, runs, args.threshold)
        meta["rounds_done"] = rnd + 1
    table = save(out, meta, runs, args.threshold)
    print(f"\n{table}\n\nelapsed {(time.perf_counter() - t_start) / 60:.1f} min")
    if len({(r["side"], r["package_state"]) for r in runs}) > 2:
        print("WARNING: a tree's package files changed during the comparison (see package_state)")
    print(f"raw per-round numbers: {out.with_suffix('.json')}\ntable: {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
