"""How much memory a llama.cpp context takes, from the model's GGUF metadata (no llama_cpp
here), and the check that refuses one that would not fit.

On the CPU, llama.cpp allocates and clears a context's whole KV cache when it is created; a
context larger than the free memory gets the process killed (the kernel dies with it). So
:func:`check_context_memory` compares the estimate with the memory available now first.
"""

from __future__ import annotations

from ..errors import InsufficientMemoryError
from ..hardware import available_memory

__all__ = [
    "TOO_LONG_MEMORY",
    "TOO_LONG_POSITIONS",
    "TOO_LONG_TRAINED",
    "cells_that_fit",
    "check_context_memory",
    "context_bytes",
    "kv_cache_bytes",
    "kv_shape",
    "position_limit",
    "text_problem",
    "train_context",
]

_PAD = 256  # llama.cpp pads a cache to a multiple of this many cells

# Why a row does not fit a context sized from the work (the end of its error message).
TOO_LONG_TRAINED = (
    "the length this model was trained for; shorten it, or fix a larger n_ctx in context_create"
)
TOO_LONG_POSITIONS = "the length this model was trained for, even in a larger n_ctx; shorten it"
TOO_LONG_MEMORY = (
    "what the memory available holds for this context; shorten it or use fewer parallel rows"
)


def kv_shape(meta: dict[str, str]) -> tuple[int, int, int, int, int] | None:
    """``(layers, heads, kv_heads, key_length, value_length)`` from GGUF metadata, or None."""
    arch = meta.get("general.architecture", "")
    try:
        layers = int(meta[f"{arch}.block_count"])
        heads = int(meta[f"{arch}.attention.head_count"])
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
        embd = int(meta[f"{arch}.embedding_length"])
        k_len = int(meta.get(f"{arch}.attention.key_length", embd // heads))
        v_len = int(meta.get(f"{arch}.attention.value_length", k_len))
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return layers, heads, kv_heads, k_len, v_len


def train_context(meta: dict[str, str]) -> int | None:
    """The context length the model was trained for (``<arch>.context_length``), or None."""
    arch = meta.get("general.architecture", "")
    try:
        n = int(meta[f"{arch}.context_length"])
    except (KeyError, ValueError):
        return None
    return n if n > 0 else None


# llama.cpp architectures whose graph adds, for each position, a row of a learned table of
# <arch>.context_length rows (models/gpt2.cpp, starcoder.cpp, bert.cpp; mpt.cpp when the file
# has the table): past its end ggml's get_rows asserts and the process aborts.
_LEARNED_POSITIONS = frozenset({"gpt2", "starcoder", "bert"})


def position_limit(meta: dict[str, str]) -> int | None:
    """The most positions one sequence may hold on a model that reads each position from a
    learned table (GPT-2, StarCoder, BERT, an MPT without ALiBi): its trained length, even in
    a larger ``n_ctx`` (llama.cpp aborts the process past it). None for models that compute
    positions (RoPE, ALiBi): a larger ``n_ctx`` is theirs to use.

    Decided by the architecture: the engine does not read the file's tensors. An MPT has a
    ``position_embd`` table exactly when it does not use ALiBi (``mpt.attention.max_alibi_bias``
    absent or 0, as llama.cpp's converter writes it)."""
    arch = meta.get("general.architecture", "")
    learned = arch in _LEARNED_POSITIONS
    if arch == "mpt":
        try:
            learned = float(meta.get("mpt.attention.max_alibi_bias", 0)) <= 0
        except ValueError:
            learned = True  # unreadable: the safe side
    return train_context(meta) if learned else None


def kv_cache_bytes(meta: dict[str, str], n_ctx: int) -> int:
    """Bytes of an f16 KV cache of ``n_ctx`` cells (0 when the metadata lacks the sizes)."""
    shape = kv_shape(meta)
    if shape is None:
        return 0
    layers, _heads, kv_heads, k_len, v_len = shape
    return 2 * layers * n_ctx * kv_heads * (k_len + v_len)


def context_bytes(
    meta: dict[str, str],
    n_ctx: int,
    *,
    n_vocab: int,
    n_seq_max: int,
    n_batch: int,
    kv_unified: bool,
) -> int:
    """Estimated bytes of a context: the KV cache (padded as llama.cpp pads it) and the
    compute buffer llama.cpp reserves for one batch of ``n_batch`` tokens (f32 attention
    scores against one sequence's cells, and the batch's logits); 0 when the metadata lacks
    the sizes. SmolLM2-135M, n_ctx=65536: 1440 MiB KV + 1286 MiB compute reported by
    llama.cpp, 2688 MiB estimated."""
    shape = kv_shape(meta)
    if shape is None:
        return 0
    n_ctx = -(-n_ctx // _PAD) * _PAD
    n_ctx_seq = n_ctx if kv_unified else -(-n_ctx // n_seq_max)
    batch = min(n_batch, n_ctx)
    compute = 4 * batch * (shape[1] * n_ctx_seq + n_vocab)
    return kv_cache_bytes(meta, n_ctx) + compute


def check_context_memory(meta: dict[str, str], n_ctx: int, **sizes: int) -> None:
    """Raise :class:`InsufficientMemoryError` naming the largest ``n_ctx`` that fits when a
    context of ``n_ctx`` cells would not fit in the memory available now (``sizes``: the
    other arguments of :func:`context_bytes`); the error's ``n_ctx_fit`` holds that n_ctx,
    so a caller sizing a context from the work can shrink it."""

    def need(n: int) -> int:
        return context_bytes(meta, n, **sizes)

    free = available_memory()
    budget = free - max(free // 10, 256 * 2**20)  # room for the rest of the kernel
    if need(n_ctx) <= budget:
        return
    fit = 0
    for step in (2**k for k in range(31, 7, -1)):  # the largest multiple of 256 that fits
        if need(fit + step) <= budget:
            fit += step
    error = InsufficientMemoryError(
        f"A context of n_ctx={n_ctx} would need about {need(n_ctx) / 2**30:.1f} GiB but "
        f"{free / 2**30:.1f} GiB of memory is available; the largest n_ctx that fits is {fit}: "
        "use a smaller n_ctx (or fewer parallel rows, or a smaller max_tokens)."
    )
    error.n_ctx_fit = fit  # type: ignore[attr-defined]
    raise error


def cells_that_fit(fit: int, prefix_len: int, n_slots: int, n_seq_max: int, unified: bool) -> int:
    """KV cells one row may use in a context of ``fit`` cells (the largest the memory holds),
    shared by ``n_slots`` rows (``unified``) or split into ``n_seq_max`` streams; 0 when
    ``fit`` is below a useful context."""
    if fit < 512:
        return 0
    if unified:
        return prefix_len + (fit - prefix_len) // n_slots // 64 * 64
    return fit // n_seq_max // 64 * 64


def text_problem(n_chars: int, limit: int, longest_piece: int) -> str | None:
    """Why a text of ``n_chars`` characters cannot fit ``limit`` tokens of a vocabulary whose
    longest token is ``longest_piece`` bytes (it has more tokens than that), else None."""
    if n_chars <= limit * max(4, longest_piece):
        return None
    return (
        f"the prompt of {n_chars} characters does not fit the context of {limit} tokens "
        f"(a token holds at most {longest_piece} characters of this model), so it was not "
        "tokenized; shorten it"
    )
