"""Writing OUTPUT for ``jupyter-localllm run``: the input's columns as they were read, then
the new ones.

When OUTPUT has INPUT's format, the user's columns are not re-encoded: each CSV record's and
JSON Lines line's own text is kept and the new cells appended to it (quoting, line endings,
number spellings and the byte-order mark stay), and a Parquet table keeps its Arrow columns
and metadata. Text files are written as UTF-8. A file is written whole to a temporary file
in its folder and renamed over the old one, so a kill or a full disk never leaves it half
written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .spec import BadInput, RunFailed, reason
from .tables import Piece, Table, check_format

__all__ = ["cell_text", "check_writable", "replace_file", "write_output"]


def check_writable(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written."""
    folder = path.parent
    if not folder.is_dir():
        raise BadInput(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"cannot write {path}: permission denied")


def write_output(table: Table, added: pd.DataFrame, path: Path) -> None:
    """Write ``table``'s columns and ``added``'s (indexed like ``table.frame``) to ``path``."""
    kind = check_format(path, "OUTPUT")
    if kind == ".parquet":
        replace_file(path, lambda f: _write_parquet(table, added, f))
        return
    writer = _csv_text if kind == ".csv" else _jsonl_text
    text = writer(table, added)
    data = ("\ufeff" if table.bom else "") + text
    replace_file(path, lambda f: f.write(data.encode("utf-8", "surrogatepass")))


def replace_file(path: Path, write: Callable[[Any], Any]) -> None:
    """Call ``write`` on a temporary binary file next to ``path``, then rename it to ``path``;
    on any failure ``path`` is left as it was and the failure is :class:`RunFailed`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise RunFailed(
            f"cannot write {path}: {reason(exc)}"
            + (f"; the previous {path.name} is unchanged" if path.exists() else "")
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


# --- CSV ---------------------------------------------------------------------------------


def cell_text(value: Any) -> str:
    """A value as CSV text: strings as they are, JSON's other values as JSON (``true``,
    ``3``, ``{"a": 1}``), missing values empty, anything else as ``str`` gives it."""
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float, dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _csv_fields(values: Iterable[Any]) -> str:
    """``values`` as one CSV record's fields (quoted where needed), without a line end."""
    buffer = io.StringIO()
    # "\r\n" as the terminator makes csv quote cells holding either character.
    csv.writer(buffer, lineterminator="\r\n").writerow([cell_text(v) for v in values])
    return buffer.getvalue()[:-2]


def _splice(table: Table, row: Callable[[Piece], str]) -> str:
    """The input file's own text with each row piece (and the header, row -1) written by
    ``row``; the pieces between rows (blank lines, comments) as they stand."""
    return "".join(
        piece.body + piece.end if piece.row is None else row(piece) for piece in table.pieces
    )


def _csv_text(table: Table, added: pd.DataFrame) -> str:
    names = [str(c) for c in added.columns]
    new = added.to_numpy(dtype=object)
    if table.kind != ".csv":
        rows = table.frame.to_numpy(dtype=object)
        lines = [_csv_fields([*table.frame.columns, *names])]
        lines += [_csv_fields([*rows[i], *new[i]]) for i in range(len(rows))]
        return "".join(line + "\n" for line in lines)

    def row(piece: Piece) -> str:
        cells = names if piece.row < 0 else new[piece.row]
        return f"{piece.body},{_csv_fields(cells)}{piece.end}"

    return _splice(table, row)


# --- JSON Lines --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as a JSON value: NumPy scalars and arrays as Python ones, NaN as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _members(names: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(
        f"{json.dumps(n, ensure_ascii=False)}: "
        + json.dumps(_plain(v), ensure_ascii=False, default=str)
        for n, v in zip(names, values, strict=True)
    )


def _jsonl_text(table: Table, added: pd.DataFrame) -> str:
    names = [str(c) for c in added.columns]
    new = added.to_numpy(dtype=object)
    if table.kind != ".jsonl":
        columns = [str(c) for c in table.frame.columns]
        rows = table.frame.to_numpy(dtype=object)
        lines = [
            "{" + _members([*columns, *names], [*rows[i], *new[i]]) + "}" for i in range(len(rows))
        ]
        return "".join(line + "\n" for line in lines)

    def row(piece: Piece) -> str:
        # The record's own text up to its closing brace, then the new members.
        body = piece.body.rstrip()
        comma = ", " if table.records[piece.row] else ""
        members = _members(names, new[piece.row])
        return f"{body[:-1]}{comma}{members}}}{piece.body[len(body) :]}{piece.end}"

    return _splice(table, row)


# --- Parquet -----------------------------------------------------------------------------


def _arrow_column(values: list[Any]) -> Any:
    """``values`` as an Arrow array: its inferred type, else JSON text (values of mixed
    types); text when every value is missing."""
    import pyarrow as pa

    values = [_plain(v) for v in values]
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        texts = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        array = pa.array(texts, type=pa.string())
    return array.cast(pa.string()) if pa.types.is_null(array.type) else array


def _write_parquet(table: Table, added: pd.DataFrame, file: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if table.kind == ".parquet":
        arrow = table.arrow
    else:  # the cells as read (CSV: text)
        columns = {str(c): _arrow_column(list(table.frame[c])) for c in table.frame.columns}
        # (a table of no columns keeps its row count through a placeholder column)
        arrow = pa.table(columns or {"": [None] * len(table.frame)})
        arrow = arrow if columns else arrow.drop_columns([""])
    for name in added.columns:
        arrow = arrow.append_column(str(name), _arrow_column(list(added[name])))
    pq.write_table(arrow, file)
