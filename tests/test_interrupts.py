"""Interrupts of every batch entry point on the real default model, foreground and background.

Foreground runs are stopped by Ctrl-C simulated from a callback the run calls (a KeyboardInterrupt
raised in ``progress=`` or ``on_result=``), by a ``cancel=`` event set from a callback, and, for
``%llm_batch``, by a real SIGINT (``_thread.interrupt_main()``). Background runs are stopped with
``job.cancel()``. Each must end in :class:`BatchInterrupted` whose ``.results`` hold one
:class:`~jupyter_localllm.Result` per input row, in input order: every row reported finished
before the interrupt is finished there with the value that was reported, the others are
``finish_reason == "cancelled"``; ``out=`` columns keep exactly the finished rows; the context
answers afterwards as a fresh one does.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from conftest import SENTIMENT, TEXTS, chat, wait_for
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

import jupyter_localllm as ll
import jupyter_localllm.notebook.accessor  # registers df.llm
from jupyter_localllm.errors import BatchInterrupted
from jupyter_localllm.session.manager import get_manager

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
# Row 1 is empty: it fails for its own reason, before anything runs.
PEOPLE = [
    "John is 30 years old.",
    "",
    "Mary turned 41 last week.",
    "Bob, 25, lives in Rome.",
    "Alice is 52 and teaches maths.",
    "Tom is a 19-year-old student.",
    "Eve, aged 67, paints.",
    "Sam is 33 years old.",
    "Lena is 28.",
    "Omar is 45 years old.",
]
TOPICS = ["dragons", None, "the sea", "a robot", "a castle", "the moon", "a storm", "a fox",
          "a ship", "a king", "winter", "a garden"]  # fmt: skip
N_TEXTS = 6  # explore: 6 texts x 2 models = 12 annotation rows, in chunks of 2


# -- helpers --------------------------------------------------------------------------------
def interrupted(run: Callable[..., Any], *args: Any, **kwargs: Any) -> BatchInterrupted:
    """Call ``run`` and return the BatchInterrupted it raised.

    Any other KeyboardInterrupt fails the test here (it would otherwise stop the pytest session),
    and so does a run that was not interrupted at all.
    """
    try:
        value = run(*args, **kwargs)
    except KeyboardInterrupt as exc:
        assert isinstance(exc, BatchInterrupted), (
            f"a bare {type(exc).__name__} escaped instead of BatchInterrupted: {exc!r}"
        )
        return exc
    pytest.fail(f"the run was not interrupted; it returned a {type(value).__name__}")


def finished_rows(exc: BatchInterrupted, n: int) -> dict[int, ll.Result]:
    """Check ``exc.results`` (one Result per input row, in input order; unfinished rows
    cancelled, finished ones with no error or an error of their own) and return the finished
    rows by row number."""
    results = exc.results
    assert isinstance(results, list), type(results)
    assert len(results) == n, f"{len(results)} results for {n} input rows"
    finished = {}
    for i, res in enumerate(results):
        assert isinstance(res, ll.Result), f"row {i}: a {type(res).__name__}, not a Result"
        assert res.row == i, f"results[{i}].row is {res.row}"
        if res.finish_reason == "cancelled":
            continue
        assert res.error != "cancelled", f"row {i} says cancelled but is {res.finish_reason!r}"
        finished[i] = res
    assert len(finished) < n, "every row finished: the interrupt stopped nothing"
    return finished


def check_label(res: ll.Result, labels: list[str]) -> None:
    """A finished classification row: the label is the most probable of ``.probs``."""
    assert res.error is None, res.error
    assert isinstance(res.probs, dict) and set(res.probs) == set(labels), res.probs
    assert sum(res.probs.values()) == pytest.approx(1.0)
    assert str(res) == max(res.probs, key=res.probs.get)


def check_person(res: ll.Result) -> None:
    """A finished extraction row: no error and the parsed JSON in ``.value``, or its own
    error (invalid JSON, the empty text)."""
    if res.error is None:
        assert isinstance(res.value, dict), f"row {res.row}: value is {res.value!r}"
        assert isinstance(res.value["name"], str) and isinstance(res.value["age"], int)


def label_and_probs(value: Any, labels: list[str]) -> tuple[str, dict[str, float]]:
    """The label and probabilities of a classification row as a callback or ``job.partial()``
    gave it: a Result, or a record dict (``label`` and one column per label)."""
    if isinstance(value, ll.Result):
        return str(value), dict(value.probs)
    return value["label"], {lab: value[lab] for lab in labels}


def extracted(value: Any) -> Any:
    """What an extraction row holds as ``job.partial()`` gave it: the parsed dict, or the
    error message of a failed row."""
    if isinstance(value, ll.Result):
        return value.value if value.error is None else ("error", value.error)
    return value


def annotation_label(value: Any) -> str:
    """An explore annotation row's label (a Result or an annotation record)."""
    return str(value) if isinstance(value, ll.Result) else value["label"]


def cancel_job(job: Any, k: int) -> tuple[BatchInterrupted, dict[int, Any]]:
    """Wait until ``job`` has at least ``k`` finished rows, cancel it, and return the
    BatchInterrupted its result() raises and its rows (``job.partial()``) after the end."""
    assert isinstance(job, ll.Job), f"background=True gave a {type(job).__name__}, not a Job"
    wait_for(lambda: job.done() or len(job.partial()) >= k)
    job.cancel()
    exc = interrupted(job.result, timeout=120)
    assert job.status == "cancelled"
    rows = job.partial()
    assert len(rows) >= k
    return exc, rows


def kept_positions(column: pd.Series) -> set[int]:
    """Positions of the rows an ``out=`` column holds (not NA)."""
    return {pos for pos, v in enumerate(column) if not pd.isna(v)}


def stop_at(done: int, seen: list[int]) -> Callable[[ll.Progress], None]:
    """A ``progress=`` callable that raises KeyboardInterrupt (Ctrl-C) once ``done`` rows
    are reported finished, noting the count it saw in ``seen``."""

    def progress(event: ll.Progress) -> None:
        if event.done >= done:
            seen.append(event.done)
            raise KeyboardInterrupt

    return progress


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx2(model):
    """A 2-slot context of this module's tests (background jobs lock it while they run)."""
    c = ll.context_create(model, n_seq_max=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stories(model):
    """Prompts whose answers run long, so a run is still busy when it is interrupted."""
    return [chat(model, f"Write a long story about dragon number {i}.") for i in range(16)]


@pytest.fixture(scope="module")
def ip(model):
    """An IPython shell with the extension loaded and the session's model as an alias."""
    shell = start_ipython() or get_ipython()  # one global shell per test session
    shell.run_line_magic("load_ext", "jupyter_localllm")
    alias = get_manager().adopt(model, alias="interrupts")  # an earlier alias if it has one
    yield shell, alias
    if alias == "interrupts":
        get_manager().unload(alias)  # forgets the adopted model (and closes its contexts)
    shell.run_line_magic("unload_ext", "jupyter_localllm")


def dragons(n: int = 16) -> pd.DataFrame:
    return pd.DataFrame(
        {"prompt": [f"Write a long story about dragon number {i}." for i in range(n)]},
        index=range(100, 100 + n),
    )


# -- generate_parallel ----------------------------------------------------------------------
def test_generate_parallel_ctrl_c_in_on_result_keeps_rows_and_context_works(model, ctx2, stories):
    seen: dict[int, str] = {}

    def on_result(res: ll.Result) -> None:
        seen[res.row] = str(res)
        if len(seen) >= 3:
            raise KeyboardInterrupt

    exc = interrupted(
        ll.generate_parallel,
        ctx2,
        stories,
        max_tokens=16,
        progress=False,
        cache=False,
        on_result=on_result,
    )
    finished = finished_rows(exc, len(stories))
    assert len(seen) == 3 and set(seen) <= set(finished)
    for row, text in seen.items():
        assert finished[row].error is None and str(finished[row]) == text
    # the context works afterwards and answers as a fresh one does
    after = ll.generate_parallel(ctx2, stories[:4], max_tokens=8, progress=False, cache=False)
    fresh_ctx = ll.context_create(model, n_seq_max=2)
    try:
        fresh = ll.generate_parallel(
            fresh_ctx, stories[:4], max_tokens=8, progress=False, cache=False
        )
    finally:
        fresh_ctx.close()
    assert all(r.error is None for r in after)
    assert [str(r) for r in after] == [str(r) for r in fresh]


def test_generate_parallel_cancel_event_set_from_progress(ctx2, stories):
    cancel = threading.Event()
    at: list[int] = []

    def progress(event: ll.Progress) -> None:
        if event.done >= 2 and not cancel.is_set():
            at.append(event.done)
            cancel.set()

    exc = interrupted(
        ll.generate_parallel,
        ctx2,
        stories,
        max_tokens=16,
        progress=progress,
        cache=False,
        cancel=cancel,
    )
    finished = finished_rows(exc, len(stories))
    assert len(finished) >= at[0]
    assert all(r.error is None and r.n_tokens > 0 for r in finished.values())


def test_generate_parallel_background_cancel(ctx2, stories):
    job = ll.generate_parallel(
        ctx2, stories, max_tokens=16, progress=False, cache=False, background=True
    )
    exc, rows = cancel_job(job, 2)
    finished = finished_rows(exc, len(stories))
    assert set(rows) <= set(finished)
    for row, value in rows.items():
        assert finished[row].error is None and str(finished[row]) == str(value)


# -- classify -------------------------------------------------------------------------------
def test_classify_ctrl_c_in_on_result_keeps_rows_and_context_works(model, ctx2):
    texts = TEXTS * 6  # 24 rows, scored 2 at a time
    seen: dict[int, tuple[str, dict[str, float]]] = {}

    def on_result(record: Any) -> None:
        row = record.row if isinstance(record, ll.Result) else record["row"]
        seen[row] = label_and_probs(record, SENTIMENT)
        if len(seen) >= 4:
            raise KeyboardInterrupt

    exc = interrupted(ll.classify, ctx2, texts, SENTIMENT, progress=False, on_result=on_result)
    finished = finished_rows(exc, len(texts))
    assert len(seen) == 4 and set(seen) <= set(finished)
    for res in finished.values():
        check_label(res, SENTIMENT)
    for row, (label, probs) in seen.items():
        assert str(finished[row]) == label
        assert finished[row].probs == pytest.approx(probs, abs=1e-9)
    # the context works afterwards and answers as a fresh one does
    after = ll.classify(ctx2, TEXTS, SENTIMENT, progress=False)
    fresh_ctx = ll.context_create(model, n_seq_max=2)
    try:
        fresh = ll.classify(fresh_ctx, TEXTS, SENTIMENT, progress=False)
    finally:
        fresh_ctx.close()
    assert after["error"].isna().all()
    pd.testing.assert_frame_equal(after, fresh)


def test_classify_background_cancel(ctx2):
    texts = TEXTS * 6
    job = ll.classify(ctx2, texts, SENTIMENT, progress=False, background=True)
    exc, rows = cancel_job(job, 4)
    finished = finished_rows(exc, len(texts))
    assert set(rows) <= set(finished)
    for row, value in rows.items():
        check_label(finished[row], SENTIMENT)
        label, probs = label_and_probs(value, SENTIMENT)
        assert str(finished[row]) == label
        assert finished[row].probs == pytest.approx(probs, abs=1e-9)


# -- extract --------------------------------------------------------------------------------
def test_extract_ctrl_c_in_progress(ctx2):
    at: list[int] = []
    exc = interrupted(
        ll.extract, ctx2, PEOPLE, SCHEMA, max_tokens=40, progress=stop_at(3, at), cache=False
    )
    finished = finished_rows(exc, len(PEOPLE))
    assert len(finished) >= at[0]
    assert 1 in finished and finished[1].error not in (None, "cancelled")  # the empty text
    assert any(r.error is None for r in finished.values())
    for res in finished.values():
        check_person(res)


def test_extract_background_cancel(ctx2):
    job = ll.extract(ctx2, PEOPLE, SCHEMA, max_tokens=40, cache=False, background=True)
    exc, rows = cancel_job(job, 2)
    finished = finished_rows(exc, len(PEOPLE))
    assert set(rows) <= set(finished)
    for row, value in rows.items():
        res = finished[row]
        check_person(res)
        got = res.value if res.error is None else ("error", res.error)
        assert got == extracted(value)


# -- explore --------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["ctrl_c", "cancel_event"])
def test_explore_interrupt_from_on_result(model, how):
    texts = (TEXTS * 2)[:N_TEXTS]
    cancel = threading.Event()
    seen: dict[int, str] = {}  # annotation row -> label, numbered in the order models run

    def on_result(frame: pd.DataFrame) -> None:
        for record in frame.to_dict("records"):
            seen[len(seen)] = record["label"]
        if len(seen) >= 8:  # all of model "a" and the first chunk of model "b"
            if how == "cancel_event":
                cancel.set()
            else:
                raise KeyboardInterrupt

    exc = interrupted(
        ll.explore,
        {"a": model, "b": model},
        texts,
        labels=SENTIMENT,
        batch_size=2,
        n_seq_max=2,
        progress=False,
        on_result=on_result,
        cancel=cancel,
    )
    finished = finished_rows(exc, 2 * N_TEXTS)
    assert len(seen) == 8 and set(seen) <= set(finished)
    for row, label in seen.items():
        assert finished[row].error is None and str(finished[row]) == label
    assert all(str(r) in SENTIMENT for r in finished.values() if r.error is None)


def test_explore_background_cancel(model):
    texts = (TEXTS * 2)[:N_TEXTS]
    job = ll.explore(
        {"a": model, "b": model},
        texts,
        labels=SENTIMENT,
        batch_size=2,
        n_seq_max=2,
        progress=False,
        background=True,
    )
    exc, rows = cancel_job(job, 4)
    finished = finished_rows(exc, 2 * N_TEXTS)
    assert set(rows) <= set(finished)
    for row, value in rows.items():
        assert finished[row].error is None and str(finished[row]) == annotation_label(value)


# -- df.llm accessors -----------------------------------------------------------------------
def test_accessor_generate_ctrl_c_keeps_out_column(ctx2):
    df = pd.DataFrame({"topic": TOPICS}, index=[f"t{i}" for i in range(len(TOPICS))])
    at: list[int] = []
    exc = interrupted(
        df.llm.generate,
        "Write a long story about {topic}.",
        model=ctx2,
        max_tokens=16,
        out="story",
        cache=False,
        progress=stop_at(3, at),
    )
    finished = finished_rows(exc, len(df))  # one per frame row, the bad cell included
    assert len(finished) >= at[0]
    assert finished[1].error.startswith("column 'topic' is empty")  # its own error
    assert all(r.error is None for row, r in finished.items() if row != 1)
    kept = df["story"]
    assert kept_positions(kept) == set(finished)
    for pos, res in finished.items():
        assert str(kept.iloc[pos]) == str(res)


def test_accessor_generate_background_cancel_keeps_out_column(ctx2):
    df = dragons(16)
    job = df.llm.generate(
        "{prompt}", model=ctx2, max_tokens=16, out="story", cache=False, background=True
    )
    exc, rows = cancel_job(job, 3)
    finished = finished_rows(exc, len(df))
    assert set(rows) <= set(finished)
    kept = df["story"]
    assert kept_positions(kept) == set(finished)
    for pos, res in finished.items():
        assert res.error is None and str(kept.iloc[pos]) == str(res)
    for pos, value in rows.items():
        assert str(finished[pos]) == str(value)


def test_accessor_classify_ctrl_c_keeps_out_column(ctx2):
    df = pd.DataFrame({"review": TEXTS * 5}, index=[f"r{i}" for i in range(20)])
    at: list[int] = []
    exc = interrupted(
        df.llm.classify, "{review}", SENTIMENT, model=ctx2, out="mood", progress=stop_at(4, at)
    )
    finished = finished_rows(exc, len(df))
    assert len(finished) >= at[0]
    for res in finished.values():
        check_label(res, SENTIMENT)
    kept = df["mood"]
    assert kept_positions(kept) == set(finished)
    for pos, res in finished.items():
        assert kept.iloc[pos] == str(res)


def test_accessor_classify_background_cancel_keeps_out_column(ctx2):
    df = pd.DataFrame({"review": TEXTS * 5}, index=[f"r{i}" for i in range(20)])
    job = df.llm.classify("{review}", SENTIMENT, model=ctx2, out="mood", background=True)
    exc, rows = cancel_job(job, 4)
    finished = finished_rows(exc, len(df))
    assert set(rows) <= set(finished)
    for res in finished.values():
        check_label(res, SENTIMENT)
    kept = df["mood"]
    assert kept_positions(kept) == set(finished)
    for pos, res in finished.items():
        assert kept.iloc[pos] == str(res)


def test_accessor_extract_ctrl_c_in_progress(ctx2):
    df = pd.DataFrame({"text": PEOPLE}, index=[f"p{i}" for i in range(len(PEOPLE))])
    at: list[int] = []
    exc = interrupted(
        df.llm.extract, "{text}", SCHEMA, model=ctx2, max_tokens=40, progress=stop_at(2, at)
    )
    finished = finished_rows(exc, len(df))
    assert len(finished) >= at[0]
    assert 1 in finished and finished[1].error not in (None, "cancelled")  # the blank cell
    assert any(r.error is None for r in finished.values())
    for res in finished.values():
        check_person(res)


def test_accessor_extract_background_cancel(ctx2):
    df = pd.DataFrame({"text": PEOPLE}, index=[f"p{i}" for i in range(len(PEOPLE))])
    job = df.llm.extract("{text}", SCHEMA, model=ctx2, max_tokens=40, background=True)
    exc, rows = cancel_job(job, 2)
    finished = finished_rows(exc, len(df))
    assert set(rows) <= set(finished)
    for row, value in rows.items():
        res = finished[row]
        check_person(res)
        got = res.value if res.error is None else ("error", res.error)
        assert got == extracted(value)


# -- %llm_batch -----------------------------------------------------------------------------
def test_llm_batch_real_ctrl_c_keeps_finished_rows(ip, ctrl_c):
    shell, alias = ip
    df = dragons(16)
    shell.user_ns["dragons_fg"] = df
    options = f"-m {alias} --max-tokens 10 --n-seq-max 2"
    shell.run_line_magic("llm_batch", f"dragons_fg.prompt --out ref {options}")
    assert df["ref"].notna().all()

    magic_done = threading.Event()
    fired = threading.Event()

    def watch() -> None:  # Ctrl-C once the out column holds two finished rows
        end = time.monotonic() + 120
        while time.monotonic() < end and not magic_done.is_set():
            try:
                column = df.get("got")
                ready = column is not None and column.notna().sum() >= 2
            except Exception:  # the column is being written by the run
                ready = False
            if ready:
                fired.set()
                _thread.interrupt_main()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    caught: BaseException | None = None
    try:
        watcher.start()
        try:
            shell.run_line_magic("llm_batch", f"dragons_fg.prompt --out got {options}")
        finally:
            magic_done.set()
            watcher.join(10)
            time.sleep(0.1)  # a SIGINT sent just before the end lands here, not later
    except (KeyboardInterrupt, Exception) as exc:
        caught = exc
    assert fired.is_set(), "the watcher never saw two finished rows"
    assert isinstance(caught, BatchInterrupted), repr(caught)
    kept = df["got"].dropna()
    assert 2 <= len(kept) < len(df)
    for index, value in kept.items():
        assert str(value) == str(df.at[index, "ref"])  # as in the uninterrupted run
    finished = finished_rows(caught, len(df))
    assert kept_positions(df["got"]) == set(finished)


def test_llm_batch_background_cancel_keeps_finished_rows(ip):
    shell, alias = ip
    df = dragons(16)
    shell.user_ns["dragons_bg"] = df
    job = shell.run_line_magic(
        "llm_batch",
        f"dragons_bg.prompt --out got -m {alias} --max-tokens 10 --n-seq-max 2 --background",
    )
    exc, rows = cancel_job(job, 2)
    finished = finished_rows(exc, len(df))
    assert set(rows) <= set(finished)
    kept = df["got"]
    assert kept_positions(kept) == set(finished)
    for pos, res in finished.items():
        assert res.error is None and str(kept.iloc[pos]) == str(res)
