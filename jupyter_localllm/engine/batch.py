"""A reusable batch of tokens held in numpy arrays, checked before a backend sees it.

:class:`TokenBatch` is the backend-free half of a batch (one sequence id per token): filling
numpy slices instead of native struct elements keeps the Python time per step small. The
backend (:mod:`.llama`) subclasses it with the native struct that points at these arrays and
sets the struct's token count once per decode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidParameterError, PromptError
from .backend import check_int

__all__ = ["TokenBatch"]


class TokenBatch:
    """Tokens, positions, sequence ids and logits flags of up to ``capacity`` tokens."""

    def __init__(self, capacity: int, n_seq_max: int, n_vocab: int):
        check_int("capacity", capacity, 1, None)
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self.n_vocab = n_vocab
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self.n_tokens = 0

    def clear(self) -> None:
        """Empty the batch."""
        self.n_tokens = 0

    @property
    def free(self) -> int:
        """How many more tokens fit."""
        return self.capacity - self.n_tokens

    def add(
        self,
        tokens: Any,
        start_pos: int,
        seq: int,
        *,
        want_last_logits: bool,
        want_all_logits: bool = False,
    ) -> int:
        """Append ``tokens`` of sequence ``seq`` at positions ``start_pos...``.

        ``want_last_logits`` asks for the last token's logits, ``want_all_logits`` for every
        token's. Returns the output index of the last token when it has logits (else -1).
        """
        tokens = np.asarray(tokens, dtype=np.int32)
        n = int(tokens.size)
        if n == 0:
            raise PromptError("Cannot add an empty token list to a batch.")
        if n > self.free:
            raise InvalidParameterError(
                f"{n} tokens do not fit in a batch with {self.free} free places."
            )
        if not 0 <= seq < self.n_seq_max:
            raise InvalidParameterError(
                f"Sequence id {seq} is out of range for n_seq_max={self.n_seq_max}."
            )
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise InvalidParameterError(f"Token ids must be in [0, {self.n_vocab}).")
        i = self.n_tokens
        self.token[i : i + n] = tokens
        self.pos[i : i + n] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self.seq[i : i + n] = seq
        self.logits[i : i + n] = want_all_logits
        if want_last_logits:
            self.logits[i + n - 1] = 1
        self.n_tokens = i + n
        return i + n - 1 if want_last_logits or want_all_logits else -1
