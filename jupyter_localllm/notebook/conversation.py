"""The conversations of ``%%llm --chat``: the exchanges kept in the kernel, one conversation
per model alias.

A chat cell sends the model's chat template of: the system prompt, the latest
``max_history`` exchanges (user message and answer, as jupyter-ai's ``max_history``), then the
cell's message. What is sent must leave room for the answer: the oldest exchanges are dropped
until the prompt's tokens plus ``max_tokens`` fit the context, and a message that does not fit
even alone is a :class:`~jupyter_localllm.errors.PromptError` saying what to change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from ..errors import PromptError
from .config import get_settings

__all__ = [
    "Conversations",
    "Exchange",
    "cell_prompt",
    "chat_mode",
    "conversations",
    "fitted_prompt",
    "messages",
]


@dataclass(frozen=True)
class Exchange:
    """One turn of a conversation: the user's message and the model's answer."""

    user: str
    assistant: str


class Conversations:
    """The exchanges of each model alias (thread-safe; a kernel has one, :func:`conversations`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_alias: dict[str, list[Exchange]] = {}

    def history(self, alias: str) -> list[Exchange]:
        """The exchanges kept for ``alias``, oldest first."""
        with self._lock:
            return list(self._by_alias.get(alias, ()))

    def add(self, alias: str, user: str, assistant: str, *, keep: int) -> None:
        """Record an exchange with ``alias``, keeping only its latest ``keep`` exchanges."""
        with self._lock:
            kept = [*self._by_alias.get(alias, ()), Exchange(user, assistant)]
            self._by_alias[alias] = kept[len(kept) - keep :] if keep > 0 else []

    def reset(self, alias: str | None = None) -> int:
        """Forget the conversation with ``alias`` (every conversation when ``None``); returns
        how many exchanges were forgotten."""
        with self._lock:
            if alias is None:
                count = sum(map(len, self._by_alias.values()))
                self._by_alias.clear()
                return count
            return len(self._by_alias.pop(alias, ()))

    def aliases(self) -> list[str]:
        """The aliases with a conversation."""
        with self._lock:
            return [a for a, kept in self._by_alias.items() if kept]


_conversations = Conversations()


def conversations() -> Conversations:
    """The conversations of this kernel."""
    return _conversations


def messages(system: str | None, history: Sequence[Exchange], message: str) -> list[dict]:
    """Chat messages: ``system`` (if any), each exchange of ``history``, then ``message``."""
    out = [{"role": "system", "content": system}] if system else []
    for ex in history:
        out += [
            {"role": "user", "content": ex.user},
            {"role": "assistant", "content": ex.assistant},
        ]
    out.append({"role": "user", "content": message})
    return out


def fitted_prompt(
    render: Callable[[list[dict]], str],
    count: Callable[[str], int],
    system: str | None,
    history: Sequence[Exchange],
    message: str,
    *,
    room: int,
    limit: int,
) -> tuple[str, int, int]:
    """The prompt (``render`` of :func:`messages`) with as many of the latest exchanges as
    fit: its ``count`` of tokens plus ``room`` (the answer's tokens) at most ``limit``.

    Returns the prompt, how many exchanges it holds and its tokens. Raises
    :class:`PromptError` when the message does not fit even without any history.
    """
    for start in range(len(history) + 1):
        kept = history[start:]
        prompt = render(messages(system, kept, message))
        n_tokens = count(prompt)
        if n_tokens + room <= limit:
            return prompt, len(kept), n_tokens
    raise PromptError(
        f"The message is {n_tokens} tokens and the answer may take {room} more: together "
        f"they do not fit the context of {limit} tokens; shorten the message, lower "
        "--max-tokens, or load the model with a larger --n-ctx."
    )


def chat_mode(args: Any) -> bool:
    """Whether a ``%%llm`` cell continues its model's conversation (``--chat``, or
    ``%config LocalLLM.chat`` unless ``--no-chat``); JSON cells never do."""
    if args.chat and args.no_chat:
        raise UsageError("Give --chat or --no-chat, not both.")
    if args.chat and args.format == "json":
        raise UsageError("--chat answers in text; use -f markdown, text or code with it.")
    return (args.chat or get_settings().chat) and not args.no_chat and args.format != "json"


def cell_prompt(
    ctx: Any, alias: str, text: str, system: str | None, sampling: dict, chat: bool
) -> tuple[str, int | None]:
    """The prompt of a ``%%llm`` cell and, for a chat cell, how many past exchanges it holds:
    the latest ``max_history`` that fit the context with room for ``max_tokens``."""
    from ..tasks.prompts import render_prompt, resolve_format

    if not chat:
        return render_prompt(ctx.model, resolve_format(ctx.model, "auto"), text, None, system), None
    from ..session.pipeline import prompt_tokens
    from ..tasks.generation import apply_chat_template

    keep = get_settings().max_history
    history = conversations().history(alias)[-keep:] if keep > 0 else []
    prompt, used, _ = fitted_prompt(
        lambda turns: apply_chat_template(ctx.model, turns),
        lambda prompt: len(prompt_tokens(ctx.model, prompt)),
        system,
        history,
        text,
        room=sampling["max_tokens"],
        limit=ctx.max_row_cells(),
    )
    return prompt, used
