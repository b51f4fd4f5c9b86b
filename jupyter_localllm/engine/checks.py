"""Argument checks shared by the engine's classes (no llama.cpp here)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidParameterError

__all__ = ["UINT32_MAX", "check_int"]

UINT32_MAX = 2**32 - 1  # the range of llama.cpp's n_ctx, n_batch, n_ubatch


def check_int(name: str, value: Any, low: int, high: int | None) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is an int in ``[low, high]``
    (``high=None``: no upper bound)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidParameterError(f"{name} must be an integer {bound}, got {value!r}.")
