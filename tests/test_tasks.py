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
    # Without flash attention a prompt gives the same logits however it is split into
    # decodes, so scores can be checked against a token-by-token reference to 0.05 nats.
    c = ll.context_create(model, n_seq_max=4, flash_attn=False)
    yield c
    c.close()


def _logprobs_after(model, prompt: str, cont: list[int]) -> list[np.ndarray]:
    """Reference: the log-softmax after ``prompt`` and after each token of ``cont``, one
    token at a time through a plain single-sequence context."""
    from jupyter_localllm.engine.llama import Batch, Context

    ctx = Context(model, n_ctx=512, n_seq_max=1)
    batch = Batch(512, 1, model.n_vocab)
    out, pos, seq = [], 0, model.tokenize(prompt)
    for tok in [*cont, None]:
        batch.clear()
        batch.add(seq, pos, 0, want_last_logits=True)
        ctx.decode(batch)
        lg = ctx.logits(batch.n_tokens - 1).astype(np.float64)
        out.append(lg - (lg.max() + math.log(np.exp(lg - lg.max()).sum())))
        pos += len(seq)
        seq = [tok]
    ctx.close()
    return out


def _default_prompt(model, labels, text):
    return ll.apply_chat_template(
        model,
        [
            {
                "role": "user",
                "content": "Classify the text into exactly one of these categories: "
                f"{', '.join(labels)}. Answer with the category name only.\n\n" + text,
            }
        ],
    )


def test_label_scores_equal_token_by_token_reference(model, cctx):
    labels = ["Sci/Tech", "Sports", "World"]  # Sci/Tech has several tokens
    toks = [model.tokenize(lab, add_special=False) for lab in labels]
    assert len(toks[0]) > 1 and len({t[0] for t in toks}) == 3
    text = "NASA launches a new telescope to study distant galaxies."
    texts = [text, "The home team won the cup final."]
    prompt = _default_prompt(model, labels, text)
    ref = [_logprobs_after(model, prompt, t) for t in toks]
    # joint: the sum of every token's log-probability
    joint = ll.classify(cctx, texts, labels, scoring="joint", progress=False)
    joint_steps = cctx.last_run.steps
    want = [sum(lp[d][tok] for d, tok in enumerate(t)) for lp, t in zip(ref, toks, strict=True)]
    np.testing.assert_allclose(joint.attrs["logprobs"][0], want, atol=0.05)
    # constrained: first tokens differ, so only the first token counts, renormalised over
    # the labels' first tokens; later tokens are not decoded at all
    out = ll.classify(cctx, texts, labels, progress=False)
    first = ref[0][0][[t[0] for t in toks]]
    np.testing.assert_allclose(
        out.attrs["logprobs"][0], first - np.logaddexp.reduce(first), atol=0.05
    )
    assert cctx.last_run.steps < joint_steps
    assert out.label[1] == joint.label[1] == "Sports"


def test_constrained_scoring_is_a_distribution_over_labels(model, cctx):
    """Labels sharing a first token, and one label that is a token-prefix of another: the
    probabilities that label-constrained decoding gives sum to 1 before any normalising."""
    labels = ["good", "good enough", "very bad", "very good"]
    toks = [model.tokenize(lab, add_special=False) for lab in labels]
    assert toks[1][: len(toks[0])] == toks[0] and toks[2][0] == toks[3][0]
    text = "The food was fine, nothing special."
    out = ll.classify(cctx, [text], labels, progress=False)
    np.testing.assert_allclose(np.exp(out.attrs["logprobs"][0]).sum(), 1.0, atol=1e-6)
    # by hand from the reference log-probabilities
    prompt = _default_prompt(model, labels, text)
    good = _logprobs_after(model, prompt, toks[1])  # after "good", " enough" may follow
    very = _logprobs_after(model, prompt, toks[2][:1])
    p0 = np.exp(good[0][[toks[0][0], toks[2][0]]])
    p0 /= p0.sum()
    p_enough = np.exp(good[1][toks[1][1]])
    bad_good = np.exp(very[1][[toks[2][1], toks[3][1]]])
    want = [
        p0[0] * (1 - p_enough),
        p0[0] * p_enough,
        p0[1] * bad_good[0] / bad_good.sum(),
        p0[1] * bad_good[1] / bad_good.sum(),
    ]
    np.testing.assert_allclose(np.exp(out.attrs["logprobs"][0]), want, atol=0.01)


def test_label_steps_and_bad_scoring(cctx):
    from jupyter_localllm.engine.scoring import Step, label_steps

    steps = label_steps([[1], [1, 2], [3, 4], [3, 5]], "constrained")
    assert steps == [
        [Step(0, 1, (1, 3)), Step(1, None, (2,))],
        [Step(0, 1, (1, 3)), Step(1, 2, None)],
        [Step(0, 3, (1, 3)), Step(1, 4, (4, 5))],
        [Step(0, 3, (1, 3)), Step(1, 5, (4, 5))],
    ]
    assert label_steps([[7, 8, 9], [6]], "constrained") == [
        [Step(0, 7, (6, 7))],
        [Step(0, 6, (6, 7))],
    ]
    assert [len(s) for s in label_steps([[7, 8, 9], [6]], "joint")] == [3, 1]
    with pytest.raises(InvalidParameterError, match="scoring must be one of constrained, joint"):
        ll.classify(cctx, TEXTS, SENTIMENT, scoring="sum")


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


def test_explore_passes_classify_options(model):
    res = ll.explore(
        {"smol": model}, TEXTS, labels=SENTIMENT, calibrate=True, scoring="joint", progress=False
    )
    ctx = ll.context_create(model, n_seq_max=8)
    want = ll.classify(ctx, TEXTS, SENTIMENT, calibrate=True, scoring="joint", progress=False)
    ctx.close()
    assert res.annotations.label.tolist() == want.label.tolist()
    assert res.hashes["smol"]["input_sha256"] == want.attrs["hashes"]["input_sha256"]
