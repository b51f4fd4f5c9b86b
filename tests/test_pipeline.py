"""The batch pipeline and its executors, directly: what every entry point relies on (row
errors in place, per-row sampling, progress over the caller's rows, plans of several requests
numbered and interrupted as one)."""

from __future__ import annotations

import pytest
from conftest import chat

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted, InvalidParameterError
from jupyter_localllm.session.executors import Plan, execute, single
from jupyter_localllm.session.pipeline import BatchRequest, run_batch

SENTIMENT = ["positive", "negative"]


@pytest.fixture(scope="module")
def pctx(model):
    c = ll.context_create(model, n_seq_max=2)
    yield c
    c.close()


def test_run_batch_reports_every_row_once_in_place(model, pctx):
    rows = [chat(model, "Say hi."), "", None, chat(model, "Say yes.")]
    seen, events = [], []
    request = BatchRequest(pctx, rows, sampling=ll.SamplingParams(max_tokens=4), cache=False)
    results = run_batch(request, on_result=seen.append, on_progress=events.append)
    assert [r.row for r in results] == [0, 1, 2, 3]
    assert sorted(r.row for r in seen) == [0, 1, 2, 3]  # errors are rows too
    assert results[1].error == "the prompt is empty; give some text"
    assert results[2].error == "the prompt must be a string, got NoneType"
    assert results[0].ok and results[3].ok and results.hashes["input_sha256"]
    assert (events[-1].done, events[-1].total, events[-1].errors) == (4, 4, 2)
    with pytest.raises(InvalidParameterError, match="kind must be one of"):
        BatchRequest(pctx, rows, kind="summarise")


def test_a_row_that_is_not_valid_text_fails_alone(model, pctx):
    rows = [chat(model, "Say hi."), "bad \ud800 text", chat(model, "Say yes.")]
    out = ll.generate_parallel(pctx, rows, max_tokens=4, progress=False, cache=False)
    assert out[0].ok and out[2].ok
    assert "not valid text" in out[1].error
    scored = ll.classify(pctx, ["I love it", "bad \ud800", "I hate it"], SENTIMENT, progress=False)
    assert scored["label"].notna().tolist() == [True, False, True]
    assert "not valid text" in scored["error"][1]


def test_one_sampling_parameter_set_per_row(model, pctx):
    rows = [chat(model, "Count from one to twenty.")] * 2
    per_row = [ll.SamplingParams(max_tokens=2), {"max_tokens": 7}]
    out = ll.generate_parallel(pctx, rows, sampling=per_row, progress=False, cache=False)
    assert [r.n_tokens for r in out] == [2, 7]
    assert out[1].startswith(out[0])  # greedy: the shorter answer is a prefix
    # keyword shorthand applies to every row's set
    short = ll.generate_parallel(
        pctx, rows, sampling=per_row, max_tokens=1, progress=False, cache=False
    )
    assert [r.n_tokens for r in short] == [1, 1]
    with pytest.raises(InvalidParameterError, match="2 rows"):
        ll.generate_parallel(pctx, rows, sampling=per_row[:1], progress=False)
    with pytest.raises(InvalidParameterError, match="Unknown sampling option"):
        ll.generate_parallel(pctx, rows, sampling=[{"max_token": 3}] * 2, progress=False)


def test_calibrated_classify_counts_only_the_callers_rows(pctx):
    events = []
    texts = ["I love it", "I hate it", "Great stuff", "Awful"]
    ll.classify(pctx, texts, SENTIMENT, calibrate=True, progress=events.append)
    assert {e.total for e in events} == {4}  # the content-free row is not a row
    assert events[-1].done == 4
    assert [e.done for e in events] == sorted(e.done for e in events)


def _two_requests(model, pctx, on_first=None):
    first = BatchRequest(pctx, [chat(model, f"Name fruit {i}.") for i in range(3)], cache=False)
    second = BatchRequest(pctx, [chat(model, f"Name city {i}.") for i in range(3)], cache=False)
    first.sampling = second.sampling = ll.SamplingParams(max_tokens=6)

    def steps():
        a = yield first
        if on_first is not None:
            on_first()
        b = yield second
        return [str(r) for r in a + b]

    return Plan(steps(), total=6, desc="two", context=pctx)


def test_a_plan_of_two_requests_numbers_rows_and_progress_across_them(model, pctx):
    rows, events = {}, []
    plan = _two_requests(model, pctx).also_on_result(lambda row, res: rows.update({row: res}))
    value = execute(plan, progress=events.append)
    assert sorted(rows) == list(range(6)) and value == [str(rows[i]) for i in range(6)]
    assert {e.total for e in events} == {6} and events[-1].done == 6
    assert [e.done for e in events] == sorted(e.done for e in events)
    alone = single(BatchRequest(pctx, [chat(model, "Name fruit 0.")], cache=False), len)
    assert execute(alone, progress=False) == 1


def test_ctrl_c_between_requests_keeps_the_first_requests_rows(model, pctx):
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as info:
        execute(_two_requests(model, pctx, on_first=interrupt), progress=False)
    results = info.value.results
    assert [r.row for r in results] == list(range(6))
    assert all(r.ok for r in results[:3])
    assert all(r.finish_reason == "cancelled" for r in results[3:])


def test_background_plan_is_a_job_with_the_plans_value(model, pctx):
    job = execute(_two_requests(model, pctx), background=True, progress=False)
    value = job.result(timeout=120)
    assert len(value) == 6 and sorted(job.partial()) == list(range(6))
    assert [str(job.partial()[i]) for i in range(6)] == value
