"""The magics through a real IPython ``InteractiveShell``: every subcommand and option, and the
one-line failures a notebook user sees."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from IPython import get_ipython
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from jupyter_localllm.notebook.config import get_settings
from jupyter_localllm.notebook.magics import LLMResponse
from jupyter_localllm.session.manager import get_manager


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython() or get_ipython()  # one global shell per test session
    shell.run_line_magic("load_ext", "jupyter_localllm")
    yield shell
    get_manager().unload_all()
    shell.run_line_magic("unload_ext", "jupyter_localllm")


@pytest.fixture(scope="module")
def loaded(ip):
    get_manager().unload_all()
    ok(ip, "%llm load default --alias smol")
    ok(ip, "%config LocalLLM.max_tokens = 24")
    yield ip
    ip.run_line_magic("config", "LocalLLM.max_tokens = 100")  # the defaults table's


def ok(ip, code: str):
    """Run ``code``; fail the test with the error when the cell raised."""
    res = ip.run_cell(code)
    assert res.error_before_exec is None and res.error_in_exec is None, (
        res.error_before_exec or res.error_in_exec
    )
    return res.result


def usage_error(ip, code: str, capsys) -> str:
    """Run ``code``, check it failed with a UsageError shown as one line (no traceback), and
    return that line."""
    capsys.readouterr()
    res = ip.run_cell(code)
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.startswith("UsageError: ") and "\n" not in err, err
    return err


# -- the extension ------------------------------------------------------------------------
def test_load_ext_twice_and_unload_are_safe(ip):
    ip.run_line_magic("load_ext", "jupyter_localllm")
    ip.run_line_magic("reload_ext", "jupyter_localllm")
    magics = ip.magics_manager.magics
    assert "llm" in magics["line"] and "llm" in magics["cell"] and "llm_batch" in magics["line"]
    ip.run_line_magic("unload_ext", "jupyter_localllm")
    assert "llm" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "jupyter_localllm")
    assert "llm_batch" in ip.magics_manager.magics["line"]
    assert sum(type(c).__name__ == "LocalLLM" for c in ip.configurables) == 1


def test_config_sets_the_settings(ip):
    ok(ip, "%config LocalLLM.n_seq_max = 4")
    ok(ip, '%config LocalLLM.default_model = "default"')
    assert get_settings().n_seq_max == 4
    ok(ip, "%config LocalLLM.n_seq_max = 8")
    assert get_settings().n_seq_max == 8
    ip.run_cell("%config LocalLLM.n_seq_max = 'many'")  # %config logs the type error
    assert get_settings().n_seq_max == 8


# -- %llm subcommands ---------------------------------------------------------------------
def test_help_and_no_subcommand_list_everything(ip, capsys):
    ok(ip, "%llm help")
    out = capsys.readouterr().out
    for word in ("load", "use", "models", "list", "unload", "status", "%%llm", "%llm_batch"):
        assert word in out
    ok(ip, "%llm")
    assert "%llm load" in capsys.readouterr().out


def test_unknown_subcommand_and_bad_flags_are_one_line(ip, capsys):
    assert "Unknown subcommand 'lod'" in usage_error(ip, "%llm lod default", capsys)
    assert "unrecognized arguments: --bogus" in usage_error(ip, "%llm models --bogus", capsys)
    line = usage_error(ip, "%llm load default --n-ctx lots", capsys)
    assert "--n-ctx" in line and "invalid int value" in line
    assert "quotes" in usage_error(ip, '%llm load "default', capsys)


def test_no_model_loaded_says_how_to_load_one(ip, capsys):
    get_manager().unload_all()
    line = usage_error(ip, "%%llm\nHello", capsys)
    assert "%llm load default" in line
    ok(ip, "%llm models")
    assert "%llm load default" in capsys.readouterr().out
    ip.user_ns["frame"] = pd.DataFrame({"text": ["a"]})
    assert "%llm load default" in usage_error(ip, "%llm_batch frame.text --out x", capsys)


def test_load_use_models_unload(loaded, capsys):
    ip = loaded
    ok(ip, "%llm load default --alias second --n-ctx 512 --n-seq-max 2 --n-gpu-layers 0")
    assert "as 'second'" in capsys.readouterr().out
    table = ok(ip, "%llm models")
    assert list(table.alias) == ["smol", "second"]
    assert table.set_index("alias").loc["second", "n_ctx"] == 512
    assert table.set_index("alias").loc["second", "n_seq_max"] == 2
    assert (table.size_mb > 90).all() and (table.memory_mb >= table.size_mb).all()
    assert list(table.default) == [True, False]
    ok(ip, "%llm use second")
    assert get_manager().default_alias == "second"
    line = usage_error(ip, "%llm use nobody", capsys)
    assert "'nobody'" in line and "second, smol" in line
    ok(ip, "%llm unload second")
    assert get_manager().aliases == ["smol"] and get_manager().default_alias == "smol"
    assert "'second'" in usage_error(ip, "%llm unload second", capsys)
    assert "the following arguments are required: alias" in usage_error(ip, "%llm use", capsys)


def test_list_shows_packaged_models(loaded):
    table = ok(loaded, "%llm list")
    assert {"source", "ref", "size_mb", "path"} <= set(table.columns)
    packaged = table[table.source == "packaged"]
    assert "default" in set(packaged.ref)
    assert (packaged.size_mb > 50).all()


def test_status_shows_hardware_and_models(loaded, capsys):
    ok(loaded, "%llm status")
    out = capsys.readouterr().out
    assert "CPU" in out and "RAM" in out and "smol" in out


# -- %%llm --------------------------------------------------------------------------------
def test_cell_answer_lands_in_out_as_display_object(loaded):
    res = ok(loaded, "%%llm --no-stream\nWhat is the capital of France? One word.")
    assert isinstance(res, LLMResponse)
    assert "Paris" in res.text
    bundle, meta = res._repr_mimebundle_()
    assert bundle["text/plain"] == res.text == bundle["text/markdown"]
    info = meta["jupyter_localllm"]
    assert info["model"] and 0 < info["tokens"] <= 24 and info["tokens_per_s"] > 0
    assert loaded.user_ns["Out"][loaded.execution_count - 1] is res


def test_cell_options_reach_the_model(loaded):
    ip = loaded
    ok(ip, "%%llm --no-stream --out first --seed 7 --temperature 0.9 --max-tokens 12\nTell a joke.")
    ok(ip, "%%llm --no-stream --out again --seed 7 --temperature 0.9 --max-tokens 12\nTell a joke.")
    assert ip.user_ns["first"] == ip.user_ns["again"]  # same seed, same sampled answer
    res = ok(ip, "%%llm --no-stream --max-tokens 3 -f text\nCount from one to ten in words.")
    assert "text/markdown" not in res._repr_mimebundle_()[0]
    assert res.n_tokens <= 3
    plain = ok(ip, "%%llm --no-stream\nWho are you?")
    again = ok(ip, "%%llm --no-stream\nWho are you?")
    pirate = ok(ip, '%%llm --no-stream -s "You are a pirate captain."\nWho are you?')
    assert plain.text == again.text != pirate.text  # greedy; the system prompt reached it


def test_interpolation_once_with_escapes(loaded, capsys):
    ip = loaded
    ip.user_ns["city"] = "Paris {secret}"  # braces in a value are not read again
    ip.user_ns["numbers"] = [3, 4]
    ip.user_ns["secret"] = "SHOULD NOT APPEAR"
    text = loaded.magics_manager.registry["LLMMagics"]._interpolate(
        "Where is {city}? {{x}} {numbers[1]}"
    )
    assert text == "Where is Paris {secret}? {x} 4"
    line = usage_error(ip, "%%llm\nTell me about {nowhere} and {nothing}.", capsys)
    assert "'nowhere', 'nothing'" in line and "--no-interpolate" in line
    assert "braces" in usage_error(ip, "%%llm\nA lone { brace", capsys)
    res = ok(ip, "%%llm --no-stream --no-interpolate --max-tokens 4\nExplain {nowhere}.")
    assert isinstance(res, LLMResponse)
    assert "--out needs a variable name" in usage_error(
        ip, "%%llm --no-stream --out 2x\nHi", capsys
    )


# Names whose binding would break later cells: builtins, dunders, IPython's own names and
# history, keywords and non-identifiers; modules imported in the notebook are added below.
BAD_OUT = [
    "__builtins__",
    "__name__",
    "__doc__",
    "print",
    "len",
    "type",
    "display",
    "In",
    "Out",
    "_",
    "__",
    "___",
    "_i",
    "_ii",
    "_iii",
    "_oh",
    "_dh",
    "_ih",
    "_7",
    "_i12",
    "get_ipython",
    "exit",
    "quit",
    "class",
    "None",
    "2x",
    "a-b",
    "x.y",
    "pd",
    "np",
]


def test_out_refuses_names_that_would_break_the_notebook(loaded, capsys):
    import numpy

    ip = loaded
    ip.user_ns.update(pd=pd, np=numpy)
    calls = []
    manager = get_manager()
    saved = manager.context
    manager.context = lambda *a, **k: calls.append(a) or saved(*a, **k)
    try:
        for name in BAD_OUT:
            before = ip.user_ns.get(name, "absent")
            line = usage_error(ip, f"%%llm --no-stream --out {name}\nHi", capsys)
            assert f"--out {name}" in line or repr(name) in line, line
            assert ip.user_ns.get(name, "absent") is before, name
    finally:
        manager.context = saved
    assert not calls  # refused before any model work
    assert "would shadow Python's builtin print" in usage_error(ip, "%%llm --out print\nHi", capsys)
    assert "module pandas" in usage_error(ip, "%%llm --out pd\nHi", capsys)
    assert ok(ip, "len([1, 2]) + int(pd.Series([1]).sum())") == 3  # every later cell works
    ok(ip, "%%llm --no-stream --max-tokens 2 --out match\nHi")  # a soft keyword is a fine name
    assert isinstance(ip.user_ns["match"], str)


def test_unknown_alias_and_bad_format(loaded, capsys):
    line = usage_error(loaded, "%%llm -m ghost\nHi", capsys)
    assert "'ghost'" in line and "smol" in line
    assert "invalid choice: 'html'" in usage_error(loaded, "%%llm -f html\nHi", capsys)
    assert "cell is empty" in usage_error(loaded, "%%llm\n   \n", capsys)


def test_streaming_updates_the_display_before_the_answer(loaded):
    ip = loaded
    publisher = CapturingDisplayPublisher()
    saved, ip.display_pub = ip.display_pub, publisher
    try:
        res = ok(ip, "%%llm --max-tokens 60\nWrite three sentences about the sea.")
    finally:
        ip.display_pub = saved
    updates = [o for o in publisher.outputs if o["update"]]
    first = publisher.outputs[0]
    assert not first["update"] and first["transient"]["display_id"]
    shown = [o["data"]["text/plain"] for o in updates if o["data"]["text/plain"]]
    assert len(shown) >= 2, "the streamed display was updated fewer than two times"
    assert all(b.startswith(a) for a, b in itertools.pairwise(shown))  # it grows
    assert res.text.startswith(shown[-1].strip()[:20])
    assert updates[-1]["data"]["text/plain"] == ""  # cleared: the answer is in Out[n]


def test_json_format_is_parsed_and_stored(loaded):
    res = ok(loaded, "%%llm -f json --out person --max-tokens 60\nA fictional person: name, age.")
    assert isinstance(loaded.user_ns["person"], dict) and loaded.user_ns["person"]
    bundle, _ = res._repr_mimebundle_()
    assert bundle["application/json"] == loaded.user_ns["person"]


def test_code_format_inserts_a_cell(loaded):
    payloads = []
    saved = loaded.set_next_input
    loaded.set_next_input = lambda text, replace=False: payloads.append(text)
    try:
        res = ok(
            loaded, "%%llm -f code --no-stream --max-tokens 40\nPython code that prints hello."
        )
    finally:
        loaded.set_next_input = saved
    assert payloads == [res.text] and "```" not in res.text
    assert res._repr_mimebundle_()[0]["text/markdown"].startswith("```python\n")


# -- %llm_batch ---------------------------------------------------------------------------
@pytest.fixture
def frame(loaded):
    df = pd.DataFrame(
        {"text": ["I love this film", "Worst meal ever", None, 42, "Great service"]},
        index=[10, 20, 30, 40, 50],
    )
    loaded.user_ns["reviews"] = df
    return df


def test_batch_generate_writes_by_index(loaded, frame, capsys):
    ok(loaded, "%llm_batch reviews.text --out reply --max-tokens 8 --n-seq-max 2")
    assert "Wrote 5 rows to reviews['reply']" in capsys.readouterr().out
    reply = frame["reply"]
    assert list(reply.index) == [10, 20, 30, 40, 50]
    assert reply[30].startswith("Error: column 'text' is empty")
    assert reply[40].startswith("Error: column 'text' holds int 42")
    for i in (10, 20, 50):
        assert reply[i] and not reply[i].startswith("Error") and reply[i].n_tokens <= 8
    assert frame.attrs["llm"]["errors"] == 2


def test_batch_template_and_labels(loaded, frame):
    ok(
        loaded,
        '%llm_batch reviews.text --out mood --labels "positive, negative" '
        '--template "Review: {text}" -s "You rate reviews."',
    )
    mood = frame["mood"]
    assert mood[10] == "positive" and mood[20] == "negative"
    assert mood.isna().sum() == 2 and mood[30] is pd.NA
    assert frame.attrs["llm"]["labels"] == ["positive", "negative"]
    plain_hash = frame.attrs["llm"]["hashes"]["input_sha256"]
    ok(
        loaded,
        '%llm_batch reviews.text --out mood2 --labels "positive, negative" '
        '--template "Review: {text}" -s "You rate reviews." --calibrate',
    )
    assert set(frame["mood2"].dropna()) <= {"positive", "negative"}
    assert frame["mood2"].isna().sum() == 2
    assert frame.attrs["llm"]["hashes"]["input_sha256"] != plain_hash  # calibration is hashed


def test_batch_failures(loaded, frame, capsys):
    assert "No DataFrame named 'nothing'" in usage_error(
        loaded, "%llm_batch nothing.text --out x", capsys
    )
    loaded.user_ns["notframe"] = [1, 2]
    assert "not a DataFrame" in usage_error(loaded, "%llm_batch notframe.text --out x", capsys)
    line = usage_error(loaded, "%llm_batch reviews.body --out x", capsys)
    assert "Column 'body' not found in reviews; columns are text" in line
    assert "DF.COLUMN" in usage_error(loaded, "%llm_batch reviews --out x", capsys)
    assert "required: --out" in usage_error(loaded, "%llm_batch reviews.text", capsys)
    line = usage_error(loaded, '%llm_batch reviews.text --out x --template "{body}"', capsys)
    assert "Column 'body' not found" in line
    assert "unknown" not in frame.columns


def test_batch_column_labels_and_dtypes(loaded, frame, capsys):
    frame["stars"] = [5, 1, 3, 2, 4]
    line = usage_error(loaded, "%llm_batch reviews.text --out stars --max-tokens 2", capsys)
    assert "Column 'stars' holds int64 values" in line
    assert list(frame["stars"]) == [5, 1, 3, 2, 4]
    loaded.user_ns["numbered"] = numbered = pd.DataFrame({0: ["Say hi."]})
    ok(loaded, "%llm_batch numbered.0 --out reply --max-tokens 2")  # a column labelled 0
    assert numbered["reply"][0] and not numbered["reply"][0].startswith("Error")


def test_model_option_picks_the_alias(loaded):
    ip = loaded
    ok(ip, "%llm load default --alias other")
    try:
        res = ok(ip, "%%llm -m other --no-stream --max-tokens 5\nSay hello.")
        assert isinstance(res, LLMResponse) and res.n_tokens <= 5
        assert get_manager().entry("other").contexts  # the answer came from 'other'
        ip.user_ns["few"] = pd.DataFrame({"text": ["Hello there"]})
        ok(ip, "%llm_batch few.text --out reply -m other --max-tokens 4")
        assert not ip.user_ns["few"]["reply"][0].startswith("Error")
    finally:
        ok(ip, "%llm unload other")


def test_panel_shows_the_dashboard(loaded):
    board = ok(loaded, "%llm panel")
    try:
        assert type(board).__name__ == "Dashboard"
        assert "smol" in board.models.loaded.value  # the loaded model is listed
        assert board.hardware.running
    finally:
        board.close()
