"""The notebook's progress front-end: batch runs and background jobs drawn as
:class:`~jupyter_localllm.notebook.widgets.ProgressPanel` widgets in a Jupyter kernel.

The session's :func:`~jupyter_localllm.session.sinks.make_sink` asks this module (registered by
the package on import, imported only when a run needs it) for a panel where one can be drawn;
elsewhere runs get a text bar. Counting stays in the session: a panel only draws events.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .widgets.progress import ProgressPanel

__all__ = ["PanelSink", "live", "new_panel", "show", "show_job"]


def live() -> bool:
    """True in a Jupyter kernel (ipykernel's shell) with ipywidgets installed: the places
    where a widget can be drawn. Plain IPython and scripts get text instead."""
    if "IPython" not in sys.modules:  # nothing imported IPython: not inside a kernel
        return False
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or not any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class PanelSink:
    """A :class:`ProgressPanel` as a progress sink; once shown, closing it re-publishes the
    display so saved notebooks keep the final numbers as the output's text."""

    def __init__(self, panel: ProgressPanel):
        self.panel = panel
        self.handle: Any = None

    def __call__(self, event: Any) -> None:
        self.panel(event)

    def set_note(self, note: str) -> None:
        """A short note under the bar (queued, cancelled, ...)."""
        self.panel.set_note(note)

    def close(self, status: str = "finished", note: str = "") -> None:
        """Draw the end: green when finished, red otherwise."""
        self.panel.finish(status != "finished", status, note)
        if self.handle is not None:
            self.handle.update(self.panel)


def new_panel(total: int, desc: str, on_cancel: Callable[[], Any] | None) -> PanelSink | None:
    """A new panel sink (not yet displayed), or ``None`` without ipywidgets."""
    try:
        from .widgets.progress import ProgressPanel
    except ImportError:
        return None
    return PanelSink(ProgressPanel(total, desc, on_cancel=on_cancel))


def show(sink: PanelSink) -> PanelSink:
    """Display ``sink``'s panel in the current cell's output."""
    from IPython.display import display

    sink.handle = display(sink.panel, display_id=True)
    return sink


def show_job(job: Any, *, started: bool = False) -> None:
    """Display a background job: its panel where widgets work, its text elsewhere.
    ``started``: the cell that starts the job shows it; showing that cell's value (the job
    itself) then draws nothing more."""
    from IPython import get_ipython
    from IPython.display import display

    count = getattr(get_ipython(), "execution_count", None)
    if not started and job.shown_in is not None and job.shown_in == count:
        return
    panel = job.panel if live() else None
    if panel is not None:
        display(panel)
        if started:
            job.shown_in = count
    elif not started:
        display({"text/plain": repr(job)}, raw=True)
