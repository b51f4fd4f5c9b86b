"""Hostile model files (issue 25, family 1): metadata that llama.cpp would assert on is refused
by a project error, never by the process dying.

The fuzz tests edit every numeric hyperparameter of the default model in turn (0, 1, 2**31-1,
2**32-1), truncate and nest its arrays, and load each copy in a subprocess, several cases per
subprocess: a signal there names the case it died on. The other tests check the Python
pre-checks' messages in this process (they raise before llama.cpp sees the file).
"""

# ruff: noqa: E501 (the tables keep one case per line)
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gguf_edit as g
import pytest
from conftest import REPO_ROOT, cases, names

import jupyter_localllm as ll
from jupyter_localllm.errors import InvalidModelFileError
from jupyter_localllm.models import default_model_path, read_gguf_metadata, validate_model_file

SRC = default_model_path()
HEAD = g.read(SRC)
FUZZ_VALUES = (0, 1, 2**31 - 1, 2**32 - 1)
# Every numeric key of the default model: its hyperparameters, token ids, file type.
NUMERIC_KEYS = [k for k, (vtype, _) in HEAD.kvs.items() if vtype in g.SCALARS and vtype != 7]
_UNSIGNED = {0: 4, 1: 4, 2: 4, 3: 4, 5: 4, 4: 4, 10: 10, 11: 10}  # a type that holds 2**32-1

# Loads each (name, path) pair; prints CASE before and OK/ERR after, so a signal names its case.
_LOADER = """
import json, sys
import jupyter_localllm as ll
from jupyter_localllm.errors import LocalLLMError
for name, path in json.loads(sys.argv[1]):
    print("CASE", name, flush=True)
    try:
        model = ll.model_load(path)
        ctx = ll.context_create(model, n_ctx=128, n_seq_max=1)
        ll.generate(ctx, "Hello", max_tokens=2)
        ctx.close()
        model.close()
        print("OK", name, flush=True)
    except LocalLLMError as exc:
        print("ERR", name, type(exc).__name__, flush=True)
"""


def _fuzz_value(key: str, value: int) -> tuple[int, float | int]:
    vtype = HEAD.kvs[key][0]
    if vtype in (6, 12):  # a float hyperparameter takes the same numbers
        return vtype, float(value)
    limit = 2 ** (8 * g.struct.calcsize(g.SCALARS[vtype]) - (vtype in (1, 3, 5, 11)))
    return (vtype if value < limit else _UNSIGNED[vtype]), value


def load_cases(tmp_path: Path, cases: dict[str, dict]) -> dict[str, str]:
    """Write one copy per case, load them all in one subprocess; return name -> OK/ERR line.

    Fails the test, naming the case, when the subprocess dies of a signal."""
    files = []
    try:
        for i, (name, edits) in enumerate(cases.items()):
            drop = tuple(edits.pop("__drop__", ()))
            path = g.write_copy(SRC, tmp_path / f"c{i}.gguf", edits, drop=drop)
            files.append((name, str(path)))
        run = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_LOADER), json.dumps(files)],
            capture_output=True,
            text=True,
            timeout=55,
            cwd=REPO_ROOT,
            check=False,
        )
    finally:  # 100 MB a copy: pytest keeps the folders of the last three runs
        for _, path in files:
            Path(path).unlink(missing_ok=True)
    lines = run.stdout.splitlines()
    started = [line.split(" ", 1)[1] for line in lines if line.startswith("CASE ")]
    if run.returncode < 0:
        sig = signal.Signals(-run.returncode).name
        pytest.fail(f"case {started[-1]!r} killed the process ({sig}): {run.stderr[-600:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    done = {line.split(" ")[1]: line for line in lines if line.startswith(("OK ", "ERR "))}
    assert set(done) == set(cases), (done, run.stderr[-1000:])
    return done


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_numeric_key_fuzz(tmp_path, key):
    cases = {f"{key}={v}": {key: _fuzz_value(key, v)} for v in FUZZ_VALUES}
    outcomes = load_cases(tmp_path, cases)
    if key.endswith(".block_count"):  # llama.cpp asserts 1..512: refused before it reads
        assert outcomes[f"{key}=0"] == f"ERR {key}=0 InvalidModelFileError"
        assert outcomes[f"{key}={2**32 - 1}"].endswith("InvalidModelFileError")


def _array(key: str, items: list) -> tuple[int, g.Array]:
    return g.ARRAY, g.Array(HEAD.kvs[key][1].elem_type, items)


def _per_layer(values: list[int]) -> tuple[int, g.Array]:
    return g.ARRAY, g.Array(g.UINT32, values)


def test_array_fuzz(tmp_path):
    tokens = HEAD.kvs["tokenizer.ggml.tokens"][1].items
    duplicate = list(tokens)
    duplicate[100] = duplicate[99]
    cases = {
        "tokens-truncated": {"tokenizer.ggml.tokens": _array("tokenizer.ggml.tokens", tokens[:9])},
        "tokens-empty": {"tokenizer.ggml.tokens": _array("tokenizer.ggml.tokens", [])},
        "token-types-truncated": {
            "tokenizer.ggml.token_type": _array("tokenizer.ggml.token_type", [1] * 10)
        },
        "merges-truncated": {"tokenizer.ggml.merges": _array("tokenizer.ggml.merges", ["a b"])},
        "tokens-duplicate": {"tokenizer.ggml.tokens": _array("tokenizer.ggml.tokens", duplicate)},
        "tokens-nested": {"tokenizer.ggml.tokens": g.nested_array(2)},
        "languages-nested-deep": {"general.languages": g.nested_array(50_000)},
        "tokens-missing": {"__drop__": ["tokenizer.ggml.tokens"]},
        "heads-kv-zero-in-a-layer": {"llama.attention.head_count_kv": _per_layer([3] * 29 + [0])},
        "heads-kv-not-dividing": {"llama.attention.head_count_kv": _per_layer([3] * 29 + [2])},
        "heads-per-layer-short": {"llama.attention.head_count": _per_layer([9] * 5)},
        "ff-per-layer-huge": {"llama.feed_forward_length": _per_layer([2**32 - 1] * 30)},
    }
    outcomes = load_cases(tmp_path, cases)
    for name in ("tokens-duplicate", "heads-kv-not-dividing", "languages-nested-deep"):
        assert outcomes[name].endswith("InvalidModelFileError"), outcomes[name]


def test_tokenizer_fuzz(tmp_path):
    cases = {
        f"tokenizer-{kind}": {"tokenizer.ggml.model": kind}
        for kind in ("llama", "none", "bert", "t5", "ugm", "rwkv", "no_vocab", "")
    }
    cases["pre-unknown"] = {"tokenizer.ggml.pre": "nonsense"}
    cases["add-bos-without-bos"] = {
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.bos_token_id": 2**32 - 1,
    }
    outcomes = load_cases(tmp_path, cases)
    # an SPM tokenizer over a BPE vocabulary is an uncaught C++ exception in llama.cpp
    assert outcomes["tokenizer-llama"] == "ERR tokenizer-llama InvalidModelFileError"


# -- the Python pre-checks: one sentence naming the key and the limit --------------------------
EXPERTS = "llama.expert_count"
USED = "llama.expert_used_count"
PRECHECKS = [
    ("layers-0", {"llama.block_count": 0}, r"llama.block_count = 0, but llama.cpp accepts 1 to 512"),
    ("layers-huge", {"llama.block_count": 100_000}, r"block_count = 100,000, but llama.cpp accepts 1 to 512"),
    ("nextn", {"llama.nextn_predict_layers": (g.UINT32, 31)}, r"nextn_predict_layers = 31, but it cannot exceed the layer count \(30\)"),
    ("experts-over-max", {EXPERTS: (g.UINT32, 4096), USED: (g.UINT32, 2)}, r"expert_count = 4,096, but llama.cpp accepts at most 1024"),
    ("used-over-experts", {EXPERTS: (g.UINT32, 4), USED: (g.UINT32, 8)}, r"expert_used_count = 8, but it cannot exceed the expert count \(4\)"),
    ("experts-none-used", {EXPERTS: (g.UINT32, 8)}, r"expert_used_count = 0, but a model with 8 experts must use at least one"),
    ("used-without-experts", {USED: (g.UINT32, 2)}, r"expert_used_count = 2, but it cannot exceed the expert count \(0\)"),
    ("used-per-layer", {EXPERTS: (g.UINT32, 8), USED: _per_layer([2] * 29 + [9])}, r"expert_used_count = 9, but it cannot exceed"),
    ("groups-not-dividing", {EXPERTS: (g.UINT32, 8), USED: (g.UINT32, 2), "llama.expert_group_count": (g.UINT32, 3), "llama.expert_group_used_count": (g.UINT32, 1)}, r"expert_group_count = 3, but it must divide the expert count \(8\)"),
    ("kv-heads-over-heads", {"llama.attention.head_count_kv": 18}, r"head_count_kv = 18, but it must divide llama.attention.head_count \(9\)"),
    ("kv-heads-per-layer", {"llama.attention.head_count_kv": _per_layer([3] * 10 + [4] * 20)}, r"head_count_kv = 4, but it must divide .* in layer 10"),
    ("per-layer-too-long", {"llama.attention.head_count": _per_layer([9] * 600)}, r"head_count = <array of 600 uint32>, but it needs one value per layer \(30\)"),
    ("rope-scaling", {"llama.rope.scaling.type": (g.STRING, "warp")}, r"rope.scaling.type = 'warp', but llama.cpp knows only none, linear, yarn, longrope"),
    ("nested", {"general.languages": g.nested_array(3)}, r"arrays of arrays in general.languages"),
    ("nested-deep", {"general.languages": g.nested_array(10**6)}, r"nests arrays over 8 deep"),
]  # fmt: skip


@pytest.mark.parametrize(("edits", "phrase"), cases(PRECHECKS), ids=names(PRECHECKS))
def test_prechecks_name_key_and_limit(tmp_path, edits, phrase):
    path = g.write_copy(SRC, tmp_path / "m.gguf", edits)
    with pytest.raises(InvalidModelFileError, match=phrase) as info:
        ll.model_load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_deeply_nested_metadata_reads_without_recursion(tmp_path):
    path = g.write_copy(SRC, tmp_path / "m.gguf", {"general.languages": g.nested_array(10**6)})
    with pytest.raises(InvalidModelFileError, match="nests arrays over 8 deep"):
        read_gguf_metadata(path)
    shallow = g.write_copy(SRC, tmp_path / "s.gguf", {"general.languages": g.nested_array(3)})
    assert read_gguf_metadata(shallow)["general.languages"] == [[[7]]]


def test_real_per_layer_values_pass(tmp_path):
    # the default model's own values, spelled out per layer: nothing to refuse
    edits = {
        "llama.attention.head_count": _per_layer([9] * 30),
        "llama.attention.head_count_kv": _per_layer([3] * 15 + [1] * 15),
        "llama.rope.scaling.type": (g.STRING, "yarn"),
    }
    path = g.write_copy(SRC, tmp_path / "m.gguf", edits)
    assert validate_model_file(path) == path


def test_probe_verdict_is_remembered(tmp_path, cache):
    # an SPM tokenizer over this BPE vocabulary kills llama.cpp: the probe refuses the file
    # once, and the second refusal comes from the verdict kept in the cache folder
    path = g.write_copy(SRC, tmp_path / "m.gguf", {"tokenizer.ggml.model": "llama"})
    code = f"""
        import jupyter_localllm as ll
        from jupyter_localllm.errors import InvalidModelFileError
        for _ in range(2):
            try:
                ll.model_load({str(path)!r})
            except InvalidModelFileError as exc:
                print(exc)
    """
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=55, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    first, second = run.stdout.splitlines()
    assert first == second and "llama.cpp crashes (SIGABRT) loading" in first
    assert "unordered_map::at" in first
    assert str(path) in (cache / ".probed-models.json").read_text()


# -- chat templates as a CPU or memory bomb (family 3) ------------------------------------------
LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
BOMBS = [
    ("nested-range", LOOPS, r"ran for over 0.3 s without finishing"),
    ("nested-list", "{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}", r"ran for over 0.3 s"),
    ("loop-recursive", "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}", r"recursed too deep"),
    ("macro-recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", r"recursed too deep"),
    ("macro-doubling", "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}", r"size budget of 4,194,304 \(an argument of 8,388,608"),
    ("string-times", "{{ 'x' * 10**9 }}", r"a repetition of 1,000,000,000 characters"),
    ("list-times", "{{ ([0] * 1000000000)|length }}", r"a repetition of 1,000,000,000"),
    ("list-times-twice", "{% set a = [0] * 1000000 %}{{ (a * 1000)|length }}", r"a repetition of 1,000,000,000"),
    ("power", "{{ 2 ** 100000000 }}", r"a power of more than 65,536 bits"),
    ("squaring", "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}", r"a product of more than"),
    ("namespace-doubling", "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", r"a namespace value of 8,388,608"),
    ("center-filter", "{{ 'x'|center(1000000000) }}", r"the center filter with the number 1,000,000,000"),
    ("center-method", "{{ 'x'.center(1000000000) }}", r"a call with the number 1,000,000,000"),
    ("zfill", "{{ '1'.zfill(10**9) }}", r"a call with the number 1,000,000,000"),
    ("format-filter", "{{ '%999999999s'|format('x') }}", r"the format filter with the number 999,999,999"),
    ("format-star", "{{ '%*s'|format(999999999, 'x') }}", r"the format filter with the number 999,999,999"),
    ("percent", "{{ '%.999999999f' % 1.5 }}", r"a %-format with the number 999,999,999"),
    ("str-format", "{{ '{:>999999999}'.format('x') }}", r"a format with the number 999,999,999"),
    ("join-filter", "{{ range(100000)|join('x' * 4000000) }}", r"the join filter's result"),
    ("join-method", "{{ ('x' * 4000000).join(['a'] * 100000) }}", r"a join\(\) of about 400,000,100,000"),
    ("replace-empty", "{{ ('x' * 100000)|replace('', 'y' * 100000) }}", r"the replace filter's result"),
    ("indent", "{{ 'a\nb'|indent(1000000000) }}", r"the indent filter with the number"),
    ("tojson-indent", "{{ messages|tojson(indent=1000000000) }}", r"the tojson filter with the number"),
    ("batch-fill", "{{ [1]|batch(1000000000, 'x')|list|length }}", r"the batch filter with the number"),
    ("output", "{% for i in range(100000) %}{% for j in range(100) %}{{ 'x' * 90 }}{% endfor %}{% endfor %}", r"an output of over 4,194,304 characters"),
]  # fmt: skip


@pytest.fixture
def quick_deadline(monkeypatch):
    """A 0.3 s render budget instead of 5 s, so a loop bomb costs the test little."""
    from jupyter_localllm.tasks import chat

    monkeypatch.setattr(chat, "RENDER_TIME_S", 0.3)


@pytest.mark.parametrize(("template", "phrase"), cases(BOMBS), ids=names(BOMBS))
def test_chat_template_bombs_get_one_line(quick_deadline, template, phrase):
    from jupyter_localllm.errors import PromptError
    from jupyter_localllm.tasks.chat import render_chat

    with pytest.raises(PromptError, match=phrase) as info:
        render_chat(template, "hello", origin="/models/m.gguf")
    message = str(info.value)
    assert message.startswith("The chat template of /models/m.gguf ") and "\n" not in message
    assert message.endswith("pass template= with another one.")


def test_real_templates_keep_working(quick_deadline):
    from jupyter_localllm.tasks.chat import render_chat

    model_template = HEAD.kvs["tokenizer.chat_template"][1]
    long_text = "word " * 400_000  # 2 MB of message: the budget grows with the input
    out = render_chat(model_template, [{"role": "user", "content": long_text}])
    assert out.count("word") == 400_000
    busy = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{{ '=' * 80 }}{{ '%5d|%-8s' % (ns.n, m.role) }}{{ '{:>6}'.format(m.content) }}"
        "{{ m.content|center(12) }}{{ range(3)|join(', ') }}{% endfor %}"
    )
    out = render_chat(busy, [{"role": "user", "content": "hi"}] * 3)
    assert out.count("=" * 80) == 3 and "    3|user    " in out and "    hi" in out


def test_a_render_after_a_timeout_is_not_hit_by_it(quick_deadline):
    from jupyter_localllm.errors import PromptError
    from jupyter_localllm.tasks.chat import render_chat

    with pytest.raises(PromptError, match="ran for over"):
        render_chat(LOOPS, "hello")
    end = time.monotonic() + 0.6  # longer than the budget: a stray timeout would land here
    while time.monotonic() < end:
        assert render_chat(None, "hello").endswith("<|im_start|>assistant\n")


def test_a_render_in_a_background_thread_times_out(quick_deadline):
    from jupyter_localllm.errors import PromptError
    from jupyter_localllm.tasks.chat import render_chat

    caught: list[BaseException] = []

    def run():
        try:
            render_chat(LOOPS, "hello")
        except BaseException as exc:  # the test reports whatever arrived
            caught.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and len(caught) == 1 and isinstance(caught[0], PromptError)


def test_a_model_files_template_bomb_names_the_file(tmp_path):
    path = g.write_copy(
        SRC, tmp_path / "bomb.gguf", {"tokenizer.chat_template": "{{ 'x' * 10**10 }}"}
    )
    model = ll.model_load(path)
    try:
        with pytest.raises(Exception, match=f"The chat template of {path} went over") as info:
            ll.apply_chat_template(model, "Hi")
        assert type(info.value).__name__ == "PromptError"
        # a template of the user's own, passed instead, runs
        assert ll.apply_chat_template(model, "Hi", template="{{ messages[0].content }}") == "Hi"
    finally:
        model.close()
