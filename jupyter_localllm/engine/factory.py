"""Where models come from: the one place above the backend that names its classes.

Everything above the engine opens models with :func:`open_model` and types them as
:class:`~jupyter_localllm.engine.backend.BackendModel`; another backend is one module beside
:mod:`.llama` and one branch here. The probe (:mod:`.probe`) runs before an untrusted file
reaches the backend in this process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import llama
from .backend import BackendModel
from .probe import probe_model_file

__all__ = ["json_schema_to_gbnf", "open_model", "set_verbosity", "supports_gpu_offload"]


def open_model(
    path: str | os.PathLike[str],
    *,
    probe: bool = True,
    probe_cache: Path | None = None,
    **options: Any,
) -> BackendModel:
    """Load the model file at ``path`` (already resolved and validated).

    With ``probe=True`` the file is first loaded once in a subprocess (verdicts kept in the
    folder ``probe_cache``), so a file that crashes llama.cpp is refused instead of ending
    this process. ``options``: the backend's load options (``n_gpu_layers``, ``use_mmap``,
    ``use_mlock``, ``use_extra_bufts``).
    """
    if probe:
        probe_model_file(path, probe_cache)
    return llama.Model(path, **options)


def set_verbosity(level: int) -> None:
    """How much of llama.cpp's own log reaches stderr: 0 errors only (default), 1 warnings,
    2 info, 3 debug."""
    llama.set_verbosity(level)


def supports_gpu_offload() -> bool:
    """True when the backend can put layers on a GPU."""
    return llama.supports_gpu_offload()


def json_schema_to_gbnf(schema_json: str) -> str:
    """The backend's converter of a JSON schema (JSON text) to a GBNF grammar."""
    return llama.json_schema_to_gbnf(schema_json)
