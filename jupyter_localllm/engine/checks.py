"""Argument checks and defaults shared by the engine's classes (no llama.cpp here)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["UINT32_MAX", "check_int", "default_threads"]

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


def default_threads() -> int:
    """Threads for decoding when none are given: the CPUs this process may use (the API
    layer passes the physical core count, which is faster on hyper-threaded machines)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
