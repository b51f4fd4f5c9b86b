"""The fault matrix (issue 12): bad inputs and faults a notebook user meets, each answered by a
project error that says what to do, or by an error row in its place, never by a crash, a raw
library error or a lost finished row.

Groups: API arguments, labels and examples, prompts and schemas, unicode, concurrency,
interrupts, explore, evaluation, magics and accessors (model files and model references:
test_faults_loading.py; result-cache faults: test_faults_cache.py). Cases that reach native code with unusual input run in a subprocess
(``run_python``) and must exit with code 0. Each case is one line of data where possible.
"""

# ruff: noqa: E501 (the tables keep one case per line)
from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import (
    SENTIMENT,
    TEXTS,
    cases,
    chat,
    make_model_file,
    model_bytes,
    names,
    refused,
    run_python,
)
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

import jupyter_localllm as ll
import jupyter_localllm.notebook.accessor  # registers df.llm
from jupyter_localllm.errors import (
    BatchInterrupted,
    GrammarError,
    InvalidModelFileError,
    InvalidParameterError,
    ModelNotFoundError,
)
from jupyter_localllm.session.manager import get_manager

Call = Callable[..., Any]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
INF, NAN = math.inf, math.nan


def stop_after(done: int) -> Callable[[ll.Progress], None]:
    """A ``progress=`` callable that presses Ctrl-C once ``done`` rows are finished."""

    def progress(event: ll.Progress) -> None:
        if event.done >= done:
            raise KeyboardInterrupt

    return progress


# -- API arguments ---------------------------------------------------------------------------
ARGUMENTS = [
    ("temperature-inf", lambda c: ll.SamplingParams(temperature=INF), "temperature must be a finite"),
    ("temperature-nan", lambda c: ll.SamplingParams(temperature=NAN), "temperature must be a finite"),
    ("temperature-negative", lambda c: ll.SamplingParams(temperature=-1), "temperature must be a finite"),
    ("top-p-nan", lambda c: ll.SamplingParams(top_p=NAN), r"top_p must be in \(0, 1\]"),
    ("top-p-zero", lambda c: ll.SamplingParams(top_p=0), r"top_p must be in \(0, 1\]"),
    ("min-p-inf", lambda c: ll.SamplingParams(min_p=INF), r"min_p must be in \[0, 1\]"),
    ("repeat-penalty-inf", lambda c: ll.SamplingParams(repeat_penalty=INF), "repeat_penalty must be a finite"),
    ("repeat-penalty-zero", lambda c: ll.SamplingParams(repeat_penalty=0), "repeat_penalty must be a finite"),
    ("top-k-negative", lambda c: ll.SamplingParams(top_k=-1), "top_k must be >= 0"),
    ("max-tokens-zero", lambda c: ll.SamplingParams(max_tokens=0), "max_tokens must be a positive"),
    ("max-tokens-bool", lambda c: ll.SamplingParams(max_tokens=True), "max_tokens must be a positive"),
    ("seed-negative", lambda c: ll.SamplingParams(seed=-1), r"seed must be an integer in \[0, 2\*\*32\)"),
    ("stop-empty", lambda c: ll.SamplingParams(stop=[""]), "stop strings must be non-empty"),
    ("stop-int", lambda c: ll.SamplingParams(stop=5), "stop must be a string or a list"),
    ("grammar-blank", lambda c: ll.SamplingParams(grammar="  "), "grammar must be a non-empty"),
    ("unknown-option", lambda c: ll.generate(c, "Hi", bogus=1), "Unknown sampling option"),
    ("batch-temperature-inf", lambda c: ll.generate_parallel(c, ["Hi"], temperature=INF), "temperature must be a finite"),
    ("batch-bare-string", lambda c: ll.generate_parallel(c, "Hi"), "for one prompt use generate"),
    ("context-n-seq-max-0", lambda c: ll.context_create(c.model, n_seq_max=0), "n_seq_max must be an integer"),
    ("context-n-ctx-0", lambda c: ll.context_create(c.model, n_ctx=0), "n_ctx must be an integer"),
    ("context-of-a-string", lambda c: ll.context_create("default"), "Expected a model from model_load"),
    ("generate-without-context", lambda c: ll.generate("default", "Hi"), "Expected a context"),
    ("quick-llama-n-seq-max-0", lambda c: ll.quick_llama(["a", "b"], n_seq_max=0), "n_seq_max must be an integer"),
    ("quick-llama-n-ctx-0", lambda c: ll.quick_llama("a", n_ctx=0), "n_ctx must be an integer"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "phrase"), cases(ARGUMENTS), ids=names(ARGUMENTS))
def test_api_arguments(ctx2, call, phrase):
    refused(lambda: call(ctx2), InvalidParameterError, phrase)


# -- labels and examples (classify refuses them before anything runs) ------------------------
LABEL_CASES = [
    ("bare-string-texts", {"prompts": "one text"}, r"wrap a single one in \[\]"),
    ("labels-string", {"labels": "AB"}, "labels must be a list of label names"),
    ("labels-none", {"labels": None}, "labels must be a list of label names"),
    ("labels-int", {"labels": 5}, "labels must be a list of label names"),
    ("label-empty", {"labels": ["", "x"]}, "Labels cannot be empty or blank"),
    ("label-blank", {"labels": [" ", "x"]}, "Labels cannot be empty or blank"),
    ("label-none", {"labels": [None, "x"]}, "Labels must be strings"),
    ("one-label", {"labels": ["a"]}, "at least two distinct labels"),
    ("repeated-label", {"labels": ["a", "a"]}, "at least two distinct labels"),
    ("reserved-label", {"labels": ["label", "x"]}, 'cannot be named "label" or "error"'),
    ("example-one-item", {"examples": [("t",)]}, "Example 0 is .*; give examples as"),
    ("example-three-items", {"examples": [("t", "positive", "x")]}, "Example 0 is"),
    ("example-no-label-key", {"examples": [{"text": "t"}]}, "Example 0 has keys 'text' but needs"),
    ("example-unknown-label", {"examples": [("t", "maybe")]}, "Example label 'maybe' is not one"),
    ("examples-string", {"examples": "t"}, "examples is a str; give examples as"),
    ("examples-int", {"examples": 5}, "examples is a int; give examples as"),
    ("example-text-int", {"examples": [(1, "positive")]}, "Example texts must be strings"),
    ("examples-frame-columns", {"examples": pd.DataFrame({"x": [1]})}, "examples needs columns"),
    ("calibrate-int", {"calibrate": 5}, "calibrate must be True, False or a list"),
    ("calibrate-empty-text", {"calibrate": [""]}, "calibrate must be True, False or a list"),
    ("scoring-unknown", {"scoring": "bogus"}, "scoring must be one of"),
    ("format-unknown", {"format": "bogus"}, "format must be one of"),
]


@pytest.mark.parametrize(("change", "phrase"), cases(LABEL_CASES), ids=names(LABEL_CASES))
def test_labels_and_examples(ctx2, change, phrase):
    args = {"prompts": TEXTS[:2], "labels": SENTIMENT, **change}
    ran: list[Any] = []
    refused(lambda: ll.classify(ctx2, **args, on_result=ran.append), InvalidParameterError, phrase)
    assert ran == []


# -- prompts, grammars and schemas (that do not crash; crash cases: test_faults_native.py) ---
EXTRACT_CASES = [
    ("bare-string", "I live in Rome", SCHEMA, InvalidParameterError, r"wrap a single one in \[\]"),
    ("texts-none", None, SCHEMA, InvalidParameterError, "must be a list of texts, got NoneType"),
    ("texts-dict", {"a": "Rome"}, SCHEMA, InvalidParameterError, "must be a list of texts, got dict"),
    ("schema-string", ["Rome"], "city", InvalidParameterError, "schema must be a JSON-schema dict"),
    ("schema-unsupported", ["Rome"], {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, GrammarError, "cannot be turned into a grammar"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("texts", "schema", "error", "phrase"), cases(EXTRACT_CASES), ids=names(EXTRACT_CASES)
)
def test_extract_arguments(ctx2, texts, schema, error, phrase):
    refused(lambda: ll.extract(ctx2, texts, schema, max_tokens=8), error, phrase)


GRAMMARS = [
    ("syntax", lambda c, g: ll.generate(c, "Hi", max_tokens=3, grammar=g), "root ::= (", "not valid GBNF"),
    ("no-root", lambda c, g: ll.generate(c, "Hi", max_tokens=3, grammar=g), 'answer ::= "a"', "no rule named root"),
    ("batch-syntax", lambda c, g: ll.generate_parallel(c, ["Hi"], max_tokens=3, grammar=g), 'root ::= "a" )', "not valid GBNF"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "grammar", "phrase"), cases(GRAMMARS), ids=names(GRAMMARS))
def test_grammar_errors_are_grammar_errors(ctx2, call, grammar, phrase):
    refused(lambda: call(ctx2, grammar), GrammarError, phrase)


BAD_ROWS = [
    ("empty", "", "the prompt is empty"),
    ("blank", "  \n", "the prompt is empty"),
    ("none", None, "the prompt must be a string, got NoneType"),
    ("number", 5, "the prompt must be a string, got int"),
    ("lone-surrogate", "bad \ud800", r"not valid text \(surrogates not allowed\)"),
]


@pytest.mark.parametrize(("row", "phrase"), cases(BAD_ROWS), ids=names(BAD_ROWS))
def test_a_bad_row_is_an_error_row_in_its_place(ctx2, row, phrase):
    out = ll.generate_parallel(ctx2, ["Say hi.", row, "Say yes."], max_tokens=3, progress=False)
    assert out[0].ok and out[2].ok
    assert out[1].finish_reason == "error" and out[1].startswith("Error: ")
    assert re.search(phrase, out[1].error), out[1].error


def test_a_row_too_long_for_a_fixed_context_is_an_error_row(model):
    with ll.context_create(model, n_ctx=64, n_seq_max=2) as small:
        out = ll.generate_parallel(small, ["word " * 200, "Hi"], max_tokens=2, progress=False)
    assert not out[0].ok and out[1].ok


# -- unicode ----------------------------------------------------------------------------------
UNICODE = [
    ("emoji", "Say 🙂👍🏽 back.", None),
    ("zwj-sequence", "Who is 👩‍💻?", None),
    ("rtl", "مرحبا بالعالم", None),
    ("mixed-direction", "abc \u202eדוד\u202c def", None),
    ("cjk", "你好，世界", None),
    ("combining", "Cafe\u0301 au lait", None),
    ("bom", "\ufeffhello", None),
    ("nul", "a\x00b", None),
    ("unicode-blank", "\u2003\u00a0", "is empty"),
    ("lone-surrogate", "bad \ud800", "not valid text"),
    ("surrogate-pair-halves", "\udc00\ud800", "not valid text"),
]


@pytest.mark.parametrize(("text", "error"), cases(UNICODE), ids=names(UNICODE))
def test_unicode_rows(ctx2, text, error):
    out = ll.generate_parallel(ctx2, ["Say hi.", text], max_tokens=3, progress=False)
    assert out[0].ok
    if error is None:
        assert out[1].ok, out[1].error
    else:
        assert error in out[1].error and out[1].finish_reason == "error"


def test_classify_keeps_the_valid_rows_around_a_lone_surrogate(ctx2):
    texts = [TEXTS[0], "bad \ud800", TEXTS[1], "🙂 مرحبا"]
    out = ll.classify(ctx2, texts, SENTIMENT, progress=False)
    assert list(out["label"].isna()) == [False, True, False, False]
    assert "not valid text" in out["error"][1]


def test_extract_keeps_the_valid_rows_around_a_lone_surrogate(ctx2):
    out = ll.extract(ctx2, ["I live in Rome.", "bad \ud800"], SCHEMA, max_tokens=24, progress=False)
    assert isinstance(out[0], (dict, ll.Result)) and "not valid text" in out[1].error


# -- concurrency ------------------------------------------------------------------------------
def _in_threads(jobs: list[Call]) -> list[Any]:
    results: list[Any] = [None] * len(jobs)

    def run(k: int) -> None:
        try:
            results[k] = jobs[k]()
        except BaseException as exc:  # reported by the test
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_one_context_from_three_threads(ctx2):
    sets = [[f"Say the number {i}.", f"Name the colour {i}."] for i in range(3)]
    want = [list(ll.generate_parallel(ctx2, s, max_tokens=4, progress=False)) for s in sets]
    jobs = [lambda s=s: ll.generate_parallel(ctx2, s, max_tokens=4, progress=False) for s in sets]
    got = _in_threads(jobs)
    assert [list(g) for g in got] == want


def test_a_background_job_and_foreground_calls_share_one_context(ctx2):
    prompts = ["Count to five.", "Name a fruit."]
    want = list(ll.generate_parallel(ctx2, prompts, max_tokens=6, progress=False))
    job = ll.generate_parallel(ctx2, prompts, max_tokens=6, background=True, progress=False)
    got = _in_threads(
        [lambda: ll.generate_parallel(ctx2, prompts, max_tokens=6, progress=False)] * 2
    )
    assert [list(g) for g in got] == [want, want]
    assert list(job.result(timeout=120)) == want


# -- interrupts (one per entry point is in test_interrupts.py) --------------------------------
def _finished(exc: BatchInterrupted) -> dict[int, Any]:
    return {i: r for i, r in enumerate(exc.results) if r.finish_reason != "cancelled"}


def test_accessor_out_over_an_existing_column_keeps_the_old_values(ctx2):
    df = pd.DataFrame({"a": [f"Write the number {i} in words." for i in range(8)]})
    old = df["a"].copy()
    with pytest.raises(BatchInterrupted) as info:
        df.llm.generate(
            "{a}", out="a", model=ctx2, max_tokens=4, cache=False, progress=stop_after(2)
        )
    finished = _finished(info.value)
    assert 0 < len(finished) < len(df)
    assert df["a"].notna().all()  # nothing cleared before its row finished
    for i in range(len(df)):
        assert df["a"].iloc[i] == (str(finished[i]) if i in finished else old.iloc[i])


def test_accessor_classify_out_keeps_old_values_of_unfinished_rows(ctx2):
    df = pd.DataFrame({"t": TEXTS * 3, "mood": ["?"] * 12})
    with pytest.raises(BatchInterrupted) as info:
        df.llm.classify("{t}", SENTIMENT, out="mood", model=ctx2, progress=stop_after(2))
    finished = _finished(info.value)
    assert 0 < len(finished) < len(df)
    assert [df["mood"][i] != "?" for i in range(len(df))] == [i in finished for i in range(len(df))]


def test_classify_interrupted_keeps_finished_rows(ctx2):
    with pytest.raises(BatchInterrupted) as info:
        ll.classify(ctx2, TEXTS * 3, SENTIMENT, progress=stop_after(2))
    finished = _finished(info.value)
    assert 2 <= len(finished) < 12 and all(str(r) in SENTIMENT for r in finished.values())


def test_explore_interrupted_keeps_finished_rows(model):
    def stop(frame: pd.DataFrame) -> None:
        raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted) as info:
        ll.explore(
            {"smol": model}, TEXTS, labels=SENTIMENT, batch_size=2, on_result=stop, progress=False
        )
    finished = _finished(info.value)
    assert len(finished) == 2 and all(str(r) in SENTIMENT for r in finished.values())


# -- explore ----------------------------------------------------------------------------------
def _bad_architecture_copy(tmp_path: Path) -> Path:
    """The default model with its architecture renamed: a whole, valid GGUF file that
    llama.cpp refuses to load."""
    data = bytearray(model_bytes())
    at = data.index(b"general.architecture") + len(b"general.architecture") + 12
    assert data[at : at + 5] == b"llama"
    data[at : at + 5] = b"llamx"
    path = tmp_path / "other-arch.gguf"
    path.write_bytes(bytes(data))
    return path


EXPLORE_CASES = [
    ("no-texts", {"prompts": []}, InvalidParameterError, "There are no texts to annotate"),
    ("no-models", {"models": {}}, InvalidParameterError, "There are no models to explore"),
    ("models-none", {"models": None}, InvalidParameterError, "models must be a model reference"),
    ("bare-string-texts", {"prompts": "one text"}, InvalidParameterError, r"wrap a single one in \[\]"),
    ("labels-string", {"labels": "AB"}, InvalidParameterError, "labels must be a list of label names"),
    ("bad-example", {"examples": [("t",)]}, InvalidParameterError, "Example 0 is"),
    ("n-seq-max-0", {"n_seq_max": 0}, InvalidParameterError, "n_seq_max must be a positive integer"),
    ("batch-size-negative", {"batch_size": -1}, InvalidParameterError, "batch_size must be a positive integer"),
    ("format-unknown", {"format": "bogus"}, InvalidParameterError, "format must be one of"),
    ("truth-too-short", {"truth": ["positive"]}, InvalidParameterError, "truth has 1 values for 2 texts"),
    ("unknown-model", {"models": {"smol": "default", "gone": "/no/such/model.gguf"}}, ModelNotFoundError, "Model 'gone': No model file at"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "error", "phrase"), cases(EXPLORE_CASES), ids=names(EXPLORE_CASES)
)
def test_explore_checks_everything_before_running(change, error, phrase):
    args = {"models": {"smol": "default"}, "prompts": TEXTS[:2], "labels": SENTIMENT, **change}
    seen: list[Any] = []
    refused(lambda: ll.explore(**args, on_result=seen.append, progress=False), error, phrase)
    assert seen == []


def test_explore_checks_every_model_file_before_the_first_runs(tmp_path):
    bad = make_model_file(tmp_path, 0.5)
    seen: list[Any] = []
    sink = tmp_path / "out.csv"
    models = {"smol": "default", "bad": str(bad)}

    def call() -> Any:
        return ll.explore(models, TEXTS[:2], labels=SENTIMENT, sink=sink, on_result=seen.append)

    refused(call, InvalidModelFileError, r"Model 'bad': .* is truncated")
    assert seen == [] and not sink.exists()


def test_explore_keeps_finished_models_when_a_later_one_fails_to_load(model, tmp_path):
    bad = _bad_architecture_copy(tmp_path)
    with pytest.warns(RuntimeWarning, match="Model 'bad' failed"):
        out = ll.explore(
            {"smol": model, "bad": str(bad)},
            TEXTS,
            labels=SENTIMENT,
            reuse_models=False,
            progress=False,
        )
    assert list(out.matrix.columns) == ["smol"] and out.matrix["smol"].notna().all()
    assert set(out.errors) == {"bad"} and "bad" not in out.hashes


# -- evaluation --------------------------------------------------------------------------------
LONG = pd.DataFrame(
    {
        "sample_id": [0, 1, 2, 0, 1, 2],
        "model_id": ["a"] * 3 + ["b"] * 3,
        "label": ["x", "y", "x", "x", "y", "y"],
        "truth": ["x", "y", "y"] * 2,
    }
)
SAME = pd.DataFrame({"a": ["x", "x"], "b": ["x", "x"], "c": ["x", "x"]})
EVALUATION = [
    ("gold-shorter", lambda: ll.validate(LONG, gold=["x", "y"]), "gold has 2 labels for 3 samples"),
    ("gold-longer", lambda: ll.validate(LONG, gold=["x"] * 4), "gold has 4 labels for 3 samples"),
    ("gold-number", lambda: ll.validate(LONG, gold=5), "gold must be a list or Series"),
    ("gold-unknown-column", lambda: ll.validate(LONG, gold="nope"), "Column 'nope' not found"),
    ("not-a-frame", lambda: ll.validate([1, 2]), "annotations must be a pandas DataFrame"),
    ("one-coder", lambda: ll.intercoder_reliability(SAME[["a"]]), "at least two coders"),
    ("method-unknown", lambda: ll.intercoder_reliability(SAME, "bogus"), "method must be"),
    ("alpha-one-value", lambda: ll.intercoder_reliability(SAME, "krippendorff"), r"undefined here \(every label is 'x'\)"),
    ("alpha-all-nan", lambda: ll.intercoder_reliability(SAME.where(SAME == "z"), "krippendorff"), r"undefined here \(there are no labels\)"),
    ("alpha-no-shared-sample", lambda: ll.intercoder_reliability(pd.DataFrame({"a": ["x", None, None], "b": [None, "y", None], "c": [None, None, "x"]}), "krippendorff"), "labelled by at least two coders"),
    ("alpha-level-unknown", lambda: ll.intercoder_reliability(LONG, "krippendorff", level="bogus"), "level must be one of"),
    ("alpha-interval-text", lambda: ll.intercoder_reliability(pd.DataFrame({"a": ["x", "y"], "b": ["y", "y"], "c": ["x", "x"]}), "krippendorff", level="interval"), "must be numbers for level='interval'"),
    ("compare-gold-shorter", lambda: ll.compute_confusion_matrices(LONG, gold=["x"]), "gold has 1 labels for 3 samples"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "phrase"), cases(EVALUATION), ids=names(EVALUATION))
def test_evaluation_arguments(call, phrase):
    refused(call, InvalidParameterError, phrase)


def test_validate_with_all_coders_agreeing_leaves_alpha_out():
    report = ll.validate(SAME, gold=["x", "x"])
    assert report.reliability is None and list(report.metrics["accuracy"]) == [1.0] * 3


# -- magics -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ip():
    """The test session's one IPython shell, with the extension loaded for this module."""
    shell = start_ipython() or get_ipython()
    shell.extension_manager.load_extension("jupyter_localllm")
    yield shell
    shell.extension_manager.unload_extension("jupyter_localllm")


MAGICS = [
    ("n-seq-max-negative", "%llm load default --alias x --n-seq-max -4", "--n-seq-max: must be at least 1, got -4"),
    ("n-seq-max-zero", "%llm load default --alias x --n-seq-max 0", "--n-seq-max: must be at least 1, got 0"),
    ("n-ctx-zero", "%llm load default --alias x --n-ctx 0", "--n-ctx: must be at least 16, got 0"),
    ("n-ctx-word", "%llm load default --alias x --n-ctx lots", "invalid int value"),
    ("missing-file", "%llm load /no/such/model.gguf", "No model file at /no/such/model.gguf"),
    ("hf-malformed", "%llm load hf://owner/m.gguf", "write it as"),
    ("unload-unknown", "%llm unload nosuchalias", "No model is loaded as 'nosuchalias'"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "phrase"), cases(MAGICS), ids=names(MAGICS))
def test_magics_answer_in_one_line(ip, capsys, line, phrase):
    capsys.readouterr()
    res = ip.run_cell(line)
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err and phrase in err, err
    assert "x" not in get_manager().aliases


def test_llm_batch_with_one_label_is_one_line(ip, capsys, ctx2):
    ip.user_ns["frame"] = pd.DataFrame({"text": TEXTS[:2]})
    alias = get_manager().adopt(ctx2.model, alias="smol-faults")
    capsys.readouterr()
    try:
        res = ip.run_cell(f"%llm_batch frame.text --out mood --labels positive -m {alias}")
    finally:
        get_manager().unload(alias)  # forgets the adopted model without closing it
    assert isinstance(res.error_in_exec, UsageError)
    assert "at least two distinct labels" in capsys.readouterr().err
    assert "mood" not in ip.user_ns["frame"].columns


# -- accessors --------------------------------------------------------------------------------
FRAME = pd.DataFrame({"t": ["Say hi.", None, "", "bad \ud800", 5, "Say yes."]})
ACCESSORS = [
    ("missing-column", lambda c: FRAME.llm.generate("{missing}", model=c), "Column 'missing' not found"),
    ("labels-string", lambda c: FRAME.llm.classify("{t}", "AB", model=c), "labels must be a list of label names"),
    ("series-no-labels", lambda c: FRAME["t"].llm.classify(model=c), "Give the labels"),
    ("schema-string", lambda c: FRAME.llm.extract("{t}", "city", model=c), "schema must be a JSON-schema dict"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "phrase"), cases(ACCESSORS), ids=names(ACCESSORS))
def test_accessor_arguments(ctx2, call, phrase):
    refused(lambda: call(ctx2), InvalidParameterError, phrase)


def test_accessor_bad_cells_are_error_rows_in_place(ctx2):
    df = FRAME.copy()
    out = df.llm.generate(
        "{t}", out="answer", model=ctx2, max_tokens=3, cache=False, progress=False
    )
    assert [r.ok for r in out] == [True, False, False, False, False, True]
    assert "not valid text" in out.iloc[3].error
    assert list(df["answer"]) == list(out)


# -- native code with unusual input: in a subprocess, which must exit cleanly ----------------
PRELUDE = """
import jupyter_localllm as ll
from jupyter_localllm.errors import LocalLLMError
m = ll.model_load("default")
ctx = ll.context_create(m, n_seq_max=2)
try:
    {case}
except LocalLLMError as exc:
    print("ERROR", type(exc).__name__, exc)
print("DONE")
"""
NATIVE = [
    ("control-characters", 'r = ll.generate_parallel(ctx, ["a\\x00b", "\\x01\\x02\\x1b[31m\\x7f"], max_tokens=3, progress=False); print("OK", [x.ok for x in r])', "OK [True, True]"),
    ("huge-temperature", 'print("OK", ll.generate(ctx, "Hi", max_tokens=3, temperature=1e308).ok)', "OK True"),
    ("huge-top-k", 'print("OK", ll.generate(ctx, "Hi", max_tokens=3, temperature=1.0, top_k=2**31 - 1).ok)', "OK True"),
    ("tiny-top-p-full-min-p", 'print("OK", ll.generate(ctx, "Hi", max_tokens=3, temperature=1.0, top_p=1e-9, min_p=1.0).ok)', "OK True"),
    ("max-tokens-past-n-ctx", 'c = ll.context_create(m, n_ctx=64); r = ll.generate_parallel(c, ["1, 2, 3, 4, 5, 6, 7,"], max_tokens=10**6, progress=False); print("OK", r[0].finish_reason)', "OK length"),
    ("classify-odd-labels", 'print("OK", ll.classify(ctx, ["a\\x00b", "🙂"], ["\\x00", "✓✓"], progress=False)["error"].isna().all())', "OK True"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expect"), cases(NATIVE), ids=names(NATIVE))
def test_native_inputs_leave_the_process_running(case, expect):
    proc = run_python(PRELUDE.format(case=case))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout and "DONE" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_chat_template_of_odd_text_runs(model, ctx2):
    out = ll.generate_parallel(
        ctx2, [chat(model, "\x00🙂\u202e"), chat(model, "ok")], max_tokens=3, progress=False
    )
    assert all(r.ok for r in out)
