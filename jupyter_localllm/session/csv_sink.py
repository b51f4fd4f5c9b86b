"""The CSV row sink: localLLM's ``annotation_sink_csv(path)``.

A run given ``sink=`` (``explore``, ``classify``, ``generate_parallel``, ``extract``, the
``df.llm`` accessors) appends each row to the file as soon as the row finishes:

- one line per row, written whole with one ``write`` and made durable with ``fsync``; the
  header is written once, before the first row of a new file;
- each row carries a key: its id columns (row number or index label, model) and
  ``prompt_hash`` (SHA-256 of the prompt it ran). A re-run with the same file appends only the
  rows whose key is not in it yet, so a run stopped half-way is completed, not duplicated;
- on opening, a trailing partial line (a process killed in the middle of a write) is cut off,
  and a file with other columns is refused before anything runs;
- text is always quoted and numbers never are, so every text round-trips byte for byte
  (``"NA"``, ``"01234"``, newlines, quotes); :meth:`AnnotationSink.read` gives it back as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameterError
from ..types import Result

if TYPE_CHECKING:
    import pandas as pd

    from .executors import Plan
    from .pipeline import BatchRequest

__all__ = ["RESULT_FIELDS", "AnnotationSink", "annotation_sink_csv", "row_fields", "rows_to_sink"]

RESULT_FIELDS = ("text", "finish_reason", "n_tokens", "error")
"""The fields of a generated row (a :class:`Result`) in a sink's file."""

Record = Callable[["BatchRequest", Result, Any], Mapping[str, Any]]

_QUOTED = re.compile(rb'"([^"]*(?:""[^"]*)*)"')
_PLAIN = re.compile(rb'[^,"\r\n]*')
_ENCODING = ("utf-8", "surrogatepass")  # any Python text round-trips, lone surrogates too


def annotation_sink_csv(path: str | os.PathLike[str]) -> AnnotationSink:
    """A sink appending each finished row of a run to the CSV file at ``path`` (localLLM's
    name); pass it (or just the path) as ``sink=`` to ``explore``, ``classify``,
    ``generate_parallel``, ``extract`` or the ``df.llm`` methods. Re-running with the same
    file appends only the rows it does not hold yet."""
    if isinstance(path, AnnotationSink):
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(
            f"sink must be a CSV file path or annotation_sink_csv(path), got {type(path).__name__}."
        )
    return AnnotationSink(path)


class AnnotationSink:
    """Appends finished rows to a CSV file, each line whole and synced (see the module notes).

    Made by :func:`annotation_sink_csv`; :meth:`read` gives the rows back with their text
    exactly as it was.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidParameterError(f"sink {str(self.path)!r} is a folder; give a file path.")
        self._lock = threading.Lock()  # rows of background jobs arrive from their threads
        self._header: list[str] = []
        self._done: set[tuple[Any, ...]] = set()

    def __repr__(self) -> str:
        return f"annotation_sink_csv({str(self.path)!r})"

    def attach(
        self,
        plan: Plan[Any],
        columns: Sequence[str],
        record: Record | None = None,
        key: Sequence[str] = (),
    ) -> Plan[Any]:
        """``plan`` also appending each finished row: ``record(request, result, value)``
        (default: the plan's view of the row, a mapping) gives its ``columns``; the rows whose
        ``key`` columns and prompt are already in the file are not appended again. The file
        is opened (repaired, its header checked) now, before the run."""
        header = [*columns, "prompt_hash"]
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise InvalidParameterError(
                f"A sink cannot write two columns named {twice[0]!r}; rename that label or field."
            )
        positions = [header.index(k) for k in key] + [len(header) - 1]
        with self._lock:
            self._open(header, positions)
        view = plan.view

        def writing(request: BatchRequest, result: Result) -> Any:
            value = view(request, result)
            if result.finish_reason != "cancelled":
                fields = record(request, result, value) if record is not None else value
                row = [fields.get(c) for c in columns]
                self._append([*row, prompt_hash(request.rows[result.row])], positions)
            return value

        # the executors pass each finished row through ``view`` once, when ``on_result`` is set
        return dataclasses.replace(plan, view=writing).also_on_result(_ignore)

    def read(self) -> pd.DataFrame:
        """The file's rows as a DataFrame of its columns: text as it was written, numbers as
        numbers, empty fields ``None`` (a trailing partial line is left out)."""
        import pandas as pd

        records, _ = _parse(self.path.read_bytes() if self.path.exists() else b"")
        if not records:
            return pd.DataFrame()
        return pd.DataFrame(records[1:], columns=[str(c) for c in records[0]], dtype=object)

    # -- the file ----------------------------------------------------------------------------
    def _open(self, header: list[str], positions: list[int]) -> None:
        """Read the keys already written; cut a trailing partial line; refuse other columns."""
        data = self.path.read_bytes() if self.path.exists() else b""
        try:
            records, end = _parse(data)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"sink {str(self.path)!r}: {exc}") from None
        if records and [str(c) for c in records[0]] != header:
            raise InvalidParameterError(
                f"sink {str(self.path)!r} has the columns {[str(c) for c in records[0]]}, but "
                f"this run writes {header}; give another file or remove it."
            )
        if not records and data and not _encode_line(header).startswith(data):
            raise InvalidParameterError(
                f"sink {str(self.path)!r} is not a CSV file that a sink wrote; give another file."
            )
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
            warnings.warn(
                f"Removed an incomplete last line ({len(data) - end} bytes) from {self.path}, "
                "left by a run that was killed while writing it.",
                RuntimeWarning,
                stacklevel=4,
            )
        self._header = header
        self._done = {tuple(_at(r, i) for i in positions) for r in records[1:]}

    def _append(self, row: list[Any], positions: list[int]) -> None:
        line = _encode_line(row)
        key = tuple(_at(_parse(line)[0][0], i) for i in positions)  # as a re-read will see it
        with self._lock:
            if key in self._done:
                return
            if not self.path.exists() or self.path.stat().st_size == 0:
                _write_whole(self.path, _encode_line(self._header))
            _write_whole(self.path, line)
            self._done.add(key)


def rows_to_sink(
    plan: Plan[Any], sink: Any, fields: Sequence[str], *, ids: Sequence[Any] | None = None
) -> Plan[Any]:
    """``plan`` (of one request) also appending its rows to ``sink`` (``None``: ``plan`` as it
    is). Each row is written as ``row`` (or ``index``: ``ids[row]``), ``model``, then
    ``fields`` of its value (see :func:`row_fields`); its key is its id, model and prompt."""
    if sink is None:
        return plan
    name = "row" if ids is None else "index"

    def record(request: BatchRequest, result: Result, value: Any) -> dict[str, Any]:
        ident = result.row if ids is None else ids[result.row]
        return {**row_fields(value), name: ident, "model": request.context.model.name}

    columns = [name, "model", *fields]
    return annotation_sink_csv(sink).attach(plan, columns, record, key=(name, "model"))


def row_fields(value: Any) -> dict[str, Any]:
    """A finished row's value as fields: a :class:`Result`'s :data:`RESULT_FIELDS`, a
    mapping's items (lists and dicts as JSON text)."""
    if isinstance(value, Result):
        text = str.__str__(value) if value.ok else None
        values = (text, value.finish_reason, value.n_tokens, value.error)
        return dict(zip(RESULT_FIELDS, values, strict=True))
    if isinstance(value, Mapping):
        return {
            k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
            for k, v in value.items()
        }
    return {"value": value}


def prompt_hash(prompt: Any) -> str:
    """The first 16 hex digits of the SHA-256 of a row's prompt (part of its key)."""
    text = prompt if isinstance(prompt, str) else "" if prompt is None else repr(prompt)
    return hashlib.sha256(text.encode(*_ENCODING)).hexdigest()[:16]


def _ignore(row: int, value: Any) -> None:
    """An ``on_result`` that does nothing (it makes the executors report every row)."""


def _at(record: list[Any], i: int) -> Any:
    return record[i] if i < len(record) else None


# -- the CSV format ----------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, float) and math.isnan(value)


def _encode(value: Any) -> bytes:
    """One field: empty when missing, numbers bare, everything else quoted text."""
    if _missing(value):
        return b""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value)).encode()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        return b"" if math.isnan(number) else repr(number).encode()
    text = str.__str__(value) if isinstance(value, str) else str(value)
    return b'"' + text.encode(*_ENCODING).replace(b'"', b'""') + b'"'


def _encode_line(values: Sequence[Any]) -> bytes:
    return b",".join(_encode(v) for v in values) + b"\n"


def _decode(raw: bytes, quoted: bool) -> Any:
    if quoted:
        return raw.replace(b'""', b'"').decode(*_ENCODING)
    text = raw.decode(*_ENCODING)
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse(data: bytes) -> tuple[list[list[Any]], int]:
    """The complete records of ``data`` and the offset where the last one ends (a record
    not ended by a line break is incomplete). Raises :class:`InvalidParameterError` for text
    that is not CSV."""
    records: list[list[Any]] = []
    row: list[Any] = []
    pos = end = 0
    while pos < len(data):
        if data[pos : pos + 1] == b'"':
            match = _QUOTED.match(data, pos)
            if match is None:  # the closing quote was never written
                break
            row.append(_decode(match.group(1), True))
        else:
            match = _PLAIN.match(data, pos)
            row.append(_decode(match.group(0), False))
        pos = match.end()
        sep = data[pos : pos + 1]
        if sep == b",":
            pos += 1
        elif sep in (b"\n", b"\r"):
            pos += 2 if data[pos : pos + 2] == b"\r\n" else 1
            if sep == b"\r" and pos == len(data):  # "\r" of a "\r\n" not yet written
                break
            records.append(row)
            row, end = [], pos
        elif sep:
            line = data[:pos].count(b"\n") + 1
            raise InvalidParameterError(f"line {line} is not CSV (text after a closing quote).")
    return records, end


def _write_whole(path: Path, data: bytes) -> None:
    """Append ``data`` with one write (repeated only if the system wrote part of it), then
    fsync, so a crash leaves either the whole line or a partial one that opening cuts off."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
