"""HardwarePanel: CPU per core, RAM, this kernel's RSS and GPU load, redrawn about twice a
second by a daemon thread, with a sparkline of the last minute."""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import deque

import ipywidgets as w

from ..escaping import html_text
from .usage import Usage, UsageSampler

__all__ = ["HardwarePanel", "sparkline_svg"]

_live: weakref.WeakSet[HardwarePanel] = weakref.WeakSet()  # stopped at interpreter exit
_COLOURS = {"CPU": "#1565c0", "RAM": "#2e7d32", "GPU": "#ef6c00"}


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f}"


def sparkline_svg(
    series: dict[str, list[float]], *, width: int = 320, height: int = 48, top: float = 100.0
) -> str:
    """An inline SVG with one line per named series of percentages (0..``top``), newest on
    the right, and a legend with each series' latest value."""
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 14}' "
        f"viewBox='0 0 {width} {height + 14}' style='font:10px sans-serif'>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='#fafafa' stroke='#ddd'/>",
    ]
    x_legend = 2
    for name, values in series.items():
        colour = _COLOURS.get(name.split()[0], "#6a1b9a")
        if len(values) >= 2:
            step = width / (len(values) - 1)
            points = " ".join(
                f"{i * step:.1f},{height - min(max(v, 0.0), top) / top * (height - 2) - 1:.1f}"
                for i, v in enumerate(values)
            )
            parts.append(
                f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{points}'/>"
            )
        latest = f"{values[-1]:.0f}%" if values else "–"
        parts.append(
            f"<text x='{x_legend}' y='{height + 11}' fill='{colour}'>"
            f"{html_text(name)} {latest}</text>"
        )
        x_legend += 80
    parts.append("</svg>")
    return "".join(parts)


def _cores_html(percents: list[float]) -> str:
    """One labelled bar per core, its length the load."""
    rows = []
    for i, p in enumerate(percents):
        p = min(max(p, 0.0), 100.0)
        rows.append(
            "<div style='display:flex;align-items:center;gap:6px;font:12px monospace'>"
            f"<span style='width:4.5em'>core {i}</span>"
            "<div style='width:160px;height:10px;background:#e3f2fd'>"
            f"<div style='width:{p * 1.6:.0f}px;height:10px;background:#1565c0'></div></div>"
            f"<span>{p:3.0f}%</span></div>"
        )
    return "".join(rows)


class HardwarePanel(w.VBox):
    """Live CPU (per core), RAM, kernel RSS and GPU utilisation/VRAM (with nvidia-ml-py).

    A daemon thread samples every ``interval`` seconds (at least 0.1) and sets the widgets'
    traits; it stops on :meth:`close`, :meth:`stop`, or when the interpreter exits.
    ``history`` samples are kept for the sparkline.
    """

    def __init__(self, interval: float = 0.5, *, history: int = 120, autostart: bool = True):
        self.interval = max(0.1, float(interval))
        self.history: deque[Usage] = deque(maxlen=history)
        self.latest: Usage | None = None
        self._sampler = UsageSampler()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.summary = w.HTML()
        self.cores = w.HTML()
        self.gpus = w.HTML()
        self.sparkline = w.HTML()
        super().__init__(
            [w.HTML("<b>Hardware</b>"), self.summary, self.cores, self.gpus, self.sparkline]
        )
        self.update()
        _live.add(self)
        if autostart:
            self.start()

    # -- the thread ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the sampling thread (if not running)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="localllm-hardware-panel", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the sampling thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the sampling thread (the panel keeps its last values)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._sampler.close()

    def close(self) -> None:
        """Stop the thread and close the widget."""
        self.stop()
        _live.discard(self)
        super().close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.update()
            except Exception:  # a closed comm or a vanished GPU: stop quietly
                break

    # -- drawing -------------------------------------------------------------------------
    def update(self) -> Usage:
        """Take a sample and redraw (the thread calls this every ``interval`` seconds)."""
        u = self._sampler.sample()
        self.latest = u
        self.history.append(u)
        self.summary.value = (
            f"<span style='font-family:monospace'>CPU {u.cpu:.0f}% · "
            f"RAM {_gb(u.ram_used)}/{_gb(u.ram_total)} GB ({u.ram_percent:.0f}%) · "
            f"kernel RSS {u.rss / 2**20:.0f} MB</span>"
        )
        self.cores.value = _cores_html(u.cpu_per_core)
        self.gpus.value = "<br>".join(
            f"<span style='font-family:monospace'>GPU {g.index} {html_text(g.name)}: "
            f"{g.utilization:.0f}% · VRAM {_gb(g.vram_used)}/{_gb(g.vram_total)} GB</span>"
            for g in u.gpus
        )
        series = {
            "CPU": [s.cpu for s in self.history],
            "RAM": [s.ram_percent for s in self.history],
        }
        for g in u.gpus:
            series[f"GPU{g.index}"] = [
                s.gpus[g.index].utilization if len(s.gpus) > g.index else 0.0 for s in self.history
            ]
        self.sparkline.value = sparkline_svg(series)
        return u

    def __repr__(self) -> str:
        u = self.latest
        if u is None:
            return "Hardware: no sample yet"
        gpus = "".join(f" | GPU{g.index} {g.utilization:.0f}%" for g in u.gpus)
        return (
            f"Hardware: CPU {u.cpu:.0f}% | RAM {_gb(u.ram_used)}/{_gb(u.ram_total)} GB | "
            f"kernel RSS {u.rss / 2**20:.0f} MB{gpus}"
        )


@atexit.register
def _stop_all() -> None:
    """Stop every panel's thread before the interpreter tears modules down."""
    for panel in list(_live):
        panel.stop(timeout=1.0)
