"""Tables on disk for ``jupyter-localllm run``: CSV, Parquet and JSON Lines, chosen by the
file's extension; written whole to a temporary file and renamed, so an output is never half
written (Ctrl-C waits for the rename)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .spec import BadInput, reason

__all__ = ["FORMATS", "check_format", "check_writable", "read_table", "write_table"]

FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON Lines"}


def check_format(path: Path, what: str) -> str:
    """``path``'s extension, when it is one of :data:`FORMATS`."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BadInput(
            f"{what} {path}: unknown file type {path.suffix or '(no extension)'!r}; "
            "use .csv, .parquet or .jsonl"
        )
    return suffix


def check_writable(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written."""
    folder = path.parent
    if not folder.is_dir():
        raise BadInput(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"cannot write {path}: permission denied")


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True, dtype=False, convert_dates=False)


_READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": pd.read_csv,
    ".parquet": pd.read_parquet,
    ".jsonl": _read_jsonl,
}


def read_table(path: Path, what: str) -> pd.DataFrame:
    """The table in ``path`` with a fresh 0..n-1 index; any fault is :class:`BadInput`."""
    suffix = check_format(path, what)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise BadInput(f"cannot read {what} {path}: it {state}")
    try:
        frame = _READERS[suffix](path)
    except Exception as exc:  # every reader's own errors: the file is not what it says
        raise BadInput(f"cannot read {what} {path} as {FORMATS[suffix]}: {reason(exc)}") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True)


def _cell(value: Any) -> Any:
    """A CSV cell: lists and objects (extracted values) as JSON text."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame = frame.copy()
    for name in frame.select_dtypes(include="object").columns:
        frame[name] = frame[name].map(_cell)
    frame.to_csv(path, index=False)


def _write_jsonl(frame: pd.DataFrame, path: Path) -> None:
    frame.to_json(path, orient="records", lines=True, force_ascii=False)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Parquet; a column whose values Arrow cannot give one type (extracted values of mixed
    types) is written as JSON text."""
    import pyarrow as pa

    try:
        frame.to_parquet(path, index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        frame = frame.copy()
        for name in frame.select_dtypes(include="object").columns:
            frame[name] = frame[name].map(_json_text)
        frame.to_parquet(path, index=False)


def _json_text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else json.dumps(value)


_WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    ".csv": _write_csv,
    ".parquet": _write_parquet,
    ".jsonl": _write_jsonl,
}


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` in its format: to a temporary file, then renamed."""
    writer = _WRITERS[check_format(path, "OUTPUT")]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _no_interrupt():
        try:
            writer(frame, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _no_interrupt():
    """Ctrl-C ignored inside (main thread only): the file is written whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
