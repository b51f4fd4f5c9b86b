"""Deterministic mode: which llama.cpp kernels a row's numbers may take, so that its text
depends only on its prompt, the model file, the sampling settings and its seed.

Measured on this project's CPUs with llama.cpp's logits (``tests/test_deterministic.py``,
README "Reproducibility"), a row's logits change with its batch when:

- weights are repacked (``use_extra_bufts``): 4-row groups go through a GEMM kernel, the rest
  through a GEMV one (0.5B Q4_K_M model: 2 rows identical, 4 rows differ by up to 0.33);
- ggml's tiled K-quant matmul is on: 8 rows or more take it (differ by up to 0.29); it is
  switched off for the whole process in :mod:`~jupyter_localllm.engine.llama`;
- flash attention is on: its CPU kernel picks a path by query rows and KV length;
- the KV cache is unified: a row's cells sit among its neighbours' (SIMD lanes change);
- a sequence decodes one prompt token alone where another time it decodes several: one query
  row takes the per-row attention dot product, several the matrix kernel (differ by up to
  0.31). llama.cpp cuts a step whose sequences hold different token counts into pieces of
  equal count, so a prompt decoded beside generated tokens loses a one-token piece.

So a deterministic context has flash attention off, a KV stream per sequence and unrepacked
weights (:func:`pinned_kernels`), and its scheduler never mixes prompt pieces with generated
tokens and never leaves a piece of one token (:data:`MIN_PIECE`, :func:`pieces`). Which rows
share a generation step does not matter then: with these kernels a row's result is the same
for 1 to 17 rows. The thread count does not matter either (every output is summed by one
thread).

Sampling: a row's random stream comes from the seed and its prompt's tokens
(:func:`prompt_stream`), not from its place in the input, so a row samples the same text
reversed, in another call, in a loop or on another Dask partition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    from .backend import BackendModel

__all__ = ["MIN_PIECE", "pieces", "pinned_kernels", "prompt_stream"]

MIN_PIECE = 2
"""The fewest tokens of a prompt a sequence decodes at once in deterministic mode."""


def pieces(start: int, end: int, step: int, even: bool) -> list[tuple[int, int]]:
    """``[start, end)`` cut into ``(start, end)`` pieces of at most ``step`` tokens; with
    ``even``, none shorter than :data:`MIN_PIECE` (the last two share what would leave one
    alone)."""
    bounds = [*range(start, end, step), end]
    if even and len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_PIECE:
        bounds[-2] -= MIN_PIECE - (bounds[-1] - bounds[-2])
    return list(pairwise(bounds))


def pinned_kernels(
    model: BackendModel, flash_attn: bool | None, kv_unified: bool | None, deterministic: bool
) -> tuple[bool, bool | None]:
    """``(flash_attn, kv_unified)`` of a context: flash attention on unless ``deterministic``
    (``None`` chooses), the KV layout as asked. A deterministic context has flash attention
    off and a stream per sequence, on weights llama.cpp did not repack; asking for the
    others with it is an error."""
    if not isinstance(deterministic, bool):
        raise InvalidParameterError(f"deterministic must be True or False, got {deterministic!r}.")
    if not deterministic:
        return (True if flash_attn is None else flash_attn), kv_unified
    if flash_attn or kv_unified:
        name = "flash_attn" if flash_attn else "kv_unified"
        raise InvalidParameterError(
            f"{name}=True makes a row's numbers depend on its batch; leave it out with "
            "deterministic=True."
        )
    if getattr(model, "repacked", False):
        raise InvalidParameterError(
            "deterministic=True needs weights that llama.cpp did not repack; load the model "
            "with model_load(..., use_extra_bufts=False)."
        )
    return False, False


def prompt_stream(tokens: Sequence[int]) -> int:
    """The index a deterministic row's seed is derived from (as
    :func:`~jupyter_localllm.engine.sampling.derive_seed`'s ``index``): 64 bits of the SHA-256
    of its prompt's tokens, never 0 (row 0's index keeps the seed itself). Equal prompts
    sample alike; give rows their own seeds (one ``SamplingParams`` per row) to differ."""
    digest = hashlib.sha256(np.asarray(tokens, dtype="<i8").tobytes()).digest()
    return int.from_bytes(digest[:8], "little") or 1
