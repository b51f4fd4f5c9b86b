"""``%%llm --chat``: conversations kept in the kernel per model alias, through a real IPython
shell and the real default model. Each check compares the prompt the model received (its token
count, in the answer's metadata) with the chat template rendered from the expected messages."""

from __future__ import annotations

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

import jupyter_localllm as ll
from jupyter_localllm.notebook.conversation import conversations
from jupyter_localllm.session.manager import get_manager
from jupyter_localllm.session.pipeline import prompt_tokens

ALIAS = "chat"


@pytest.fixture(scope="module")
def ip(model):
    shell = start_ipython() or get_ipython()  # one global shell per test session
    shell.run_line_magic("load_ext", "jupyter_localllm")
    alias = get_manager().adopt(model, alias=ALIAS)
    assert alias == ALIAS
    shell.run_line_magic("config", "LocalLLM.max_tokens = 16")
    yield shell
    shell.run_line_magic("config", "LocalLLM.max_tokens = 100")  # the defaults table's
    shell.run_line_magic("config", "LocalLLM.max_history = 2")
    shell.run_line_magic("config", "LocalLLM.chat = False")
    conversations().reset()
    get_manager().unload(ALIAS)
    shell.run_line_magic("unload_ext", "jupyter_localllm")


@pytest.fixture(autouse=True)
def fresh(ip):
    ip.run_line_magic("config", "LocalLLM.max_history = 2")
    ip.run_line_magic("config", "LocalLLM.chat = False")
    conversations().reset()


def cell(ip, line: str, text: str):
    """Run ``%%llm line`` with ``text``; the LLMResponse (fails the test on an error)."""
    res = ip.run_cell(f"%%llm {line} --no-stream\n{text}")
    assert res.error_in_exec is None, res.error_in_exec
    return res.result


def sent_tokens(model, turns: list[tuple[str, str]], message: str) -> int:
    """Tokens of the chat prompt of ``turns`` (user, answer) then ``message``; a user's
    message is the cell as IPython passes it, with its line break."""
    messages = []
    for user, answer in turns:
        messages.append({"role": "user", "content": user + "\n"})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": message + "\n"})
    return len(prompt_tokens(model, ll.apply_chat_template(model, messages)))


def test_second_cell_sees_the_first_exchange(ip, model):
    first = "My name is Zorblax. Greet me by my name."
    a1 = cell(ip, f"--chat -m {ALIAS}", first)
    assert a1.history == 0 and a1.prompt_tokens == sent_tokens(model, [], first)

    a2 = cell(ip, f"--chat -m {ALIAS}", "What is my name?")
    assert a2.history == 1
    assert a2.prompt_tokens == sent_tokens(model, [(first, a1.text)], "What is my name?")
    _, meta = a2._repr_mimebundle_()
    assert meta["jupyter_localllm"]["history"] == 1

    alone = cell(ip, f"-m {ALIAS}", "What is my name?")  # the same message, no conversation
    assert alone.history is None
    assert alone.prompt_tokens == sent_tokens(model, [], "What is my name?")
    assert alone.text != a2.text  # the history changed the answer
    assert [ex.user for ex in conversations().history(ALIAS)] == [
        f"{first}\n",
        "What is my name?\n",
    ]


def test_history_is_trimmed_at_max_history(ip, model):
    ip.run_line_magic("config", "LocalLLM.max_history = 2")
    asked = [f"Say the number {n}." for n in range(4)]
    answers = [cell(ip, f"--chat -m {ALIAS}", q) for q in asked]
    assert [a.history for a in answers] == [0, 1, 2, 2]
    turns = list(zip(asked[1:3], [a.text for a in answers[1:3]], strict=True))
    assert answers[3].prompt_tokens == sent_tokens(model, turns, asked[3])
    assert [ex.user.strip() for ex in conversations().history(ALIAS)] == asked[2:]

    ip.run_line_magic("config", "LocalLLM.max_history = 0")
    assert cell(ip, f"--chat -m {ALIAS}", asked[0]).history == 0
    assert conversations().history(ALIAS) == []


def test_config_switch_and_no_chat(ip, model):
    ip.run_line_magic("config", "LocalLLM.chat = True")
    cell(ip, f"-m {ALIAS}", "Remember the word apple.")
    assert cell(ip, f"-m {ALIAS}", "Which word?").history == 1
    alone = cell(ip, f"-m {ALIAS} --no-chat", "Which word?")
    assert alone.history is None and alone.prompt_tokens == sent_tokens(model, [], "Which word?")
    assert len(conversations().history(ALIAS)) == 2  # a --no-chat cell is not recorded


def test_reset_clears_one_alias_or_all(ip, model, capsys):
    cell(ip, f"--chat -m {ALIAS}", "Remember the word apple.")
    conversations().add("other", "hi", "hello", keep=2)
    ip.run_line_magic("llm", f"reset {ALIAS}")
    assert f"with {ALIAS!r} (1 exchanges)" in capsys.readouterr().out
    assert conversations().history(ALIAS) == [] and conversations().aliases() == ["other"]
    again = cell(ip, f"--chat -m {ALIAS}", "Which word?")
    assert again.history == 0 and again.prompt_tokens == sent_tokens(model, [], "Which word?")

    ip.run_line_magic("llm", "reset")
    assert "with every model (2 exchanges)" in capsys.readouterr().out
    assert conversations().aliases() == []


def test_history_fits_the_context_with_room_for_the_answer(ip, model, capsys):
    ip.run_line_magic("llm", "load default --alias tiny --n-ctx 256")
    try:
        long = "Tell me about rivers. " + "Rivers flow to the sea. " * 8  # 84 tokens sent
        answers = [cell(ip, "--chat -m tiny --max-tokens 40", long) for _ in range(3)]
        # 256 cells: the message, its answer (40) and one earlier exchange fit, not two
        assert [a.history for a in answers] == [0, 1, 1]
        assert all(a.prompt_tokens + 40 <= 256 for a in answers)

        res = ip.run_cell("%%llm --chat -m tiny --max-tokens 40 --no-stream\n" + long * 4)
        assert isinstance(res.error_in_exec, UsageError)
        message = str(res.error_in_exec)
        assert "do not fit the context of 256 tokens" in message and "--max-tokens" in message
        assert len(conversations().history("tiny")) == 2  # a refused cell changes nothing
    finally:
        get_manager().unload("tiny")


@pytest.mark.parametrize(
    ("line", "phrase"),
    [
        ("--chat --no-chat", "not both"),
        ("--chat -f json", "--chat answers in text"),
        ("--chat -m nope", "No model is loaded as 'nope'"),
    ],
)
def test_usage_errors(ip, line, phrase):
    res = ip.run_cell(f"%%llm {line}\nhello")
    assert isinstance(res.error_in_exec, UsageError) and phrase in str(res.error_in_exec)
    assert conversations().aliases() == []


def test_a_cell_shows_in_the_status_bar_while_it_runs(ip):
    """A ``%%llm`` cell is a foreground run of the session's activity (what JupyterLab's status
    bar and its popup show; a foreground run's Cancel interrupts the kernel)."""
    from jupyter_localllm.session import activity

    seen: list[activity.RunState] = []

    def watcher() -> None:
        seen.extend(r for r in activity.snapshot().runs if r.model == ALIAS)

    unwatch = activity.watch(watcher)
    try:
        cell(ip, f"--chat -m {ALIAS}", "Say hello.")
    finally:
        unwatch()
    assert any(r.status == "running" and not r.background for r in seen)
    assert seen[-1].status == "finished" and seen[-1].desc == "generate"
