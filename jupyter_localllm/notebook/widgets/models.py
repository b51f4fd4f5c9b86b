"""ModelPanel: the models this session can load and the ones it holds, with load and unload.

The state is the session's :class:`~jupyter_localllm.session.manager.ModelManager`; the panel draws
it and calls it. Errors appear as a red line in the panel instead of a traceback.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w
import pandas as pd

from ... import models
from ...session.manager import ModelManager, get_manager
from ..escaping import html_table, html_text

__all__ = ["ModelPanel", "discoverable_models"]

PACKAGED = ("default", "gemma-3-270m")


def discoverable_models(
    cache_dir: str | None = None, ollama_dir: str | None = None
) -> list[tuple[str, str]]:
    """``(label, ref)`` of every model that can be loaded without a download: the packaged
    ones, the GGUF files in the model cache and Ollama's models (``ollama:NAME``)."""
    found = [(f"{ref} (packaged)", ref) for ref in PACKAGED]
    for row in models.list_cached_models(cache_dir).itertuples():
        found.append((f"{row.name} (cache, {row.size_bytes / 2**20:.0f} MB)", row.name))
    for row in models.list_ollama_models(ollama_dir).itertuples():
        found.append((f"ollama:{row.name} ({row.size_bytes / 2**20:.0f} MB)", f"ollama:{row.name}"))
    return found


def _table_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<i>No model loaded.</i>"
    shown = [
        c
        for c in ("alias", "name", "size_mb", "n_ctx", "n_seq_max", "contexts", "memory_mb")
        if c in table.columns
    ]
    frame = table[shown].copy()
    if "default" in table.columns:  # mark the default model instead of a column of booleans
        frame["alias"] = [
            f"{a}\u00a0★" if d else a for a, d in zip(table["alias"], table["default"], strict=True)
        ]
    # Aliases and names come from the user and from model files: every cell is escaped.
    return html_table(frame, precision=1)


class ModelPanel(w.VBox):
    """Discoverable and loaded models, a form to load one (ref, alias, n_ctx, n_gpu_layers,
    n_seq_max) and a button to unload one. ``manager`` defaults to the session's."""

    def __init__(self, manager: ModelManager | None = None):
        self.manager = manager or get_manager()
        self.ref = w.Combobox(
            placeholder="default, a path, a cache name, ollama:NAME, hf://…",
            description="model",
            ensure_option=False,
            layout=w.Layout(width="32em"),
        )
        # Labels sized to their text: the default 8em width cuts "n_gpu_layers" off.
        wide = {"description_width": "initial"}
        self.alias = w.Text(placeholder="(the model ref)", description="alias", style=wide)
        self.n_ctx = w.IntText(
            value=0, description="n_ctx", tooltip="0: sized from the work", style=wide
        )
        self.n_gpu_layers = w.Text(value="auto", description="n_gpu_layers", style=wide)
        self.n_seq_max = w.BoundedIntText(
            value=1, min=1, max=256, description="n_seq_max", style=wide
        )
        self.load_button = w.Button(description="Load", icon="upload", button_style="primary")
        self.loaded = w.HTML()
        self.unload_choice = w.Dropdown(description="loaded", options=[])
        self.unload_button = w.Button(description="Unload", icon="trash")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.message = w.HTML()
        self.load_button.on_click(lambda _: self.load())
        self.unload_button.on_click(lambda _: self.unload())
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__(
            [
                w.HTML("<b>Models</b>"),
                self.ref,
                w.HBox([self.alias, self.n_gpu_layers]),
                w.HBox([self.n_ctx, self.n_seq_max]),
                w.HBox([self.load_button, self.refresh_button]),
                self.message,
                self.loaded,
                w.HBox([self.unload_choice, self.unload_button]),
            ]
        )
        self.refresh()

    # -- actions -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the discoverable models and the loaded ones."""
        try:
            found = discoverable_models()
        except Exception as exc:  # a broken cache folder should not hide the panel
            found = [(f"{ref} (packaged)", ref) for ref in PACKAGED]
            self._error(exc)
        self.ref.options = [ref for _, ref in found]
        self.ref.value = self.ref.value or "default"
        self.loaded.value = _table_html(self.manager.table())
        aliases = self.manager.aliases
        self.unload_choice.options = aliases
        self.unload_choice.value = aliases[-1] if aliases else None

    def load(self) -> Any:
        """Load the model the form names (its context is made at once); returns the model,
        or ``None`` after showing what went wrong."""
        ref = self.ref.value.strip() or "default"
        alias = self.alias.value.strip() or ref
        layers: int | str = self.n_gpu_layers.value.strip() or "auto"
        if layers != "auto":
            try:
                layers = int(layers)
            except ValueError:
                return self._error(f'n_gpu_layers must be "auto" or a number, got {layers!r}.')
        n_ctx = self.n_ctx.value or None
        try:
            model = self.manager.load(
                ref, alias=alias, n_gpu_layers=layers, n_ctx=n_ctx, n_seq_max=self.n_seq_max.value
            )
            self.manager.context(alias)
        except Exception as exc:  # shown in the panel: a widget callback has no cell to fail
            return self._error(exc)
        self.message.value = f"<span style='color:#2e7d32'>Loaded {html_text(alias)}.</span>"
        self.refresh()
        return model

    def unload(self) -> None:
        """Unload the model chosen in the dropdown."""
        alias = self.unload_choice.value
        if not alias:
            self._error("No model is loaded; there is nothing to unload.")
            return
        try:
            self.manager.unload(alias)
        except Exception as exc:
            self._error(exc)
            return
        self.message.value = f"Unloaded {html_text(alias)}."
        self.refresh()

    def _error(self, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.message.value = f"<span style='color:#c62828'>{html_text(text)}</span>"

    def __repr__(self) -> str:
        table = self.manager.table()
        return "Models:\n" + (table.to_string(index=False) if not table.empty else "(none loaded)")
