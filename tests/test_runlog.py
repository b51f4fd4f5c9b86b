"""The run log (session/runlog.py): a run from every front-end lands in the SQLite log beside
the result cache, with its rows; another process reads it; interrupted runs keep their
finished rows; the opt-out, the size bound and a corrupt file; a replay matches every row."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_python

import jupyter_localllm as ll
from jupyter_localllm.engine.determinism import prompt_stream
from jupyter_localllm.engine.sampling import derive_seed
from jupyter_localllm.session import runlog

PROMPTS = ["Name a fruit.", "Count to three.", "Say hello.", "Name a colour.", "Name a city."]


@pytest.fixture
def logdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder for the test: the log is ``runs.sqlite`` in it."""
    monkeypatch.setenv("LOCALLLM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LOCALLLM_RUN_LOG", raising=False)
    monkeypatch.delenv("LOCALLLM_RUN_LOG_MAX_RUNS", raising=False)
    runlog.run_log(None)
    yield tmp_path
    runlog.run_log(None)


@pytest.fixture(scope="module")
def rctx(model):
    c = ll.context_create(model, n_seq_max=4)
    yield c
    c.close()


def prompts(model) -> list[str]:
    return [ll.apply_chat_template(model, [{"role": "user", "content": p}]) for p in PROMPTS]


def test_a_generate_parallel_run_and_its_rows(model, rctx, logdir):
    results = ll.generate_parallel(rctx, prompts(model), max_tokens=8, progress=False)
    assert (logdir / "runs.sqlite").exists()
    table = ll.runs()
    assert list(table.columns) == list(runlog.RUN_COLUMNS)
    assert len(table) == 1
    rec = table.iloc[0]
    assert rec.function == "generate_parallel" and rec.status == "finished"
    # A process with an IPython shell (an earlier test module may have made one) is a notebook.
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    assert rec.front_end == ("notebook" if shell else "python") and rec.cluster is None
    assert rec.n_rows == rec.n_done == len(PROMPTS) and rec.n_errors == 0
    assert rec.n_tokens == sum(r.n_tokens for r in results) > 0
    assert rec.model_path == str(model.path) and len(rec.model_sha256) == 64
    assert json.loads(rec.options)[0]["context"]["n_seq_max"] == 4
    rows = ll.run(rec.run_id)
    assert list(rows.columns) == list(runlog.ROW_COLUMNS)
    assert rows["output"].tolist() == [str(r) for r in results]
    assert rows["prompt"].tolist() == prompts(model)
    assert rows["finish_reason"].tolist() == [r.finish_reason.value for r in results]
    assert rows["seed"].iloc[0] == 1234 and rows["seed"].nunique() == len(PROMPTS)
    assert rows["n_tokens"].tolist() == [r.n_tokens for r in results]
    assert ll.run(rec.run_id[:8]).attrs["run"]["run_id"] == rec.run_id  # a prefix will do
    with pytest.raises(ll.errors.InvalidParameterError, match="No run"):
        ll.run("0000nothere")


def test_generate_classify_and_df_llm_are_logged(model, rctx, logdir):
    ll.generate(rctx, prompts(model)[0], max_tokens=4)
    ll.classify(rctx, ["I love it.", "I hate it."], ["positive", "negative"], progress=False)
    pd.DataFrame({"text": PROMPTS[:2]}).llm.generate("{text}", model=model, max_tokens=4)
    job = ll.generate_parallel(rctx, PROMPTS[:3], max_tokens=2, background=True, progress=False)
    job.result()
    table = ll.runs().iloc[1:]  # the background job's run first
    assert ll.runs().iloc[0].n_done == 3
    assert table["function"].tolist()[::-1][:2] == ["generate", "classify"]
    assert len(table) == 3 and (table["status"] == "finished").all()
    labels = ll.run(table.iloc[1].run_id)["output"].tolist()
    assert set(labels) <= {"positive", "negative"} and len(labels) == 2
    assert ll.run(table.iloc[0].run_id)["row"].tolist() == [0, 1]


def test_cell_magic_is_logged_from_the_notebook(model, logdir):
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "jupyter_localllm")
    assert shell.run_cell("%llm load default").success
    result = shell.run_cell("%%llm --max-tokens 4\nSay hi.")
    assert result.success, result.error_in_exec
    rec = ll.runs().iloc[0]
    assert rec.front_end == "notebook" and rec.function == "generate" and rec.n_done == 1
    assert "Say hi." in ll.run(rec.run_id)["prompt"].iloc[0]


def test_the_command_logs_and_lists_and_another_process_reads_the_log(logdir, tmp_path):
    pd.DataFrame({"text": PROMPTS[:3]}).to_csv(tmp_path / "in.csv", index=False)
    command = [sys.executable, "-m", "jupyter_localllm"]
    env = {**os.environ, "LOCALLLM_CACHE_DIR": str(logdir)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
            timeout=120, check=False,
        )  # fmt: skip

    done = cli("run", "in.csv", "--out", "out.csv", "--max-tokens", "4")
    assert done.returncode == 0, done.stderr
    rec = ll.runs().iloc[0]  # written by the command's process, read by this one
    assert rec.front_end == "cli" and rec.n_done == 3
    answers = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)["llm_output"].tolist()
    assert ll.run(rec.run_id)["output"].tolist() == answers
    listing = cli("log")
    assert listing.returncode == 0 and rec.run_id in listing.stdout
    shown = cli("log", "show", rec.run_id)
    assert shown.returncode == 0 and "front_end: cli" in shown.stdout
    assert cli("log", "export", rec.run_id, "--out", "rows.jsonl").returncode == 0
    exported = pd.read_json(tmp_path / "rows.jsonl", lines=True)
    assert exported["output"].tolist() == answers
    assert cli("log", "export", rec.run_id, "--out", "rows.txt").returncode == 2
    assert cli("log", "show", "0000nothere").returncode == 2
    cleared = cli("log", "clear")
    assert cleared.returncode == 0 and "Deleted 1 runs" in cleared.stdout
    assert ll.runs().empty


def test_the_log_survives_a_restart(model, rctx, logdir):
    ll.generate_parallel(rctx, prompts(model)[:2], max_tokens=4, progress=False)
    run_id = ll.runs().iloc[0].run_id
    done = run_python(
        f"""
        import os, jupyter_localllm as ll
        os.environ["LOCALLLM_CACHE_DIR"] = {str(logdir)!r}
        print(ll.runs().run_id.tolist(), len(ll.run({run_id!r})))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{run_id!r}] 2"


def test_an_interrupted_run_is_logged_with_its_finished_rows(model, rctx, logdir):
    cancel = threading.Event()

    def stop_after_two(event: ll.Progress) -> None:
        if event.done >= 2:
            cancel.set()

    many = prompts(model) * 4
    with pytest.raises(ll.BatchInterrupted) as info:
        ll.generate_parallel(rctx, many, max_tokens=30, progress=stop_after_two, cancel=cancel)
    finished = {r.row: str(r) for r in info.value.results if r.finish_reason != "cancelled"}
    rec = ll.runs().iloc[0]
    assert rec.status == "interrupted" and "BatchInterrupted" in rec.error
    assert rec.n_rows == len(many) and rec.n_done == len(finished) < len(many)
    rows = ll.run(rec.run_id)
    assert dict(zip(rows["row"], rows["output"], strict=True)) == finished


def test_opt_out_writes_nothing(model, rctx, logdir, monkeypatch):
    monkeypatch.setenv("LOCALLLM_RUN_LOG", "0")
    ll.generate(rctx, prompts(model)[0], max_tokens=2)
    monkeypatch.delenv("LOCALLLM_RUN_LOG")
    assert ll.run_log(False) is False
    ll.generate(rctx, prompts(model)[0], max_tokens=2)
    assert not (logdir / "runs.sqlite").exists() and ll.runs().empty
    assert ll.run_log(None) is True


def test_the_oldest_runs_go_beyond_the_bound(model, rctx, logdir, monkeypatch):
    monkeypatch.setenv("LOCALLLM_RUN_LOG_MAX_RUNS", "3")
    for k in range(5):
        ll.generate_parallel(rctx, prompts(model)[: k + 1], max_tokens=2, progress=False)
    table = ll.runs()
    assert table["n_rows"].tolist() == [5, 4, 3]
    n_rows = runlog.get_log().query("SELECT COUNT(*) FROM rows")[0][0]
    assert n_rows == 5 + 4 + 3
    assert ll.runs_clear() == 3 and ll.runs().empty


def test_a_corrupt_log_warns_once_and_runs_go_on(model, rctx, logdir):
    (logdir / "runs.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.warns(runlog.RunLogWarning, match="runs.sqlite failed"):
        first = ll.generate(rctx, prompts(model)[0], max_tokens=4)
    assert first.ok and first.n_tokens > 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", runlog.RunLogWarning)  # the same fault: no new warning
        assert ll.generate(rctx, prompts(model)[0], max_tokens=4) == first


def test_a_replay_of_a_greedy_run_matches_every_row(model, logdir):
    ctx = ll.context_create(model, n_seq_max=4)
    try:
        ll.generate_parallel(ctx, prompts(model) * 2, max_tokens=24, progress=False)
    finally:
        ctx.close()
    run_id = ll.runs().iloc[0].run_id
    report = ll.replay(run_id)
    assert list(report.columns) == ["row", "logged", "replayed", "match"]
    assert report["row"].tolist() == list(range(2 * len(PROMPTS)))
    assert report["match"].all(), report[~report["match"]]
    assert report.attrs["matches"] == report.attrs["rows"] == 2 * len(PROMPTS)
    assert ll.runs().iloc[0].description == "replay"  # the replay is a logged run too


def test_a_replay_of_a_calibrated_classify_run_matches(model, rctx, logdir):
    texts = ["I love it.", "I hate it.", "It is fine."]
    ll.classify(rctx, texts, ["positive", "negative"], calibrate=True, progress=False)
    run_id = ll.runs().iloc[0].run_id
    assert json.loads(ll.run(run_id).attrs["run"]["options"])[0]["calibrate"] == (
        "jupyter_localllm.tasks.calibration:contextual_calibration"
    )
    report = ll.replay(run_id)
    assert report["match"].tolist() == [True, True, True], report


def test_a_replay_imports_no_function_from_outside_the_package(model, rctx, logdir):
    ll.classify(rctx, ["I love it."], ["positive", "negative"], calibrate=True, progress=False)
    run_id = ll.runs().iloc[0].run_id
    con = sqlite3.connect(logdir / "runs.sqlite")  # a log edited by someone else
    with con:
        old = con.execute("SELECT options FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
        new = old.replace("jupyter_localllm.tasks.calibration", "os")
        con.execute("UPDATE runs SET options = ? WHERE run_id = ?", (new, run_id))
    con.close()
    with pytest.raises(ll.errors.InvalidParameterError, match="unknown function 'os:"):
        ll.replay(run_id)


def test_a_replay_of_an_embed_run_compares_the_vectors_and_keeps_the_pooling(model, logdir):
    ll.embed(model, ["A cat sleeps.", "Stocks fell."], pooling="last", progress=False)
    run_id = ll.runs().iloc[0].run_id
    logged = ll.run(run_id)["output"].tolist()
    assert all(o.startswith("<embedding d=576> sha256:") for o in logged), logged
    assert logged[0] != logged[1]  # the hash is of the vector, not of its size
    report = ll.replay(run_id)  # with the mean pooling of the file, no row would match
    assert report["match"].tolist() == [True, True], report


def test_a_replay_of_a_deterministic_run_matches_every_row(logdir):
    model = ll.model_load("default", use_extra_bufts=False)
    ctx = ll.context_create(model, n_seq_max=3, deterministic=True)
    try:
        ll.generate_parallel(ctx, prompts(model), max_tokens=12, progress=False)
    finally:
        ctx.close()
    run_id = ll.runs().iloc[0].run_id
    options = json.loads(ll.run(run_id).attrs["run"]["options"])[0]
    assert options["context"]["deterministic"] is True
    report = ll.replay(run_id)
    assert report["match"].all() and report.attrs["rows"] == len(PROMPTS), report
    # the logged seeds are those the engine drew from: of the prompt, not of the row
    seeds = ll.run(run_id)["seed"].tolist()
    tokens = [model.tokenize(p) for p in prompts(model)]
    assert seeds == [derive_seed(1234, prompt_stream(t)) for t in tokens]


def test_a_replay_reports_a_row_that_differs(model, rctx, logdir):
    ll.generate_parallel(rctx, prompts(model)[:2], max_tokens=6, progress=False)
    run_id = ll.runs().iloc[0].run_id
    con = sqlite3.connect(logdir / "runs.sqlite")  # as if the model had answered so
    with con:
        con.execute("UPDATE rows SET output = 'tampered' WHERE run_id = ? AND row = 1", (run_id,))
    con.close()
    report = ll.replay(run_id)
    assert report["match"].tolist() == [True, False]
    assert report["logged"].iloc[1] == "tampered"


def test_a_dask_run_is_logged_once_in_the_kernel(model, rctx, logdir):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        results = ll.generate_parallel(
            rctx, prompts(model)[:3], max_tokens=4, progress=False, cluster=client
        )
    table = ll.runs()
    assert len(table) == 1  # the partitions run on the worker are not runs of their own
    rec = table.iloc[0]
    assert rec.cluster and rec.n_done == 3
    assert ll.run(rec.run_id)["output"].tolist() == [str(r) for r in results]


def test_bad_rows_are_logged_with_their_errors(model, rctx, logdir):
    import warnings

    rows = [prompts(model)[0], "", "bad \ud800 text", 7]
    with warnings.catch_warnings():
        warnings.simplefilter("error", runlog.RunLogWarning)
        ll.generate_parallel(rctx, rows, max_tokens=2, progress=False)
    logged = ll.run(ll.runs().iloc[0].run_id)
    assert logged["error"].isna().tolist() == [True, False, False, False]
    assert logged["prompt"].iloc[2] == "bad \\ud800 text" and pd.isna(logged["prompt"].iloc[3])
    assert ll.runs().iloc[0].n_errors == 3


def test_a_document_names_the_runs_logged_meanwhile(model, rctx, logdir, tmp_path):
    path = ll.document_start(tmp_path / "doc.jsonl")
    try:
        ll.generate(rctx, prompts(model)[0], max_tokens=2)
        ll.generate_parallel(rctx, prompts(model)[:2], max_tokens=2, progress=False)
    finally:
        ll.document_end()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "call", "call", "end"]
    assert records[-1]["run_ids"] == ll.runs()["run_id"].tolist()[::-1]
    assert [len(ll.run(r)) for r in records[-1]["run_ids"]] == [1, 2]
