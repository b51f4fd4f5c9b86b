"""``out=``: writing a run's rows into a column of the user's DataFrame as they finish.

A background job writes while the user goes on working in the kernel: a column inserted, the
rows sorted, some dropped, the column itself deleted. So nothing is fixed at the start but
each row's index *label*: at write time the row is found by that label and the column by its
name. A row that is gone (or whose label now names several rows), or a column that is gone,
is not written: its value stays in the run's result (``job.result()``), one
:class:`FrameChangedWarning` per run says so, and the labels are listed in the result's
``attrs["llm"]["unwritten"]``. Nothing is ever written into another row or column.

While the index is the very object it was at the start (pandas indexes are immutable, so rows
cannot have moved), rows are written by position: a frame with repeated labels is written too.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError

__all__ = ["FrameChangedWarning", "OutColumn"]


class FrameChangedWarning(RuntimeWarning):
    """Some rows of a run could not be written into its ``out=`` column because the frame
    changed under the run; their values are in the run's result."""


class _Moved(Exception):
    """The frame's rows or columns changed while a cell was being written."""


class OutColumn:
    """Writes row values of a run into column ``out`` of ``frame``.

    Made (and checked) in the kernel before the run starts: the column is created when
    absent; an existing column must be able to hold the values (``object`` or string dtype,
    a categorical with ``values`` among its categories, or one that is entirely empty, which
    becomes ``object``), else :class:`InvalidParameterError`. ``values``: every value the
    run can write besides NA (the labels of a classification), ``None`` for free text.
    """

    def __init__(self, frame: pd.DataFrame, out: Hashable, values: Sequence[Any] | None = None):
        self.frame, self.out = frame, out
        _check_name(frame, out)
        if out not in frame.columns:
            frame[out] = _empty(len(frame))
        elif not _holds(frame[out], values):
            _convert_or_refuse(frame, out)
        self.index = frame.index  # the rows as they were at the start
        self.before = list(frame[out])  # each row's value before the run, by position
        self.written: dict[int, Any] = {}
        self.unwritten: list[Any] = []
        self._warned = False
        self._lock = threading.Lock()

    def write(self, row: int, value: Any) -> None:
        """Put ``value`` in row ``row`` (the row's position at the start) of the column, where
        the row and the column are now; if either is gone, keep it out and warn (once)."""
        with self._lock:
            problem = None
            for _ in range(2):  # once more if the frame changed under the write
                try:
                    problem = self._put(row, value)
                    break
                except Exception:  # pandas mid-change in the kernel thread, or _Moved
                    problem = f"row {self.index[row]!r} changed place while it was written"
            if problem is None:
                self.written[row] = value
            else:
                self._skip(row, problem)

    def finish(self) -> list[Any]:
        """At the run's end: write again each finished row whose cell lost its value to a
        change that overlapped the write (the cell holds what it held before the run);
        returns the labels of the rows not written."""
        with self._lock:
            for row, value in self.written.items():
                with contextlib.suppress(Exception):  # best effort: the value is in the result
                    where = self._locate(row)
                    if isinstance(where, tuple):
                        cell = self.frame.iat[where]
                        if cell is not value and _same(cell, self.before[row]):
                            self.frame.iat[where] = value
            return list(self.unwritten)

    # -- one cell ------------------------------------------------------------------------
    def _put(self, row: int, value: Any) -> str | None:
        """Write one cell; ``None``, or why the row cannot be written."""
        frame = self.frame
        index, columns = frame.index, frame.columns
        where = self._locate(row)
        if isinstance(where, str):
            return where
        prev = frame.iat[where]
        frame.iat[where] = value
        if frame.index is not index or frame.columns is not columns:
            self._undo(row, where, value, prev)
            raise _Moved  # a change overlapped the write: find the cell again, write again
        return None

    def _undo(self, row: int, where: tuple[int, int], value: Any, prev: Any) -> None:
        """A change of the frame (rows sorted or dropped, a column inserted) overlapped the
        write of ``row`` at ``where``: if the value landed in another row's or column's cell,
        put back what that cell holds (for this column: that row's own value)."""
        frame, (r, c) = self.frame, where
        if r >= len(frame.index) or c >= len(frame.columns) or frame.iat[r, c] is not value:
            return
        if frame.columns[c] == self.out:
            owner = self._start_row(frame.index, r)
            if owner == row:
                return  # it is this row's cell after all
            if owner is not None:
                prev = self.written.get(owner, self.before[owner])
        frame.iat[r, c] = prev

    def _start_row(self, index: pd.Index, pos: int) -> int | None:
        """The start position of the row now at ``pos`` of ``index`` (None when unknown)."""
        if index is self.index:
            return pos
        if not self.index.is_unique:
            return None
        try:
            found = self.index.get_loc(index[pos])
        except (KeyError, TypeError, ValueError):
            return None
        return int(found) if isinstance(found, (int, np.integer)) else None

    def _locate(self, row: int) -> tuple[int, int] | str:
        """The cell of ``row`` in column ``out`` now, or why there is none."""
        frame, label = self.frame, self.index[row]
        if frame.index is self.index:
            pos: Any = row
        else:
            try:
                pos = frame.index.get_loc(label)
            except (KeyError, TypeError, ValueError):
                return f"row {label!r} was removed from the DataFrame"
            if not isinstance(pos, (int, np.integer)):
                return f"the index label {label!r} now names several rows"
        try:
            col = frame.columns.get_loc(self.out)
        except (KeyError, TypeError, ValueError):
            return f"column {self.out!r} was removed from the DataFrame"
        if not isinstance(col, (int, np.integer)):
            return f"column {self.out!r} now appears more than once"
        return int(pos), int(col)

    def _skip(self, row: int, problem: str) -> None:
        self.unwritten.append(self.index[row])
        if self._warned:
            return
        self._warned = True
        with contextlib.suppress(Warning):  # warnings made errors must not end the run
            warnings.warn(
                f"While the run wrote into column {self.out!r}, {problem}: that row's result, "
                "and any other that cannot be placed, is kept only in the run's result "
                "(job.result(); labels in .attrs['llm']['unwritten']), never written elsewhere.",
                FrameChangedWarning,
                stacklevel=4,
            )


def _check_name(frame: pd.DataFrame, out: Hashable) -> None:
    """``out`` must name one column (existing or new) of ``frame``."""
    try:
        hash(out)
    except TypeError:
        raise InvalidParameterError(
            f"out= takes one column name, got {type(out).__name__} {out!r}."
        ) from None
    columns = frame.columns
    if out in columns:
        if not isinstance(columns.get_loc(out), (int, np.integer)):
            raise InvalidParameterError(
                f"out={out!r} names more than one column of the DataFrame; give the full, "
                "unique name of one column, or a new name."
            )
    elif isinstance(columns, pd.MultiIndex) and not (
        isinstance(out, tuple) and len(out) == columns.nlevels
    ):
        raise InvalidParameterError(
            f"The DataFrame's columns have {columns.nlevels} levels; name the new column "
            f"out= as a tuple of {columns.nlevels} names, e.g. {('llm',) * columns.nlevels!r}."
        )


def _holds(column: pd.Series, values: Sequence[Any] | None) -> bool:
    """Whether ``column`` can take the run's values as it is."""
    dtype = column.dtype
    if pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.StringDtype):
        return True
    if isinstance(dtype, pd.CategoricalDtype) and values is not None:
        return set(values) <= set(dtype.categories)
    return False


def _convert_or_refuse(frame: pd.DataFrame, out: Hashable) -> None:
    """An empty column becomes ``object``; one holding other values is refused."""
    column = frame[out]
    if column.isna().all():
        frame[out] = _empty(len(frame))
        return
    raise InvalidParameterError(
        f"Column {out!r} holds {column.dtype} values and out= writes text into it; choose a "
        f"new column name, or convert it first: df[{out!r}] = df[{out!r}].astype(object)."
    )


def _empty(n: int) -> np.ndarray:
    """A column of ``n`` missing values that can hold anything (by position: an index with
    repeated labels cannot be aligned to)."""
    return np.full(n, pd.NA, dtype=object)


def _same(a: Any, b: Any) -> bool:
    """``a`` is ``b``, or both are missing values."""
    if a is b:
        return True
    try:
        return bool(pd.isna(a)) and bool(pd.isna(b))
    except (TypeError, ValueError):
        return False
