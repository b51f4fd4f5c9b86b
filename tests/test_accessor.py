"""The ``df.llm`` / ``s.llm`` accessors on the real default model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import wait_for

import jupyter_localllm as ll
import jupyter_localllm.notebook.accessor  # registers the accessors
from jupyter_localllm import datasets
from jupyter_localllm.errors import BatchInterrupted, InvalidParameterError
from jupyter_localllm.tasks.rows import frame_rows


@pytest.fixture(scope="module")
def ctx8(model):
    c = ll.context_create(model, n_seq_max=8)
    yield c
    c.close()


@pytest.fixture(scope="module")
def news():
    return datasets.news_sample()


def test_200_rows_with_bad_cells_errors_in_place(ctx8, news):
    titles = pd.concat([news.title, news.title[:80]], ignore_index=True).astype(object)
    bad = {7: np.nan, 23: None, 51: 17, 88: np.nan, 99: None, 120: 3.5, 140: pd.NA, 161: 0,
           177: None, 199: np.nan}  # fmt: skip
    for i, v in bad.items():
        titles[i] = v
    index = pd.Index([f"row{i:03d}" for i in range(200)][::-1], name="id")
    df = pd.DataFrame({"title": titles.to_numpy(dtype=object)}, index=index)
    out = df.llm.generate(
        "Give a one-word topic for: {title}", model=ctx8, max_tokens=4, out="topic"
    )
    assert out.index.equals(df.index) and df["topic"].index.equals(df.index)
    errors = [v for v in out if v.error is not None]
    answers = [v for v in out if v.error is None]
    assert len(errors) == 10 and len(answers) == 190
    bad_ids = {index[i] for i in bad}
    assert {i for i, v in out.items() if v.error is not None} == bad_ids
    assert all(v.startswith("Error: column 'title'") for v in errors)
    assert "holds int 17" in out[index[51]] and "empty" in out[index[7]]
    assert all(v.strip() and 0 < v.n_tokens <= 4 for v in answers)
    assert list(df["topic"]) == list(out)
    info = df.attrs["llm"]
    assert info["rows"] == 200 and info["errors"] == 10 and info["task"] == "generate"
    assert info["generated_tokens"] == sum(v.n_tokens for v in answers)
    assert len(info["hashes"]["input_sha256"]) == 64


def test_same_rows_as_generate_parallel(ctx8, news):
    df = news.head(6)
    out = df.llm.generate("{title}", model=ctx8, max_tokens=12, system_prompt="Be brief.")
    prompts = [
        ll.apply_chat_template(
            ctx8.model,
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": t}],
        )
        for t in df.title
    ]
    direct = ll.generate_parallel(ctx8, prompts, max_tokens=12, clean=True, progress=False)
    assert list(out) == [str(r) for r in direct]


def test_placeholders_are_checked(ctx8, news):
    with pytest.raises(InvalidParameterError, match=r"Column 'body' not found; columns are "):
        news.llm.generate("{title}: {body}", model=ctx8)
    with pytest.raises(InvalidParameterError, match="unmatched braces"):
        news.llm.generate("{title", model=ctx8)
    with pytest.raises(InvalidParameterError, match="empty"):
        news.llm.generate("{} {title}", model=ctx8)


def test_numbers_need_an_explicit_format(ctx8):
    df = pd.DataFrame({"n": [3, 12], "word": ["cat", "dog"]})
    out = df.llm.generate("Write {n!s} times the word {word}.", model=ctx8, max_tokens=3)
    assert all(v.error is None for v in out)
    out = df.llm.generate("Write {n} times the word {word}.", model=ctx8, max_tokens=3)
    assert all("write {n!s}" in v for v in out)


def test_braces_in_cells_are_inserted_once(ctx8):
    df = pd.DataFrame({"code": ["x = {'a': 1}"], "other": ["SHOULD NOT APPEAR"]})
    rows = frame_rows(df, "Explain {code} {{ok}}")
    assert rows.texts == ["Explain x = {'a': 1} {ok}"] and not rows.errors


def test_classify_accessor(ctx8, news):
    df = news.head(12).copy()
    df.loc[df.index[3], "title"] = None
    labels = list(datasets.NEWS_CLASSES)
    probs = df.llm.classify("{title}", labels, model=ctx8, probs=True, out="pred")
    assert list(probs.columns) == ["label", *labels, "error"]
    assert probs.index.equals(df.index)
    ok = probs.drop(index=df.index[3])
    assert np.allclose(ok[labels].sum(axis=1), 1.0)
    assert set(ok.label) <= set(labels)
    assert "empty" in probs.loc[df.index[3], "error"]
    assert df["pred"].isna().sum() == 1 and (df["pred"].dropna() == ok.label).all()
    direct = ll.classify(ctx8, list(news.title.head(12).drop(index=news.index[3])), labels)
    assert list(ok.label) == list(direct.label)


def test_extract_accessor(ctx8):
    df = pd.DataFrame(
        {"text": ["Anna is 31 and lives in Oslo.", None, "Ben, 45, from Lyon."]},
        index=["a", "b", "c"],
    )
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    table = df.llm.extract("{text}", schema, model=ctx8, max_tokens=40)
    assert list(table.columns) == ["name", "age", "error"] and list(table.index) == list("abc")
    assert "empty" in table.loc["b", "error"]
    for i in ("a", "c"):
        if table.loc[i, "error"] is None:
            assert isinstance(table.loc[i, "name"], str) and table.loc[i, "age"] >= 0


def test_series_accessor(ctx8):
    s = pd.Series(["Paris", None, "Rome"], index=[5, 6, 7], name="city")
    out = s.llm.generate("Which country is {city} in? One word.", model=ctx8, max_tokens=6)
    assert out.index.equals(s.index) and out[6].startswith("Error: column 'city' is empty")
    assert "fr" in out[5].lower()  # France, French
    same = s.llm.generate("Which country is {text} in? One word.", model=ctx8, max_tokens=6)
    assert [same[5], same[7]] == [out[5], out[7]]
    labels = s.llm.classify(["yes", "no"], model=ctx8)
    assert labels.index.equals(s.index) and labels.isna().sum() == 1


def test_interrupt_keeps_finished_rows_in_out(ctx8, news):
    df = news.head(24).copy()
    seen = []

    def stop_after_some(event):
        seen.append(event.done)
        if event.done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted):
        df.llm.generate("{title}", model=ctx8, max_tokens=6, out="x", progress=stop_after_some)
    done = df["x"].dropna()
    assert 8 <= len(done) < 24
    assert all(v.error is None for v in done)


def test_default_model_is_loaded_from_settings(monkeypatch):
    from jupyter_localllm.session.manager import ModelManager

    fresh = ModelManager()
    monkeypatch.setattr("jupyter_localllm.session.manager._manager", fresh)
    df = pd.DataFrame({"q": ["Say hi."]})
    out = df.llm.generate("{q}", max_tokens=3, progress=False)
    assert fresh.default_alias == "default" and out[0].error is None
    fresh.unload_all()


def test_background_generate_writes_rows_and_cancels(ctx8, news):
    df = news.head(40).copy()
    job = df.llm.generate("{title}", model=ctx8, max_tokens=8, out="x", background=True)
    wait_for(lambda: len(job.partial()) >= 4)
    job.cancel()
    with pytest.raises(BatchInterrupted):
        job.result(timeout=60)
    kept = df["x"].dropna()
    assert 4 <= len(kept) < 40
    assert {df.index.get_loc(i) for i in kept.index} == set(job.partial())
    full = df.head(6).llm.generate("{title}", model=ctx8, max_tokens=8, background=True)
    series = full.result(timeout=120)
    assert list(series) == list(df.head(6).llm.generate("{title}", model=ctx8, max_tokens=8))
