"""The exceptions jupyter-localllm raises.

Every class derives from :class:`LocalLLMError`, so ``except LocalLLMError`` catches anything
this package raises on purpose. Each also derives from the matching built-in (``ValueError`` for
bad input, ``RuntimeError`` for a failure while running, ``FileNotFoundError`` for a missing
model), so generic handlers keep working. Messages are one sentence: what was wrong, and what to
do about it.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousModelError",
    "BatchInterrupted",
    "ClusterError",
    "ContextBusyError",
    "ContextFullError",
    "DecodeError",
    "DownloadError",
    "GrammarError",
    "InsufficientMemoryError",
    "InvalidModelFileError",
    "InvalidParameterError",
    "JobTimeoutError",
    "LocalLLMError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PlaceholderError",
    "PromptError",
    "column_not_found",
]


class LocalLLMError(Exception):
    """Base class of every error raised by jupyter-localllm."""


class InvalidParameterError(LocalLLMError, ValueError):
    """A parameter is out of range or unknown (sampling options, context sizes, ...)."""


class ModelNotFoundError(LocalLLMError, FileNotFoundError):
    """A model reference resolves to no file (path, cache name, Ollama name, packaged model)."""


class AmbiguousModelError(LocalLLMError, ValueError):
    """A name fragment matches several cached models; the message lists the candidates."""

    def __init__(self, message: str, candidates: list[str]):
        super().__init__(message)
        self.candidates = candidates


class InvalidModelFileError(LocalLLMError, ValueError):
    """A file exists but is not a usable GGUF model (directory, wrong magic, truncated)."""


class InsufficientMemoryError(LocalLLMError, MemoryError):
    """Loading the model would need more memory than this machine has available."""


class ModelLoadError(LocalLLMError, RuntimeError):
    """llama.cpp refused to load a model or to create a context."""


class DownloadError(LocalLLMError, RuntimeError):
    """A model download failed (network, HTTP error, incomplete file)."""


class PromptError(LocalLLMError, ValueError):
    """A prompt cannot be run: empty, or longer than the context allows."""


class PlaceholderError(PromptError, InvalidParameterError):
    """A ``{name}`` placeholder of a prompt template cannot be read or filled (an unknown
    conversion, a format spec that fails or asks for a huge width)."""


class GrammarError(LocalLLMError, ValueError):
    """A grammar or JSON schema cannot be compiled into a llama.cpp grammar."""


class DecodeError(LocalLLMError, RuntimeError):
    """``llama_decode`` returned an error code; ``code`` holds it."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class ContextFullError(DecodeError):
    """``llama_decode`` found no free KV-cache slot (return code 1): fewer tokens or a larger
    ``n_ctx`` will fit; the context stays usable."""


class ContextBusyError(LocalLLMError, RuntimeError):
    """A context was used (a run, ``close()``, closing its model) from inside a callback
    (``progress=``, ``on_result=``, ``stream=``) of the run it is busy with; use another
    context, or do it after the run."""


class BatchInterrupted(LocalLLMError, KeyboardInterrupt):
    """A batch run was interrupted; ``results`` holds the rows finished so far, in input order,
    with an error result (``error="cancelled"``) for every row that did not finish."""

    def __init__(self, message: str, results: list):
        super().__init__(message)
        self.results = results


class ClusterError(LocalLLMError, RuntimeError):
    """A Dask cluster cannot run the batch: Dask is not installed, the scheduler cannot be
    reached, or ``cluster=`` is not a client or an address."""


class JobTimeoutError(LocalLLMError, TimeoutError):
    """A background job did not end within the time given to ``job.result(timeout=...)``."""


def column_not_found(column: object, columns: object, where: str = "") -> InvalidParameterError:
    """The error for ``column`` missing from ``columns`` (of the frame named ``where``)."""
    place = f" in {where}" if where else ""
    known = ", ".join(map(str, columns)) or "none"
    return InvalidParameterError(f"Column {column!r} not found{place}; columns are {known}.")
