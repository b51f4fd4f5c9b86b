"""The operators' other front doors: ``df.llm.embed``/``search``, ``ddf.llm.filter``/``embed``
(each partition where Dask runs it) and a filter through ``classify``'s cascade, on the real
default model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import run_python

import jupyter_localllm as ll
import jupyter_localllm.notebook.accessor  # registers df.llm
from jupyter_localllm.errors import InvalidParameterError

SPORTS = "The text is about sports: {text}"
FRAME = pd.DataFrame(
    {
        "text": [
            "The striker scored twice as United won the cup final.",
            "Parliament passed the new budget after a long debate.",
            None,
            "The tennis champion lost in the first round.",
            "The central bank raised interest rates again.",
            "The marathon runner broke the world record.",
        ]
    },
    index=[10, 11, 12, 13, 14, 15],
)


def test_embed_and_search_on_the_accessor(ctx4):
    frame = FRAME.copy()
    vectors = frame.llm.embed("{text}", model=ctx4, progress=False)
    assert vectors.index.equals(frame.index) and np.isnan(vectors[12]).all()
    assert np.isclose(np.linalg.norm(vectors[10]), 1.0, atol=1e-4)
    assert frame.attrs["llm"]["task"] == "embed"
    found = frame.dropna().llm.search("The football team won the cup", 2, model=ctx4)
    assert len(found) == 2 and 10 in found.index
    assert found["similarity"].is_monotonic_decreasing


def test_dask_filter_and_embed_match_the_pandas_ones(ctx4):
    dd = pytest.importorskip("dask.dataframe")
    import jupyter_localllm.notebook.dask_accessor  # noqa: F401  (registers ddf.llm)

    ddf = dd.from_pandas(FRAME, npartitions=2)
    lazy = ddf.llm.filter(SPORTS, probs=True, return_all=True)
    every = lazy.compute(scheduler="sync")
    here = FRAME.llm.filter(SPORTS, model=ctx4, probs=True, return_all=True, progress=False)
    assert every.index.equals(FRAME.index) and list(every.columns) == list(here.columns)
    assert pd.isna(every.loc[12, "passed"]) and "empty" in every.loc[12, "error"]
    assert np.allclose(every["prob"].dropna(), here["prob"].dropna(), atol=0.02)
    kept = ddf.llm.filter(SPORTS, threshold=0.01).compute(scheduler="sync")
    assert list(kept.index) == [10, 11, 13, 14, 15]  # every row that could run
    with pytest.raises(InvalidParameterError, match="cannot run a cascade"):
        ddf.llm.filter(SPORTS, proxy="default")


def test_dask_embed_gives_each_row_its_vector():
    pytest.importorskip("dask.dataframe")
    # in a subprocess: an embedding run that trips llama.cpp must fail this test, not pytest
    done = run_python(
        """
        import dask.dataframe as dd
        import pandas as pd
        import jupyter_localllm.notebook.dask_accessor
        frame = pd.DataFrame({"text": ["Cup final tonight.", None, "Rates rise.", "Rain."]})
        vectors = dd.from_pandas(frame, npartitions=2).llm.embed("{text}").compute()
        print(vectors.index.tolist(), [len(v) for v in vectors], vectors[1][:2].tolist())
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 1, 2, 3] [576, 576, 576, 576] [nan, nan]"


def test_filter_forwards_a_cascade_to_classify(ctx4):
    news = ll.datasets.news_sample().head(12)
    out = news.llm.filter(
        "This headline is about sports: {title}",
        model=ctx4,
        proxy=ctx4,
        target_precision=0.9,
        label_budget=6,
        probs=True,
        return_all=True,
        progress=False,
    )
    cascade = out.attrs["llm"]["cascade"]
    assert cascade["rows"] == 12 and cascade["oracle_rows"] + cascade["proxy_rows"] == 12
    assert (out["passed"] == (out["prob"] >= 0.5)).all()


def test_the_accessors_classify_runs_a_cascade(ctx4):
    frame = FRAME.copy()
    labels = ["sports", "politics", "economy"]
    plain = frame.llm.classify("{text}", labels, model=ctx4, progress=False)
    got = frame.llm.classify(
        "{text}",
        labels,
        model=ctx4,
        proxy=ctx4,  # the oracle as its own proxy: every answer is the oracle's
        target_accuracy=0.6,  # 5 rows, 3 sampled: provable when the proxy never errs
        label_budget=3,
        out="topic",
        progress=False,
    )
    assert list(got.index) == list(FRAME.index)
    assert got.isna().tolist() == [False, False, True, False, False, False]  # the None row
    assert got.equals(plain)
    assert frame["topic"].isna().tolist() == got.isna().tolist()
    assert (frame["topic"].dropna() == got.dropna()).all()
    cascade = frame.attrs["llm"]["cascade"]
    assert cascade["rows"] == 6 and cascade["sampled"] == 3
    assert cascade["oracle_rows"] + cascade["proxy_rows"] == 5  # the None row is an error
    assert cascade["proxy_rows"] == 2  # a proxy that is the oracle is never wrong
    events = []
    FRAME.llm.classify(
        "{text}", labels, model=ctx4, proxy=ctx4, target_accuracy=0.6, label_budget=3,
        progress=events.append,
    )  # fmt: skip
    # the plan foresaw 2 x 6 rows; it ran 6 + 3 sampled + the row the proxy could not score
    assert events[-1].done == events[-1].total == 10
    assert all(e.done <= e.total for e in events)
    probs = FRAME.llm.classify(
        "{text}", labels, model=ctx4, proxy=ctx4, target_accuracy=0.9, ranking="confidence",
        probs=True, progress=False,
    )  # fmt: skip
    assert list(probs.columns) == ["label", *labels, "error"]
    assert probs.attrs["llm"]["cascade"]["ranking"] == "confidence"
    assert probs["error"].notna().tolist() == [False, False, True, False, False, False]


def test_the_accessors_cascade_is_refused_where_it_cannot_run(ctx4):
    with pytest.raises(InvalidParameterError, match="foreground"):
        FRAME.llm.classify("{text}", ["a", "b"], model=ctx4, proxy=ctx4, background=True)
    with pytest.raises(InvalidParameterError, match="proxy="):
        FRAME.llm.classify("{text}", ["a", "b"], model=ctx4, target_accuracy=0.9)
    with pytest.raises(InvalidParameterError, match="target_accuracy"):
        FRAME.llm.classify("{text}", ["a", "b"], model=ctx4, proxy=ctx4, target_accuracy=2)
    with pytest.raises(InvalidParameterError, match="ranking must be one of"):
        FRAME.llm.classify(
            "{text}", ["a", "b"], model=ctx4, proxy=ctx4, target_accuracy=0.9, ranking="top"
        )


def test_an_interrupted_accessor_cascade_keeps_the_answered_rows(ctx4):
    from jupyter_localllm.errors import BatchInterrupted

    news = ll.datasets.news_sample().head(24).copy()
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    plain = news.llm.classify("{title}", labels, model=ctx4, progress=False)

    def stop_in_the_sample(event):
        if event.done > 24:  # the proxy has scored every row; the oracle's sample is running
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted):
        news.llm.classify(
            "{title}",
            labels,
            model=ctx4,
            proxy=ctx4,
            target_accuracy=0.6,
            label_budget=12,
            out="topic",
            progress=stop_in_the_sample,
        )
    done = news["topic"].dropna()
    assert 1 <= len(done) < 12  # some of the sample, nothing the proxy would keep later
    assert (done == plain[done.index]).all()
