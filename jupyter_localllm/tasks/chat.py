"""Chat templates: render a conversation with the model's own Jinja template (stored in the
GGUF as ``tokenizer.chat_template``), the way Hugging Face transformers renders it."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidParameterError

__all__ = ["CHATML_TEMPLATE", "normalize_messages", "render_chat"]

# Used when a GGUF carries no template (base models): the widespread ChatML layout.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_ROLES = ("system", "user", "assistant", "tool", "developer")


def normalize_messages(messages: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as a list of ``{"role", "content"}`` dicts; a plain string is one user turn.

    Raises :class:`InvalidParameterError` naming the first malformed message.
    """
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise InvalidParameterError(
            'messages must be a non-empty list of {"role": ..., "content": ...} dicts or a string.'
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InvalidParameterError(
                f'Message {i} must be a dict with "role" and "content" keys, got {m!r}.'
            )
        if m["role"] not in _ROLES:
            raise InvalidParameterError(
                f"Message {i} has role {m['role']!r}; use one of {', '.join(_ROLES)}."
            )
        if not isinstance(m["content"], str):
            raise InvalidParameterError(
                f"Message {i} content must be a string, got {type(m['content']).__name__}."
            )
        out.append(dict(m))
    return out


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


def _raise_template_error(message: str) -> None:
    raise InvalidParameterError(f"The chat template refused the messages: {message}")


def render_chat(
    template: str | None,
    messages: str | Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``messages`` with a Jinja chat ``template`` (ChatML when ``None``)."""
    try:
        compiled = _compile(template or CHATML_TEMPLATE)
    except jinja2.TemplateError as exc:
        raise InvalidParameterError(
            f"The chat template does not compile ({exc}); pass template= with a valid one."
        ) from exc
    try:
        return compiled.render(
            messages=normalize_messages(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except jinja2.TemplateError as exc:
        raise InvalidParameterError(
            f"The chat template failed on these messages ({exc}); check their roles and order."
        ) from exc
