"""DataFrame rows as prompts: ``{column}`` placeholders in a template, filled from each row.

Every front-end (``df.llm.*``, ``ddf.llm.*``, ``%%llm``, ``%llm_batch``, ``jupyter-localllm
run``) renders its rows here, so a row gets the same prompt from each and a bad placeholder is
one :class:`~jupyter_localllm.errors.PlaceholderError` line everywhere.

A template is read once: each ``{name}`` (with an optional ``!r``/``!s``/``!a`` conversion
and ``:spec``) is replaced by its value, ``{{`` and ``}}`` are literal braces, and the values
are never parsed again, so a value holding braces is inserted as it is. Refused before any row
is rendered: an unknown conversion, a placeholder nested in a format spec, a width or
precision over :data:`MAX_WIDTH`; while rendering, a spec that cannot format a row's value
(``{text:d}`` on a text).

:func:`frame_rows` renders a whole frame: a row whose cell is missing, blank or not text
(unless its placeholder formats it, ``{n!s}``) gets an error in its place and does not run.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParameterError, PlaceholderError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MAX_WIDTH",
    "FrameRows",
    "check_fields",
    "formatted_fields",
    "frame_rows",
    "render",
    "template_fields",
]

MAX_WIDTH = 10_000
"""The largest width or precision a format spec may ask for (``{text:>20}``, ``{x:.3f}``):
a prompt padded further is no prompt, and ``{text:>999999999999}`` would allocate a terabyte."""

_FORMATTER = string.Formatter()
_CONVERSIONS = ("r", "s", "a")
# The format-spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.prec][type]
_STANDARD_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[a-zA-Z%]?", re.DOTALL
)


def _parse(template: str) -> list[tuple[str, str | None, str, str | None]]:
    """``template``'s parts as :meth:`string.Formatter.parse` gives them, each placeholder's
    conversion and spec checked."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:  # a lone "{" or "}", "{text!}"
        raise PlaceholderError(
            f"The template has unmatched braces or a broken placeholder ({exc}); write {{{{ and "
            "}} for literal braces."
        ) from None
    for _, field, spec, conversion in parts:
        if field is not None:
            _check_placeholder(field, spec or "", conversion)
    return parts


def _shown(field: str, spec: str, conversion: str | None) -> str:
    """The placeholder as written (cut at 60 characters)."""
    shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
    return shown[:60] + ("…}" if len(shown) > 60 else "}")


def _check_placeholder(field: str, spec: str, conversion: str | None) -> None:
    shown = _shown(field, spec, conversion)
    if conversion is not None and conversion not in _CONVERSIONS:
        raise PlaceholderError(
            f"The template's {shown} has an unknown conversion !{conversion}; use !s, !r or !a."
        )
    if "{" in spec or "}" in spec:
        raise PlaceholderError(
            f"The template's {shown} has a placeholder inside its format spec, which is not "
            "supported; write the width or precision as a number."
        )
    standard = _STANDARD_SPEC.fullmatch(spec)
    for part in ("width", "precision") if standard else ():
        digits = standard.group(part)
        if digits and int(digits) > MAX_WIDTH:
            raise PlaceholderError(
                f"The template's {shown} asks for a {part} of {int(digits):,}; the most is "
                f"{MAX_WIDTH:,}."
            )


def template_fields(template: str) -> list[str]:
    """The placeholder names of ``template`` in order of first use, without repeats.

    >>> template_fields("{title}: {text} ({title})")
    ['title', 'text']
    """
    names: list[str] = []
    for _, field, _, _ in _parse(template):
        if field is None:
            continue
        if not field:
            raise PlaceholderError(
                "The template has an empty {} placeholder; name a value or write {{}}."
            )
        if field not in names:
            names.append(field)
    return names


def formatted_fields(template: str) -> set[str]:
    """Placeholders written with a conversion or format spec (``{n!s}``, ``{x:.2f}``): the
    template asks for their values to be formatted, so they need not be text."""
    return {f for _, f, spec, conv in _parse(template) if f is not None and (spec or conv)}


def check_fields(template: str, available: Sequence[str], what: str = "Column") -> list[str]:
    """The placeholders of ``template``, after checking each is in ``available``.

    Raises :class:`PlaceholderError` (an ``InvalidParameterError``) like ``"Column 'x' not
    found; columns are a, b."``.
    """
    fields = template_fields(template)
    missing = [f for f in fields if f not in available]
    if missing:
        known = ", ".join(map(str, available)) or "none"
        plural = "s" if len(missing) > 1 else ""
        names = ", ".join(repr(m) for m in missing)
        hint = ""
        if any(re.search(r"[.\[]", m) for m in missing):
            hint = f" A placeholder names a whole {what.lower()}: no .attribute or [index]."
        raise PlaceholderError(
            f"{what}{plural} {names} not found; {what.lower()}s are {known}.{hint}"
        )
    return fields


def render(template: str, values: Mapping[str, Any] | Callable[[str], Any]) -> str:
    """``template`` with each placeholder replaced by ``values[name]`` (or ``values(name)``
    when ``values`` is a function), interpolated once.

    >>> render("Say {{hi}} to {who}", {"who": "{x}"})
    'Say {hi} to {x}'

    Raises :class:`PlaceholderError` when a placeholder's spec cannot format its value.
    """
    out: list[str] = []
    for literal, field, spec, conversion in _parse(template):
        out.append(literal)
        if field is None:
            continue
        value = values(field) if callable(values) else values[field]
        out.append(_formatted(field, value, spec or "", conversion))
    return "".join(out)


def _formatted(field: str, value: Any, spec: str, conversion: str | None) -> str:
    try:
        if conversion:
            value = _FORMATTER.convert_field(value, conversion)
        return format(value, spec)
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        shown = repr(value)
        shown = shown[:40] + "…" if len(shown) > 40 else shown
        reason = str(exc).rstrip(".") or type(exc).__name__
        raise PlaceholderError(
            f"The template's {_shown(field, spec, conversion)} cannot format {shown} "
            f"({type(value).__name__}): {reason}; change the format spec, or write {{{field}}} "
            "to insert the value as it is."
        ) from None


# -- a DataFrame's rows ----------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRows:
    """A frame's rows rendered by a template, as a task runs them."""

    index: pd.Index
    """The frame's index when the rows were rendered: results are labelled by it, whatever
    happens to the frame while a background run works."""
    template: str
    texts: list[str | None]
    """Each row's prompt text (``None`` for a row that cannot run)."""
    errors: dict[int, str] = dataclasses.field(default_factory=dict)
    """Why each row that cannot run cannot, by position."""
    started: float = 0.0
    """``time.perf_counter()`` when rendering began (the run's start, for its run info)."""


def frame_rows(frame: pd.DataFrame, template: str) -> FrameRows:
    """Every row of ``frame`` rendered by ``template``, whose placeholders name its columns
    (by their labels' text); raises :class:`PlaceholderError` for a placeholder naming no
    column, :class:`InvalidParameterError` for one naming several."""
    import time

    started = time.perf_counter()
    names = [str(c) for c in frame.columns]
    fields = check_fields(template, names)
    duplicated = [f for f in fields if names.count(f) > 1]
    if duplicated:
        raise InvalidParameterError(
            f"Column {duplicated[0]!r} appears more than once; rename one of them."
        )
    formatted = formatted_fields(template)
    by_name = {str(c): c for c in frame.columns}
    columns = [frame[by_name[f]].to_numpy(dtype=object) for f in fields]
    texts: list[str | None] = []
    errors: dict[int, str] = {}
    for pos in range(len(frame)):
        values = {f: col[pos] for f, col in zip(fields, columns, strict=True)}
        problem = _cell_problem(values, formatted)
        if problem is not None:
            errors[pos] = problem
        texts.append(None if problem is not None else render(template, values))
    return FrameRows(frame.index, template, texts, errors, started)


def _cell_problem(values: Mapping[str, Any], formatted: set[str]) -> str | None:
    """Why a row with these cells cannot run (``None`` when it can)."""
    import pandas as pd

    for name, value in values.items():
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            return f"column {name!r} is empty (missing value) in this row"
        if not isinstance(value, str) and name not in formatted:
            return (
                f"column {name!r} holds {type(value).__name__} {value!r}, not text; "
                f"write {{{name}!s}} in the template to format it"
            )
        if isinstance(value, str) and not value.strip():
            return f"column {name!r} is blank in this row"
    return None
