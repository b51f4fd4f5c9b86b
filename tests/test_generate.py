"""The foundation through the public API, on the real default model: generate() agrees with
llama-cpp-python's own ``Llama``, is deterministic, streams, stops, cleans; bad inputs raise
the right error with a message that names the fix, and leave the process working; tokens
round-trip; chat templates render.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil

import pytest
from conftest import chat, run_python

import jupyter_localllm as ll
from jupyter_localllm import hardware
from jupyter_localllm.errors import (
    AmbiguousModelError,
    InsufficientMemoryError,
    InvalidModelFileError,
    InvalidParameterError,
    ModelNotFoundError,
    PromptError,
)

N_TOKENS = 24

# --- correctness against llama-cpp-python ------------------------------------------------------

CHAT_QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 7?",
    "Why is the sky blue?",
    "Name three primary colors.",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about autumn leaves.",
    "Summarize: The cat sat on the mat all afternoon while the rain fell outside.",
    "List two benefits of regular exercise.",
    "Give me a synonym for 'happy'.",
    "Explain photosynthesis in one sentence.",
    "Is a tomato a fruit or a vegetable?",
    "Write a Python function that adds two numbers.",
]
CHAT_WITH_SYSTEM = [
    ("Classify the sentiment of: 'I loved this movie!'", "Answer with one word."),
    ("What is the boiling point of water in Celsius?", "You are a terse science tutor."),
]
RAW_PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a small village,",
    "def fibonacci(n):\n",
    "Q: What is the largest planet?\nA:",
]


@pytest.fixture(scope="module")
def reference(model):
    """llama-cpp-python's high-level ``Llama`` on the same file, flash attention on as in our
    contexts, with weight repacking into extra buffer types off (on AMX CPUs that path aborts
    on the first multi-token decode)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import llama_cpp.llama_cpp as low_level

    # flash attention on, as in our contexts (Llama's default is off): the same kernels
    kwargs = {"model_path": str(model.path), "n_ctx": 2048, "verbose": False, "seed": 1234}
    kwargs["flash_attn"] = True
    if "use_extra_bufts" in inspect.signature(llama_cpp.Llama).parameters:
        llm = llama_cpp.Llama(**kwargs, use_extra_bufts=False)
    else:
        # Llama() builds its model params from llama_model_default_params() inside __init__
        # and has no argument for this field: hand it defaults with the field cleared.
        default_params = low_level.llama_model_default_params

        def params_without_extra_bufts():
            params = default_params()
            params.use_extra_bufts = False
            return params

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(low_level, "llama_model_default_params", params_without_extra_bufts)
            llm = llama_cpp.Llama(**kwargs)
    yield llm
    llm.close()


def test_generate_matches_llama_cpp_python(model, ctx, reference):
    prompts = [chat(model, q) for q in CHAT_QUESTIONS]
    prompts += [chat(model, q, system=s) for q, s in CHAT_WITH_SYSTEM]
    prompts += RAW_PROMPTS
    assert len(prompts) == 20
    differing = []
    for prompt in prompts:
        ours = ll.generate(ctx, prompt, max_tokens=N_TOKENS, temperature=0)
        # Llama's default repeat_penalty is 1.1; ours (like localLLM's) is 1.0, so say 1.0.
        out = reference(prompt, max_tokens=N_TOKENS, temperature=0, repeat_penalty=1.0)
        theirs = out["choices"][0]["text"]
        if str(ours) != theirs:
            differing.append((prompt, str(ours), theirs))
    for prompt, ours, theirs in differing:
        print(f"prompt: {prompt!r}\n  ours:   {ours!r}\n  theirs: {theirs!r}")
    # One row may differ where batch shapes change float rounding enough to flip a near tie.
    assert len(differing) <= 1, f"{len(differing)} of {len(prompts)} outputs differ"


# --- determinism -------------------------------------------------------------------------------


def test_greedy_call_is_repeatable(model, ctx):
    prompt = chat(model, "Name a famous painter.")
    first = ll.generate(ctx, prompt, max_tokens=16)
    second = ll.generate(ctx, prompt, max_tokens=16)
    assert first == second
    assert (first.finish_reason, first.n_tokens) == (second.finish_reason, second.n_tokens)


def test_output_does_not_depend_on_earlier_calls(model, ctx):
    # ctx keeps the previous prompt's prefix in its KV cache; a fresh context has none.
    prompt = chat(model, "Describe a rainy day in one sentence.")
    ll.generate(ctx, chat(model, "Describe a sunny beach."), max_tokens=4)
    after_other_call = ll.generate(ctx, prompt, max_tokens=16)
    with ll.context_create(model) as fresh:
        assert ll.generate(fresh, prompt, max_tokens=16) == after_other_call


def test_sampling_is_repeatable_with_a_seed_and_varies_across_seeds(model, ctx):
    prompt = chat(model, "Write a short poem about the sea.")

    def sample(seed):
        return ll.generate(ctx, prompt, max_tokens=16, temperature=0.8, seed=seed)

    assert sample(7) == sample(7)
    outputs = {str(sample(seed)) for seed in (7, 8, 9, 10)}
    assert len(outputs) > 1, outputs


# --- bad inputs --------------------------------------------------------------------------------


@pytest.fixture
def still_generates(ctx):
    """After the test, the shared model and context still generate."""
    yield
    assert ll.generate(ctx, "Hello", max_tokens=2).n_tokens >= 1


def _bad_file(kind, tmp_path, source):
    if kind == "missing":
        return tmp_path / "missing.gguf"
    if kind == "directory":
        return tmp_path
    path = tmp_path / f"{kind}.gguf"
    if kind == "not-gguf":
        path.write_text("this is a text file, not a model\n" * 10)
    elif kind == "truncated":
        with source.open("rb") as f:
            path.write_bytes(f.read(1 << 20))
    return path


@pytest.mark.usefixtures("still_generates")
@pytest.mark.parametrize(
    ("kind", "error", "phrases"),
    [
        ("missing", ModelNotFoundError, ["No model file at", "missing.gguf", "'default'"]),
        ("directory", InvalidModelFileError, ["is a folder, not a GGUF file"]),
        ("not-gguf", InvalidModelFileError, ["is not a GGUF file", "b'GGUF'"]),
        ("truncated", InvalidModelFileError, ["is truncated", "re-download it"]),
    ],
)
def test_model_load_rejects_bad_files(model, tmp_path, kind, error, phrases):
    path = _bad_file(kind, tmp_path, model.path)
    with pytest.raises(error) as info:
        ll.model_load(path)
    for phrase in phrases:
        assert phrase in str(info.value)
    with pytest.raises(error):  # a string path takes the same route
        ll.model_load(str(path))


@pytest.mark.usefixtures("still_generates")
def test_model_load_refuses_a_model_larger_than_memory(monkeypatch):
    monkeypatch.setattr(hardware, "available_memory", lambda: 10 * 2**20)
    with pytest.raises(InsufficientMemoryError) as info:
        ll.model_load("default")
    message = str(info.value)
    assert "needs about" in message and "0.01 GiB is available" in message
    assert "check_memory=False" in message
    ll.model_load("default", check_memory=False).close()  # the way out the message names


@pytest.mark.usefixtures("still_generates")
def test_model_load_unknown_ollama_name(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        ll.model_load("ollama:llama3")
    message = str(info.value)
    assert str(tmp_path) in message
    assert "ollama pull llama3:latest" in message


@pytest.mark.usefixtures("still_generates")
def test_model_load_ambiguous_cache_name(model, tmp_path, monkeypatch):
    for name in ("smol-a.gguf", "smol-b.gguf"):
        try:
            os.link(model.path, tmp_path / name)
        except OSError:
            shutil.copyfile(model.path, tmp_path / name)
    monkeypatch.setenv("LOCALLLM_CACHE_DIR", str(tmp_path))
    with pytest.raises(AmbiguousModelError) as info:
        ll.model_load("smol")
    assert "smol-a.gguf" in str(info.value) and "smol-b.gguf" in str(info.value)
    assert sorted(info.value.candidates) == [
        str(tmp_path / "smol-a.gguf"),
        str(tmp_path / "smol-b.gguf"),
    ]


def test_model_load_passes_use_mmap_and_use_mlock_to_llama_cpp(monkeypatch):
    import llama_cpp

    seen = []
    load = llama_cpp.llama_model_load_from_file

    def recording_load(path, params):
        seen.append((params.load_mode, getattr(params, "use_mmap", None)))
        return load(path, params)

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", recording_load)
    ll.model_load("default", use_mmap=False).close()
    ll.model_load("default", use_mlock=True).close()
    # This llama.cpp has no use_mmap/use_mlock fields: load_mode carries both choices.
    assert [mode for mode, _ in seen] == [
        llama_cpp.LLAMA_LOAD_MODE_NONE,
        llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK,
    ], seen


@pytest.mark.usefixtures("still_generates")
@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(ctx, prompt):
    with pytest.raises(PromptError, match="The prompt is empty; give some text"):
        ll.generate(ctx, prompt)


@pytest.mark.parametrize("n_words", [150, 400])
def test_prompt_longer_than_n_ctx(n_words):
    # In a subprocess: a failure here has aborted the interpreter before (GGML_ASSERT).
    # 150 words is longer than n_ctx=64 but shorter than the 256 cells llama.cpp rounds the
    # cache up to; 400 is longer than both.
    done = run_python(
        f"""
        import jupyter_localllm as ll
        from jupyter_localllm.errors import PromptError
        model = ll.model_load("default")
        ctx = ll.context_create(model, n_ctx=64)
        try:
            ll.generate(ctx, "word " * {n_words}, max_tokens=4)
        except PromptError as exc:
            print("PromptError:", exc)
        else:
            print("no error")
        print("alive", ll.generate(ctx, "Hello", max_tokens=2).n_tokens)
        """
    )
    assert done.returncode == 0, f"the process died ({done.returncode}): {done.stderr[-2000:]}"
    first, second = done.stdout.strip().splitlines()[-2:]
    assert first.startswith("PromptError:"), first
    assert "n_ctx" in first and "context" in first
    assert second in ("alive 1", "alive 2")


@pytest.mark.usefixtures("still_generates")
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be a positive integer, got 0."),
        ({"max_tokens": -5}, "max_tokens must be a positive integer, got -5."),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5."),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0."),
    ],
)
def test_out_of_range_sampling_options(ctx, options, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        ll.generate(ctx, "hi", **options)


@pytest.mark.usefixtures("still_generates")
def test_unknown_keyword_names_the_accepted_options(ctx):
    with pytest.raises(InvalidParameterError) as info:
        ll.generate(ctx, "hi", temprature=0.5)
    message = str(info.value)
    assert "temprature" in message and "accepted options are" in message
    for name in ("max_tokens", "temperature", "top_p", "seed", "stop"):
        assert name in message


@pytest.mark.usefixtures("still_generates")
@pytest.mark.parametrize("n_seq_max", [0, 257])
def test_n_seq_max_out_of_range(model, n_seq_max):
    expected = f"n_seq_max must be an integer in [1, 256], got {n_seq_max}."
    with pytest.raises(InvalidParameterError, match=re.escape(expected)):
        ll.context_create(model, n_seq_max=n_seq_max)


# --- tokens ------------------------------------------------------------------------------------

ROUND_TRIP = [
    "Hello, world!",
    "  leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\r\n",
    "multiple    spaces     here",
    "\n\n\n",
    " ",
    "a",
    "Grüße aus München",
    "naïve café résumé",
    "e\u0301",  # e + combining acute, not normalised to é
    "cafe\u0301 vs caf\u00e9",
    "Z\u0351\u0364a\u0310l\u0357g\u035bo\u0300",
    "日本語のテキストです。",
    "中文测试：你好，世界！",
    "한국어 문장입니다",
    "Ελληνικά κείμενα",
    "Русский текст, ёлка",
    "עברית מימין לשמאל",
    "العربية من اليمين إلى اليسار",
    "mixed: English עברית العربية 中文",
    "\u202bRTL embedding\u202c",
    "emoji 😀🎉🚀",
    "family 👨\u200d👩\u200d👧\u200d👦",
    "flags 🇫🇷🇯🇵",
    "skin tone 👍🏽",
    "keycap 1\ufe0f\u20e3",
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT * FROM t WHERE a = 'b';",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    '<div class="x">&amp;</div>',
    "https://example.com/path?q=1&r=2#frag",
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ",
    "math: ∑ x² ≤ ∞, √2 ≈ 1.414",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "NBSP\u00a0here",
    "\u3000ideographic space",
    "don't won't it's",
    " ,.;:!? punctuation spaced . , !",
    "1234567890 3.14159 -42 1e-9",
    "ALL CAPS AND lower",
    "x" * 200,
    "ﷺ Arabic ligature",
    "देवनागरी हिन्दी",
    "ไทย ภาษาไทย",
    "🏳️\u200d🌈 rainbow flag",
    "\\backslash \\n not a newline",
    "`code` *md* _x_ ~~s~~",
    "Mixed 中文 and emoji 🍜 with tabs\t end",
]


def test_tokenize_detokenize_round_trip(model):
    assert len(ROUND_TRIP) == 50
    failures = []
    for text in ROUND_TRIP:
        back = ll.detokenize(model, ll.tokenize(model, text, add_special=False))
        if back != text:
            failures.append((text, back))
    for text, back in failures:
        print(f"{text!r} -> {back!r}")
    assert not failures


# --- streaming, stop strings, clean ------------------------------------------------------------


def test_stream_pieces_add_up_to_the_result(model, ctx):
    pieces = []
    result = ll.generate(
        ctx, chat(model, "Write a short poem about the sea."), max_tokens=16, stream=pieces.append
    )
    assert len(pieces) > 1
    assert "".join(pieces) == result


def test_stop_string_ends_generation_and_is_left_out(model, ctx):
    prompt = chat(model, "Which city is the capital of France? Answer with the city name only.")
    free = ll.generate(ctx, prompt, max_tokens=20)
    assert "Paris" in free  # otherwise this test proves nothing
    stopped = ll.generate(ctx, prompt, max_tokens=20, stop=["Paris"])
    assert stopped.finish_reason == "stop"
    assert "Paris" not in stopped
    assert stopped == free[: str(free).find("Paris")]


def test_result_is_a_str(model, ctx):
    result = ll.generate(ctx, chat(model, "Say hello."), max_tokens=8)
    text = str(result)
    assert isinstance(result, str) and result == text
    assert result.upper() == text.upper() and result.split() == text.split()
    # Result carries its row number; it must not hide str.index, which users call on text.
    assert result.index(text[-1]) == text.index(text[-1])


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("Paris<|im_end|>", "Paris"),
        ("<|im_start|>assistant\nParis<|im_end|>\n", "Paris"),
        ("<think>\nThe user asks...\n</think>\n\nParis", "Paris"),
        ("<think>a</think>Paris<think>b</think> is the answer<|im_end|>", "Paris is the answer"),
        ("Answer: <think>still thinking when max_tokens ran out", "Answer:"),
        ("  plain text stays  ", "plain text stays"),
    ],
)
def test_clean_function(raw, cleaned):
    assert ll.clean(raw) == cleaned


def test_clean_option_on_a_result(model, ctx):
    # A grammar makes the tiny model write a reasoning block, as reasoning models do.
    grammar = r'root ::= "<think>" [a-z ]{1,12} "</think>" " Paris"'
    prompt = chat(model, "What is the capital of France?")
    raw = ll.generate(ctx, prompt, max_tokens=30, grammar=grammar)
    assert raw.startswith("<think>") and raw.endswith("</think> Paris")
    cleaned = ll.generate(ctx, prompt, max_tokens=30, grammar=grammar, clean=True)
    assert cleaned == "Paris"
    assert (cleaned.finish_reason, cleaned.n_tokens) == (raw.finish_reason, raw.n_tokens)


# --- chat template, hardware -------------------------------------------------------------------


def test_apply_chat_template_renders_smollm2(model):
    prompt = ll.apply_chat_template(model, [{"role": "user", "content": "Hi there"}])
    assert "<|im_start|>user\nHi there<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert ll.apply_chat_template(model, "Hi there") == prompt
    closed = ll.apply_chat_template(model, "Hi there", add_assistant=False)
    assert not closed.endswith("<|im_start|>assistant\n")


def test_apply_chat_template_rejects_an_unknown_role(model):
    with pytest.raises(InvalidParameterError, match="role 'wizard'; use one of system, user"):
        ll.apply_chat_template(model, [{"role": "wizard", "content": "Hi"}])


def test_hardware_profile_keys():
    hw = ll.hardware_profile()
    assert {"os", "cores_physical", "ram_total", "gpu"} <= set(hw)
    assert hw["cores_physical"] >= 1 and hw["ram_total"] > 0
