"""Background jobs on the real default model: results equal foreground runs, Cancel keeps the
finished rows, jobs on one context queue, errors come back through result()."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from conftest import SENTIMENT, TEXTS, chat, wait_for

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted, JobTimeoutError
from jupyter_localllm.session.jobs import Job, start_job


@pytest.fixture(scope="module")
def jctx(model):
    """A 2-slot context of the tests in this module (jobs lock it while they run)."""
    c = ll.context_create(model, n_seq_max=2)
    yield c
    c.close()


def _counting(model, n: int) -> list[str]:
    """Prompts whose answers run long (so a job is still busy when the test acts)."""
    return [chat(model, f"Write a long story about dragon number {i}.") for i in range(n)]


def test_background_generate_returns_at_once_and_equals_foreground(model, jctx):
    prompts = [chat(model, t) for t in ("Say hi.", "Name a colour.", "Name a fruit.")]
    want = ll.generate_parallel(jctx, prompts, max_tokens=12, progress=False, cache=False)
    seen = []
    job = ll.generate_parallel(
        jctx, prompts, max_tokens=12, cache=False, background=True, on_result=seen.append
    )
    assert isinstance(job, Job)
    got = job.result(timeout=120)
    assert job.done() and job.status == "finished" and job.error is None
    assert [str(r) for r in got] == [str(r) for r in want]
    assert {row: str(r) for row, r in job.partial().items()} == dict(enumerate(map(str, want)))
    assert sorted(r.row for r in seen) == [0, 1, 2]  # the caller's on_result still runs
    assert job.progress.done == job.progress.total == 3
    assert job.elapsed > 0


def test_cancel_button_stops_a_job_and_partial_keeps_finished_rows(model, jctx):
    prompts = _counting(model, 12)
    job = ll.generate_parallel(jctx, prompts, max_tokens=48, cache=False, background=True)
    panel = job.panel
    assert panel.cancel_button.layout.display != "none"
    wait_for(lambda: len(job.partial()) >= 1)
    assert not job.done()  # the kernel got the job back at once; the run goes on
    panel.cancel_button.click()
    with pytest.raises(BatchInterrupted) as info:
        job.result(timeout=60)
    assert job.status == "cancelled" and job.cancelled
    finished = job.partial()
    assert 1 <= len(finished) < len(prompts)
    assert all(r.ok and r.finish_reason != "cancelled" for r in finished.values())
    by_row = {r.row: r for r in info.value.results}
    assert sorted(by_row) == list(range(len(prompts)))
    for row, res in by_row.items():
        if row in finished:
            assert str(res) == str(finished[row])
        else:
            assert res.error == "cancelled"
    assert panel.bar.bar_style == "danger" and "cancelled" in panel.stats.value
    assert panel.cancel_button.layout.display == "none"
    # the context is usable again at once
    again = ll.generate_parallel(jctx, prompts[:1], max_tokens=4, progress=False, cache=False)
    assert again[0].error is None


def test_jobs_on_one_context_queue_in_order(model, jctx):
    first = ll.generate_parallel(
        jctx, _counting(model, 2), max_tokens=40, cache=False, background=True
    )
    second = ll.generate_parallel(
        jctx, [chat(model, "Say hi.")], max_tokens=5, cache=False, background=True
    )
    wait_for(lambda: first.status == "running")
    assert second.status == "queued"
    assert "queued" in second.panel.stats.value
    second.result(timeout=120)
    first.result(timeout=1)  # the first ended before the second began
    assert second.started_at >= first.ended_at


def test_cancel_while_queued_runs_nothing(model, jctx):
    first = ll.generate_parallel(
        jctx, _counting(model, 2), max_tokens=30, cache=False, background=True
    )
    second = ll.generate_parallel(
        jctx, [chat(model, "Say hi.")], max_tokens=5, cache=False, background=True
    )
    second.cancel()
    with pytest.raises(BatchInterrupted, match="before it started"):
        second.result(timeout=30)
    assert second.partial() == {}
    assert len(first.result(timeout=120)) == 2


def test_a_foreground_call_waits_for_the_job_on_its_context(model, jctx):
    job = ll.generate_parallel(
        jctx, _counting(model, 2), max_tokens=30, cache=False, background=True
    )
    wait_for(lambda: job.status == "running")
    ll.generate_parallel(jctx, [chat(model, "Say hi.")], max_tokens=3, progress=False)
    # the foreground run got the context only after the job had finished every row
    assert job.progress.done == 2
    assert len(job.result(timeout=10)) == 2


def test_background_classify_extract_equal_foreground(jctx):
    want = ll.classify(jctx, TEXTS, SENTIMENT, progress=False)
    job = ll.classify(jctx, TEXTS, SENTIMENT, background=True)
    got = job.result(timeout=120)
    pd.testing.assert_frame_equal(got, want)
    assert job.partial()[1] == want.iloc[1].to_dict()

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    texts = ["John is 30 years old.", "", "Mary turned 41 last week."]
    expected = ll.extract(jctx, texts, schema, max_tokens=40, progress=False, cache=False)
    job = ll.extract(jctx, texts, schema, max_tokens=40, cache=False, background=True)
    assert job.result(timeout=120) == expected
    rows = job.partial()
    assert sorted(rows) == [0, 1, 2]
    assert rows[0] == expected[0] and rows[1].error is not None  # the empty text failed


def test_background_explore_reports_rows_and_progress(model):
    events = []
    truth = ["positive", "negative", "positive", "negative"]
    job = ll.explore(
        {"a": model, "b": model},
        TEXTS,
        labels=SENTIMENT,
        truth=truth,
        batch_size=2,
        progress=events.append,
        background=True,
    )
    result = job.result(timeout=300)
    assert len(result.annotations) == 8
    rows = job.partial()
    assert sorted(rows) == list(range(8))
    assert rows[5] == result.annotations.iloc[5].to_dict()
    assert events[-1].done == events[-1].total == 8
    assert [e.done for e in events] == sorted(e.done for e in events)


def test_start_job_re_raises_errors_and_times_out():
    def broken(cancel, on_result, on_progress):
        on_result("first", row=0)
        raise ValueError("bad row")

    job = start_job(broken, total=2, desc="broken")
    with pytest.raises(ValueError, match="bad row"):
        job.result(timeout=10)
    assert job.status == "failed" and job.partial() == {0: "first"}
    panel = job.panel  # made after the end: it shows the end
    assert panel.bar.bar_style == "danger" and "ValueError: bad row" in panel.stats.value

    release = threading.Event()
    slow = start_job(lambda c, r, p: release.wait(10) and "ok", total=1, desc="slow")
    with pytest.raises(JobTimeoutError, match="still running"):
        slow.result(timeout=0.05)
    release.set()
    assert slow.result(timeout=10) == "ok"


def test_start_job_progress_and_cancel_contract():
    events = []

    def work(cancel, on_result, on_progress):
        for i in range(1000):
            if cancel.is_set():
                raise KeyboardInterrupt
            on_result(i * i, row=i)
            on_progress(ll.Progress(i + 1, 1000, 0, 0, 0.01 * (i + 1)))
            time.sleep(0.005)
        return "done"

    job = start_job(work, total=1000, desc="squares", progress=events.append)
    wait_for(lambda: len(job.partial()) >= 5)
    job.cancel()
    with pytest.raises(BatchInterrupted, match="cancelled after") as info:
        job.result(timeout=10)
    rows = job.partial()
    assert all(value == row * row for row, value in rows.items())
    assert list(rows) == list(range(len(rows))) and len(rows) < 1000
    done = len(rows)  # one value per row, as every interrupt: the rest are cancelled
    assert info.value.results[:done] == list(rows.values()) and len(info.value.results) == 1000
    assert {r.finish_reason for r in info.value.results[done:]} == {"cancelled"}
    assert events and events[-1].done == len(rows)


def test_classify_reports_rows_per_wave_and_cancel_keeps_them(jctx):
    texts = TEXTS * 6  # 24 rows, 2 slots: 13 waves with the calibration row first
    want = ll.classify(jctx, texts, SENTIMENT, calibrate=True, progress=False)
    seen = []
    ll.classify(jctx, texts, SENTIMENT, calibrate=True, progress=False, on_result=seen.append)
    assert sorted(r["row"] for r in seen) == list(range(24))
    for rec in seen:  # calibrated per row exactly as in the final frame
        expected = want.iloc[rec["row"]]
        assert rec["label"] == expected["label"]
        assert rec["positive"] == pytest.approx(expected["positive"], abs=1e-12)

    job = ll.classify(jctx, texts, SENTIMENT, calibrate=True, background=True, progress=False)
    wait_for(lambda: len(job.partial()) >= 4)
    job.cancel()
    with pytest.raises(BatchInterrupted):
        job.result(timeout=60)
    partial = job.partial()
    assert 4 <= len(partial) < 24
    for row, rec in partial.items():
        assert rec["label"] == want.iloc[row]["label"]
