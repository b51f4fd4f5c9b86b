"""Embeddings on an encoder: a tiny BERT-architecture GGUF (tests/tiny_gguf.py) through
ll.embed, embed_frame, search and similarity_join — llama.cpp's other embedding path
(non-causal attention, pooling from the file, a whole sequence per ubatch, learned positions).
Everything that could abort llama.cpp runs in a subprocess first."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from conftest import check_embed_run_logged, refused, run_python
from tiny_gguf import reference_embedding, write_bert

import jupyter_localllm as ll
from jupyter_localllm.errors import BatchInterrupted, InvalidParameterError
from jupyter_localllm.session.cache import get_cache

CAT, CAT2 = "The cat sat on the mat.", "A cat is sitting on a rug."
STOCK, STOCK2 = "Stock markets fell sharply today.", "Shares dropped steeply on Wall Street."
TEXTS = [CAT, CAT2, STOCK, STOCK2]
N_EMBD, N_CTX_TRAIN = 32, 128
LONG = "the cat sat on the mat " * 30  # 182 tokens with [CLS] and [SEP]: past 128


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The mean- and CLS-pooled tiny BERT files (same weights), loaded once in a subprocess
    (a crash there fails this test only) before any test loads them here."""
    folder = tmp_path_factory.mktemp("bert")
    mean = write_bert(folder / "bert-mean.gguf", pooling="mean", name="tiny-bert-mean")
    cls = write_bert(folder / "bert-cls.gguf", pooling="cls", name="tiny-bert-cls")
    done = run_python(
        f"""
        import numpy as np, jupyter_localllm as ll
        for path in ({str(mean)!r}, {str(cls)!r}):
            m = ll.model_load(path)
            v = ll.embed(m, ["the cat sat", "stock markets fell"], progress=False)
            assert v.shape == (2, {N_EMBD}) and not np.isnan(v).any(), v
            m.close()
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    return {"mean": mean, "cls": cls}


@pytest.fixture(scope="module")
def bert(files):
    m = ll.model_load(files["mean"])
    yield m
    m.close()


@pytest.fixture(scope="module")
def bert_cls(files):
    m = ll.model_load(files["cls"])
    yield m
    m.close()


@pytest.fixture(scope="module")
def ctx4(bert):
    c = ll.context_create(bert, n_seq_max=4)
    yield c
    c.close()


@pytest.fixture(scope="module")
def vectors(ctx4):
    return ll.embed(ctx4, TEXTS, progress=False)


def test_vectors_are_the_encoders_pooled_unit_rows(bert, vectors):
    assert bert.n_embd == N_EMBD and bert.metadata["general.architecture"] == "bert"
    assert vectors.shape == (4, N_EMBD) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The same numbers as BERT's forward pass in numpy (float64; ggml's GELU table and f32
    # sums differ by ~1e-4): non-causal attention, positions, mean pooling.
    expected = np.vstack([reference_embedding(bert.tokenize(t), "mean") for t in TEXTS])
    np.testing.assert_allclose(vectors, expected, atol=1e-3)
    sims = vectors @ vectors.T
    off_diagonal = sims[~np.eye(4, dtype=bool)]
    assert off_diagonal.max() < 0.99  # different texts, different vectors


def test_a_text_gets_the_same_vector_in_any_batch(bert, ctx4, vectors):
    """Alone, among other texts, in reversed slots, at n_seq_max 1, 3, 4 and 8: the same vector
    (the non-causal mask keeps sequences apart; f32 sums of other sizes move the last bits:
    4e-6 measured)."""
    with ll.context_create(bert, n_seq_max=1) as one:
        alone = np.vstack([ll.embed(one, [t], progress=False) for t in TEXTS])
    np.testing.assert_allclose(alone, vectors, atol=2e-5)
    for n_seq_max in (3, 8):
        with ll.context_create(bert, n_seq_max=n_seq_max) as ctx:
            mixed = ll.embed(ctx, [STOCK2, "Rain and sun.", *TEXTS[::-1]], progress=False)
        np.testing.assert_allclose(mixed[2:][::-1], vectors, atol=2e-5)
        np.testing.assert_allclose(mixed[0], vectors[3], atol=2e-5)


def test_pooling_comes_from_the_model_file(bert, bert_cls, vectors):
    assert (
        bert.metadata["bert.pooling_type"] == "1" and bert_cls.metadata["bert.pooling_type"] == "2"
    )
    cls = ll.embed(bert_cls, TEXTS, progress=False)
    expected = np.vstack([reference_embedding(bert_cls.tokenize(t), "cls") for t in TEXTS])
    np.testing.assert_allclose(cls, expected, atol=1e-3)  # the [CLS] token's state
    assert np.abs(cls - vectors).max() > 0.1  # same weights, another pooling
    np.testing.assert_allclose(ll.embed(bert, TEXTS, pooling="cls", progress=False), cls, atol=2e-5)
    np.testing.assert_allclose(
        ll.embed(bert_cls, TEXTS, pooling="mean", progress=False), vectors, atol=2e-5
    )
    series = ll.embed_frame(pd.DataFrame({"text": TEXTS}), model=bert_cls, progress=False)
    assert (series.attrs["llm"]["pooling"], series.attrs["llm"]["dim"]) == ("cls", N_EMBD)


def test_rows_past_the_encoders_reach_are_errors_in_place():
    """An auto context and a fixed n_ctx larger than the trained 128 positions (llama.cpp
    aborts reading past BERT's position table): the long row is a NaN row with its reason,
    the others get their vectors. A small n_batch grows to the longest row that fits (an
    encoder aborts on a row split across ubatches). In a subprocess."""
    done = run_python(
        f"""
        import sys, warnings, numpy as np, jupyter_localllm as ll
        sys.path.insert(0, "tests")
        from tiny_gguf import write_bert
        m = ll.model_load(str(write_bert(__import__("tempfile").mktemp(suffix=".gguf"))))
        fits = "x " * 126  # 128 tokens with [CLS] and [SEP]: exactly the trained length
        base = ll.embed(m, ["the cat", fits], progress=False)
        for sizes, phrase in (({{}}, "trained for, even in a larger n_ctx"),
                              ({{"n_ctx": 512}}, "trained for, even in a larger n_ctx"),
                              ({{"n_ctx": 512, "n_batch": 8, "n_seq_max": 2}}, "larger n_ctx")):
            ctx = ll.context_create(m, **sizes)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                v = ll.embed(ctx, ["the cat", {LONG!r}, fits, "x " * 127], progress=False)
            assert np.isnan(v[[1, 3]]).all() and not np.isnan(v[[0, 2]]).any(), sizes
            np.testing.assert_allclose(v[[0, 2]], base, atol=2e-5)
            message = str(caught[0].message)
            assert "2 of 4 texts" in message and "182 tokens" in message, message
            assert phrase in message, message
            ctx.close()
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_generating_with_an_encoder_is_a_project_error():
    """BERT has no KV cache and no output head: llama.cpp would write no logits (zeros, or a
    NULL pointer and an abort). generate, classify and df.llm.generate, on an auto and a
    fixed-n_ctx context: a clear error, and the model still embeds afterwards. In a
    subprocess."""
    done = run_python(
        """
        import sys, numpy as np, pandas as pd, jupyter_localllm as ll
        from jupyter_localllm.errors import InvalidParameterError
        sys.path.insert(0, "tests")
        from tiny_gguf import write_bert
        m = ll.model_load(str(write_bert(__import__("tempfile").mktemp(suffix=".gguf"))))
        for n_ctx in (None, 256):
            ctx = ll.context_create(m, n_ctx=n_ctx)
            df = pd.DataFrame({"text": ["hello", "there"]})
            for call in (lambda: ll.generate(ctx, "hello", max_tokens=3),
                         lambda: ll.classify(ctx, ["hello"], ["a", "b"]),
                         lambda: df.llm.generate("{text}", model=ctx, progress=False)):
                try:
                    call()
                except InvalidParameterError as e:
                    assert "encoder (embedding) model" in str(e) and "embed" in str(e), e
                else:
                    raise AssertionError("no error")
            assert not np.isnan(ll.embed(ctx, ["the cat"], progress=False)).any()
            ctx.close()
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_frames_search_and_join_on_an_encoder(ctx4, vectors):
    df = pd.DataFrame({"text": [CAT, STOCK, None, CAT2]}, index=["a", "b", "c", "d"])
    series = df.llm.embed(model=ctx4, progress=False)
    np.testing.assert_allclose(np.vstack(series[["a", "b", "d"]]), vectors[[0, 2, 1]], atol=2e-5)
    assert np.isnan(series["c"]).all() and list(series.attrs["llm"]["row_errors"]) == ["c"]
    found = df.llm.search(CAT, 2, model=ctx4, progress=False)
    assert found.index[0] == "a" and found["similarity"].iloc[0] > 0.9999
    assert found["similarity"].is_monotonic_decreasing and len(found) == 2
    pairs = ll.similarity_join(df, df, k=1, model=ctx4, progress=False)
    assert list(pairs["left"]) == list(pairs["right"]) == ["a", "b", "d"]


def test_cache_and_run_log_as_for_the_default_model(ctx4, cache, vectors):
    first = ll.embed(ctx4, TEXTS, cache=True, progress=False)
    np.testing.assert_allclose(first, vectors, atol=2e-5)
    assert len(get_cache()) == 4
    stop = threading.Event()
    stop.set()  # the engine would stop at once: only the cache can answer
    np.testing.assert_array_equal(
        ll.embed(ctx4, TEXTS, cache=True, progress=False, cancel=stop), first
    )
    with pytest.raises(BatchInterrupted):
        ll.embed(ctx4, [*TEXTS, "Something new."], cache=True, progress=False, cancel=stop)
    cls = ll.embed(ctx4, TEXTS, pooling="cls", cache=True, progress=False)
    assert np.abs(cls - first).max() > 0.1  # the pooling is part of the key
    check_embed_run_logged(ctx4, N_EMBD)


def test_bad_pooling_is_refused_before_the_encoder_runs(bert):
    refused(lambda: ll.embed(bert, [CAT], pooling="max"), InvalidParameterError, "pooling")
