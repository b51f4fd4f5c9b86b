"""ProgressPanel: one batch run drawn as a widget (bar, rows, errors, tokens/s, ETA, elapsed).

Counting happens in the session (the batch pipeline and its jobs); the panel only
draws the :class:`~jupyter_localllm.types.Progress` events it is given, at most ten
times a second, by setting traits (safe from any thread).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from ...types import Progress
from ..escaping import html_text

__all__ = ["ProgressPanel", "format_seconds", "recent_panels", "unwatch_panels", "watch_panels"]

_MIN_INTERVAL = 0.1  # seconds between redraws: at most 10 trait updates a second
_STYLES = {"running": "info", "finished": "success", "failed": "danger", "cancelled": "danger"}

# The latest panels (weakly held) and the dashboards that show them: a dashboard displays the
# same widget models as the cells, so both views update together.
_recent: deque[weakref.ref[ProgressPanel]] = deque(maxlen=20)
_watchers: weakref.WeakSet[Any] = weakref.WeakSet()  # objects with a show_progress(panel)


def format_seconds(seconds: float | None) -> str:
    """``"1:02"`` (or ``"1:02:03"``) for a number of seconds; ``"?"`` when unknown."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressPanel(w.VBox):
    """A progress bar for one batch run, fed with :class:`Progress` events.

    Call the panel with each event (it is an ``on_progress`` callback) and :meth:`finish` at
    the end: the bar turns green on success, red on failure or cancel, and stays visible.
    ``on_cancel`` shows a Cancel button that calls it (background jobs only: a foreground run
    keeps the kernel busy, so a click would arrive after the run). Redraws are throttled to
    ``min_interval`` seconds; the last event is always drawn by :meth:`finish`.
    """

    def __init__(
        self,
        total: int,
        desc: str = "llm",
        *,
        on_cancel: Callable[[], Any] | None = None,
        min_interval: float = _MIN_INTERVAL,
    ):
        self.desc = desc
        self.total = int(total)
        self.status = "running"
        self.note = ""
        self.event: Progress | None = None
        self.min_interval = min_interval
        self._drawn_at = float("-inf")
        self._lock = threading.Lock()
        self._on_cancel = on_cancel
        self.label = w.HTML(f"<b>{html_text(desc)}</b>", layout=w.Layout(min_width="7em"))
        self.bar = w.IntProgress(
            value=0, min=0, max=max(1, self.total), bar_style="info", layout=w.Layout(flex="1")
        )
        self.stats = w.HTML(self._stats_html())
        self.cancel_button = w.Button(
            description="Cancel",
            icon="stop",
            button_style="warning",
            tooltip="Stop this run; finished rows are kept",
            layout=w.Layout(width="auto", display=None if on_cancel else "none"),
        )
        self.cancel_button.on_click(self._clicked)
        super().__init__([w.HBox([self.label, self.bar, self.cancel_button]), self.stats])
        _recent.append(weakref.ref(self))
        for watcher in list(_watchers):
            watcher.show_progress(self)

    # -- feeding -------------------------------------------------------------------------
    def __call__(self, event: Progress) -> None:
        """Take a progress event; redraw unless the last redraw was under
        ``min_interval`` seconds ago (the final row always redraws)."""
        now = time.monotonic()
        with self._lock:
            self.event = event
            if now - self._drawn_at < self.min_interval and event.done < event.total:
                return
            self._drawn_at = now
        self._draw()

    def set_note(self, note: str) -> None:
        """Show a short status note (``"queued"``, ...) after the numbers."""
        self.note = note
        self._draw()

    def finish(self, failed: bool = False, status: str | None = None, note: str = "") -> None:
        """End the run: draw the last event, colour the bar (green on success, red when
        ``failed``) and hide the Cancel button. ``status`` names the end (``"cancelled"``)."""
        self.status = status or ("failed" if failed else "finished")
        self.note = note
        self.cancel_button.layout.display = "none"
        self._draw()

    def _clicked(self, _button: w.Button) -> None:
        if self._on_cancel is not None and self.status == "running":
            if self.cancel_button.disabled:  # asked already
                return
            self.cancel_button.disabled = True
            self.cancel_button.description = "Cancelling…"
            self._on_cancel()

    # -- drawing -------------------------------------------------------------------------
    def _draw(self) -> None:
        event = self.event
        if event is not None:
            self.bar.max = max(1, event.total)
            self.bar.value = min(event.done, event.total)
        self.bar.bar_style = _STYLES.get(self.status, "info")
        self.stats.value = self._stats_html()

    def summary(self) -> str:
        """The numbers as one line of text."""
        e = self.event
        done, total = (e.done, e.total) if e is not None else (0, self.total)
        parts = [f"{done}/{total} rows"]
        if e is not None:
            # Label scoring generates no tokens: rows per second is its honest speed.
            speed = (
                f"{e.tokens_per_s:.1f} tok/s"
                if e.generated_tokens
                else f"{e.done / e.elapsed if e.elapsed > 0 else 0.0:.1f} rows/s"
            )
            parts += [f"{e.errors} errors", speed, f"elapsed {format_seconds(e.elapsed)}"]
            if self.status == "running":
                parts.append(f"ETA {format_seconds(e.eta)}")
        if self.status != "running":
            parts.append(self.status)
        if self.note:
            parts.append(self.note)
        return " · ".join(parts)

    def _stats_html(self) -> str:
        text = html_text(self.summary())
        if self.event is not None and self.event.errors:
            text = text.replace(
                f"{self.event.errors} errors",
                f"<span style='color:#c62828'>{self.event.errors} errors</span>",
            )
        if self.status in ("failed", "cancelled"):
            text = f"<span style='color:#c62828'>{text}</span>"
        return f"<span style='font-family:monospace'>{text}</span>"

    def __repr__(self) -> str:
        return f"{self.desc}: {self.summary()}"


def recent_panels() -> list[ProgressPanel]:
    """The latest progress panels still alive, oldest first."""
    return [p for ref in _recent if (p := ref()) is not None]


def watch_panels(watcher: Any) -> None:
    """Call ``watcher.show_progress(panel)`` for every panel created from now on (held
    weakly; a closed dashboard stops watching)."""
    _watchers.add(watcher)


def unwatch_panels(watcher: Any) -> None:
    """Stop calling ``watcher`` for new panels."""
    _watchers.discard(watcher)
