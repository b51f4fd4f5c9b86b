"""Progress display for batch runs: a ``tqdm.auto`` bar by default (a widget bar in notebooks,
text in scripts). Counting happens in the engine; this only draws :class:`Progress` events."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .engine.runner import Progress

__all__ = ["TqdmProgress", "is_interactive", "progress_callback"]


def is_interactive() -> bool:
    """True in IPython/Jupyter and the interactive Python prompt."""
    if hasattr(sys, "ps1"):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class TqdmProgress:
    """Draws progress events on a tqdm bar: rows done, tokens/s, errors."""

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

    def close(self, failed: bool = False) -> None:
        """Finish the bar (a notebook bar turns red when ``failed``)."""
        if failed:
            self.bar.colour = "red"
        self.bar.close()


def progress_callback(
    progress: bool | Callable[[Progress], Any] | None, total: int, desc: str = "llm"
) -> tuple[Callable[[Progress], Any] | None, Callable[[bool], None]]:
    """Resolve a ``progress=`` argument into ``(on_progress, close)``.

    ``True`` shows a tqdm bar, ``None`` shows one in interactive sessions, ``False`` nothing,
    and a callable receives the :class:`Progress` events itself.
    """
    if callable(progress):
        return progress, lambda failed: None
    if progress is None:
        progress = is_interactive()
    if not progress:
        return None, lambda failed: None
    bar = TqdmProgress(total, desc)
    return bar, bar.close
