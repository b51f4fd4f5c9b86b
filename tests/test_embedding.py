"""Embeddings on the real default model: ll.embed, embed_frame, search, similarity_join and the
"embed" request kind of the pipeline (errors in place, cache, interrupts, run log)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import check_embed_run_logged, refused, run_python

import jupyter_localllm as ll
from jupyter_localllm.engine.embedding import pack_rows, resolve_pooling
from jupyter_localllm.errors import (
    BatchInterrupted,
    DecodeError,
    InvalidParameterError,
    PlaceholderError,
    PromptError,
)
from jupyter_localllm.session.cache import get_cache
from jupyter_localllm.tasks.embedding import embedding_matrix, top_pairs

CAT, CAT2 = "The cat sat on the mat.", "A cat is sitting on a rug."
STOCK, STOCK2 = "Stock markets fell sharply today.", "Shares dropped steeply on Wall Street."
TEXTS = [CAT, CAT2, STOCK, STOCK2]


@pytest.fixture(scope="module")
def vectors(ctx4):
    return ll.embed(ctx4, TEXTS, progress=False)


def test_vectors_are_unit_rows_and_paraphrases_are_closest(vectors, model):
    assert vectors.shape == (4, model.n_embd) == (4, 576)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert (sims.argmax(axis=1) == np.arange(4)).all()  # each text is most similar to itself
    # Measured: cat/cat 0.93 vs cat/stock 0.76; stock/stock 0.92 vs stock/cat 0.77.
    assert sims[0, 1] > sims[0, 2] + 0.1 and sims[0, 1] > sims[0, 3] + 0.1
    assert sims[2, 3] > sims[2, 0] + 0.1 and sims[2, 3] > sims[2, 1] + 0.1
    assert 0.88 < sims[0, 1] < 0.98 and 0.6 < sims[0, 2] < 0.85


def test_a_text_alone_gets_the_vector_it_gets_in_a_batch(ctx4, ctx2, vectors):
    # llama.cpp's CPU kernels may differ by batch size in the last bits (0.003 at most on 96
    # news texts, n_seq_max 1 vs 16): close, not bit-identical.
    alone = np.vstack([ll.embed(ctx4, [t], progress=False) for t in TEXTS])
    np.testing.assert_allclose(alone, vectors, atol=5e-3)
    assert ((alone * vectors).sum(axis=1) > 0.9999).all()
    other_slots = ll.embed(ctx2, list(reversed(TEXTS)), progress=False)[::-1]
    np.testing.assert_allclose(other_slots, vectors, atol=5e-3)


def test_pooling_and_normalize(ctx4, vectors):
    raw = ll.embed(ctx4, TEXTS, normalize=False, progress=False)
    norms = np.linalg.norm(raw, axis=1)
    assert (norms > 2).all()  # the model's own scale, not unit length
    np.testing.assert_allclose(raw / norms[:, None], vectors, atol=1e-5)
    last = ll.embed(ctx4, TEXTS, pooling="last", progress=False)
    np.testing.assert_allclose(np.linalg.norm(last, axis=1), 1.0, atol=1e-5)
    assert np.abs(last - vectors).max() > 0.05  # a different pooling, a different vector
    explicit = ll.embed(ctx4, TEXTS, pooling="mean", progress=False)
    np.testing.assert_allclose(explicit, vectors, atol=2e-5)  # the default model pools mean


def test_bad_rows_are_nan_rows_in_place(ctx4, vectors):
    texts = [CAT, "", 5, "   ", STOCK]
    with pytest.warns(RuntimeWarning, match=r"3 of 5 texts .*row 1: the text is empty"):
        out = ll.embed(ctx4, texts, progress=False)
    assert np.isnan(out[[1, 2, 3]]).all()
    np.testing.assert_allclose(out[[0, 4]], vectors[[0, 2]], atol=2e-5)
    refused(lambda: ll.embed(ctx4, texts, on_error="raise", progress=False), PromptError, "Text 1")


def test_a_text_longer_than_the_context_is_an_error_row(model):
    small = ll.context_create(model, n_ctx=64, n_seq_max=2)
    with small, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ll.embed(small, [CAT, "word " * 200], progress=False)
    assert not np.isnan(out[0]).any() and np.isnan(out[1]).all()
    assert any("does not fit the context of 64 tokens" in str(w.message) for w in caught)


def test_a_rerun_is_served_from_the_cache(ctx4, cache, vectors):
    first = ll.embed(ctx4, TEXTS, cache=True, progress=False)
    assert len(get_cache()) == 4
    stop = threading.Event()
    stop.set()  # the engine would stop at once: only the cache can answer
    again = ll.embed(ctx4, TEXTS, cache=True, progress=False, cancel=stop)
    np.testing.assert_array_equal(again, first)
    with pytest.raises(BatchInterrupted):  # a text not in the cache needs the engine
        ll.embed(ctx4, [*TEXTS, "Something new."], cache=True, progress=False, cancel=stop)
    other = ll.embed(ctx4, TEXTS, pooling="last", cache=True, progress=False)
    assert np.abs(other - first).max() > 0.05  # the pooling is part of the key


def test_an_interrupt_keeps_the_finished_rows(ctx2, vectors):
    stop = threading.Event()
    texts = TEXTS * 3

    def progress(event):
        if event.done >= 2:
            stop.set()

    with pytest.raises(BatchInterrupted) as info:
        ll.embed(ctx2, texts, progress=progress, cancel=stop)
    results = info.value.results
    done = [r.ok for r in results]
    assert done[:2] == [True, True] and not any(done[2:])  # one decode of 2 rows finished
    assert results[2].finish_reason == "cancelled"
    kept = embedding_matrix(results)
    np.testing.assert_allclose(kept[:2], vectors[:2], atol=2e-5)
    assert np.isnan(kept[2:]).all()


def test_embed_frame_aligns_vectors_to_the_index(ctx4, vectors):
    df = pd.DataFrame({"title": ["Pets", "Pets", "Money"], "text": [CAT, CAT2, None]})
    df.index = ["a", "b", "c"]
    series = ll.embed_frame(df, "{text}", model=ctx4, progress=False)
    assert list(series.index) == ["a", "b", "c"] and series.name == "embedding"
    np.testing.assert_allclose(np.vstack(series[["a", "b"]]), vectors[:2], atol=2e-5)
    assert np.isnan(series["c"]).all()
    info = series.attrs["llm"]
    assert info["row_errors"] == {"c": "column 'text' is empty (missing value) in this row"}
    assert (info["pooling"], info["dim"], info["errors"]) == ("mean", 576, 1)
    templated = ll.embed_frame(df.iloc[:1], "{title}: {text}", model=ctx4, progress=False)
    assert np.abs(templated["a"] - vectors[0]).max() > 0.01  # the rendered text is embedded


def test_search_returns_the_k_most_similar_rows(ctx4):
    df = pd.DataFrame({"text": [CAT, STOCK, None, CAT2, STOCK2]}, index=[10, 11, 12, 13, 14])
    found = ll.search(df, "Stock prices dropped on the market.", 2, model=ctx4, progress=False)
    assert list(found.index) == [11, 14]
    assert list(found.columns) == ["text", "similarity"]
    assert found["similarity"].is_monotonic_decreasing and found["similarity"].iloc[0] > 0.85
    everything = ll.search(df, "A cat on a rug.", 10, model=ctx4, progress=False)
    assert list(everything.index[:2]) == [13, 10] and len(everything) == 4  # the empty row left out


def test_similarity_join_blocks_pairs(ctx4):
    left = pd.DataFrame({"text": [CAT, STOCK]}, index=["l0", "l1"])
    right = pd.DataFrame({"text": [STOCK2, "", CAT2]}, index=["r0", "r1", "r2"])
    pairs = ll.similarity_join(left, right, k=1, model=ctx4, progress=False)
    assert list(zip(pairs["left"], pairs["right"], strict=True)) == [("l0", "r2"), ("l1", "r0")]
    assert (pairs["similarity"] > 0.85).all()
    assert pairs.attrs["llm"]["pairs_compared"] == 6 and pairs.attrs["llm"]["right_errors"] == 1
    close = ll.similarity_join(left, right, threshold=0.85, model=ctx4, progress=False)
    assert sorted(zip(close["left"], close["right"], strict=True)) == [("l0", "r2"), ("l1", "r0")]
    both = ll.similarity_join(left, right, k=2, threshold=0.0, model=ctx4, progress=False)
    assert len(both) == 4 and list(both["right"][:2]) == ["r2", "r0"]


def test_top_pairs_on_matrices():
    a = np.eye(3, dtype=np.float32)
    a[2] = np.nan
    i, j, s = top_pairs(a, np.eye(3, dtype=np.float32), k=2)
    assert list(zip(i, j, strict=True)) == [(0, 0), (0, 1), (1, 1), (1, 0)] and s[0] == 1
    i, j, _ = top_pairs(np.eye(3), np.eye(3), threshold=0.5, exclude_diagonal=True)
    assert len(i) == 0


def test_pooling_from_the_model_file_and_packing():
    assert resolve_pooling({"general.architecture": "llama"}, None) == "mean"
    bert = {"general.architecture": "bert", "bert.pooling_type": "2"}
    assert resolve_pooling(bert, None) == "cls" and resolve_pooling(bert, "last") == "last"
    assert resolve_pooling({"general.architecture": "x", "x.pooling_type": "4"}, None) == "mean"
    lengths = {0: 5, 1: 5, 2: 8, 3: 1, 4: 1}
    assert pack_rows(lengths, 2, 10) == [[0, 1], [2, 3], [4]]
    assert pack_rows(lengths, 8, 10) == [[0, 1], [2, 3, 4]]


def test_bad_parameters_are_refused(ctx4):
    df = pd.DataFrame({"text": [CAT]})
    refused(lambda: ll.embed(ctx4, [CAT], pooling="max"), InvalidParameterError, "pooling")
    refused(lambda: ll.embed(ctx4, [CAT], normalize="yes"), InvalidParameterError, "normalize")
    refused(lambda: ll.embed(ctx4, [CAT], n_seq_max=0), InvalidParameterError, "n_seq_max")
    refused(lambda: ll.embed(ctx4, [CAT], on_error="skip"), InvalidParameterError, "on_error")
    refused(lambda: ll.embed(ctx4, CAT), InvalidParameterError, "texts")
    refused(lambda: ll.search(df, CAT, 0, model=ctx4), InvalidParameterError, "k must")
    refused(lambda: ll.search(df, "  ", 1, model=ctx4), InvalidParameterError, "query")
    refused(lambda: ll.embed_frame(df, "{body}", model=ctx4), PlaceholderError, "body")
    refused(lambda: ll.similarity_join(df, df, model=ctx4), InvalidParameterError, "k .*threshold")


def test_the_backend_checks_before_llama_cpp(model):
    sizes = {"n_ctx": 256, "n_seq_max": 2, "n_batch": 256, "n_threads": 1}
    bad = lambda: model.new_embedding_context(**sizes, pooling="rank")  # noqa: E731
    refused(bad, InvalidParameterError, "pooling")
    with model.new_embedding_context(**sizes, pooling="mean") as ctx:
        assert (ctx.n_embd, ctx.pooling, ctx.n_batch) == (576, "mean", 256)
        refused(lambda: ctx.seq_embedding(2), InvalidParameterError, "out of range")
        refused(lambda: ctx.seq_embedding(0), DecodeError, "No pooled embedding")
        batch = model.new_batch(300, 2)
        batch.add([1] * 300, 0, 0, want_last_logits=True, want_all_logits=True)
        refused(lambda: ctx.decode(batch), InvalidParameterError, "exceeds this context")


def test_the_run_is_logged(ctx4, cache):
    check_embed_run_logged(ctx4, 576)


def test_any_number_of_rows_and_slots_embeds_without_aborting():
    """llama.cpp aborts (ggml_can_mul_mat in its pooling graph) when the number of sequences
    does not divide the decode size; 3 rows on 8 slots was such a case. In a subprocess."""
    done = run_python(
        """
        import numpy as np, jupyter_localllm as ll
        m = ll.model_load("default")
        texts = [f"Sentence {i} about topic {i % 5}." * (1 + i % 3) for i in range(12)]
        for n in (3, 5, 7, 11):
            ctx = ll.context_create(m, n_seq_max=n)
            for k in (1, 2, 3, 5, 7, 12):
                v = ll.embed(ctx, texts[:k], progress=False, cache=False)
                assert v.shape == (k, 576) and not np.isnan(v).any(), (n, k)
            ctx.close()
        print("ok")
        """,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
