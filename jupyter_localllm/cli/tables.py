"""Tables on disk for ``jupyter-localllm run``: CSV, Parquet and JSON Lines, chosen by the
file's extension, read exactly as written.

CSV cells are read as text (no NA or type inference: ``NA``, ``01234`` and ``true`` stay
those texts), JSON Lines values as JSON gives them, Parquet columns with their Arrow types.
A :class:`Table` keeps what was read (each CSV/JSON Lines record's own text, the Arrow table)
so that :mod:`.output` writes the user's columns back unchanged. A malformed file is
:class:`BadInput` naming the line.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .spec import BadInput, reason

__all__ = ["FORMATS", "Piece", "Table", "check_encoding", "check_format", "read_table"]

FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON Lines"}

# A byte-order mark names its encoding (UTF-32's before UTF-16's: they share a prefix).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_LINE_END = re.compile(r"(\r\n|\r|\n)\Z")
_FIELD_LIMIT = 2**31 - 1  # csv's default (128 KiB) would refuse a long cell


@dataclass(frozen=True)
class Piece:
    """One line (or multi-line record) of a text file as read: ``row`` is the record's
    position, ``-1`` for the CSV header and ``None`` for a blank line kept as it is."""

    row: int | None
    body: str
    """The record's text without its line ending."""
    end: str
    """Its line ending (``""`` on a last line without one)."""


@dataclass
class Table:
    """A table as read: ``frame`` (the cells, object columns, index 0..n-1) and what is
    needed to write the same columns back (``pieces`` for CSV and JSON Lines, ``arrow`` for
    Parquet)."""

    kind: str
    """The file's extension: ``.csv``, ``.jsonl`` or ``.parquet``."""
    frame: pd.DataFrame
    bom: bool = False
    """The text file started with a byte-order mark (kept on OUTPUT)."""
    pieces: list[Piece] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    """JSON Lines: each record as parsed."""
    arrow: Any = None
    """Parquet: the ``pyarrow.Table``."""


def check_format(path: Path, what: str) -> str:
    """``path``'s extension, when it is one of :data:`FORMATS`."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BadInput(
            f"{what} {path}: unknown file type {path.suffix or '(no extension)'!r}; "
            "use .csv, .parquet or .jsonl"
        )
    return suffix


def check_encoding(name: str) -> str:
    """``--encoding``, checked: a codec Python knows."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise BadInput(f"--encoding {name!r}: unknown encoding; try utf-8 or latin-1") from None


def read_table(path: Path, what: str, encoding: str = "utf-8") -> Table:
    """The table in ``path`` (text files decoded with ``encoding`` unless a byte-order mark
    names theirs); any fault is :class:`BadInput` naming the file (and the line)."""
    suffix = check_format(path, what)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise BadInput(f"cannot read {what} {path}: it {state}")
    where = f"{what} {path}"
    try:
        if suffix == ".parquet":
            return _read_parquet(path, where)
        text, bom = _decode(path.read_bytes(), encoding, where)
    except OSError as exc:
        raise BadInput(f"cannot read {where}: {reason(exc)}") from None
    table = _read_csv(text, where) if suffix == ".csv" else _read_jsonl(text, where)
    table.bom = bom
    return table


def _decode(data: bytes, encoding: str, where: str) -> tuple[str, bool]:
    """The file's text and whether it had a byte-order mark."""
    codec = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    try:
        text = data.decode(codec or encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadInput(
            f"cannot read {where}: byte 0x{data[exc.start]:02x} on line {line} is not "
            f"{codec or encoding} text; give the file's encoding, e.g. --encoding latin-1"
        ) from None
    if "\x00" in text:
        raise BadInput(
            f"cannot read {where}: it holds NUL characters (UTF-16 without a byte-order "
            "mark?); give its encoding, e.g. --encoding utf-16-le"
        )
    return text, codec is not None


def _lines(text: str) -> Iterator[str]:
    """``text`` in lines with their endings (``\\r\\n``, ``\\n`` or ``\\r``), as csv reads."""
    start = 0
    for match in re.finditer(r"\r\n|\r|\n", text):
        yield text[start : match.end()]
        start = match.end()
    if start < len(text):
        yield text[start:]


def _split_end(raw: str) -> tuple[str, str]:
    match = _LINE_END.search(raw)
    return (raw[: match.start()], match.group()) if match else (raw, "")


def _read_csv(text: str, where: str) -> Table:
    """CSV as text cells; a record with another number of fields than the header, or broken
    quoting, is :class:`BadInput` naming its line."""
    csv.field_size_limit(_FIELD_LIMIT)
    consumed: list[str] = []

    def source() -> Iterator[str]:
        for line in _lines(text):
            consumed.append(line)
            yield line

    reader = csv.reader(source(), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    pieces: list[Piece] = []
    first_line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise BadInput(f"{where} is not valid CSV: line {first_line}: {exc}") from None
        body, end = _split_end("".join(consumed))
        consumed.clear()
        if not fields:  # a blank line: no record, kept as it is
            pieces.append(Piece(None, body, end))
        elif header is None:
            header = fields
            pieces.append(Piece(-1, body, end))
        elif len(fields) != len(header):
            raise BadInput(
                f"{where} is not valid CSV: line {first_line} has {len(fields)} fields, "
                f"the header has {len(header)}"
            )
        else:
            pieces.append(Piece(len(rows), body, end))
            rows.append(fields)
        first_line = reader.line_num + 1
    if header is None:
        raise BadInput(f"cannot read {where}: it is empty (no header line)")
    _check_names(header, where)
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else _empty(header)
    return Table(".csv", frame, pieces=pieces)


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=object) for name in columns})


def _check_names(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInput(f"{where} has two columns named {name!r}; rename one of them")
        seen.add(name)


def _read_jsonl(text: str, where: str) -> Table:
    """JSON Lines: one JSON object a line, values as JSON gives them (``"01234"`` stays text,
    ``null`` is ``None``); a line that is not an object is :class:`BadInput` naming it."""
    pieces: list[Piece] = []
    records: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    # JSON Lines ends lines with \n only: a \u2028 inside a string is not a line break.
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        end = "\n" if number < len(lines) else ""
        if not line.strip():
            if line or end:
                pieces.append(Piece(None, line, end))
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise BadInput(f"{where} is not valid JSON Lines: line {number}: {exc}") from None
        if not isinstance(record, dict):
            raise BadInput(
                f"{where} is not valid JSON Lines: line {number} is a JSON "
                f"{type(record).__name__}, not an object"
            )
        pieces.append(Piece(len(records), line, end))
        records.append(record)
        columns.update(dict.fromkeys(record))
    frame = pd.DataFrame(
        {name: [r.get(name) for r in records] for name in columns},
        index=range(len(records)),
        dtype=object,
    )
    return Table(".jsonl", frame, pieces=pieces, records=records)


def _read_parquet(path: Path, where: str) -> Table:
    """Parquet as an Arrow table (kept to write back) and its cells as Python values."""
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(path)
        columns = {name: arrow.column(i).to_pylist() for i, name in enumerate(arrow.column_names)}
    except Exception as exc:  # pyarrow's own errors: the file is not what it says
        raise BadInput(f"cannot read {where} as Parquet: {reason(exc)}") from None
    _check_names(arrow.column_names, where)
    frame = pd.DataFrame({name: pd.Series(v, dtype=object) for name, v in columns.items()})
    return Table(".parquet", frame, arrow=arrow)
