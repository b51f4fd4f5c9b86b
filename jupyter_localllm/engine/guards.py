"""The backend's guards, in pure Python: inputs that would make llama.cpp abort the process
(sequence ids, batch sizes, token ids, context sizes, partial copies between KV streams) are
refused here first, and llama_decode's return codes become the package's errors; the load
log's lines that name repacked weight buffers are recognised here.

:mod:`.llama` calls these around its native calls; none is on the per-token path (a decode
calls :func:`decode_error` only when llama.cpp failed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ContextFullError, DecodeError, InvalidParameterError
from .backend import MAX_SEQUENCES, UINT32_MAX, check_int

__all__ = [
    "batch_size_error",
    "check_context_sizes",
    "check_seq",
    "check_seq_copy",
    "check_tokens",
    "decode_error",
    "is_repack_buffer",
]


def check_context_sizes(n_ctx: int, n_seq_max: int, n_batch: int, n_threads: int) -> None:
    """Raise :class:`InvalidParameterError` unless the sizes fit llama.cpp's ranges."""
    check_int("n_ctx", n_ctx, 16, UINT32_MAX)
    check_int("n_seq_max", n_seq_max, 1, MAX_SEQUENCES)
    check_int("n_batch", n_batch, 1, UINT32_MAX)
    check_int("n_threads", n_threads, 1, 1024)


def check_tokens(tokens: Any, n_vocab: int) -> None:
    """Raise :class:`InvalidParameterError` unless every id of ``tokens`` is in the vocabulary."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= n_vocab):
        raise InvalidParameterError(
            f"Token ids must be in [0, {n_vocab}) for this model; "
            f"got {int(arr.min())}..{int(arr.max())}."
        )


def check_seq(seq: int, n_seq_max: int) -> None:
    """Raise :class:`InvalidParameterError` unless ``seq`` is a sequence id or -1 (all)."""
    if not (-1 <= seq < n_seq_max):
        raise InvalidParameterError(f"Sequence id {seq} is out of range for n_seq_max={n_seq_max}.")


def check_seq_copy(src: int, dst: int, p0: int, p1: int, *, n_seq_max: int, unified: bool) -> None:
    """Raise :class:`InvalidParameterError` unless llama.cpp can copy [p0, p1) of ``src`` to
    ``dst``: between per-sequence KV streams only whole sequences are copied."""
    check_seq(src, n_seq_max)
    check_seq(dst, n_seq_max)
    if not unified and src != dst and (p0 > 0 or p1 >= 0):
        # llama.cpp asserts (aborting the process) on partial cross-stream copies.
        raise InvalidParameterError(
            "Without a unified KV cache, seq_cp copies whole sequences only; pass p0=-1, p1=-1."
        )


def batch_size_error(n_tokens: int, n_batch: int, capacity: int) -> InvalidParameterError:
    """The error for a batch a context must not decode (llama.cpp would abort the process)."""
    if 0 <= n_tokens <= capacity:
        return InvalidParameterError(
            f"A batch of {n_tokens} tokens exceeds this context's n_batch ({n_batch}); split it."
        )
    return InvalidParameterError(
        f"The batch says it holds {n_tokens} tokens but has room for {capacity}; fill it "
        "with clear() and add() only."
    )


def decode_error(rc: int, n_tokens: int, n_ctx: int) -> DecodeError:
    """The error for llama_decode's non-zero return code ``rc``."""
    if rc == 1:
        return ContextFullError(
            f"No room in the KV cache for {n_tokens} tokens (n_ctx={n_ctx}); "
            "use a larger n_ctx or fewer parallel sequences.",
            rc,
        )
    if rc == 2:
        return DecodeError("Decoding was aborted; run the call again.", rc)
    if rc == -1:
        return DecodeError(
            "llama.cpp rejected the batch as invalid; this is a bug, please report it.", rc
        )
    return DecodeError(
        f"llama_decode failed with code {rc}; the context may be out of memory, "
        "recreate it with a smaller n_ctx or n_batch.",
        rc,
    )


def is_repack_buffer(line: bytes) -> bool:
    """Whether a line of llama.cpp's load log names a repacked weight buffer (``CPU_REPACK``,
    ``AMX``, ...): "load_tensors: CPU_REPACK model buffer size = 28.05 MiB"."""
    if b"model buffer size" not in line:
        return False
    name = line.split(b"model buffer size")[0].split()[-1]
    return b"REPACK" in name or b"AMX" in name
