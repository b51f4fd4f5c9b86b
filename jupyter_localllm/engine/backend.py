"""The backend contract: what the runner and label scoring need from an inference library.

:mod:`jupyter_localllm.engine.llama` implements it on llama.cpp; the runner
(:mod:`~jupyter_localllm.engine.runner`) and :mod:`~jupyter_localllm.engine.scoring` see only
these protocols, so another backend (a CUDA build, llama-server over HTTP) is one new module
whose model satisfies :class:`BackendModel`.

Everything above the engine types models against :class:`BackendModel` and gets them from
:func:`~jupyter_localllm.engine.factory.open_model`, the one place that names a backend's
classes. This module imports nothing of the package but the errors, so a backend module needs
nothing else of the engine: it receives :class:`SamplerSettings` (a
:class:`~jupyter_localllm.engine.sampling.SamplingParams`) and checks its arguments with
:func:`check_int`.

A context holds the KV cache of up to ``n_seq_max`` sequences (ids ``0..n_seq_max-1``). A
batch holds tokens, each at a position of one sequence; decoding it appends their cells to
the cache and leaves logits for the tokens that asked for them, addressed by the token's index
in the batch ("output row").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidParameterError

__all__ = [
    "MAX_SEQUENCES",
    "POOLING_TYPES",
    "UINT32_MAX",
    "BackendBatch",
    "BackendContext",
    "BackendEmbeddingContext",
    "BackendModel",
    "BackendSampler",
    "ModelUser",
    "SamplerSettings",
    "check_int",
]

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: the most sequences one context may hold
UINT32_MAX = 2**32 - 1  # the range of llama.cpp's n_ctx, n_batch, n_ubatch
POOLING_TYPES = ("mean", "cls", "last")  # how a sequence's token states become one vector


def check_int(name: str, value: Any, low: int, high: int | None) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is an int in ``[low, high]``
    (``high=None``: no upper bound)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidParameterError(f"{name} must be an integer {bound}, got {value!r}.")


class SamplerSettings(Protocol):
    """What a backend reads to build a sampler (a
    :class:`~jupyter_localllm.engine.sampling.SamplingParams` is one)."""

    @property
    def grammar(self) -> str | None:
        """GBNF grammar the output must follow (checked before), or None."""
        ...

    @property
    def greedy(self) -> bool:
        """True for the most likely token, no randomness."""
        ...

    @property
    def temperature(self) -> float:
        """Softmax temperature."""
        ...

    @property
    def top_k(self) -> int:
        """Keep the k most likely tokens (0: all)."""
        ...

    @property
    def top_p(self) -> float:
        """Nucleus sampling threshold (1: off)."""
        ...

    @property
    def min_p(self) -> float:
        """Drop tokens below this share of the most likely one (0: off)."""
        ...

    @property
    def repeat_penalty(self) -> float:
        """Penalty on repeated tokens (1: off)."""
        ...

    @property
    def repeat_last_n(self) -> int:
        """How many recent tokens the penalty looks at (0: off)."""
        ...

    @property
    def seed(self) -> int:
        """The random stream when none is given."""
        ...


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


class BackendEmbeddingContext(Protocol):
    """A context in embedding mode: each decode gives one pooled vector per sequence.

    Every token of a decode is output and pooled per sequence, so a sequence must lie whole
    in one decode (the pooling of a causal model sees only the decode's tokens; a non-causal
    one cannot be split at all): a decode holds whole sequences, at most :attr:`n_batch`
    tokens, and the cache is emptied (:meth:`memory_clear`) before the next one.
    """

    n_ctx: int
    """KV cells of the whole (unified) cache."""

    n_batch: int
    """Most tokens one decode accepts (also its ubatch: one decode is one graph)."""

    n_seq_max: int
    """Sequences one decode may hold (ids ``0..n_seq_max-1``)."""

    n_embd: int
    """Length of a pooled vector."""

    pooling: str
    """How token states are pooled: one of :data:`POOLING_TYPES`."""

    def decode(self, batch: BackendBatch) -> None:
        """Run the model on ``batch`` (every token marked as output)."""
        ...

    def seq_embedding(self, seq: int) -> np.ndarray:
        """A copy (float32, :attr:`n_embd`) of sequence ``seq``'s pooled vector of the last
        decode."""
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


@runtime_checkable
class BackendModel(Protocol):
    """A loaded model: its vocabulary, what it says about itself, and the factory of its
    contexts, batches and samplers. ``isinstance(x, BackendModel)`` tells a model from a
    reference or a context."""

    name: str
    """The model's name (for display)."""

    path: Path
    """The model file."""

    size_bytes: int
    """Size of the model file."""

    metadata: dict[str, str]
    """The file's metadata key/values, as strings."""

    chat_template: str | None
    """The chat template the file carries (Jinja), or None."""

    n_vocab: int
    """Tokens in the vocabulary."""

    bos_token: int
    """The beginning-of-sequence token (-1: none)."""

    eos_token: int
    """The end-of-sequence token (-1: none)."""

    add_bos: bool
    """Whether tokenizing with ``add_special`` puts the BOS token first."""

    n_embd: int
    """Length of the model's output vectors (of a pooled embedding)."""

    @property
    def offloads_to_gpu(self) -> bool:
        """True when its contexts' caches live on a GPU (so host memory does not bound them)."""
        ...

    def require_open(self) -> None:
        """Raise :class:`~jupyter_localllm.errors.InvalidParameterError` once closed."""
        ...

    def close(self) -> None:
        """Free the model and its contexts (refused while a context of it runs)."""
        ...

    def add_user(self, user: ModelUser) -> None:
        """Register ``user``: closing the model is refused while ``user.lock`` is held."""
        ...

    def check_grammar(self, grammar: str) -> None:
        """Raise :class:`~jupyter_localllm.errors.GrammarError` unless the backend accepts
        ``grammar`` (its parser; whether the model can finish it is checked by
        :func:`~jupyter_localllm.engine.grammar.check_model_grammar`)."""
        ...

    def grammar_pieces(self) -> list[tuple[int, bytes]]:
        """Every token a grammar may emit before its end (not end-of-generation), with its
        bytes as rendered with control tokens as text."""
        ...

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of ``text``."""
        ...

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The raw bytes of one token (possibly part of a UTF-8 character)."""
        ...

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """The text of ``tokens``; ``special=True`` renders control tokens as text."""
        ...

    def token_text(self, token: int) -> str:
        """The vocabulary entry of ``token`` (for display and prompt templates)."""
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

    def new_embedding_context(
        self,
        *,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        n_threads: int | None,
        pooling: str,
    ) -> BackendEmbeddingContext:
        """A context in embedding mode (unified cache of ``n_ctx`` cells, decodes of at most
        ``n_batch`` tokens in one ubatch) pooling each sequence as ``pooling`` says (one of
        :data:`POOLING_TYPES`)."""
        ...

    def new_batch(self, capacity: int, n_seq_max: int) -> BackendBatch:
        """An empty batch of ``capacity`` tokens for sequences ``0..n_seq_max-1``."""
        ...

    def new_sampler(self, params: SamplerSettings, seed: int) -> BackendSampler:
        """A sampler that chooses tokens as ``params`` say, with random stream ``seed``."""
        ...
