"""``out=`` while the DataFrame changes under a background job (issue 25, family 5) and the
column names and dtypes ``out=`` meets (family 11), on the real default model.

A run is held after its first rows by its own progress callback (the job thread waits on an
Event), the test changes the frame, then lets it go: no timing is involved. Every answer is
checked against a foreground run of the same rows, matched by the row's title (each title
is unique), so an answer next to the wrong prompt fails the test.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import refused

import jupyter_localllm.notebook.accessor  # noqa: F401 (registers df.llm)
from jupyter_localllm import datasets
from jupyter_localllm.errors import InvalidParameterError
from jupyter_localllm.notebook.out_column import FrameChangedWarning

LABELS = list(datasets.NEWS_CLASSES)
# Users sort and drop in place (pandas 3.1 deprecates inplace=; the notebook habit remains).
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def titles():
    return list(datasets.news_sample().title.head(12))


def news_frame(titles, index=None) -> pd.DataFrame:
    index = index if index is not None else [f"r{i:02d}" for i in range(len(titles))]
    return pd.DataFrame(
        {"title": titles, "keep": [f"k{i}" for i in range(len(titles))]}, index=index
    )


class Gate:
    """A progress callback holding the run (in the job's thread) once ``after`` rows are
    done, until the test calls :meth:`release`."""

    def __init__(self, after: int):
        self.after, self.paused, self.go = after, threading.Event(), threading.Event()

    def __call__(self, event) -> None:
        if event.done >= self.after and not self.paused.is_set():
            self.paused.set()
            assert self.go.wait(60)

    def hold(self, job) -> set[int]:
        """Wait until the run is held; the rows (start positions) finished by then."""
        assert self.paused.wait(60), job
        return set(job.partial())

    def release(self) -> None:
        self.go.set()


RUNS = {
    "generate": lambda df, ctx, **kw: df.llm.generate("{title}", model=ctx, max_tokens=8, **kw),
    "classify": lambda df, ctx, **kw: df.llm.classify("{title}", LABELS, model=ctx, **kw),
}


def by_title(frame: pd.DataFrame, values: pd.Series) -> dict[str, str]:
    return {t: str(v) for t, v in zip(frame.title, values, strict=True)}


def run_held(run, df, ctx, change, after: int = 3):
    """Start ``run`` in the background with out="o", hold it after ``after`` rows, call
    ``change(finished_positions)``, let it finish; its result, the warnings, the finished."""
    gate = Gate(after)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = run(df, ctx, out="o", background=True, progress=gate)
        try:
            finished = gate.hold(job)
            assert len(finished) < len(df), "the run finished before it could be held"
            change(finished)
        finally:
            gate.release()
        result = job.result(timeout=120)
    return result, [w for w in caught if issubclass(w.category, FrameChangedWarning)], finished


@pytest.mark.parametrize("task", list(RUNS))
def test_insert_sort_and_drop_under_a_background_job(ctx4, titles, task):
    run = RUNS[task]
    df = news_frame(titles)
    want = by_title(df, run(df, ctx4))  # the same rows in the foreground
    if task == "generate":
        assert len(set(want.values())) >= len(want) - 1  # answers tell rows apart
    start = list(df.index)
    state = {}

    def change(finished: set[int]) -> None:
        df.insert(0, "inserted", range(len(df)))
        df.sort_values("title", ascending=False, inplace=True)
        waiting = [start[i] for i in range(len(start)) if i not in finished]
        dropped = [*waiting[:2], start[min(finished)]]  # two unfinished rows, one written
        df.drop(index=dropped, inplace=True)
        state["unplaced"], state["others"] = waiting[:2], df.drop(columns="o").copy()

    result, warned, _ = run_held(run, df, ctx4, change)
    assert list(result.index) == start and by_title(news_frame(titles), result) == want
    assert by_title(df, df["o"]) == {t: want[t] for t in df.title}  # each by its own prompt
    pd.testing.assert_frame_equal(df.drop(columns="o"), state["others"])  # nothing else moved
    assert list(df.columns) == ["inserted", "title", "keep", "o"]
    assert sorted(result.attrs["llm"]["unwritten"]) == sorted(state["unplaced"])
    assert len(warned) == 1 and "was removed from the DataFrame" in str(warned[0].message)


def test_the_out_column_dropped_mid_run_stops_writing_with_one_warning(ctx4, titles):
    df = news_frame(titles)
    want = by_title(df, RUNS["generate"](df, ctx4))
    result, warned, finished = run_held(RUNS["generate"], df, ctx4, lambda _: df.pop("o"))
    assert by_title(df, result) == want and job_done(result)
    assert "o" not in df.columns and list(df.columns) == ["title", "keep"]
    assert len(result.attrs["llm"]["unwritten"]) == len(df) - len(finished)
    assert len(warned) == 1 and "column 'o' was removed" in str(warned[0].message)


def job_done(result: pd.Series) -> bool:
    return all(v.error is None for v in result)


def test_repeated_labels_are_written_in_place_and_kept_when_ambiguous(ctx4, titles):
    index = ["a", "a", "b", "b", "c", "d", "e", "e", "f", "g", "h", "h"]
    df = news_frame(titles, index)
    want = by_title(df, RUNS["generate"](df, ctx4))
    fg = news_frame(titles, index)
    RUNS["generate"](fg, ctx4, out="o")  # unchanged frame: by position despite the repeats
    assert by_title(fg, fg["o"]) == want

    state = {}

    def change(finished: set[int]) -> None:
        state["finished"] = {titles[i] for i in finished}
        df.sort_values("title", inplace=True)

    result, warned, _ = run_held(RUNS["generate"], df, ctx4, change)
    assert by_title(news_frame(titles, index), result) == want
    repeated = {t for t, lab in zip(titles, index, strict=True) if index.count(lab) > 1}
    for title, label, cell in zip(df.title, df.index, df["o"], strict=True):
        if title in repeated and title not in state["finished"]:
            assert pd.isna(cell), (label, title, cell)  # ambiguous now: kept in the job
        else:
            assert str(cell) == want[title], (label, title, cell)
    unplaced = [lab for t, lab in zip(titles, index, strict=True)
                if t in repeated and t not in state["finished"]]  # fmt: skip
    assert sorted(result.attrs["llm"]["unwritten"]) == sorted(unplaced)
    assert len(warned) == (1 if unplaced else 0)


def test_a_reassigned_variable_leaves_the_job_writing_into_its_frame(ctx4, titles):
    df = news_frame(titles)
    given, state = df, {}
    want = by_title(df, RUNS["generate"](df, ctx4))

    def change(finished: set[int]) -> None:
        state["copy"] = given.copy()  # df = df.copy() in a notebook
        state["copy"].sort_values("title", inplace=True)

    result, warned, finished = run_held(RUNS["generate"], df, ctx4, change)
    assert by_title(given, given["o"]) == want and not warned
    copy = state["copy"]
    assert copy["o"].notna().sum() == len(finished)  # the copy is not written into
    assert all(str(v) == want[t] for t, v in zip(copy.title, copy["o"], strict=True) if pd.notna(v))
    assert "unwritten" not in result.attrs["llm"]


def test_writes_while_the_kernel_thread_keeps_changing_the_frame(ctx4, titles):
    df = news_frame(titles)
    want = by_title(df, RUNS["generate"](df, ctx4))
    job = RUNS["generate"](df, ctx4, out="o", background=True, progress=False)
    turn = 0
    while not job.done():  # insert, sort and remove columns as fast as the kernel can
        df.insert(0, f"c{turn}", turn)
        df.sort_values("title", ascending=bool(turn % 2), inplace=True)
        del df[f"c{turn}"]
        turn += 1
    result = job.result(timeout=60)
    assert turn > 0 and by_title(news_frame(titles), result) == want
    assert by_title(df, df["o"]) == want  # every row written, each by its own prompt
    assert list(df.columns) == ["title", "keep", "o"]


# -- family 11: what out= names ------------------------------------------------------------
def test_out_refuses_a_column_holding_other_types_before_running(ctx4, titles):
    df = news_frame(titles[:3])
    df["n"] = [1, 2, 3]
    df["flag"] = [True, False, True]
    df["topic"] = pd.Categorical(["x", "y", "x"])
    before = df.copy()
    for column, dtype in [("n", "int64"), ("flag", "bool"), ("topic", "category")]:
        refused(lambda c=column: RUNS["generate"](df, ctx4, out=c), InvalidParameterError,
                f"Column '{column}' holds {dtype} values.*astype\\(object\\)")  # fmt: skip
    refused(lambda: RUNS["classify"](df, ctx4, out="topic"), InvalidParameterError, "category")
    pd.testing.assert_frame_equal(df, before)  # nothing ran, nothing changed


def test_out_into_empty_string_and_categorical_columns(ctx4, titles):
    df = news_frame(titles[:4])
    want = by_title(df, RUNS["generate"](df, ctx4))
    df["o"] = np.nan  # float, all empty: becomes object
    RUNS["generate"](df, ctx4, out="o")
    assert df["o"].dtype == object and by_title(df, df["o"]) == want
    df["s"] = pd.Series(["old"] * 4, index=df.index, dtype="string")
    RUNS["generate"](df, ctx4, out="s")
    assert by_title(df, df["s"]) == want
    labels = by_title(df, RUNS["classify"](df, ctx4))
    df["topic"] = pd.Categorical([None] * 4, categories=LABELS)
    RUNS["classify"](df, ctx4, out="topic")  # the labels are categories: stays categorical
    assert isinstance(df["topic"].dtype, pd.CategoricalDtype)
    assert by_title(df, df["topic"]) == labels


def test_tuple_column_names(ctx4, titles):
    flat = news_frame(titles[:3])
    want = by_title(flat, RUNS["generate"](flat, ctx4))
    RUNS["generate"](flat, ctx4, out=("llm", "answer"))  # a tuple label on flat columns
    assert by_title(flat, flat[("llm", "answer")]) == want

    multi = pd.DataFrame({("in", "title"): titles[:3], ("in", "keep"): ["a", "b", "c"]})
    multi.llm.generate("{('in', 'title')}", model=ctx4, max_tokens=8, out=("llm", "answer"))
    got = zip(multi["in", "title"], multi["llm", "answer"], strict=True)
    assert {t: str(v) for t, v in got} == want
    refused(
        lambda: multi.llm.generate("{('in', 'title')}", model=ctx4, out="answer"),
        InvalidParameterError,
        r"2 levels; name the new column out= as a tuple of 2",
    )
    refused(lambda: multi.llm.generate("{('in', 'title')}", model=ctx4, out="in"),
            InvalidParameterError, "names more than one column")  # fmt: skip
    refused(lambda: multi.llm.generate("{in}", model=ctx4), InvalidParameterError,
            r"Column 'in' not found; columns are \('in', 'title'\)")  # fmt: skip
    refused(lambda: flat.llm.generate("{title}", model=ctx4, out=["x"]), InvalidParameterError,
            "out= takes one column name")  # fmt: skip
    assert list(multi.columns) == [("in", "title"), ("in", "keep"), ("llm", "answer")]


def test_out_on_a_series_or_a_repeated_column_is_refused(ctx4, titles):
    s = pd.Series(titles[:2])
    refused(lambda: s.llm.generate(model=ctx4, out="o"), InvalidParameterError,
            "a Series has none")  # fmt: skip
    df = pd.DataFrame([[titles[0], "x", "y"]], columns=["title", "o", "o"])
    refused(lambda: RUNS["generate"](df, ctx4, out="o"), InvalidParameterError,
            "names more than one column")  # fmt: skip
