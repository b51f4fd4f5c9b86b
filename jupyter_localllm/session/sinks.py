"""Sinks: where a batch run's :class:`~jupyter_localllm.types.Progress` events and finished
rows go.

Progress sinks: the pipeline only counts and emits events; how they look is the front-end's
choice. A progress sink is a callable taking events with a ``close(status, note)`` method.
This module has the sinks that need no display system (a caller's callback, a tqdm text bar)
and a registry through which a front-end (the notebook's widget panels) offers its own:
:func:`make_sink` asks the registered front-end first and falls back to tqdm.

Row sinks: :func:`annotation_sink_csv` (localLLM's name) appends each finished row of a run to
a CSV file as it finishes (see :mod:`~jupyter_localllm.session.csv_sink`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any, Protocol

from ..types import Progress
from .csv_sink import RESULT_FIELDS, AnnotationSink, annotation_sink_csv, rows_to_sink

__all__ = [
    "RESULT_FIELDS",
    "AnnotationSink",
    "CallbackSink",
    "ProgressSink",
    "TqdmSink",
    "annotation_sink_csv",
    "frontend",
    "is_interactive",
    "make_sink",
    "register_frontend",
    "rows_to_sink",
]

ProgressArg = bool | Callable[[Progress], Any] | None


class ProgressSink(Protocol):
    """Receives the progress events of one run and is closed once at its end."""

    def __call__(self, event: Progress) -> None: ...

    def close(self, status: str = "finished", note: str = "") -> None:
        """The run ended: ``status`` is ``"finished"``, ``"failed"`` or ``"cancelled"``."""


class CallbackSink:
    """Sends events to a caller's function (``progress=callable``); closing does nothing."""

    def __init__(self, callback: Callable[[Progress], Any]):
        self.callback = callback

    def __call__(self, event: Progress) -> None:
        self.callback(event)

    def close(self, status: str = "finished", note: str = "") -> None:
        """Nothing to finish: the caller's function saw every event."""


class TqdmSink:
    """Draws events on a tqdm bar: rows done, tokens/s, errors."""

    def __init__(self, total: int, desc: str = "llm"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)

    def __call__(self, event: Progress) -> None:
        self.bar.n = event.done
        postfix = {"tok/s": f"{event.tokens_per_s:.0f}"}
        if event.errors:
            postfix["errors"] = event.errors
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self, status: str = "finished", note: str = "") -> None:
        """Finish the bar (red, where colours show, unless the run finished)."""
        if status != "finished":
            self.bar.colour = "red"
        self.bar.close()


class Frontend(Protocol):
    """What a front-end module registered with :func:`register_frontend` provides."""

    def live(self) -> bool:
        """True where this front-end can draw (e.g. a Jupyter kernel with widgets)."""

    def new_panel(
        self, total: int, desc: str, on_cancel: Callable[[], Any] | None
    ) -> ProgressSink | None:
        """A sink that draws a run, not yet shown (``None`` when it cannot be made)."""

    def show(self, sink: ProgressSink) -> ProgressSink:
        """Show ``sink`` now; returns the sink to use (it may re-publish itself on close)."""

    def show_job(self, job: Any) -> None:
        """Display a background job (its panel, or its text)."""


_frontends: list[str] = []


def register_frontend(module: str) -> None:
    """Offer the front-end in ``module`` (imported on first need) for drawing progress."""
    if module not in _frontends:
        _frontends.append(module)


def frontend() -> Frontend | None:
    """The registered front-end, imported now (``None`` when none is registered or it
    cannot be imported here)."""
    for name in _frontends:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def is_interactive() -> bool:
    """True in IPython/Jupyter and the interactive Python prompt."""
    if hasattr(sys, "ps1"):
        return True
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    return get_ipython() is not None


def make_sink(
    progress: ProgressArg,
    total: int,
    desc: str = "llm",
    *,
    on_cancel: Callable[[], Any] | None = None,
) -> ProgressSink | None:
    """Resolve a ``progress=`` argument into a sink, shown at once, or ``None``.

    A callable receives the events itself; ``False`` shows nothing; ``True`` shows progress
    and ``None`` shows it in interactive sessions: the registered front-end's panel where it
    can draw (a notebook), a tqdm bar elsewhere.
    """
    if callable(progress):
        return CallbackSink(progress)
    if progress is None:
        progress = is_interactive()
    if not progress:
        return None
    front = frontend()
    if front is not None and front.live():
        panel = front.new_panel(total, desc, on_cancel)
        if panel is not None:
            return front.show(panel)
    return TqdmSink(total, desc)
