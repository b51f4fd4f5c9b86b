"""The result cache: finished rows on disk (``diskcache``), so re-running a cell or resuming
after a kernel restart computes only the rows that are missing.

A row's key is the SHA-256 of (model file digest, sampling parameters, ``n_seq_max``, prompt);
each row is stored the moment it finishes, so a run killed half-way keeps its finished rows.
The cache lives in ``$LOCALLLM_CACHE_DIR/results`` (default: the user cache folder).

Rows are stored as JSON (the text and the :class:`~jupyter_localllm.types.Result`'s
attributes), never as pickles: a cache folder may be shared, and reading a pickle runs
whatever code it names. The cache is an optimisation and never stops work: on any fault (a
folder that cannot be created or written, a corrupt database, a full disk, a value this module
did not write) it warns once (:class:`ResultCacheWarning`) and the run carries on without it;
the next run tries the cache again.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

from ..analysis.repro import sha256_json
from ..types import Result

__all__ = [
    "ResultCache",
    "ResultCacheWarning",
    "cache_enabled",
    "clear_cache",
    "default_results_dir",
    "get_cache",
]

_FORMAT = 2  # part of every key: rows stored by older versions (pickles) are never looked up
_ATTRIBUTES = ("finish_reason", "n_prompt_tokens", "n_tokens", "row", "probs", "logprobs", "value")

_cache: ResultCache | None = None
_cache_lock = threading.Lock()


class ResultCacheWarning(RuntimeWarning):
    """The result cache failed; the run went on without it (nothing was lost)."""


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
    """Finished rows by key, in a ``diskcache.Cache`` (safe across threads and processes),
    opened on first use. After a fault it is off (``broken`` says why): lookups find nothing
    and rows are not stored."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_results_dir()
        self.broken: str | None = None
        self._store: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def key(model_digest: str, params: dict[str, Any], n_seq_max: int, prompt: str) -> str:
        """The key of one row."""
        return sha256_json(
            {
                "format": _FORMAT,
                "model": model_digest,
                "params": params,
                "n_seq_max": n_seq_max,
                "prompt": prompt,
            }
        )

    def get(self, key: str) -> Result | None:
        """The stored row, or ``None`` (also when the cache is broken)."""
        if self.broken is not None:
            return None
        try:
            stored = self._opened().get(key)
            return None if stored is None else _decode(stored)
        except Exception as exc:  # any fault: the row is simply computed
            self._fault(exc)
            return None

    def put(self, key: str, result: Result) -> None:
        """Store a finished row (error rows are not stored: they run again; nor are rows
        whose attributes are not JSON)."""
        if result.error is not None or self.broken is not None:
            return
        try:
            text = _encode(result)
        except (TypeError, ValueError):
            return
        try:
            self._opened().set(key, text)
        except Exception as exc:  # a full disk, a read-only folder: the row is kept anyway
            self._fault(exc)

    def clear(self) -> int:
        """Remove every stored row; returns how many there were."""
        try:
            return self._opened().clear()
        except Exception as exc:
            self._fault(exc, f"delete the folder {self.directory} to empty it")
            return 0

    def __len__(self) -> int:
        try:
            return len(self._opened())
        except Exception as exc:
            self._fault(exc)
            return 0

    def _opened(self) -> Any:
        with self._lock:
            if self._store is None:
                import diskcache

                self._store = diskcache.Cache(str(self.directory), disk=_json_only_disk())
            return self._store

    def _fault(self, exc: Exception, fix: str = "this run goes on without it") -> None:
        """Turn the cache off and warn (once: later faults find it off already)."""
        with self._lock:
            if self.broken is not None:
                return
            self.broken = f"{type(exc).__name__}: {exc}"
            store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):  # closing a broken store is best effort
                store.close()
        warnings.warn(
            f"The result cache in {self.directory} failed ({self.broken}); {fix}.",
            ResultCacheWarning,
            stacklevel=3,
        )


def _json_only_disk() -> type:
    """A ``diskcache.Disk`` that refuses to unpickle: this module stores JSON text only."""
    import diskcache
    from diskcache.core import MODE_PICKLE

    class JSONOnlyDisk(diskcache.Disk):
        def fetch(self, mode, filename, value, read):
            if mode == MODE_PICKLE:
                raise ValueError("a stored value is a pickle, which this cache never writes")
            return super().fetch(mode, filename, value, read)

    return JSONOnlyDisk


def _encode(result: Result) -> str:
    """A finished row as JSON: its text and attributes."""
    attributes = {name: getattr(result, name) for name in _ATTRIBUTES}
    return json.dumps({"text": str(result), **attributes})


def _decode(stored: Any) -> Result:
    """The :class:`Result` of :func:`_encode`'s JSON (``ValueError`` for anything else)."""
    if not isinstance(stored, str):
        raise ValueError(f"a stored value is {type(stored).__name__}, not JSON text")
    data = json.loads(stored)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError("a stored value is not a result")
    return Result(data.pop("text"), **{k: v for k, v in data.items() if k in _ATTRIBUTES})


def get_cache() -> ResultCache:
    """The process-wide cache (opened on first use); a cache that failed is replaced, so
    each run tries again (and warns at most once)."""
    global _cache
    with _cache_lock:
        current = _cache
        if current is None or current.broken or current.directory != default_results_dir():
            current = _cache = ResultCache()
        return current


def clear_cache() -> int:
    """Empty the result cache; returns the number of rows removed."""
    return get_cache().clear()
