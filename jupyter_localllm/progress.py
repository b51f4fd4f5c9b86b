"""Progress display for batch runs: a :class:`~jupyter_localllm.widgets.ProgressPanel` in a
Jupyter kernel whose front-end shows widgets, a tqdm text bar elsewhere. Counting happens in
the engine; this only draws :class:`Progress` events."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .engine.runner import Progress

if TYPE_CHECKING:
    from .widgets.progress import ProgressPanel

__all__ = [
    "TqdmProgress",
    "is_interactive",
    "progress_callback",
    "progress_panel",
    "widget_frontend",
]


def is_interactive() -> bool:
    """True in IPython/Jupyter and the interactive Python prompt."""
    if hasattr(sys, "ps1"):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def widget_frontend() -> bool:
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


def progress_panel(
    total: int, desc: str = "llm", *, on_cancel: Callable[[], Any] | None = None
) -> ProgressPanel | None:
    """A new :class:`ProgressPanel` (not yet displayed), or ``None`` without ipywidgets."""
    try:
        from .widgets.progress import ProgressPanel
    except ImportError:
        return None
    return ProgressPanel(total, desc, on_cancel=on_cancel)


class TqdmProgress:
    """Draws progress events on a text tqdm bar: rows done, tokens/s, errors."""

    def __init__(self, total: int, desc: str = "llm"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)

    def __call__(self, event: Progress) -> None:
        self.bar.n = event.done
        postfix = {"tok/s": f"{event.tokens_per_s:.0f}"}
        if event.errors:
            postfix["errors"] = event.errors
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self, failed: bool = False) -> None:
        """Finish the bar (its colour is red when ``failed``, where colours show)."""
        if failed:
            self.bar.colour = "red"
        self.bar.close()


def progress_callback(
    progress: bool | Callable[[Progress], Any] | None, total: int, desc: str = "llm"
) -> tuple[Callable[[Progress], Any] | None, Callable[[bool], None]]:
    """Resolve a ``progress=`` argument into ``(on_progress, close)``.

    ``True`` shows progress, ``None`` shows it in interactive sessions, ``False`` nothing,
    and a callable receives the :class:`Progress` events itself. Progress is a
    :class:`ProgressPanel` (displayed at once) in a notebook kernel, a tqdm bar elsewhere.
    ``close(failed)`` ends it: a failed run's panel turns red and stays visible.
    """
    if callable(progress):
        return progress, lambda failed: None
    if progress is None:
        progress = is_interactive()
    if not progress:
        return None, lambda failed: None
    if widget_frontend():
        panel = progress_panel(total, desc)
        if panel is not None:
            from IPython.display import display

            handle = display(panel, display_id=True)

            def finish(failed: bool) -> None:
                panel.finish(failed)
                # Re-publish so saved notebooks (and front-ends without the widget manager)
                # keep the final numbers as the output's text, not the starting ones.
                if handle is not None:
                    handle.update(panel)

            return panel, finish
    bar = TqdmProgress(total, desc)
    return bar, bar.close
