"""Live resource use of this machine and kernel: CPU per core, RAM, the kernel's RSS (psutil)
and NVIDIA GPUs (nvidia-ml-py, an optional extra imported only when present).

No widgets here: :class:`UsageSampler` takes samples, :class:`~.hardware.HardwarePanel`
draws them.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from ... import hardware

__all__ = ["GpuUsage", "Usage", "UsageSampler"]


@dataclass
class GpuUsage:
    """One GPU's load."""

    index: int
    name: str
    utilization: float
    """Percent of time a kernel ran over the last sample period."""
    vram_used: int
    vram_total: int


@dataclass
class Usage:
    """One sample of the machine's and this process's resource use."""

    time: float
    cpu_per_core: list[float]
    """Percent busy per logical core since the previous sample."""
    ram_used: int
    ram_total: int
    rss: int
    """Resident memory of this process (the kernel), bytes."""
    gpus: list[GpuUsage] = field(default_factory=list)

    @property
    def cpu(self) -> float:
        """Mean percent over all cores."""
        return sum(self.cpu_per_core) / len(self.cpu_per_core) if self.cpu_per_core else 0.0

    @property
    def ram_percent(self) -> float:
        """RAM in use, percent of the total."""
        return 100.0 * self.ram_used / self.ram_total if self.ram_total else 0.0


class UsageSampler:
    """Takes :class:`Usage` samples. NVML is started on the first sample (when
    nvidia-ml-py is installed and a GPU is present) and shut down by :meth:`close`."""

    def __init__(self, gpus: bool = True):
        self._process = psutil.Process()
        self._want_gpus = gpus
        self._nvml: Any | None = None
        self._nvml_tried = False
        psutil.cpu_percent(percpu=True)  # the first call only starts psutil's interval

    def sample(self) -> Usage:
        """Resource use now (CPU since the previous sample)."""
        mem = psutil.virtual_memory()
        return Usage(
            time=time.monotonic(),
            cpu_per_core=[float(x) for x in psutil.cpu_percent(percpu=True)],
            ram_used=int(mem.total - mem.available),
            ram_total=int(mem.total),
            rss=int(self._process.memory_info().rss),
            gpus=self._gpus(),
        )

    def _gpus(self) -> list[GpuUsage]:
        if not self._want_gpus:
            return []
        if not self._nvml_tried:
            self._nvml_tried = True
            self._nvml = hardware.nvml()
        nv = self._nvml
        if nv is None:
            return []
        out = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(handle)
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                out.append(
                    GpuUsage(
                        index=i,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        utilization=float(util.gpu),
                        vram_used=int(memory.used),
                        vram_total=int(memory.total),
                    )
                )
        except Exception:  # a GPU that went away: stop asking rather than fail every tick
            self.close()
            return []
        return out

    def close(self) -> None:
        """Shut NVML down (if it was started)."""
        nv, self._nvml = self._nvml, None
        if nv is not None:
            with contextlib.suppress(Exception):
                nv.nvmlShutdown()
