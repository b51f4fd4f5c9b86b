"""The backend contract: what the runner and label scoring need from an inference library.

:mod:`jupyter_localllm.engine.llama` implements it on llama.cpp; the runner
(:mod:`~jupyter_localllm.engine.runner`) and :mod:`~jupyter_localllm.engine.scoring` see only
these protocols, so another backend (a CUDA build, llama-server over HTTP) is one new module
whose model satisfies :class:`BackendModel`.

A context holds the KV cache of up to ``n_seq_max`` sequences (ids ``0..n_seq_max-1``). A
batch holds tokens, each at a position of one sequence; decoding it appends their cells to
the cache and leaves logits for the tokens that asked for them, addressed by the token's index
in the batch ("output row").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .sampling import SamplingParams

__all__ = [
    "MAX_SEQUENCES",
    "BackendBatch",
    "BackendContext",
    "BackendModel",
    "BackendSampler",
    "ModelUser",
]

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: the most sequences one context may hold


class BackendBatch(Protocol):
    """A reusable batch of tokens for one decode step."""

    n_tokens: int
    """Tokens in the batch now."""

    @property
    def free(self) -> int:
        """How many more tokens fit."""
        ...

    def clear(self) -> None:
        """Empty the batch."""
        ...

    def add(
        self,
        tokens: Sequence[int],
        start_pos: int,
        seq: int,
        *,
        want_last_logits: bool,
        want_all_logits: bool = False,
    ) -> int:
        """Append ``tokens`` of ``seq`` at ``start_pos...``; the last one's output row or -1."""
        ...


class BackendContext(Protocol):
    """A KV cache on a model and the decode calls that fill it."""

    n_ctx: int
    """KV cells of the whole cache."""

    n_ctx_seq: int
    """KV cells one sequence may use (all of them when the cache is unified)."""

    n_batch: int
    """Most tokens one decode accepts."""

    def decode(self, batch: BackendBatch) -> None:
        """Run the model on ``batch``; raises a :class:`~jupyter_localllm.errors.DecodeError`."""
        ...

    def logits(self, index: int) -> np.ndarray:
        """A copy of the logits of output row ``index`` of the last decode."""
        ...

    def greedy_token(self, index: int) -> int:
        """The most likely token at output row ``index`` of the last decode."""
        ...

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Give sequence ``dst`` positions [p0, p1) of ``src`` (-1: open end)."""
        ...

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        """Remove positions [p0, p1) of sequence ``seq`` (-1: all sequences / open end)."""
        ...

    def memory_clear(self) -> None:
        """Empty the KV cache of every sequence."""
        ...

    def close(self) -> None:
        """Free the context (safe to call twice)."""
        ...


class BackendSampler(Protocol):
    """Picks tokens for one request from the logits of a decode."""

    def sample(self, ctx: BackendContext, index: int) -> int:
        """Pick (and accept) the next token from output row ``index`` of ``ctx``'s last decode."""
        ...

    def close(self) -> None:
        """Free the sampler (safe to call twice)."""
        ...


class ModelUser(Protocol):
    """Something that runs on a model (a generation context): ``lock`` is held while it
    runs, and the model does not close under it."""

    lock: Any


class BackendModel(Protocol):
    """A loaded model: its vocabulary, and the factory of its contexts, batches and samplers."""

    name: str
    """The model's name (for display)."""

    n_vocab: int
    """Tokens in the vocabulary."""

    def require_open(self) -> None:
        """Raise :class:`~jupyter_localllm.errors.InvalidParameterError` once closed."""
        ...

    def add_user(self, user: ModelUser) -> None:
        """Register ``user``: closing the model is refused while ``user.lock`` is held."""
        ...

    def check_grammar(self, grammar: str) -> None:
        """Raise :class:`~jupyter_localllm.errors.GrammarError` unless this model can be
        sampled under ``grammar`` to its end without the backend aborting."""
        ...

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of ``text``."""
        ...

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of one token (possibly part of a UTF-8 character)."""
        ...

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens."""
        ...

    def new_context(
        self,
        *,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        n_threads: int | None,
        kv_unified: bool,
        flash_attn: bool = False,
    ) -> BackendContext:
        """A context of ``n_ctx`` cells for ``n_seq_max`` sequences (unified or one stream each),
        with or without flash attention."""
        ...

    def new_batch(self, capacity: int, n_seq_max: int) -> BackendBatch:
        """An empty batch of ``capacity`` tokens for sequences ``0..n_seq_max-1``."""
        ...

    def new_sampler(self, params: SamplingParams, seed: int) -> BackendSampler:
        """A sampler that chooses tokens as ``params`` say, with random stream ``seed``."""
        ...
