"""The dashboard: the model, progress and hardware panels of the session together."""

from __future__ import annotations

import ipywidgets as w

from .hardware import HardwarePanel
from .models import ModelPanel
from .progress import ProgressPanel, recent_panels, unwatch_panels, watch_panels

__all__ = ["Dashboard", "dashboard"]


class Dashboard(w.VBox):
    """:class:`ModelPanel`, the latest runs' :class:`ProgressPanel`\\ s (the same widgets the
    cells show, so they move together) and a :class:`HardwarePanel`. Closing it stops the
    hardware thread."""

    def __init__(self, *, runs: int = 3, hardware_interval: float = 0.5):
        self.runs = runs
        self.models = ModelPanel()
        self.progress = w.VBox(layout=w.Layout(min_height="2em"))
        self.hardware = HardwarePanel(hardware_interval)
        self._idle = w.HTML("<i>No batch run yet.</i>")
        super().__init__(
            [self.models, w.HTML("<b>Runs</b>"), self.progress, self.hardware],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        for panel in recent_panels()[-runs:]:
            self.show_progress(panel)
        if not self.progress.children:
            self.progress.children = (self._idle,)
        watch_panels(self)

    def show_progress(self, panel: ProgressPanel) -> None:
        """Add a run's panel (keeping the latest ``runs``); called for every new panel."""
        shown = [c for c in self.progress.children if isinstance(c, ProgressPanel)]
        self.progress.children = tuple([*shown, panel][-self.runs :])

    def close(self) -> None:
        """Stop the hardware thread and close the panels."""
        unwatch_panels(self)
        self.hardware.close()
        self.models.close()
        super().close()


def dashboard(*, runs: int = 3, hardware_interval: float = 0.5) -> Dashboard:
    """The session's dashboard: models (load/unload), the latest ``runs`` batch runs and live
    hardware use. Make it a cell's last expression (or ``display()`` it) to show it."""
    return Dashboard(runs=runs, hardware_interval=hardware_interval)
