"""Issue 25, families 8-10: one row must not fail the batch, a run's callbacks cannot use
its own context under it, and sizes that would take minutes or gigabytes are refused up front.

- Family 8: a context sized from the work is sized from the rows that fit (the model's
  training context and the memory available bound it); a row that does not fit is an error
  row in its place, and a text of megabytes is refused by its length, never tokenized.
- Family 9: a ``progress=``/``on_result=``/``stream=`` callback that calls into the context
  of the run that called it gets :class:`ContextBusyError` (uncaught: a warning) and the run
  finishes whole; another thread queues; another context of the same model works.
- Family 10: JSON-schema counts, enums, nesting, patterns, grammar size, labels (count,
  characters, tokens) and examples are checked before any grammar is built or any decode runs.
  The cases that would take minutes if a check regressed run in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import threading
import warnings

import pandas as pd
import pytest
from conftest import SENTIMENT, TEXTS, chat, refused, run_python

import jupyter_localllm as ll
import jupyter_localllm.notebook.accessor  # registers df.llm
from jupyter_localllm.errors import (
    ContextBusyError,
    InvalidParameterError,
    PromptError,
)
from jupyter_localllm.session.manager import get_manager

HUGE = "word " * 1_000_000  # 5 MB: the row
OVER = "word " * 9_000  # about 9,000 tokens: past the 8,192 the default model was trained for
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture
def prompts(model):
    return [chat(model, q) for q in ("Name a colour.", "Name a fruit.", "Name a animal.")]


@pytest.fixture
def tokenized(model, monkeypatch):
    """The lengths of the texts the model tokenizes during the test."""
    seen: list[int] = []
    tokenize = model.tokenize

    def counting(text, **options):
        seen.append(len(text))
        return tokenize(text, **options)

    monkeypatch.setattr(model, "tokenize", counting)
    return seen


def run_all(ctx, rows, **options):
    return ll.generate_parallel(ctx, rows, max_tokens=4, progress=False, cache=False, **options)


# -- family 8: one row must not fail the batch ----------------------------------------------
def test_a_huge_row_is_an_error_row_and_is_never_tokenized(model, prompts, tokenized):
    ctx = ll.context_create(model, n_seq_max=2)
    out = run_all(ctx, [prompts[0], chat(model, HUGE), prompts[1]])
    assert out[0].ok and out[2].ok and not out[1].ok
    assert out[1].startswith("Error: the prompt of ") and "was not tokenized" in out[1].error
    assert "does not fit the context of 8192 tokens" in out[1].error
    assert max(tokenized) < 10_000  # the 5 MB text never reached the tokenizer
    assert ctx.n_ctx < 8192  # sized from the rows that fit


def test_a_row_past_the_training_context_is_an_error_row(model, prompts):
    ctx = ll.context_create(model, n_seq_max=2)
    alone = run_all(ctx, [prompts[0], prompts[1]])
    out = run_all(ctx, [prompts[0], chat(model, OVER), prompts[1]])
    assert [str(r) for r in (out[0], out[2])] == [str(r) for r in alone]
    assert "tokens does not fit the context of 8192 tokens" in out[1].error
    assert "trained for" in out[1].error and out[1].n_prompt_tokens > 8192
    assert ctx.last_run.n_ctx < 8192


def test_a_huge_max_tokens_is_cut_at_the_training_context(model):
    ctx = ll.context_create(model)
    prompt = chat(model, "Say hi.")
    out = ll.generate_parallel(ctx, [prompt], max_tokens=10**12, progress=False, cache=False)
    assert out[0].ok and ctx.n_ctx == 8192  # not InsufficientMemoryError for 10**12 cells


def test_every_row_too_long_gives_error_rows_not_an_exception(model):
    ctx = ll.context_create(model, n_seq_max=2)
    out = run_all(ctx, [chat(model, OVER), HUGE, chat(model, OVER)])
    assert [r.ok for r in out] == [False, False, False]
    assert all("does not fit the context of" in r.error for r in out)
    assert run_all(ctx, [chat(model, "Hi")])[0].ok  # the context still works


def test_single_generate_names_the_context_it_does_not_fit(ctx, model):
    refused(lambda: ll.generate(ctx, HUGE), PromptError, "does not fit the context of 8192")
    refused(lambda: ll.generate(ctx, chat(model, OVER)), PromptError, "trained for")


def test_a_huge_row_with_a_fixed_n_ctx(model, prompts, tokenized):
    ctx = ll.context_create(model, n_ctx=1024, n_seq_max=2)
    out = run_all(ctx, [prompts[0], HUGE, chat(model, "word " * 1500), prompts[1]])
    assert [r.ok for r in out] == [True, False, False, True]
    assert "does not fit the context of 1024 tokens" in out[1].error
    assert "more than the context holds" in out[2].error
    assert max(tokenized) < 10_000


def test_classify_extract_and_the_accessor_keep_the_other_rows(model):
    ctx = ll.context_create(model, n_seq_max=2)
    frame = ll.classify(ctx, [TEXTS[0], HUGE, OVER, TEXTS[1]], SENTIMENT, progress=False)
    assert list(frame["label"].notna()) == [True, False, False, True]
    assert "does not fit the context" in frame["error"][1]
    assert "does not fit the context" in frame["error"][2]
    got = ll.extract(ctx, ["I live in Rome.", HUGE], SCHEMA, max_tokens=24, progress=False)
    assert isinstance(got[0], (dict, ll.Result)) and not got[1].ok
    assert "does not fit the context" in got[1].error
    df = pd.DataFrame({"t": ["Name a colour.", HUGE, "Name a fruit."]})
    out = df.llm.generate("{t}", model=ctx, max_tokens=4, progress=False)
    assert out[0].ok and out[2].ok and "does not fit the context" in out[1].error


def test_explore_keeps_the_other_rows(model):
    res = ll.explore({"smol": model}, [TEXTS[0], HUGE, TEXTS[1]], labels=SENTIMENT, progress=False)
    labels = res.annotations["label"].tolist()
    assert labels[0] in SENTIMENT and labels[2] in SENTIMENT and labels[1] not in SENTIMENT
    assert not res.errors


def test_memory_bounds_the_context_and_rows_past_it_are_error_rows():
    code = """
import json
import jupyter_localllm as ll
import jupyter_localllm.engine.memory as memory
m = ll.model_load("default")
sizes = dict(n_vocab=m.n_vocab, n_seq_max=2, n_batch=512, kv_unified=False)
# as much memory as a 2048-cell context needs (and the 256 MiB kept for the kernel)
free = memory.context_bytes(m.metadata, 2048, **sizes) + 256 * 2**20 + 2**20
memory.available_memory = lambda: free
ctx = ll.context_create(m, n_seq_max=2, kv_unified=False)
p = ll.apply_chat_template(m, "Name a colour.")
long = ll.apply_chat_template(m, "word " * 1500)
out = ll.generate_parallel(ctx, [p, long, p], max_tokens=4, progress=False, cache=False)
print(json.dumps({"ok": [r.ok for r in out], "error": out[1].error, "n_ctx": ctx.n_ctx}))
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] == [True, False, True]
    assert "memory available" in out["error"] and out["n_ctx"] <= 2048


# -- family 9: re-entrancy --------------------------------------------------------------------
def test_a_callback_calling_its_own_context_gets_a_clear_error(model, prompts):
    ctx = ll.context_create(model, n_seq_max=2)
    expected = [str(r) for r in run_all(ctx, prompts)]
    refusals: list[Exception] = []

    def on_result(res):
        try:
            ll.generate(ctx, prompts[0], max_tokens=2)
        except ContextBusyError as exc:
            refusals.append(exc)

    out = run_all(ctx, prompts, on_result=on_result)
    assert [str(r) for r in out] == expected
    assert len(refusals) == len(prompts) and "busy with the run" in str(refusals[0])
    assert str(ll.generate(ctx, prompts[0], max_tokens=4)) == expected[0]  # usable after


@pytest.mark.parametrize("entry", ["generate_parallel", "classify", "extract", "close"])
def test_an_uncaught_refusal_warns_and_the_run_finishes(model, prompts, entry):
    ctx = ll.context_create(model, n_seq_max=2)
    calls = {
        "generate_parallel": lambda: run_all(ctx, prompts[:1]),
        "classify": lambda: ll.classify(ctx, TEXTS[:1], SENTIMENT, progress=False),
        "extract": lambda: ll.extract(ctx, ["Rome"], SCHEMA, max_tokens=8, progress=False),
        "close": ctx.close,
    }
    expected = ll.classify(ctx, TEXTS, SENTIMENT, progress=False)["label"].tolist()

    def progress(event):
        if event.done:
            calls[entry]()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = ll.classify(ctx, TEXTS, SENTIMENT, progress=progress)
    assert frame["label"].tolist() == expected and frame["error"].isna().all()
    assert caught and all("busy with the run" in str(w.message) for w in caught)


def test_closing_the_model_or_unloading_it_from_a_callback_is_refused(prompts):
    manager = get_manager()
    m = manager.load("default", alias="reentrant")
    ctx = manager.context("reentrant", n_seq_max=2)
    errors: list[str] = []

    def on_result(res):
        for close in (m.close, lambda: manager.unload("reentrant")):
            try:
                close()
            except ContextBusyError as exc:
                errors.append(str(exc))

    try:
        out = run_all(ctx, prompts, on_result=on_result)
        assert all(r.ok for r in out) and len(errors) == 2 * len(prompts)
        assert not m.closed and "reentrant" in manager.aliases
        assert run_all(ctx, prompts[:1])[0].ok
    finally:
        manager.unload("reentrant")
    assert m.closed


def test_another_context_of_the_same_model_works_from_a_callback(model, prompts):
    outer, inner = ll.context_create(model, n_seq_max=2), ll.context_create(model)
    answers = []
    out = run_all(outer, prompts, on_result=lambda r: answers.append(ll.generate(inner, r)))
    assert all(r.ok for r in out) and len(answers) == len(prompts)
    assert all(a.ok for a in answers)


def test_another_thread_queues_and_a_stream_callback_is_refused(model, prompts):
    ctx = ll.context_create(model, n_seq_max=2)
    expected = str(ll.generate(ctx, prompts[1], max_tokens=4))
    got: list[str] = []
    threads: list[threading.Thread] = []

    def on_result(res):
        if not threads:  # another thread waits for the context, then runs
            t = threading.Thread(
                target=lambda: got.append(str(ll.generate(ctx, prompts[1], max_tokens=4)))
            )
            t.start()
            threads.append(t)

    out = run_all(ctx, prompts, on_result=on_result)
    threads[0].join(60)
    assert all(r.ok for r in out) and got == [expected]
    refusals = []

    def stream(piece):
        try:
            ll.generate(ctx, prompts[0], max_tokens=1)
        except ContextBusyError as exc:
            refusals.append(exc)

    assert ll.generate(ctx, prompts[0], max_tokens=4, stream=stream).ok and refusals


def test_a_background_job_whose_callback_calls_its_context(model, prompts):
    ctx = ll.context_create(model, n_seq_max=2)
    expected = [str(r) for r in run_all(ctx, prompts)]
    refusals = []

    def on_result(res):
        try:
            ll.generate(ctx, prompts[0], max_tokens=2)
        except ContextBusyError as exc:
            refusals.append(exc)

    job = run_all(ctx, prompts, on_result=on_result, background=True)
    assert [str(r) for r in job.result(timeout=120)] == expected
    assert len(refusals) == len(prompts)


# -- family 10: resource bombs ----------------------------------------------------------------
BOMBS = """
import json, sys
import jupyter_localllm as ll
import jupyter_localllm.tasks.extraction as extraction
from jupyter_localllm.errors import LocalLLMError
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=2)
converted = []
convert = extraction.json_schema_to_grammar
extraction.json_schema_to_grammar = lambda s: converted.append(1) or convert(s)
def prop(**schema):
    return {"type": "object", "properties": {"a": schema}, "required": ["a"]}
deep = {"type": "string"}
for _ in range(500):
    deep = {"type": "object", "properties": {"x": deep}}
schemas = {
    "minLength": prop(type="string", minLength=100_000_000),
    "maxLength": prop(type="string", maxLength=10**12),
    "minItems": prop(type="array", items={"type": "string"}, minItems=10_000_000),
    "maxItems": prop(type="array", items={"type": "string"}, maxItems=10_000_000),
    "minProperties": {"type": "object", "minProperties": 10**7},
    "enum": prop(enum=list(range(1_000_000))),
    "deep": deep,
    "pattern": prop(type="string", pattern="^a{1000000}$"),
    "pattern-nested": prop(type="string", pattern="^(ab{1000}){1000}$"),
    "many-properties": {"type": "object", "properties": {
        f"p{i}": {"type": "string", "minLength": 1000} for i in range(1000)}},
}
out = {}
def attempt(name, fn):
    before = ctx.last_run
    try:
        fn()
        out[name] = ["ran"]
    except LocalLLMError as exc:
        out[name] = [type(exc).__name__, str(exc), ctx.last_run is before]
for name, schema in schemas.items():
    attempt(name, lambda: ll.extract(ctx, ["Rome"], schema, progress=False))
out["converted"] = len(converted)
p = ll.apply_chat_template(m, "Hi")
attempt("gbnf-repeat", lambda: ll.generate(ctx, p, grammar='root ::= "a"{1000000}'))
attempt("gbnf-size", lambda: ll.generate(ctx, p, grammar="root ::= " + " | ".join(
    f'"v{i}"' for i in range(200_000))))
attempt("labels-many", lambda: ll.classify(ctx, ["x"], [f"l{i}" for i in range(10_000)]))
attempt("labels-huge", lambda: ll.classify(ctx, ["x"], ["a" * 5_000_000, "b"]))
attempt("labels-tokens", lambda: ll.classify(ctx, ["x"], ["yes " * 100, "no"],
                                             instruction="Pick."))
attempt("examples-many", lambda: ll.classify(ctx, ["x"], ["yes", "no"],
                                             examples=[("good text", "yes")] * 200_000))
attempt("examples-long", lambda: ll.classify(ctx, ["x"], ["yes", "no"],
                                             examples=[("word " * 3000, "yes")] * 4))
attempt("n_ctx", lambda: ll.context_create(m, n_ctx=10**12))
attempt("n_seq_max", lambda: ll.context_create(m, n_seq_max=10**9))
attempt("n_batch", lambda: ll.context_create(m, n_batch=10**12))
print(json.dumps(out))
"""

EXPECTED = {
    "minLength": ("GrammarError", "minLength=100000000 at #/properties/a, more than the 2000"),
    "maxLength": ("GrammarError", "maxLength=1000000000000"),
    "minItems": ("GrammarError", "minItems=10000000"),
    "maxItems": ("GrammarError", "maxItems=10000000"),
    "minProperties": ("GrammarError", "minProperties=10000000 at #"),
    "enum": ("GrammarError", "has 1000000 values, more than the 10000"),
    "deep": ("GrammarError", "nests more than 64 levels"),
    "pattern": ("GrammarError", "repeats 1000000 times, more than the 2000"),
    "pattern-nested": ("GrammarError", "expands to more than 20000 items"),
    "many-properties": ("GrammarError", "add up to more than 20000"),
    "gbnf-repeat": ("GrammarError", "more than 2000 repetitions"),
    "gbnf-size": ("GrammarError", "more than the 500000 a grammar may have"),
    "labels-many": ("InvalidParameterError", "Got 10000 labels, more than the 1000"),
    "labels-huge": ("InvalidParameterError", "more than the 500 a label may have"),
    "labels-tokens": ("InvalidParameterError", "at most 64 tokens each"),
    "examples-many": ("PromptError", "200000 examples that every row repeats"),
    "examples-long": ("PromptError", "does not fit the context of 8192 tokens"),
    "n_ctx": ("InvalidParameterError", "n_ctx must be an integer"),
    "n_seq_max": ("InvalidParameterError", "n_seq_max must be an integer"),
    "n_batch": ("InvalidParameterError", "n_batch must be an integer"),
}


def test_resource_bombs_are_refused_before_any_work():
    proc = run_python(BOMBS, timeout=180)  # minutes each, and gigabytes, if a check regressed
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("converted") == 0  # no schema reached the converter
    assert set(out) == set(EXPECTED)
    for name, (kind, phrase) in EXPECTED.items():
        assert out[name][0] == kind, (name, out[name])
        assert phrase in out[name][1], (name, out[name][1])
        assert out[name][2] is True, name  # no run started on the context


def test_sizes_at_the_limits_still_run(ctx2, model):
    tags = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}
    code = {"type": "string", "pattern": "^[A-Z]{3}$"}
    schema = {
        "type": "object",
        "properties": {"code": code, "tags": tags},
        "required": ["code", "tags"],
    }
    got = ll.extract(ctx2, ["The code is ABC, tagged red."], schema, max_tokens=40, progress=False)
    assert isinstance(got[0], dict) and len(got[0]["code"]) == 3
    labels = [f"label {i}" for i in range(200)]
    frame = ll.classify(ctx2, TEXTS[:1], labels, instruction="Pick a label.", progress=False)
    assert frame["label"][0] in labels
    many = [f"l{i}" for i in range(1001)]
    refused(lambda: ll.classify(ctx2, TEXTS[:1], many), InvalidParameterError, "more than the 1000")
