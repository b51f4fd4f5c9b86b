"""Checks and tokenization of per-row inputs, shared by every batch call of the API."""

from __future__ import annotations

from typing import Any

from ..engine.llama import Model

__all__ = ["input_problem", "prompt_tokens"]


def input_problem(value: Any, what: str = "prompt") -> str | None:
    """Why ``value`` cannot run as a row (the message of its error result), or ``None``."""
    if not isinstance(value, str):
        return f"the {what} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"the {what} is empty; give some text"
    return None


def prompt_tokens(model: Model, prompt: str) -> list[int]:
    """Tokens of one prompt, with BOS added unless the text already starts with it (a chat
    template may write the BOS text itself)."""
    bos_text = model.token_text(model.bos_token) if model.add_bos and model.bos_token >= 0 else ""
    return model.tokenize(prompt, add_special=not (bos_text and prompt.startswith(bos_text)))
