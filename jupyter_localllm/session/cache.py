"""The result cache: finished rows on disk (``diskcache``), so re-running a cell or resuming
after a kernel restart computes only the rows that are missing.

A row's key is the SHA-256 of (model file digest, sampling parameters, ``n_seq_max``, prompt);
each row is stored the moment it finishes, so a run killed half-way keeps its finished rows.
The cache lives in ``$LOCALLLM_CACHE_DIR/results`` (default: the user cache folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..analysis.repro import sha256_json
from ..types import Result

__all__ = ["ResultCache", "cache_enabled", "clear_cache", "default_results_dir", "get_cache"]

_cache: ResultCache | None = None


def cache_enabled(cache: bool | None) -> bool:
    """Whether a call with ``cache=`` uses the cache: ``None`` follows
    ``$LOCALLLM_RESULT_CACHE`` (``0`` turns it off; on by default)."""
    if cache is not None:
        return bool(cache)
    return os.environ.get("LOCALLLM_RESULT_CACHE", "1").lower() not in ("0", "false", "no")


def default_results_dir() -> Path:
    """``$LOCALLLM_CACHE_DIR/results``, else ``<user cache dir>/jupyter-localllm/results``."""
    env = os.environ.get("LOCALLLM_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "results"
    import platformdirs

    return Path(platformdirs.user_cache_dir("jupyter-localllm")) / "results"


class ResultCache:
    """Finished rows by key, in a ``diskcache.Cache`` (safe across threads and processes)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        import diskcache

        if directory is None:
            directory = default_results_dir()
        self.directory = Path(directory)
        self._store = diskcache.Cache(str(self.directory))

    @staticmethod
    def key(model_digest: str, params: dict[str, Any], n_seq_max: int, prompt: str) -> str:
        """The key of one row."""
        return sha256_json(
            {"model": model_digest, "params": params, "n_seq_max": n_seq_max, "prompt": prompt}
        )

    def get(self, key: str) -> Result | None:
        """The stored row, or ``None``."""
        return self._store.get(key)

    def put(self, key: str, result: Result) -> None:
        """Store a finished row (error rows are not stored: they run again)."""
        if result.error is None:
            self._store.set(key, result)

    def clear(self) -> int:
        """Remove every stored row; returns how many there were."""
        return self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def get_cache() -> ResultCache:
    """The process-wide cache (opened on first use)."""
    global _cache
    if _cache is None or _cache.directory != default_results_dir():
        _cache = ResultCache()
    return _cache


def clear_cache() -> int:
    """Empty the result cache; returns the number of rows removed."""
    return get_cache().clear()
