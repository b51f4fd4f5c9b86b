"""Whether a file is fit to hand to llama.cpp: a complete GGUF file whose hyperparameters
llama.cpp accepts, and that fits in memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import hardware
from ..errors import InsufficientMemoryError, InvalidModelFileError, ModelNotFoundError
from . import gguf as _gguf
from .limits import LLAMA_MAX_LAYERS, check_hyperparameters
from .paths import expand_path

__all__ = [
    "MEMORY_OVERHEAD",
    "check_memory",
    "read_gguf_metadata",
    "regular_file",
    "validate_model_file",
]

MEMORY_OVERHEAD = 1.10  # weights plus ~10% for the compute buffers and a small KV cache
_GIB = 1024**3


def regular_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or the error that says why it is not a regular file."""
    p = expand_path(path)
    if not p.exists():
        raise ModelNotFoundError(
            f"No model file at {p}; check the path, or pass 'default' for the packaged SmolLM2 "
            "model."
        )
    if p.is_dir():
        inside = sorted(x.name for x in p.glob("*.gguf"))
        hint = f" such as {', '.join(inside[:3])}" if inside else ""
        raise InvalidModelFileError(
            f"{p} is a folder, not a GGUF file; pass the path of a .gguf file{hint} inside it."
        )
    if not p.is_file():
        raise InvalidModelFileError(
            f"{p} is not a regular file; pass the path of a .gguf model file."
        )
    return p


def _read_header(p: Path, **kwargs: Any) -> _gguf.GGUFHeader:
    try:
        return _gguf.read_header(p, **kwargs)
    except PermissionError as exc:
        raise InvalidModelFileError(
            f"{p} is not readable (permission denied); give yourself read access, e.g. "
            f"`chmod u+r {p}`."
        ) from exc
    except OSError as exc:
        raise InvalidModelFileError(
            f"{p} cannot be read ({exc.strerror or exc}); check the file and the disk it is on."
        ) from exc


def validate_model_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a complete GGUF model file, before llama.cpp ever sees it.

    Checks that it exists (:class:`ModelNotFoundError`), is a readable regular file, starts with
    the GGUF magic, uses GGUF version 2 or 3, has an intact header, and is at least as long as
    its tensor infos say (:class:`InvalidModelFileError`: "... is truncated ... re-download it"),
    and holds no hyperparameter on which llama.cpp would abort (:mod:`.limits`). The
    tensor-size check stands down for quantisation types this module does not know.
    Returns the absolute path.
    """
    p = regular_file(path)
    size = p.stat().st_size
    if size == 0:
        raise InvalidModelFileError(f"{p} is empty (0 bytes); re-download it.")
    # Per-layer arrays (at most LLAMA_MAX_LAYERS long) are kept for the checks; the vocabulary
    # is summarised.
    header = _read_header(p, max_array_length=LLAMA_MAX_LAYERS)
    if header.tensor_count == 0:
        raise InvalidModelFileError(
            f"{p} holds no tensors (a vocabulary-only GGUF?); pass a model file with weights."
        )
    end = header.data_end if header.data_end is not None else header.data_offset
    if end is not None and end > size:
        raise InvalidModelFileError(
            f"{p} is truncated: its tensors need {end:,} bytes but the file has {size:,} "
            f"({size / end:.0%}); re-download it."
        )
    check_hyperparameters(p, header.metadata)
    return p.absolute()


def read_gguf_metadata(
    path: str | os.PathLike[str], *, max_array_length: int = 64
) -> dict[str, Any]:
    """The metadata key/values of a GGUF file, read in pure Python without loading the model.

    Keys are as in the file (``general.architecture``, ``tokenizer.chat_template``, ...), in file
    order, preceded by ``GGUF.version``, ``GGUF.tensor_count`` and ``GGUF.kv_count``. Arrays longer
    than ``max_array_length`` (the vocabulary, merges, token types) are replaced by an
    :class:`ArraySummary` giving their element type and length.
    """
    p = regular_file(path)
    header = _read_header(p, max_array_length=max_array_length, tensors=False)
    return {
        "GGUF.version": header.version,
        "GGUF.tensor_count": header.tensor_count,
        "GGUF.kv_count": header.kv_count,
        **header.metadata,
    }


def check_memory(path: str | os.PathLike[str], *, available: int | None = None) -> int:
    """Refuse a model that will not fit in memory, before loading it; return the bytes needed.

    The estimate is the file size plus 10% (compute buffers, a small KV cache), compared with
    ``available`` (default :func:`~jupyter_localllm.hardware.available_memory`). Raises
    :class:`InsufficientMemoryError` when it does not fit.
    """
    p = regular_file(path)
    needed = int(p.stat().st_size * MEMORY_OVERHEAD)
    free = hardware.available_memory() if available is None else int(available)
    if needed > free:
        raise InsufficientMemoryError(
            f"Loading {p.name} needs about {needed / _GIB:.2f} GiB of memory but only "
            f"{free / _GIB:.2f} GiB is available; use a smaller quantisation (e.g. Q4_K_M), "
            "close other programs, or pass check_memory=False to try anyway."
        )
    return needed
