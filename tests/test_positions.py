"""Learned position tables in generation: a decoder that reads each position from a table of
its trained length (GPT-2, StarCoder; llama.cpp aborts the process reading past it, even in a
larger n_ctx) runs on a tiny GPT-2 GGUF (tests/tiny_gguf.py, trained for 64 positions): a
prompt past the table is an error in its row, an answer is cut at the table's end, the other
rows run — with a fixed n_ctx larger than the table and with a context sized from the work.
Everything runs in a subprocess first (it could abort), then here."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import run_python
from tiny_gguf import reference_gpt2_greedy, write_gpt2

import jupyter_localllm as ll
from jupyter_localllm.engine.memory import position_limit
from jupyter_localllm.errors import PromptError

TRAINED = 64
LONG = "the dog " * 40  # 81 tokens: past the 64 positions
PAST = "the length this model was trained for, even in a larger n_ctx; shorten it"
SIZES = [{"n_ctx": 256}, {"n_ctx": 256, "n_seq_max": 2}, {}, {"n_seq_max": 2}]

# The checks, run in a subprocess first and then in-process; `m` is the loaded tiny GPT-2.
SCRIPT = f"""
def check(m, sizes):
    ctx = ll.context_create(m, **sizes)
    r = ll.generate(ctx, "the cat sat on the mat", max_tokens=200, temperature=0)
    assert r.finish_reason == "length" and r.n_prompt_tokens + r.n_tokens == {TRAINED}, r
    try:
        ll.generate(ctx, {LONG!r}, max_tokens=5)
    except PromptError as e:
        assert "81 tokens" in str(e) and "context of {TRAINED} tokens" in str(e), e
        assert {PAST!r} in str(e), e
    else:
        raise AssertionError("no error")
    edge = ll.generate_parallel(ctx, ["x" * 63, "x" * 64, "hello world"], max_tokens=200)
    assert (edge[0].n_prompt_tokens, edge[0].n_tokens, edge[0].finish_reason) == (63, 1, "length")
    assert edge[1].error and "64 tokens does not fit the context of {TRAINED}" in edge[1].error
    assert edge[2].n_tokens == {TRAINED} - 2 and edge[2].finish_reason == "length", edge[2]
    df = ll.classify(ctx, ["the cat sat", {LONG!r}, "hello"], ["cat", "dog"], format="raw",
                     progress=False)
    assert df["label"].notna().tolist() == [True, False, True], df
    assert {PAST!r} in df["error"][1], df
    frame = pd.DataFrame({{"t": ["the cat sat", {LONG!r}, "hello"]}})
    out = frame.llm.generate("{{t}}", model=ctx, max_tokens=200, progress=False)
    assert out[1].startswith("Error:") and not out[0].startswith("Error:"), out
    ctx.close()
"""


def _check(m, sizes):
    namespace = {"ll": ll, "pd": pd, "PromptError": PromptError}
    exec(SCRIPT, namespace)  # the same checks as the subprocess ran
    namespace["check"](m, sizes)


@pytest.fixture(scope="module")
def gpt2_path(tmp_path_factory):
    """The tiny GPT-2 file, after every check below ran in a subprocess (an abort there fails
    the tests of this module instead of killing pytest)."""
    path = write_gpt2(tmp_path_factory.mktemp("gpt2") / "gpt2.gguf")
    head = "import pandas as pd, jupyter_localllm as ll\n"
    head += "from jupyter_localllm.errors import PromptError\n"
    tail = f"m = ll.model_load({str(path)!r})\nfor sizes in {SIZES!r}:\n    check(m, sizes)\n"
    done = run_python(head + SCRIPT + tail + "print('ok')\n", timeout=240)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def gpt2(gpt2_path):
    m = ll.model_load(gpt2_path)
    yield m
    m.close()


def test_the_tiny_gpt2_is_a_real_model(gpt2):
    """llama.cpp loads it as GPT-2 and its greedy tokens are those of the numpy forward pass
    (tests/tiny_gguf.py), the same on every call."""
    assert gpt2.metadata["general.architecture"] == "gpt2"
    assert position_limit(gpt2.metadata) == TRAINED
    prompt = "the cat sat on the mat"
    expected = ll.detokenize(gpt2, reference_gpt2_greedy(gpt2.tokenize(prompt), 20))
    with ll.context_create(gpt2, n_ctx=256) as ctx:
        first = ll.generate(ctx, prompt, max_tokens=20, temperature=0)
        again = ll.generate(ctx, prompt, max_tokens=20, temperature=0)
    assert (first.n_tokens, first.finish_reason) == (20, "length")
    assert str(first) == str(again) == expected


@pytest.mark.parametrize("sizes", SIZES, ids=["fixed", "fixed-2", "auto", "auto-2"])
def test_rows_stop_at_the_position_table(gpt2, sizes):
    """A prompt past the 64 positions is an error in its row naming the trained length; an
    answer stops at 64 cells ("length"); the other rows of generate_parallel, classify and
    df.llm.generate run: in a fixed n_ctx of 256 and in a context sized from the work."""
    _check(gpt2, sizes)


def test_computed_positions_keep_a_larger_n_ctx(model, ctx):
    """RoPE and ALiBi models have no table (a fixed n_ctx past training stays theirs); the
    learned-table architectures stop at their trained length; an MPT has one unless it uses
    ALiBi."""
    assert position_limit(model.metadata) is None
    assert ctx.max_row_cells() == int(model.metadata["llama.context_length"])
    meta = {"general.architecture": "starcoder", "starcoder.context_length": "8192"}
    assert position_limit(meta) == 8192
    mpt = {"general.architecture": "mpt", "mpt.context_length": "2048"}
    assert position_limit(mpt) == 2048
    assert position_limit({**mpt, "mpt.attention.max_alibi_bias": "8.000000"}) is None
    assert position_limit({"general.architecture": "qwen2", "qwen2.context_length": "32"}) is None
