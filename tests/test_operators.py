"""The semantic operators (``sem_filter``, ``sem_topk``, ``sem_join``, ``sem_agg``,
``sem_dedup`` and ``df.llm.*``) on the real default model.

SmolLM2-135M answers yes/no and A/B questions only a little better than chance, so exact
answers are asserted where they do not depend on its judgement (rows that cannot run, counts,
the order a tournament's own comparisons imply, what label scoring of the same prompts gives)
and its judgement only where it is reliably right here (relative yes-probabilities of
clear-cut texts).
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import jupyter_localllm as ll
import jupyter_localllm.notebook.accessor  # registers df.llm
from jupyter_localllm.errors import BatchInterrupted, InvalidParameterError, PlaceholderError
from jupyter_localllm.tasks.classification import classify
from jupyter_localllm.tasks.operators.filter import FILTER_INSTRUCTION
from jupyter_localllm.tasks.operators.topk import COMPARE_INSTRUCTION, _pair_text

SPORTS = "The text is about sports: {text}"
TEXTS = {
    "a": "The striker scored twice as United won the cup final.",
    "b": "Parliament passed the new budget after a long debate.",
    "c": "The tennis champion lost in the first round.",
    "d": None,  # cannot run: an error in its place
    "e": "The central bank raised interest rates again.",
    "f": "The marathon runner broke the world record.",
}


@pytest.fixture
def frame():
    return pd.DataFrame({"text": list(TEXTS.values())}, index=list(TEXTS))


# -- filter ------------------------------------------------------------------------------------
def test_filter_keeps_the_rows_whose_yes_probability_passes(ctx4, frame):
    every = frame.llm.filter(SPORTS, model=ctx4, probs=True, return_all=True, progress=False)
    assert every.index.equals(frame.index) and list(every.columns) == [
        "text",
        "passed",
        "prob",
        "error",
    ]
    assert pd.isna(every.loc["d", "passed"]) and "column 'text' is empty" in every.loc["d", "error"]
    assert frame.attrs["llm"]["failed"] == {"d": every.loc["d", "error"]}
    # the probabilities are classify's on the same prompts
    prompts = [SPORTS.format(text=t) for t in frame["text"].drop("d")]
    scored = classify(ctx4, prompts, ["yes", "no"], instruction=FILTER_INSTRUCTION, progress=False)
    assert np.allclose(every["prob"].drop("d"), scored["yes"], atol=0.02)
    # the model's judgement: sports texts score higher than the others
    prob = every["prob"]
    assert min(prob[["a", "c", "f"]]) > max(prob[["b", "e"]])
    # the rows kept are those at or above the threshold, in frame order, columns unchanged
    threshold = float(prob[["a", "c", "f"]].min())
    kept = frame.llm.filter(SPORTS, model=ctx4, threshold=threshold, progress=False)
    assert list(kept.index) == ["a", "c", "f"] and list(kept.columns) == ["text"]
    assert kept.attrs["llm"]["kept"] == 3 and kept.attrs["llm"]["errors"] == 1
    assert kept["text"].equals(frame.loc[["a", "c", "f"], "text"])


def test_filter_refuses_bad_options_before_the_model_runs(frame):
    with pytest.raises(PlaceholderError, match="Column 'body' not found"):
        ll.sem_filter(frame, "{body}")
    with pytest.raises(InvalidParameterError, match="threshold must be in"):
        ll.sem_filter(frame, SPORTS, threshold=1.5)
    with pytest.raises(InvalidParameterError, match="Unknown classify option"):
        ll.sem_filter(frame, SPORTS, colour="red")
    for where in ({"background": True}, {"cluster": "tcp://127.0.0.1:1"}):
        with pytest.raises(InvalidParameterError, match="proxy= runs in the foreground"):
            ll.sem_filter(frame, SPORTS, proxy="default", target_precision=0.9, **where)


# -- topk --------------------------------------------------------------------------------------
def _check_tournament(top, k, n):
    info = top.attrs["llm"]
    assert len(top) == k and top.index.is_unique
    assert info["comparisons"] < info["all_pairs"] == n * (n - 1) // 2
    assert info["prompts"] == 2 * info["comparisons"]
    place = {label: i for i, label in enumerate(top.index)}
    for row, pivot, p in info["comparison_log"]:
        if row in place and pivot in place:  # the order follows every comparison made
            assert (place[row] < place[pivot]) == (p > 0.5), (row, pivot, p)
        if pivot in place and p > 0.5:  # a row that beat a kept pivot is kept too
            assert row in place, (row, pivot, p)
    return info


@pytest.mark.parametrize("seed_with", [None, "score"])
def test_topk_orders_rows_by_its_pairwise_comparisons(ctx4, frame, seed_with):
    top = frame.llm.topk(
        "Which {text} is about sports?", 3, model=ctx4, seed_with=seed_with, progress=False
    )
    info = _check_tournament(top, 3, 5)
    assert "d" not in top.index and "d" in info["failed"]
    # a logged outcome is the mean of label scoring the pair in both orders
    row, pivot, p = info["comparison_log"][0]
    a, b = frame.loc[row, "text"], frame.loc[pivot, "text"]
    shown = "Which text is about sports?"
    texts = [
        _pair_text(shown, a, b, COMPARE_INSTRUCTION),
        _pair_text(shown, b, a, COMPARE_INSTRUCTION),
    ]
    scored = classify(ctx4, texts, ["A", "B"], instruction="", progress=False)
    assert abs((scored["A"][0] + scored["B"][1]) / 2 - p) < 0.02


def test_topk_on_a_dozen_rows_needs_fewer_than_all_pairs(ctx4):
    news = ll.datasets.news_sample().head(12)
    top = news.llm.topk("Which {title} is about sports?", 2, model=ctx4, progress=False)
    info = _check_tournament(top, 2, 12)
    assert info["comparisons"] <= 3 * 12  # about 2n + k log k expected; all pairs are 66
    assert info["rounds"] >= 2


# -- join --------------------------------------------------------------------------------------
HEADLINES = pd.DataFrame(
    {
        "title": [
            "Striker scores twice in cup final",
            "Central bank raises interest rates",
            "New vaccine approved for children",
            None,
        ]
    },
    index=["l1", "l2", "l3", "l4"],
)
STORIES = pd.DataFrame(
    {
        "desc": [
            "The football striker scored two goals as his team won the cup.",
            "The bank lifted rates by half a point to fight inflation.",
            "Regulators approved a vaccine for kids aged five to eleven.",
        ]
    },
    index=["r1", "r2", "r3"],
)
MATCH = "The headline '{left.title}' matches the story: {right.desc}"


def test_join_with_blocking_scores_fewer_than_all_pairs(ctx4):
    blocked = HEADLINES.llm.join(
        STORIES, MATCH, candidates=1, model=ctx4, probs=True, threshold=0.01, progress=False
    )
    info = blocked.attrs["llm"]
    assert info["all_pairs"] == 12 and info["pairs_scored"] == 3 < 12  # 3 left rows embed
    # each headline's nearest story by the 135M model's embeddings (two of three are right)
    found = set(zip(blocked["left"], blocked["right"], strict=True))
    assert {("l2", "r2"), ("l3", "r3")} <= found and len(found) == 3
    assert blocked["similarity"].between(-1, 1).all()
    assert blocked["left.title"].tolist() == HEADLINES["title"][:3].tolist()
    every = HEADLINES.llm.join(
        STORIES, MATCH, blocking=None, model=ctx4, probs=True, threshold=0.01, progress=False
    )
    assert every.attrs["llm"]["pairs_scored"] == 12 and len(every) == 9
    assert set(every.attrs["llm"]["failed"]) == {("l4", "r1"), ("l4", "r2"), ("l4", "r3")}
    # the same pair gets the same probability however the candidates were found
    both = blocked.merge(every, on=["left", "right"])
    assert np.allclose(both["prob_x"], both["prob_y"], atol=0.02)


def test_join_takes_pairs_and_checks_its_placeholders(ctx4):
    pairs = pd.DataFrame({"left": ["l2", "l1"], "right": ["r2", "r3"]})
    out = ll.sem_join(
        HEADLINES,
        STORIES,
        MATCH,
        blocking=pairs,
        model=ctx4,
        probs=True,
        threshold=0.01,
        progress=False,
    )
    assert list(zip(out["left"], out["right"], strict=True)) == [("l2", "r2"), ("l1", "r3")]
    assert out.attrs["llm"]["pairs_scored"] == 2
    with pytest.raises(PlaceholderError, match="names no side"):
        ll.sem_join(HEADLINES, STORIES, "{title} and {right.desc}", blocking=None)
    with pytest.raises(InvalidParameterError, match="Blocking names right row 'r9'"):
        ll.sem_join(
            HEADLINES, STORIES, MATCH, blocking=pd.DataFrame({"left": ["l1"], "right": ["r9"]})
        )


# -- dedup -------------------------------------------------------------------------------------
def test_dedup_clusters_are_the_components_of_the_confirmed_pairs(ctx4):
    names = pd.DataFrame(
        {"name": ["Apple Inc.", "Apple Inc.", "Microsoft Corp", None, "Banana Farm"]},
        index=list("vwxyz"),
    )
    ids = names.llm.dedup("{name}", blocking=None, threshold=0.3, model=ctx4, progress=False)
    info = ids.attrs["llm"]
    assert info["pairs_scored"] == 10 and pd.isna(ids["y"]) and ids.dtype == "Int64"
    # union-find over the confirmed pairs gives the same partition
    parent = {label: label for label in names.index if label != "y"}

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in info["pairs"]:
        parent[root(a)] = root(b)
    for a in parent:
        for b in parent:
            assert (ids[a] == ids[b]) == (root(a) == root(b)), (a, b)
    none = names.llm.dedup("{name}", blocking=None, threshold=0.99, model=ctx4, progress=False)
    assert none.dropna().tolist() == [0, 1, 2, 3] and none.attrs["llm"]["confirmed"] == 0


def test_clusters_number_components_in_order_of_first_row():
    from jupyter_localllm.tasks.operators.dedup import clusters

    ids = clusters(6, np.array([[4, 1], [1, 5], [2, 3]]), failed={0})
    assert pd.Series(ids).fillna(-1).tolist() == [-1, 0, 1, 1, 0, 0]


# -- agg ---------------------------------------------------------------------------------------
def test_agg_folds_each_group_in_levels(ctx4):
    news = ll.datasets.news_sample().head(12)
    out = news.llm.agg(
        "Name the topic of these {title}s in three words",
        by="class",
        model=ctx4,
        max_tokens=8,
        max_input_tokens=60,
        progress=False,
    )
    info = out.attrs["llm"]
    groups = list(news.groupby("class", observed=True).groups)  # the categories' order
    assert list(out.index) == groups and out.index.name == "class"
    assert all(isinstance(r, ll.Result) and r.error is None and r.strip() for r in out)
    assert len(info["levels"]) >= 2 and info["levels"][-1] < len(groups)
    assert info["levels"][0] > len(groups)  # the first level cut groups into chunks
    whole = ll.sem_agg(
        news, "Name the topic of these {title}s", model=ctx4, max_tokens=8, progress=False
    )
    assert list(whole.index) == ["all"] and whole["all"].error is None
    with pytest.raises(InvalidParameterError, match="fewer than two answers"):
        ll.sem_agg(news, "Sum up {title}", model=ctx4, max_tokens=50, max_input_tokens=60)


# -- interrupts and the cache, for every operator ----------------------------------------------
def _news(n):
    return ll.datasets.news_sample().head(n)


CALLS = {
    "filter": lambda ctx, **kw: ll.sem_filter(_news(12), "About sports: {title}", model=ctx, **kw),
    "topk": lambda ctx, **kw: ll.sem_topk(
        _news(10), "Which {title} is sports?", 2, model=ctx, **kw
    ),
    "join": lambda ctx, **kw: ll.sem_join(
        _news(4), _news(3), "{left.title} is {right.title}", blocking=None, model=ctx, **kw
    ),
    "agg": lambda ctx, **kw: ll.sem_agg(
        _news(10), "Topic of these {title}s", model=ctx, max_tokens=6, max_input_tokens=40, **kw
    ),
    "dedup": lambda ctx, **kw: ll.sem_dedup(_news(5), "{title}", blocking=None, model=ctx, **kw),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_an_interrupt_keeps_finished_work_and_a_rerun_comes_from_the_cache(ctx4, cache, name):
    call = CALLS[name]
    seen = []

    def stop_after_some(event):
        seen.append(event.done)
        if event.done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as info:
        call(ctx4, cache=True, progress=stop_after_some)
    finished = [r for r in info.value.results if r.finish_reason != "cancelled"]
    assert len(finished) >= 4 and len(finished) < len(info.value.results)
    events = []
    value = call(ctx4, cache=True, progress=lambda e: events.append(e.done))
    assert events[0] >= len(finished)  # the finished rows came back from the cache at once
    stop = threading.Event()
    stop.set()  # a run that had to compute anything would stop at once
    again = call(ctx4, cache=True, progress=False, cancel=stop)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(again, value)
    else:
        assert list(again) == list(value) and again.index.equals(value.index)
