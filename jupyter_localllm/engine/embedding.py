"""Embeddings: one pooled vector per tokenized text, as a request kind of the engine.

:func:`embed_tokens` runs on a :class:`~jupyter_localllm.engine.runner.GenerationContext`'s
model, lock and sizes: under its lock it opens a backend context in embedding mode
(:meth:`~jupyter_localllm.engine.backend.BackendModel.new_embedding_context`, a few
milliseconds), packs whole rows into decodes of at most ``n_seq_max`` sequences and ``n_batch``
tokens (a pooled sequence must lie whole in one decode), reads each sequence's pooled vector,
empties the cache and goes on, then frees the context. Every size is checked here before the
backend sees it: a row longer than the context, or than the length the model was trained for
(an encoder's position table ends there), is an error row; the decode size, and with it the
ubatch (an encoder such as BERT sees a sequence in one ubatch or aborts), grows to the longest
row that fits; and the memory the context needs is checked on the CPU.

Pooling comes from the GGUF metadata (``<arch>.pooling_type``, which embedding models carry)
or the caller; a model without it (a chat model such as the default) is mean-pooled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameterError
from ..types import Progress, Result
from .backend import POOLING_TYPES
from .memory import check_context_memory

if TYPE_CHECKING:
    from .backend import BackendEmbeddingContext
    from .runner import GenerationContext

__all__ = ["embed_tokens", "embedding_text", "pack_rows", "resolve_pooling"]

# llama.cpp's enum llama_pooling_type as GGUF files store it (0 none, 4 rank: no vector to
# compare, so such a file is mean-pooled unless the caller asks otherwise).
_GGUF_POOLING = {"1": "mean", "2": "cls", "3": "last"}
_CTX_ROUND = 256  # llama.cpp pads a cache to a multiple of this many cells


def resolve_pooling(metadata: Mapping[str, str], pooling: str | None) -> str:
    """The pooling of a run: ``pooling`` when given (one of ``"mean"``, ``"cls"``,
    ``"last"``), else the model file's own (``<arch>.pooling_type``), else ``"mean"``."""
    if pooling is not None:
        if pooling not in POOLING_TYPES:
            raise InvalidParameterError(
                f"pooling must be one of {', '.join(POOLING_TYPES)} or None (the model "
                f"file's own), got {pooling!r}."
            )
        return pooling
    arch = metadata.get("general.architecture", "")
    return _GGUF_POOLING.get(str(metadata.get(f"{arch}.pooling_type", "")).strip(), "mean")


def embedding_text(n_embd: int) -> str:
    """The text of an embedded row's :class:`Result` (its vector is in ``value``)."""
    return f"<embedding d={n_embd}>"


def pack_rows(lengths: Mapping[int, int], n_seq: int, n_batch: int) -> list[list[int]]:
    """Rows (by ``lengths``' order) in decodes of at most ``n_seq`` rows and ``n_batch``
    tokens, each row whole in one decode (every length must be at most ``n_batch``)."""
    waves: list[list[int]] = []
    wave: list[int] = []
    used = 0
    for row, n in lengths.items():
        if wave and (len(wave) == n_seq or used + n > n_batch):
            waves.append(wave)
            wave, used = [], 0
        wave.append(row)
        used += n
    if wave:
        waves.append(wave)
    return waves


def embed_tokens(
    context: GenerationContext,
    prompts: Sequence[Sequence[int]],
    *,
    pooling: str,
    on_result: Callable[[Result], Any] | None = None,
    on_progress: Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Embed each tokenized prompt on ``context``'s model; each row's :class:`Result` (numbered
    by its place in ``prompts``; ``value`` the pooled vector as a list of floats, not
    normalised) goes to ``on_result`` as its decode ends. An empty or too long prompt is an
    error result. A KeyboardInterrupt (or ``cancel`` being set) stops between decodes and
    propagates (the rows finished went to ``on_result``)."""
    pooling = resolve_pooling({}, pooling)
    t_start = time.perf_counter()
    on_result = context.lock.shield(on_result) or (lambda result: None)
    on_progress = context.lock.shield(on_progress)
    limit, why = context.row_limit()  # never past a learned position table
    lengths: dict[int, int] = {}
    for i, tokens in enumerate(prompts):
        if not tokens:
            on_result(Result.failed("the text is empty; give some text", row=i))
        elif len(tokens) > limit:
            message = f"the text of {len(tokens)} tokens does not fit the context of {limit} "
            on_result(Result.failed(f"{message}tokens ({why})", row=i, n_prompt_tokens=len(tokens)))
        else:
            lengths[i] = len(tokens)
    if not lengths:
        return
    n_seq = min(context.n_seq_max, len(lengths))
    n_batch = max(context.n_batch, max(lengths.values()))
    # llama.cpp reserves the pooled graph for n_batch // n_seq tokens per sequence but for
    # n_batch outputs, and aborts (ggml_can_mul_mat) where n_seq does not divide n_batch
    n_batch = -(-n_batch // n_seq) * n_seq
    done = len(prompts) - len(lengths)
    with context.lock, context.lock.running():
        ctx = _open(context, n_seq, n_batch, pooling)
        try:
            batch = context.model.new_batch(ctx.n_batch, n_seq)
            for wave in pack_rows(lengths, n_seq, ctx.n_batch):
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                batch.clear()
                for seq, i in enumerate(wave):
                    batch.add(prompts[i], 0, seq, want_last_logits=True, want_all_logits=True)
                ctx.decode(batch)
                vectors = [ctx.seq_embedding(seq) for seq in range(len(wave))]
                ctx.memory_clear()  # the next decode's sequences start at position 0
                for i, vector in zip(wave, vectors, strict=True):
                    on_result(_row_result(vector, i, lengths[i]))
                done += len(wave)
                if on_progress is not None:
                    elapsed = time.perf_counter() - t_start
                    on_progress(Progress(done, len(prompts), 0, 0, elapsed))
        finally:
            ctx.close()


def _open(context: GenerationContext, n_seq: int, n_batch: int, pooling: str) -> Any:
    """The backend context of one embedding run (its memory checked first on the CPU)."""
    model = context.model
    n_ctx = -(-n_batch // _CTX_ROUND) * _CTX_ROUND  # one decode's tokens, padded
    if not model.offloads_to_gpu:  # a CPU context too big gets the process killed
        check_context_memory(
            model.metadata,
            n_ctx,
            n_vocab=model.n_vocab,
            n_seq_max=n_seq,
            n_batch=n_batch,
            kv_unified=True,
        )
    ctx: BackendEmbeddingContext = model.new_embedding_context(
        n_ctx=n_ctx, n_seq_max=n_seq, n_batch=n_batch, n_threads=context.n_threads, pooling=pooling
    )
    if ctx.n_batch < n_batch:  # the backend capped it: a row that long cannot be pooled whole
        ctx.close()
        raise InvalidParameterError(
            f"The backend accepts decodes of {ctx.n_batch} tokens, fewer than the longest row's "
            f"{n_batch}; shorten the texts."
        )
    return ctx


def _row_result(vector: Any, row: int, n_tokens: int) -> Result:
    return Result(
        embedding_text(len(vector)),
        finish_reason="stop",
        row=row,
        n_prompt_tokens=n_tokens,
        value=vector.tolist(),
    )
