"""Checks shared by the tasks' option values (:class:`~.classification.LabelSpec`,
:class:`~.extraction.ExtractSpec`, :class:`~.exploration.ExploreSpec`): each public function
builds its value once, and these refuse a bad option with one line naming it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["check_count", "check_text_option", "checked_names", "field_names"]


def check_text_option(name: str, value: Any) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is a string or ``None``."""
    if value is not None and not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a string or None, got {value!r}.")


def check_count(name: str, value: Any) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is a positive integer (a 0 is
    refused, never taken for "the default")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}.")


def field_names(spec: type) -> list[str]:
    """The field names of the dataclass ``spec`` that its constructor takes."""
    return [f.name for f in dataclasses.fields(spec) if f.init]


def checked_names(task: str, names: Sequence[str], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` when each name is one of ``names``; else an
    :class:`InvalidParameterError` naming the unknown ones and the accepted ones."""
    unknown = sorted(k for k in options if k not in names)
    if unknown:
        raise InvalidParameterError(
            f"Unknown {task} option(s) {', '.join(unknown)}; accepted options are "
            f"{', '.join(names)}."
        )
    return dict(options)
