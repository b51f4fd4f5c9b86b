"""``{name}`` placeholders in prompt templates, shared by the magics and the accessor.

A template is read once: each ``{name}`` (with an optional ``!r``/``!s`` conversion and
``:spec``) is replaced by its value, ``{{`` and ``}}`` are literal braces, and the values are
never parsed again, so a value holding braces is inserted as it is.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["check_fields", "formatted_fields", "render", "template_fields"]

_FORMATTER = string.Formatter()


def _parse(template: str) -> list[tuple[str, str | None, str, str | None]]:
    try:
        return list(_FORMATTER.parse(template))
    except ValueError as exc:  # a lone "{" or "}"
        raise InvalidParameterError(
            f"The template has unmatched braces ({exc}); write {{{{ and }}}} for literal braces."
        ) from None


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
            raise InvalidParameterError(
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

    Raises :class:`InvalidParameterError` like ``"Column 'x' not found; columns are a, b."``.
    """
    fields = template_fields(template)
    missing = [f for f in fields if f not in available]
    if missing:
        known = ", ".join(map(str, available)) or "none"
        plural = "s" if len(missing) > 1 else ""
        names = ", ".join(repr(m) for m in missing)
        raise InvalidParameterError(
            f"{what}{plural} {names} not found; {what.lower()}s are {known}."
        )
    return fields


def render(template: str, values: Mapping[str, Any] | Callable[[str], Any]) -> str:
    """``template`` with each placeholder replaced by ``values[name]`` (or ``values(name)``
    when ``values`` is a function), interpolated once.

    >>> render("Say {{hi}} to {who}", {"who": "{x}"})
    'Say {hi} to {x}'
    """
    out: list[str] = []
    for literal, field, spec, conversion in _parse(template):
        out.append(literal)
        if field is None:
            continue
        value = values(field) if callable(values) else values[field]
        if conversion:
            value = _FORMATTER.convert_field(value, conversion)
        out.append(format(value, spec or ""))
    return "".join(out)
