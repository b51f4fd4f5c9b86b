"""The run ledger (``session/ledger.py``): one run's results keyed by input row, the one place
that builds :class:`BatchInterrupted`.

The first tests feed it hand-made results, as vLLM's scheduler tests feed their scheduler:
rows kept once and in input order, renumbered from a part of the input, the interrupt's
contents. The last ones interrupt a real run from each executor (foreground, background job,
Dask) and check that what comes back is the ledger's interrupt with the rows that finished.
"""

from __future__ import annotations

import ast
import pickle
import threading
from pathlib import Path

import pytest
from conftest import chat

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted
from jupyter_localllm.session.ledger import RunLedger
from jupyter_localllm.types import FinishReason, Result

PACKAGE = Path(ll.__file__).parent


def ok(text: str, row: int, n_tokens: int = 3) -> Result:
    return Result(text, finish_reason="stop", row=row, n_tokens=n_tokens)


# -- the values ------------------------------------------------------------------------------
def test_finish_reason_is_an_enum_equal_to_its_string():
    res = Result("x", finish_reason="eog")
    assert res.finish_reason is FinishReason.EOG
    assert res.finish_reason == "eog" and f"{res.finish_reason}" == "eog"
    assert str(Result.cancelled(2).finish_reason) == "cancelled"
    with pytest.raises(ValueError):
        Result("x", finish_reason="finished")  # not a reason a row can end with


def test_results_are_immutable_and_replace_makes_a_copy():
    res = ok("hello", 1)
    for name, value in (("row", 5), ("finish_reason", "cancelled"), ("value", {})):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(res, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del res.row
    moved = res.replace(row=7)
    assert (moved, moved.row, moved.n_tokens, res.row) == ("hello", 7, 3, 1)
    back = pickle.loads(pickle.dumps(moved))  # Dask and the cache send results whole
    assert (back, back.row, back.finish_reason) == ("hello", 7, FinishReason.STOP)


def test_ledger_keys_rows_by_input_row_and_keeps_the_first():
    seen = []
    ledger = RunLedger(4, on_result=seen.append)
    ledger.record(ok("c", 2))
    ledger.record(ok("a", 0, n_tokens=5))
    assert ledger.record(ok("c again", 2)) is None  # a row is taken once
    ledger.record(Result.failed("bad", row=3))
    assert (len(ledger), ledger.errors, ledger.tokens, ledger.missing()) == (3, 1, 8, [1])
    assert [str(r) for r in seen] == ["c", "a", "Error: bad"]
    assert list(ledger.rows()) == [0, 2, 3] and 2 in ledger and 1 not in ledger
    results = ledger.complete()
    assert [str(r) for r in results] == ["a", "Error: the row did not run", "c", "Error: bad"]
    assert [r.row for r in results] == [0, 1, 2, 3]


def test_ledger_renumbers_rows_of_a_part_of_the_input():
    ledger = RunLedger(10)
    part = [ok("p0", 0), ok("p1", 1), Result.cancelled(2)]  # a partition starting at row 6
    ledger.record_all(part, range(6, 9))
    engine = ledger.mapped([1, 4])  # an engine call over input rows 1 and 4
    engine(ok("e1", 1))
    engine(ok("e0", 0))
    assert {row: (str(r), r.row) for row, r in ledger.rows().items()} == {
        1: ("e0", 1),
        4: ("e1", 4),
        6: ("p0", 6),
        7: ("p1", 7),
    }  # the partition's cancelled row is not a finished one
    assert part[0].row == 0  # the caller's result is left as it was
    with pytest.raises(IndexError):
        ledger.record(ok("x", 10))


def test_ledger_prepares_each_new_row_once():
    prepared = []

    def prepare(res: Result) -> Result:
        prepared.append(res.row)
        return res.replace(text=res.upper())

    ledger = RunLedger(2, prepare=prepare)
    ledger.record(ok("a", 5), row=1)
    ledger.record(ok("b", 0), row=1)
    assert prepared == [1] and ledger.get(1) == "A" and ledger.get(1).row == 1


def test_interrupt_holds_every_row_finished_or_cancelled():
    ledger = RunLedger(5)
    ledger.record(ok("", 3))  # an empty answer is a finished row too
    ledger.record(ok("a", 0))
    exc = ledger.interrupted()
    assert isinstance(exc, BatchInterrupted) and isinstance(exc, KeyboardInterrupt)
    assert str(exc) == "Interrupted after 2 of 5 rows; the finished rows are in .results."
    assert [r.row for r in exc.results] == [0, 1, 2, 3, 4]
    reasons = [r.finish_reason for r in exc.results]
    assert reasons == ["stop", "cancelled", "cancelled", "stop", "cancelled"]
    assert exc.results[3] == "" and exc.results[1].error == "cancelled"
    assert str(ledger.interrupted("The job was cancelled.")) == "The job was cancelled."


def test_a_jobs_views_are_kept_as_delivered():
    ledger = RunLedger(3)
    ledger.record({"label": "x"}, row=2)
    exc = ledger.interrupted()
    assert exc.results[2] == {"label": "x"} and exc.results[0].finish_reason == "cancelled"


def test_only_the_ledger_builds_batch_interrupted():
    builders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name == "BatchInterrupted":
                    builders.append(str(path.relative_to(PACKAGE)))
    assert builders == ["session/ledger.py"]


def test_batch_interrupted_is_a_public_name():
    assert "BatchInterrupted" in ll.__all__ and ll.BatchInterrupted is BatchInterrupted
    assert "FinishReason" in ll.__all__ and ll.FinishReason is FinishReason


# -- real runs: each executor ends an interrupted run with the ledger's interrupt ------------
N = 6


@pytest.fixture(scope="module")
def prompts(model):
    return [chat(model, f"Count from {i} to {i + 20}, one number a line.") for i in range(N)]


def stop_after_first(cancel: threading.Event, finished: list):
    def on_result(res: Result) -> None:
        finished.append(res.row)
        cancel.set()

    return on_result


def check_interrupt(exc: BaseException, finished: list[int]) -> None:
    assert isinstance(exc, BatchInterrupted), repr(exc)
    assert str(exc).startswith(f"Interrupted after {len(finished)} of {N} rows;")
    assert [r.row for r in exc.results] == list(range(N))
    done = {r.row for r in exc.results if r.finish_reason != "cancelled"}
    assert done == set(finished) and 1 <= len(done) < N
    assert all(exc.results[i].error is None for i in done)


def test_foreground_interrupt_is_the_ledgers(ctx2, prompts):
    cancel, finished = threading.Event(), []
    with pytest.raises(BatchInterrupted) as caught:
        on_result = stop_after_first(cancel, finished)
        ll.generate_parallel(ctx2, prompts, max_tokens=40, cancel=cancel, on_result=on_result)
    check_interrupt(caught.value, finished)


def test_background_interrupt_is_the_ledgers(ctx2, prompts):
    cancel, finished = threading.Event(), []
    job = ll.generate_parallel(
        ctx2,
        prompts,
        max_tokens=40,
        cancel=cancel,
        on_result=stop_after_first(cancel, finished),
        background=True,
        progress=False,
    )
    with pytest.raises(BatchInterrupted) as caught:
        job.result(timeout=60)
    check_interrupt(caught.value, finished)
    assert sorted(job.partial()) == sorted(finished) and job.status == "cancelled"


def test_dask_interrupt_is_the_ledgers(ctx, prompts):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    cancel, finished = threading.Event(), []
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
        pytest.raises(BatchInterrupted) as caught,
    ):
        ll.generate_parallel(
            ctx,  # one slot: partitions of two rows, one after the other on one thread
            prompts,
            max_tokens=40,
            cancel=cancel,
            on_result=stop_after_first(cancel, finished),
            cluster=client,
            progress=False,
        )
    check_interrupt(caught.value, finished)
