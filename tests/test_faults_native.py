"""Faults that once killed the process in native code (issue 12), and the sampling knobs.

Every case that could crash runs in a subprocess (``run_python``) and asserts exit code 0 and
the project's error class: closing a model under a running job, grammars and schemas that
llama.cpp cannot finish, context sizes past the C type or the memory, and native handles
freed when their Python objects go away (RSS stays flat when a cell re-creates a context).
The sampling-knob tests show each knob moving the output the way its name says, in
``generate``, ``generate_parallel`` and ``quick_llama``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from conftest import chat, run_python

import jupyter_localllm as ll
from jupyter_localllm.errors import GrammarError, InvalidParameterError
from jupyter_localllm.session.manager import get_manager

# -- closing under a running job -----------------------------------------------------------
_JOB_SETUP = """
import json, time
import jupyter_localllm as ll
from jupyter_localllm.errors import InvalidParameterError
from jupyter_localllm.session.manager import get_manager

def prompts(m, n):
    return [ll.apply_chat_template(m, f"Write a long story about dragon {i}.") for i in range(n)]

def start(ctx, ps, max_tokens=48):
    return ll.generate_parallel(ctx, ps, max_tokens=max_tokens, background=True,
                                progress=False, cache=False)

def wait_running(job):
    while job.status == "queued" or not job.partial():
        assert not job.done(), job.error
        time.sleep(0.01)
"""


def _job_script(body: str) -> str:
    """Run ``body`` after the job helpers in a fresh interpreter; its stdout (exit code 0)."""
    proc = run_python(_JOB_SETUP + body, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_close_model_under_a_running_job_refuses_then_works_after_cancel():
    out = _job_script("""
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=2)
job = start(ctx, prompts(m, 6))
wait_running(job)
try:
    m.close()
    print("closed under the job")
except InvalidParameterError as exc:
    print("refused:", exc)
job.cancel()
job.wait(60)
m.close()
print(json.dumps({"status": job.status, "closed": m.closed, "rows": len(job.partial())}))
""")
    assert "refused: Model" in out and "job.cancel()" in out
    state = json.loads(out.strip().splitlines()[-1])
    assert state["status"] == "cancelled" and state["closed"] and state["rows"] >= 1


def test_unload_cancels_the_models_jobs_keeps_their_rows_and_closes_it():
    # %llm unload and the ModelPanel's Unload button call ModelManager.unload.
    out = _job_script("""
manager = get_manager()
m = manager.load("default", alias="a")
ctx = manager.context("a", n_seq_max=2)
job = start(ctx, prompts(m, 6))
queued = start(ctx, prompts(m, 2))
wait_running(job)
manager.unload("a")
print(json.dumps({"status": job.status, "closed": m.closed, "rows": len(job.partial()),
                  "aliases": manager.aliases, "error": type(job.error).__name__,
                  "queued": queued.status}))
""")
    state = json.loads(out.strip().splitlines()[-1])
    assert state == {
        "status": "cancelled",
        "closed": True,
        "rows": state["rows"],
        "aliases": [],
        "error": "BatchInterrupted",
        "queued": "cancelled",
    }
    assert state["rows"] >= 1


def test_a_job_started_on_a_closed_model_fails_with_a_project_error():
    out = _job_script("""
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=1)
ps = prompts(m, 2)
m.close()
job = start(ctx, ps, max_tokens=8)
job.wait(60)
print(type(job.error).__name__, job.status)
""")
    assert out.split()[-2:] == ["InvalidParameterError", "failed"]


# -- grammars and schemas that llama.cpp cannot finish ------------------------------------
# Each of these aborted the process (SIGABRT in llama-grammar.cpp) or hung it before the
# Python checks; see engine/grammar.py.
DEAD_GRAMMARS = {
    "NUL literal": r'root ::= "\x00"',
    "NUL class": r"root ::= [\x00]",
    "NUL after a prefix": r'root ::= "a" "\x00"',
    "a control byte SmolLM2 has no token for": r'root ::= "\x04"',
    "a code point past the vocabulary's bytes": r'root ::= "\U00050000"',
    "beyond UTF-8": r'root ::= "\UFFFFFFFF"',
    "empty range": r"root ::= [z-a]",
    "negated everything": r"root ::= [^\x01-\UFFFFFFFF]",
    "never finishes": 'root ::= "a" root',
    "token out of range": "root ::= <[999999]>",
    "end-of-generation token": "root ::= <|im_end|>",
    "hidden left recursion": 'root ::= y root "a" | "b"\ny ::= z\nz ::= ""',
    "left recursion": 'root ::= root "a" | "b"',
    "undefined rule": "root ::= x",
    "syntax": 'root ::= "a',
    "deep nesting": "root ::= " + "(" * 5000 + '"a"' + ")" * 5000,
    "raw NUL in the text": 'root ::= "a\x00"',
}


def test_grammars_that_cannot_finish_raise_grammar_error_before_llama_cpp_sees_them():
    code = f"""
import json
from collections.abc import Iterable
import jupyter_localllm as ll
from jupyter_localllm.errors import GrammarError
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=1)
p = ll.apply_chat_template(m, "Say something.")
out = {{}}
for name, g in json.loads({json.dumps(json.dumps(DEAD_GRAMMARS))}).items():
    try:
        ll.generate(ctx, p, max_tokens=4, grammar=g)
        out[name] = "ran"
    except GrammarError as exc:
        out[name] = "GrammarError" if not str(exc).endswith("..") else "double dot"
    except Exception as exc:
        out[name] = type(exc).__name__
print(json.dumps(out))
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == dict.fromkeys(DEAD_GRAMMARS, "GrammarError")


def test_impossible_schema_and_per_row_grammar_fail_cleanly():
    code = r"""
import json
from collections.abc import Iterable
import jupyter_localllm as ll
from jupyter_localllm.errors import GrammarError
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=2)
schema = {"type": "object", "properties": {"a": {"const": "\u0000"}}, "required": ["a"]}
try:
    ll.extract(ctx, ["x"], schema, progress=False)
    print("ran")
except GrammarError as exc:
    print("schema:", exc)
p = ll.apply_chat_template(m, "Say yes.")
good = ll.SamplingParams(max_tokens=3, grammar='root ::= "yes"')
bad = ll.SamplingParams(max_tokens=3, grammar='root ::= "\\x00"')
res = ll.generate_parallel(ctx, [p, p], sampling=[good, bad], progress=False, cache=False)
print(json.dumps([str(res[0]), res[1].error is not None and "U+0000" in res[1].error]))
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "schema: The grammar of this JSON schema cannot be completed" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["yes", True]


def test_grammar_errors_are_grammar_errors_and_good_grammars_still_run(ctx, model):
    prompt = chat(model, "Say something.")
    with pytest.raises(GrammarError, match=r"not valid GBNF.*line 1") as info:
        ll.generate(ctx, prompt, max_tokens=4, grammar='root ::= "a')
    assert not str(info.value).endswith("..")
    # Control characters other than NUL exist as byte tokens: these grammars run.
    for grammar in (r'root ::= "\x01"', r'root ::= "ok" | ""', 'root ::= ("a"?)* "b"'):
        ll.generate(ctx, prompt, max_tokens=4, grammar=grammar)


# -- context sizes -------------------------------------------------------------------------
def test_context_sizes_past_the_c_type_or_the_memory_are_refused():
    code = """
import json
from collections.abc import Iterable
import jupyter_localllm as ll
from jupyter_localllm.errors import LocalLLMError
m = ll.model_load("default")
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ran"
    except LocalLLMError as exc:
        out[name] = [type(exc).__name__, str(exc)]
attempt("huge", lambda: ll.context_create(m, n_ctx=10**9, n_seq_max=2))
attempt("wrap", lambda: ll.context_create(m, n_ctx=2**32 + 64))
attempt("batch", lambda: ll.context_create(m, n_ctx=512, n_batch=2**32))
attempt("quick_n_ctx", lambda: ll.quick_llama("hi", n_ctx=0))
attempt("quick_n_seq", lambda: ll.quick_llama(["hi"], n_seq_max=0))
auto = ll.context_create(m, n_seq_max=2)
p = ll.apply_chat_template(m, "Say hi.")
attempt("auto_grows", lambda: ll.generate_parallel(auto, [p, p], max_tokens=10**9,
                                                   progress=False, cache=False))
out["after"] = str(ll.generate(auto, p, max_tokens=3))
print(json.dumps(out))
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    kind, message = out["huge"]
    assert kind == "InsufficientMemoryError" and "largest n_ctx that fits is" in message
    fit = int(message.split("largest n_ctx that fits is ")[1].split(":")[0])
    assert 256 <= fit < 10**9 and fit % 256 == 0
    assert out["wrap"][0] == "InvalidParameterError" and "4294967295" in out["wrap"][1]
    assert out["batch"][0] == "InvalidParameterError"
    assert out["quick_n_ctx"][0] == out["quick_n_seq"][0] == "InvalidParameterError"
    # issue 25, family 8: a context sized from the work stops at the training context, so a
    # huge max_tokens runs (the answer cut there) instead of failing the batch
    assert out["auto_grows"] == "ran"
    assert out["after"]  # the context still works after the refused growth


# -- native handles follow their Python objects -----------------------------------------
def test_recreating_a_context_in_a_loop_keeps_rss_flat():
    code = """
import json, psutil
import jupyter_localllm as ll
from jupyter_localllm.session.manager import kv_cache_bytes
m = ll.model_load("default")
ps = [ll.apply_chat_template(m, f"Name a fruit number {i}.") for i in range(8)]
proc = psutil.Process()
rss = []
for _ in range(20):
    ctx = ll.context_create(m, n_seq_max=8)
    ll.generate_parallel(ctx, ps, max_tokens=4, progress=False, cache=False)
    rss.append(proc.memory_info().rss)
print(json.dumps({"rss": rss, "live": len(m._contexts), "kv": kv_cache_bytes(m, ctx.n_ctx)}))
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = out["rss"][-1] - out["rss"][0]
    print(
        f"RSS after 1 run {out['rss'][0] / 2**20:.0f} MiB, after 20: "
        f"{out['rss'][-1] / 2**20:.0f} MiB (+{grown / 2**20:.1f} MiB); one KV cache "
        f"{out['kv'] / 2**20:.0f} MiB"
    )
    assert grown < 50 * 2**20
    assert out["live"] == 1  # only the last context's llama context is alive


def test_handles_are_freed_in_order_without_a_crash_at_any_point():
    code = """
import gc, weakref
import jupyter_localllm as ll
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=2)
p = ll.apply_chat_template(m, "Say hi.")
ll.generate(ctx, p, max_tokens=3)
inner = weakref.ref(ctx._ctx)
del m                      # the context keeps its model alive
ll.generate(ctx, p, max_tokens=3, temperature=0.7, grammar='root ::= "hi" | "hello"')
del ctx                    # the llama context goes with its GenerationContext
gc.collect()
print("freed" if inner() is None else "alive")
m = ll.model_load("default")
c = ll.context_create(m, n_ctx=256)
c.close(); c.close(); m.close(); m.close()   # twice is fine
m2 = ll.model_load("default")
left = ll.context_create(m2, n_seq_max=2)
job = ll.generate_parallel(left, [p] * 6, max_tokens=64, background=True, progress=False,
                           cache=False)
print("exiting with a job running")   # interpreter exit must not free under the job
"""
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["freed", "exiting with a job running"]


# -- sampling knobs ------------------------------------------------------------------------
SEEDS = range(1, 9)


@pytest.fixture(scope="module")
def poem(model):
    return chat(model, "Write a short poem about the sea.")


@pytest.fixture(scope="module")
def greedy(ctx, poem):
    return str(ll.generate(ctx, poem, max_tokens=12))


def _texts(ctx, prompt, **kw):
    return [str(ll.generate(ctx, prompt, max_tokens=12, seed=s, **kw)) for s in SEEDS]


def test_temperature_zero_is_greedy_whatever_the_seed(ctx, poem, greedy):
    assert set(_texts(ctx, poem, temperature=0, top_p=0.5, top_k=3)) == {greedy}


def test_seeds_differ_at_temperature_one_and_repeat(ctx, poem, greedy):
    texts = _texts(ctx, poem, temperature=1.0, top_k=0)
    assert len(set(texts)) >= 4
    assert texts == _texts(ctx, poem, temperature=1.0, top_k=0)  # a seed is a seed


def test_top_k_one_is_greedy(ctx, poem, greedy):
    assert set(_texts(ctx, poem, temperature=1.5, top_k=1)) == {greedy}


def test_small_top_p_and_full_min_p_are_greedy(ctx, poem, greedy):
    assert set(_texts(ctx, poem, temperature=1.0, top_k=0, top_p=1e-6)) == {greedy}
    assert set(_texts(ctx, poem, temperature=1.0, top_k=0, min_p=1.0)) == {greedy}


@pytest.mark.parametrize("knob", [{"top_p": 0.3}, {"min_p": 0.3}, {"top_k": 2}])
def test_narrow_filters_sample_closer_to_greedy(ctx, poem, greedy, knob):
    wide = _texts(ctx, poem, temperature=1.0, top_k=0)
    narrow = _texts(ctx, poem, temperature=1.0, **{"top_k": 0, **knob})
    assert len(set(narrow)) <= len(set(wide))
    assert narrow.count(greedy) >= wide.count(greedy)
    assert sum(map(_first_word_is(greedy), narrow)) > sum(map(_first_word_is(greedy), wide))


def _first_word_is(greedy: str):
    first = greedy.split()[0]
    return lambda text: bool(text.split()) and text.split()[0] == first


def test_lower_temperature_is_closer_to_greedy(ctx, poem, greedy):
    hot = _texts(ctx, poem, temperature=1.5, top_k=0)
    cool = _texts(ctx, poem, temperature=0.3, top_k=0)
    assert sum(map(_first_word_is(greedy), cool)) > sum(map(_first_word_is(greedy), hot))


def _repeated_words(texts: Iterable[str]) -> int:
    """Words that already appeared earlier in the same text, over ``texts``."""
    total = 0
    for text in texts:
        words = text.replace(",", " ").split()
        total += len(words) - len(set(words))
    return total


def test_repeat_penalty_lowers_repeats_in_generate(ctx, poem):
    plain = [str(ll.generate(ctx, poem, max_tokens=24, temperature=0.8, seed=s)) for s in SEEDS]
    penalised = [
        str(ll.generate(ctx, poem, max_tokens=24, temperature=0.8, seed=s, repeat_penalty=1.5))
        for s in SEEDS
    ]
    assert _repeated_words(penalised) < _repeated_words(plain) / 2


def test_sampling_knobs_in_generate_parallel(model, poem):
    pctx = ll.context_create(model, n_seq_max=4)
    try:

        def run(prompt, **kw):
            kw = {"max_tokens": 12, **kw}
            res = ll.generate_parallel(pctx, [prompt] * 8, progress=False, cache=False, **kw)
            return [str(r) for r in res]

        greedy = run(poem)
        assert len(set(greedy)) == 1
        assert run(poem, temperature=1.5, top_k=1) == greedy
        assert run(poem, temperature=1.0, top_k=0, top_p=1e-6) == greedy
        assert run(poem, temperature=1.0, top_k=0, min_p=1.0) == greedy
        hot = run(poem, temperature=1.0, top_k=0)
        assert len(set(hot)) >= 4  # each row samples with its own seed
        assert run(poem, temperature=1.0, top_k=0, seed=7) != hot
        plain = run(poem, temperature=0.8, max_tokens=24)
        penalised = run(poem, temperature=0.8, max_tokens=24, repeat_penalty=1.5)
        assert _repeated_words(penalised) < _repeated_words(plain) / 2
    finally:
        pctx.close()


def test_sampling_knobs_in_quick_llama():
    ask = "Write the word hello ten times."
    loaded_before = "default" in get_manager().aliases
    try:
        greedy = str(ll.quick_llama(ask, max_tokens=16))
        assert str(ll.quick_llama(ask, max_tokens=16, temperature=1.5, top_k=1)) == greedy
        many = ll.quick_llama([ask] * 8, max_tokens=24, temperature=0.8, progress=False)
        fewer = ll.quick_llama(
            [ask] * 8, max_tokens=24, temperature=0.8, repeat_penalty=1.5, progress=False
        )
        assert _repeated_words([str(r) for r in fewer]) < _repeated_words(map(str, many)) / 2
        with pytest.raises(InvalidParameterError):
            ll.quick_llama(ask, repeat_penalty=0)
    finally:
        if not loaded_before:
            get_manager().unload("default")
