"""Listings of the models that can be loaded here, as DataFrames."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import LocalLLMError
from .ollama import ollama_entries
from .paths import (
    GEMMA_REF,
    cached_files,
    default_model_path,
    expand_path,
    gemma_model_path,
    model_cache_dir,
    ollama_models_dir,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["discover_models", "list_cached_models", "list_ollama_models"]


def list_cached_models(cache_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The GGUF files in the model cache, as a DataFrame sorted by name.

    Columns: ``name`` (file name), ``path``, ``size_bytes``, ``modified`` (UTC timestamp). Any
    ``name`` (or a unique part of it) can be passed to :func:`resolve_model`.
    """
    import pandas as pd

    cache = expand_path(cache_dir) if cache_dir is not None else model_cache_dir()
    files = cached_files(cache)
    stats = [p.stat() for p in files]
    frame = pd.DataFrame(
        {
            "name": pd.Series([p.name for p in files], dtype=str),
            "path": pd.Series([str(p.absolute()) for p in files], dtype=str),
            "size_bytes": pd.Series([s.st_size for s in stats], dtype="int64"),
            "modified": pd.to_datetime(
                pd.Series([s.st_mtime for s in stats], dtype="float64"), unit="s", utc=True
            ),
        }
    )
    return frame.sort_values(["name", "path"], ignore_index=True)


def list_ollama_models(models_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The models in Ollama's store that can be loaded, as a DataFrame sorted by name.

    Columns: ``name`` (as ``ollama list`` shows it, e.g. ``"llama3.2:latest"`` or
    ``"namespace/name:tag"``), ``path`` (the weights blob), ``size_bytes``, ``digest``. Pass
    ``"ollama:" + name`` to :func:`resolve_model`. Manifests whose blob is missing are left out.
    """
    import pandas as pd

    root = expand_path(models_dir) if models_dir is not None else ollama_models_dir()
    rows = ollama_entries(root)
    return pd.DataFrame(
        {
            "name": pd.Series([r["name"] for r in rows], dtype=str),
            "path": pd.Series([r["path"] for r in rows], dtype=str),
            "size_bytes": pd.Series([r["size_bytes"] for r in rows], dtype="int64"),
            "digest": pd.Series([r["digest"] for r in rows], dtype=str),
        }
    )


def discover_models() -> pd.DataFrame:
    """The models that can be loaded here, as a DataFrame: the packaged ones that are
    installed (``"default"``, ``"gemma-3-270m"``), the files in the model cache and the models
    in Ollama's store.

    Columns: ``source`` (``"packaged"``, ``"cache"`` or ``"ollama"``), ``ref`` (what to pass
    to :func:`resolve_model`, ``model_load`` or ``%llm load``), ``size_mb``, ``path``.
    """
    import pandas as pd

    rows = []
    for ref, locate in (("default", default_model_path), (GEMMA_REF, gemma_model_path)):
        try:
            path = locate()
        except LocalLLMError:  # not installed, or its file cannot be assembled here
            continue
        rows.append(("packaged", ref, path.stat().st_size, str(path)))
    for _, r in list_cached_models().iterrows():
        rows.append(("cache", r["name"], r["size_bytes"], r["path"]))
    for _, r in list_ollama_models().iterrows():
        rows.append(("ollama", f"ollama:{r['name']}", r["size_bytes"], r["path"]))
    table = pd.DataFrame(rows, columns=["source", "ref", "size_bytes", "path"])
    table.insert(2, "size_mb", (table.pop("size_bytes") / 2**20).round(1))
    return table
