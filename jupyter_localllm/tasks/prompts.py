"""Prompt rendering shared by the tasks: a text as a chat turn or a plain ``Text:/Answer:``
block, with the system prompt, instruction and examples first so every row shares them as a
prefix (decoded once)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameterError
from ..session.pipeline import input_problem
from .chat import render_chat

if TYPE_CHECKING:
    from ..engine.backend import BackendModel

__all__ = [
    "FORMATS",
    "as_texts",
    "chat_prompts",
    "check_format",
    "model_chat",
    "render_prompt",
    "render_rows",
    "resolve_format",
]

FORMATS = ("auto", "chat", "plain", "raw")


def as_texts(texts: Any, what: str = "prompts") -> list[Any]:
    """``texts`` as a list (a list, tuple, Series or other iterable of texts); a bare string,
    a dict or ``None`` is an :class:`InvalidParameterError` rather than one row per
    character or key. The items are not checked here: a bad one becomes an error row."""
    if isinstance(texts, (str, bytes)):
        raise InvalidParameterError(f"{what} must be a list of texts; wrap a single one in [].")
    if isinstance(texts, Mapping) or not isinstance(texts, Iterable):
        raise InvalidParameterError(f"{what} must be a list of texts, got {type(texts).__name__}.")
    return list(texts)


def check_format(fmt: Any) -> None:
    """Raise :class:`InvalidParameterError` unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise InvalidParameterError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.")


def resolve_format(model: BackendModel, fmt: str) -> str:
    """``fmt`` checked, with ``"auto"`` made ``"chat"`` for models with a chat template."""
    check_format(fmt)
    if fmt == "auto":
        return "chat" if model.chat_template else "plain"
    return fmt


def model_chat(
    model: BackendModel,
    messages: str | Sequence[Mapping[str, Any]],
    *,
    template: str | None = None,
    add_assistant: bool = True,
    **template_kwargs: Any,
) -> str:
    """``messages`` rendered with the model's chat template (or ``template``), its BOS and
    EOS texts filled in, ending with the assistant's turn opened when ``add_assistant``."""
    bos = model.token_text(model.bos_token) if model.bos_token >= 0 else ""
    eos = model.token_text(model.eos_token) if model.eos_token >= 0 else ""
    return render_chat(
        template or model.chat_template,
        messages,
        add_generation_prompt=add_assistant,
        bos_token=bos,
        eos_token=eos,
        origin=None if template else model.path,
        **template_kwargs,
    )


def render_prompt(
    model: BackendModel,
    fmt: str,
    text: str,
    instruction: str | None,
    system_prompt: str | None,
    examples: Sequence[tuple[str, str]] = (),
) -> str:
    """One row's prompt in format ``fmt`` (``"chat"``, ``"plain"`` or ``"raw"``, see
    :func:`~jupyter_localllm.classify`); the system prompt, instruction and examples come
    first so all rows share them as a prefix."""
    if fmt == "raw":
        return text
    user = f"{instruction}\n\n{text}" if instruction else text
    if fmt == "chat":
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        for ex_text, ex_label in examples:
            ex_user = f"{instruction}\n\n{ex_text}" if instruction else ex_text
            messages += [
                {"role": "user", "content": ex_user},
                {"role": "assistant", "content": ex_label},
            ]
        messages.append({"role": "user", "content": user})
        return model_chat(model, messages)
    head = f"{system_prompt}\n\n" if system_prompt else ""
    head += f"{instruction}\n\n" if instruction else ""
    shots = "".join(f"Text: {t}\nAnswer: {lab}\n\n" for t, lab in examples)
    return f"{head}{shots}Text: {text}\nAnswer:"


def render_rows(
    model: BackendModel,
    fmt: str,
    texts: Sequence[Any],
    instruction: str | None,
    system_prompt: str | None,
    examples: Sequence[tuple[str, str]] = (),
    *,
    what: str = "text",
) -> tuple[list[str | None], dict[int, str]]:
    """Every text rendered by :func:`render_prompt`, and the errors of the rows that cannot
    run (``None`` in their place)."""
    errors = {i: m for i, t in enumerate(texts) if (m := input_problem(t, what)) is not None}
    rows = [
        None if i in errors else render_prompt(model, fmt, t, instruction, system_prompt, examples)
        for i, t in enumerate(texts)
    ]
    return rows, errors


def chat_prompts(
    model: BackendModel,
    texts: Sequence[Any],
    system_prompt: str | None,
    instruction: str | None = None,
) -> list[Any]:
    """Each text as a user turn (after ``instruction``) in the model's chat template (ChatML
    when it has none) after ``system_prompt``; texts that cannot run stay as they are (their
    rows fail with a clear message)."""
    return [
        render_prompt(model, "chat", t, instruction, system_prompt)
        if input_problem(t) is None
        else t
        for t in texts
    ]
