"""Widgets for notebooks: they draw the session's state (models, runs, hardware, accuracy)
and call the public API; they hold no state of their own. Every panel is an ipywidgets
``VBox`` whose text form (``repr``) is a plain summary for terminals."""

from __future__ import annotations

from .accuracy import AccuracyPanel
from .board import Dashboard, dashboard
from .hardware import HardwarePanel
from .models import ModelPanel
from .progress import ProgressPanel

__all__ = [
    "AccuracyPanel",
    "Dashboard",
    "HardwarePanel",
    "ModelPanel",
    "ProgressPanel",
    "dashboard",
]
