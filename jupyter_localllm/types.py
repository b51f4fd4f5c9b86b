"""The public value types every layer shares: a row's :class:`Result` and its
:class:`FinishReason`, a batch's :class:`Results`, a :class:`Progress` event and
:class:`BatchInterrupted`. This module imports
nothing above :mod:`jupyter_localllm.errors`, so the engine, the session and the front-ends can
all use it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import BatchInterrupted

__all__ = ["BatchInterrupted", "FinishReason", "Progress", "Result", "Results"]


class FinishReason(str, Enum):
    """Why a row ended; a ``str``, so ``result.finish_reason == "stop"`` holds."""

    STOP = "stop"
    """A stop string was generated (label scoring: the row was scored)."""
    LENGTH = "length"
    """``max_tokens`` or the end of the context was reached."""
    EOG = "eog"
    """The model ended its turn (an end-of-generation token)."""
    ERROR = "error"
    """The row failed; ``result.error`` says why."""
    CANCELLED = "cancelled"
    """An interrupted run never finished the row."""

    def __str__(self) -> str:  # the plain value in f-strings, CSV files and logs
        return self.value

    __format__ = str.__format__


class Result(str):
    """One generated text, a ``str`` carrying how it was produced.

    A result is immutable: :meth:`replace` gives a changed copy. Attributes:
    ``finish_reason`` (a :class:`FinishReason`, equal to its string: ``"stop"`` a stop
    string, ``"length"`` max_tokens or the context was reached, ``"eog"`` the model ended its
    turn, ``"error"``, ``"cancelled"`` an interrupted run never finished the row),
    ``n_prompt_tokens``, ``n_tokens`` (generated),
    ``error`` (message or ``None``), ``row`` (position in the input). A failed row's text is
    ``"Error: <message>"``, as localLLM users check for.

    Label scoring (:func:`~jupyter_localllm.classify`) gives the label as the text, with
    ``probs`` (label -> probability) and ``logprobs`` (the label scores, in label order);
    extraction (:func:`~jupyter_localllm.extract`) keeps the parsed JSON in ``value``;
    an embedded row (:func:`~jupyter_localllm.embed`) has the text ``"<embedding d=N>"`` and
    its pooled vector in ``value``, a list of N floats (not normalised), so the result cache
    stores it as JSON like any other row.
    """

    finish_reason: FinishReason
    n_prompt_tokens: int
    n_tokens: int
    error: str | None
    row: int
    probs: dict[str, float] | None
    logprobs: list[float] | None
    value: Any

    def __new__(
        cls,
        text: str,
        *,
        finish_reason: FinishReason | str,
        n_prompt_tokens: int = 0,
        n_tokens: int = 0,
        error: str | None = None,
        row: int = 0,
        probs: dict[str, float] | None = None,
        logprobs: list[float] | None = None,
        value: Any = None,
    ) -> Result:
        obj = super().__new__(cls, text)
        attrs = obj.__dict__  # written once here; __setattr__ refuses later changes
        attrs["finish_reason"] = FinishReason(finish_reason)
        attrs["n_prompt_tokens"] = n_prompt_tokens
        attrs["n_tokens"] = n_tokens
        attrs["error"] = error
        attrs["row"] = row
        attrs["probs"] = probs
        attrs["logprobs"] = logprobs
        attrs["value"] = value
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"A Result is immutable; use result.replace({name}=...) for a changed copy."
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"A Result is immutable; {name} cannot be deleted.")

    def replace(self, **changes: Any) -> Result:
        """A copy of this result with ``changes`` (``text=`` and any attribute)."""
        attrs = {**self.__dict__, **changes}
        return Result(attrs.pop("text", str(self)), **attrs)

    @classmethod
    def failed(cls, message: str, *, row: int = 0, n_prompt_tokens: int = 0) -> Result:
        """An error result whose text is ``"Error: <message>"``."""
        return cls(
            f"Error: {message}",
            finish_reason="error",
            error=message,
            row=row,
            n_prompt_tokens=n_prompt_tokens,
        )

    @classmethod
    def cancelled(cls, row: int) -> Result:
        """The place of a row that an interrupted run never finished."""
        return cls.failed("cancelled", row=row).replace(finish_reason=FinishReason.CANCELLED)

    @property
    def ok(self) -> bool:
        """True when the row produced text (no error)."""
        return self.error is None

    def __reduce__(self):  # keep the attributes through pickling (Dask, caches)
        return (_rebuild_result, (str(self), self.__dict__))


class Results(list):
    """The results of a batch call, in input order, with ``hashes``: the SHA-256 of the
    inputs (model file, parameters, prompts) and of the outputs (see
    :mod:`jupyter_localllm.analysis.repro`)."""

    hashes: dict[str, str]

    def __init__(self, items: Any = (), hashes: dict[str, str] | None = None):
        super().__init__(items)
        self.hashes = dict(hashes or {})


def _rebuild_result(text: str, attrs: dict) -> Result:
    known = Result.__annotations__
    return Result(text, **{k: v for k, v in attrs.items() if k in known})


@dataclass
class Progress:
    """A progress event of a batch run (sent to ``on_progress`` callbacks)."""

    done: int
    """Rows finished (answers and errors)."""
    total: int
    """Rows in the run."""
    errors: int
    """Rows that ended with an error."""
    generated_tokens: int
    """Tokens generated so far."""
    elapsed: float
    """Seconds since the run started."""

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second so far."""
        return self.generated_tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Estimated seconds left (None before the first row finishes)."""
        if self.done == 0 or self.elapsed <= 0:
            return None
        return self.elapsed / self.done * (self.total - self.done)
