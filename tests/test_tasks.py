"""classify (label scoring) and extract (schema-constrained JSON) on the real default model."""

from __future__ import annotations

import math

import jsonschema
import numpy as np
import pandas as pd
import pytest
from conftest import SENTIMENT, TEXTS

import jupyter_localllm as ll
from jupyter_localllm.errors import GrammarError, InvalidParameterError


@pytest.fixture(scope="module")
def cctx(model):
    c = ll.context_create(model, n_seq_max=4)
    yield c
    c.close()


def _label_logprob(model, prompt: str, label: str) -> float:
    """Reference: sum of token log-probabilities of ``label`` after ``prompt``, one token at
    a time through the plain single-row engine (logits read back by generating 1 token)."""
    from jupyter_localllm.engine.llama import Batch, Context

    toks = model.tokenize(prompt)
    cont = model.tokenize(label, add_special=False)
    ctx = Context(model, n_ctx=512, n_seq_max=1)
    batch = Batch(512, 1, model.n_vocab)
    total, pos = 0.0, 0
    seq = toks
    for tok in cont:
        batch.clear()
        batch.add(seq, pos, 0, want_last_logits=True)
        ctx.decode(batch)
        lg = ctx.logits(batch.n_tokens - 1).astype(np.float64)
        total += lg[tok] - (lg.max() + math.log(np.exp(lg - lg.max()).sum()))
        pos += len(seq)
        seq = [tok]
    ctx.close()
    return total


def test_classify_returns_valid_labels_and_probabilities(cctx):
    out = ll.classify(cctx, TEXTS, SENTIMENT, progress=False)
    assert list(out.columns) == ["label", "positive", "negative", "error"]
    assert list(out.index) == [0, 1, 2, 3]
    assert set(out.label) <= set(SENTIMENT)
    np.testing.assert_allclose(out[SENTIMENT].sum(axis=1), 1.0)
    # SmolLM2-135M leans to "positive" zero-shot, but ranks the negative texts lower
    assert out.positive[0] > out.positive[1] and out.positive[2] > out.positive[3]
    assert out.label[0] == out.label[2] == "positive"
    assert out.error.isna().all()


def test_label_scores_equal_token_by_token_reference(model, cctx):
    labels = ["Sci/Tech", "Sports", "World"]  # Sci/Tech has several tokens
    assert len(model.tokenize("Sci/Tech", add_special=False)) > 1
    text = "NASA launches a new telescope to study distant galaxies."
    out = ll.classify(cctx, [text, "The home team won the cup final."], labels, progress=False)
    prompt = ll.apply_chat_template(
        model,
        [
            {
                "role": "user",
                "content": "Classify the text into exactly one of these categories: "
                "Sci/Tech, Sports, World. Answer with the category name only.\n\n" + text,
            }
        ],
    )
    ref = np.array([_label_logprob(model, prompt, lab) for lab in labels])
    np.testing.assert_allclose(out.attrs["logprobs"][0], ref, atol=0.05)
    assert out.label[1] == "Sports"


def test_classify_bad_rows_in_place_and_examples(cctx):
    texts = [TEXTS[0], None, "", TEXTS[1]]
    shots = [("Great product, very happy.", "positive"), ("Awful, broke in a day.", "negative")]
    out = ll.classify(cctx, texts, SENTIMENT, examples=shots, progress=False)
    assert out.positive[0] > out.positive[3]  # the answered rows keep their order and sense
    assert out.error[1] == "the text must be a string, got NoneType"
    assert out.error[2] == "the text is empty; give some text" and pd.isna(out.label[2])
    assert np.isnan(out.loc[1, "positive"])
    with pytest.raises(InvalidParameterError, match="Example label 'meh'"):
        ll.classify(cctx, TEXTS, SENTIMENT, examples=[("ok", "meh")])
    with pytest.raises(InvalidParameterError, match="at least two distinct labels"):
        ll.classify(cctx, TEXTS, ["only"])


def test_classify_plain_format_for_base_models(cctx):
    out = ll.classify(cctx, TEXTS[:2], SENTIMENT, format="plain", progress=False)
    assert out.error.isna().all() and set(out.label) <= set(SENTIMENT)


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "country": {"type": "string"},
    },
    "required": ["city", "country"],
}


def test_extract_twenty_rows_validate_or_error_in_place(cctx):
    places = [
        ("Paris", "France"),
        ("Rome", "Italy"),
        ("Tokyo", "Japan"),
        ("Lima", "Peru"),
        ("Oslo", "Norway"),
        ("Cairo", "Egypt"),
        ("Madrid", "Spain"),
        ("Berlin", "Germany"),
        ("Lisbon", "Portugal"),
        ("Dublin", "Ireland"),
    ] * 2
    texts = [f"I spent last summer in {c}, the capital of {k}." for c, k in places]
    out = ll.extract(cctx, texts, SCHEMA, max_tokens=40, progress=False)
    assert len(out) == 20
    for value in out:
        if isinstance(value, dict):
            jsonschema.validate(value, SCHEMA)
        else:
            assert value.startswith("Error: ") and value.error
    assert sum(isinstance(v, dict) for v in out) >= 15
    assert out[0]["city"] == "Paris"


def test_extract_pydantic_and_bad_schema(cctx):
    pydantic = pytest.importorskip("pydantic")

    class Place(pydantic.BaseModel):
        city: str

    (value,) = ll.extract(cctx, ["We met in Rome."], Place, max_tokens=20, progress=False)
    assert isinstance(value, dict) and set(value) == {"city"}
    with pytest.raises(GrammarError):
        ll.extract(cctx, ["x"], {"type": "object", "properties": {"a": {"$ref": "#/nope"}}})
