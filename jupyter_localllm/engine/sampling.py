"""Sampling parameters: one validated dataclass shared by every generation call.

Keyword names follow llama-cpp-python (``max_tokens``, ``temperature``, ``top_k``, ``top_p``,
``min_p``, ``repeat_penalty``, ``seed``, ``stop``, ``grammar``); ``max_tokens``, ``temperature``
and ``seed`` come from the defaults table (:mod:`jupyter_localllm.defaults`: 100 tokens, greedy,
seed 1234, as localLLM) so its tutorials translate line by line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import defaults
from ..errors import InvalidParameterError

__all__ = ["DEFAULT_SEED", "SamplingParams", "derive_seed"]

DEFAULT_SEED = defaults.SEED
_UINT32 = 2**32


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen for one request.

    Build it from keywords with :meth:`from_kwargs` (unknown names are an error) and copy it
    with :func:`dataclasses.replace`.
    """

    max_tokens: int = defaults.MAX_TOKENS
    """Most tokens to generate; generation also ends at an end-of-generation token or a stop
    string."""

    temperature: float = defaults.TEMPERATURE
    """0 means greedy decoding (the most likely token, no randomness); higher is more random."""

    top_k: int = 40
    """Keep only the k most likely tokens before sampling; 0 disables the filter."""

    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p."""

    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times that of the most likely token."""

    repeat_penalty: float = 1.0
    """Divide the logits of recently generated tokens by this (1.0 disables it)."""

    repeat_last_n: int = 64
    """How many recent tokens the repeat penalty looks at."""

    seed: int = DEFAULT_SEED
    """Random seed; a batch derives one seed per row from it (see :func:`derive_seed`)."""

    stop: tuple[str, ...] = field(default_factory=tuple)
    """Strings that end generation; the stop string itself is not returned. A single string
    is accepted and becomes a one-element tuple."""

    grammar: str | None = None
    """A GBNF grammar the output must follow (root rule ``root``)."""

    def __post_init__(self) -> None:
        stop = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        elif isinstance(stop, Sequence):
            stop = tuple(stop)
        else:
            raise InvalidParameterError(
                f"stop must be a string or a list of strings, got {type(stop).__name__}."
            )
        if not all(isinstance(s, str) and s for s in stop):
            raise InvalidParameterError("stop strings must be non-empty strings.")
        object.__setattr__(self, "stop", stop)
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InvalidParameterError(message)

        need(
            _is_int(self.max_tokens) and self.max_tokens > 0,
            f"max_tokens must be a positive integer, got {self.max_tokens!r}.",
        )
        need(
            _is_number(self.temperature) and self.temperature >= 0,
            f"temperature must be a finite number >= 0, got {self.temperature!r}.",
        )
        need(_is_int(self.top_k) and self.top_k >= 0, f"top_k must be >= 0, got {self.top_k!r}.")
        need(
            _is_number(self.top_p) and 0 < self.top_p <= 1,
            f"top_p must be in (0, 1], got {self.top_p!r}.",
        )
        need(
            _is_number(self.min_p) and 0 <= self.min_p <= 1,
            f"min_p must be in [0, 1], got {self.min_p!r}.",
        )
        need(
            _is_number(self.repeat_penalty) and self.repeat_penalty > 0,
            f"repeat_penalty must be a finite number > 0, got {self.repeat_penalty!r}.",
        )
        need(
            _is_int(self.repeat_last_n) and self.repeat_last_n >= -1,
            f"repeat_last_n must be >= -1 (-1 means the whole context), "
            f"got {self.repeat_last_n!r}.",
        )
        need(
            _is_int(self.seed) and 0 <= self.seed < _UINT32,
            f"seed must be an integer in [0, 2**32), got {self.seed!r}.",
        )
        need(
            self.grammar is None or (isinstance(self.grammar, str) and self.grammar.strip()),
            "grammar must be a non-empty GBNF string or None.",
        )

    @property
    def greedy(self) -> bool:
        """True when decoding picks the most likely token (temperature 0)."""
        return self.temperature == 0

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The keyword names this dataclass accepts."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, base: SamplingParams | None = None, /, **kwargs: Any) -> SamplingParams:
        """Build parameters from keywords, starting from ``base`` (or the defaults).

        ``None`` values are ignored, so front-ends can pass optional options straight through.
        Unknown keywords raise :class:`InvalidParameterError` naming the accepted ones.
        """
        names = cls.field_names()
        unknown = sorted(k for k in kwargs if k not in names)
        if unknown:
            raise InvalidParameterError(
                f"Unknown sampling option(s) {', '.join(unknown)}; "
                f"accepted options are {', '.join(names)}."
            )
        given = {k: v for k, v in kwargs.items() if v is not None}
        return dataclasses.replace(base or cls(), **given)

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain JSON-able dict (used for hashing and run logs)."""
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        return d


def derive_seed(seed: int, index: int) -> int:
    """The seed for row ``index`` of a batch run with ``seed``.

    Each row gets its own random stream, so a row's output does not depend on which other
    rows share its batch or on ``n_seq_max``. Row 0 uses ``seed`` itself, so a single
    ``generate`` call and row 0 of a batch agree. SplitMix64 mixing spreads nearby rows.
    """
    if index == 0:
        return seed
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % _UINT32


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
