"""What this machine offers to llama.cpp: CPU, instruction sets, memory and NVIDIA GPUs.

``hardware_profile()`` mirrors localLLM's ``hardware_profile()``: one call, one small report,
readable in a notebook. The engine uses :func:`physical_cores` (the one thread policy),
:func:`cpu_has_amx` and :func:`available_memory` (the one memory probe) to size its defaults.
Every probe is best effort: a probe that fails leaves its field ``None`` (or an
empty list) and never raises.

GPU details come from NVIDIA's management library when the optional ``nvidia-ml-py`` package is
installed (``pip install 'jupyter-localllm[gpu]'``), otherwise from the ``nvidia-smi`` command
when it is on ``PATH``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import shutil
import subprocess
import sys
import warnings
from typing import Any

import psutil

__all__ = [
    "HardwareProfile",
    "available_memory",
    "cpu_has_amx",
    "hardware_profile",
    "nvml",
    "physical_cores",
]

# CPU features that decide which llama.cpp kernels run (x86 names as /proc/cpuinfo spells them,
# then ARM ones). Other flags are left out of the profile to keep it short.
_LLAMA_CPU_FLAGS = frozenset(
    {
        "sse3",
        "ssse3",
        "fma",
        "f16c",
        "avx",
        "avx2",
        "avx_vnni",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "neon",
        "asimd",
        "asimddp",
        "i8mm",
        "sve",
        "sve2",
        "bf16",
    }
)
# llama.cpp's AMX kernels work on int8 tiles: both flags must be there.
_AMX_FLAGS = frozenset({"amx_tile", "amx_int8"})

_NVIDIA_SMI_QUERY = "index,name,memory.total,memory.used,driver_version"
_MIB = 1024**2


class HardwareProfile(dict):
    """The result of :func:`hardware_profile`: a plain ``dict`` that prints as a short table.

    Read it like a dict (``hw["ram_total"]``, ``hw["gpu"]["name"]``) or by attribute
    (``hw.gpu``). In a notebook it renders as a Markdown table.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"HardwareProfile has no field {name!r}") from None

    def _rows(self) -> list[tuple[str, str]]:
        """The summary as (label, value) rows, shared by both representations."""
        physical, logical = self.get("cores_physical"), self.get("cores_logical")
        cpu = self.get("cpu_model") or "unknown CPU"
        if logical:
            cpu += f" ({physical} physical / {logical} logical cores)"
        total, available = self.get("ram_total"), self.get("ram_available")
        ram = (
            f"{_format_bytes(available)} available of {_format_bytes(total)}"
            if total
            else "unknown"
        )
        rows = [
            ("OS", str(self.get("os") or "unknown")),
            ("Python", str(self.get("python") or "unknown")),
            ("CPU", cpu),
            ("CPU flags", " ".join(self.get("cpu_flags") or []) or "unknown"),
            ("AMX", "yes" if self.get("has_amx") else "no"),
            ("RAM", ram),
        ]
        gpus = self.get("gpus") or []
        for gpu in gpus:
            value = str(gpu.get("name") or "unknown GPU")
            if gpu.get("vram_total"):
                value += f", {_format_bytes(gpu['vram_total'])} VRAM"
                if gpu.get("vram_used") is not None:
                    value += f" ({_format_bytes(gpu['vram_used'])} used)"
            if gpu.get("driver"):
                value += f", driver {gpu['driver']}"
            rows.append((f"GPU {gpu.get('index', '?')}", value))
        if not gpus:
            rows.append(("GPU", "none found"))
        return rows

    def __repr__(self) -> str:
        rows = self._rows()
        width = max(len(label) for label, _ in rows)
        return "\n".join(
            ["Hardware profile"] + [f"  {label:<{width}}  {value}" for label, value in rows]
        )

    def _repr_markdown_(self) -> str:
        lines = ["| Hardware | |", "|---|---|"]
        for label, value in self._rows():
            escaped = value.replace("|", "\\|")
            lines.append(f"| {label} | {escaped} |")
        return "\n".join(lines)


def hardware_profile() -> HardwareProfile:
    """Describe this machine: OS, CPU, instruction sets, memory and NVIDIA GPUs.

    Returns a :class:`HardwareProfile` (a ``dict``) with these keys:

    - ``os``: platform name and release, e.g. ``"Linux 6.8.0"``.
    - ``python``: the Python version, e.g. ``"3.11.7"``.
    - ``arch``: the machine architecture, e.g. ``"x86_64"`` or ``"arm64"``.
    - ``cpu_model``: the CPU's name, or ``None`` when unknown.
    - ``cores_physical`` / ``cores_logical``: core counts (physical falls back to logical).
    - ``cpu_flags``: sorted list of the instruction-set flags llama.cpp cares about
      (``avx2``, ``avx512f``, ``amx_int8``, ``neon``, ...); empty where the OS does not say.
    - ``has_amx``: whether the CPU has Intel AMX int8 tiles (``amx_tile`` and ``amx_int8``).
    - ``ram_total`` / ``ram_available``: system memory in bytes.
    - ``gpus``: one dict per NVIDIA GPU with ``index``, ``name``, ``vram_total``,
      ``vram_used`` (bytes) and ``driver``; empty when none is found.
    - ``gpu``: the first of ``gpus``, or ``None`` (localLLM's ``hw$gpu``).

    Memory figures are read afresh on each call; CPU facts are read once per process.
    """
    model, flags = _cpu_info()
    logical = _safe(lambda: psutil.cpu_count(logical=True)) or os.cpu_count()
    physical = _safe(lambda: psutil.cpu_count(logical=False)) or logical
    memory = _safe(psutil.virtual_memory)
    gpus = _probe_gpus()
    return HardwareProfile(
        os=_safe(lambda: f"{platform.system()} {platform.release()}".strip()) or None,
        python=platform.python_version(),
        arch=platform.machine() or None,
        cpu_model=model,
        cores_physical=physical,
        cores_logical=logical,
        cpu_flags=sorted(flags & _LLAMA_CPU_FLAGS),
        has_amx=flags >= _AMX_FLAGS,
        ram_total=memory.total if memory else None,
        ram_available=memory.available if memory else None,
        gpus=gpus,
        gpu=gpus[0] if gpus else None,
    )


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether the CPU has Intel AMX int8 tiles, which llama.cpp's AMX kernels need.

    Read from ``/proc/cpuinfo`` (``amx_tile`` and ``amx_int8``); ``False`` where it cannot be
    read (non-Linux systems). The answer is cached for the life of the process.
    """
    return _cpu_info()[1] >= _AMX_FLAGS


@functools.lru_cache(maxsize=1)
def physical_cores() -> int:
    """How many physical CPU cores this process may use: the default thread count for decoding.

    The machine's physical core count, capped by the CPUs the process is allowed to run on
    (CPU affinity, and a cgroup CPU quota inside containers). At least 1. Cached.
    """
    logical = _safe(lambda: psutil.cpu_count(logical=True)) or os.cpu_count() or 1
    physical = _safe(lambda: psutil.cpu_count(logical=False)) or logical
    return max(1, min(physical, _usable_cpus() or physical))


def available_memory() -> int:
    """Bytes the OS can give a new allocation now (``psutil.virtual_memory().available``):
    what the model-file and context memory checks compare their estimates with. Not cached."""
    return int(psutil.virtual_memory().available)


# --- probes ------------------------------------------------------------------------------


def _safe(probe: Any) -> Any:
    """Call ``probe()``; return ``None`` if it raises (a probe must never break the caller)."""
    try:
        return probe()
    except Exception:
        return None


def _usable_cpus() -> int | None:
    """Logical CPUs this process may use (affinity and cgroup v2 quota), or ``None``."""
    counts = []
    affinity = _safe(lambda: len(os.sched_getaffinity(0)))  # Linux only
    if affinity:
        counts.append(affinity)
    quota = _safe(lambda: _read_text("/sys/fs/cgroup/cpu.max"))
    if quota:
        parts = quota.split()
        if len(parts) == 2 and parts[0] != "max":
            with contextlib.suppress(ValueError, ZeroDivisionError):
                counts.append(max(1, math.ceil(int(parts[0]) / int(parts[1]))))
    return min(counts) if counts else None


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """Return (CPU model name, feature flags) from the text of ``/proc/cpuinfo``.

    x86 lists features under ``flags``, ARM under ``Features``; ARM's model is under
    ``model name`` on some kernels and ``Hardware`` or ``CPU part`` on others.
    """
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware") and value and model is None:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if "pni" in flags:  # Linux calls SSE3 "pni" (Prescott New Instructions)
        flags.add("sse3")
    if "asimd" in flags:  # AArch64 calls NEON "asimd"; llama.cpp reports it as NEON
        flags.add("neon")
    return model, frozenset(flags)


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str | None, frozenset[str]]:
    """CPU model and flags of this machine, probed once."""
    model: str | None = None
    flags: frozenset[str] = frozenset()
    text = _safe(lambda: _read_text("/proc/cpuinfo"))
    if text:
        model, flags = _parse_cpuinfo(text)
    if model is None and sys.platform == "darwin":
        model = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
    if model is None:
        model = _safe(platform.processor) or None
    if not flags and platform.machine().lower() in ("arm64", "aarch64"):
        flags = frozenset({"neon"})  # every 64-bit ARM CPU has NEON
    return model, flags


def _run(argv: list[str], timeout: float = 5.0) -> str | None:
    """Run a probe command; its stripped stdout, or ``None`` if it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _probe_gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs via nvidia-ml-py if importable, else nvidia-smi, else none."""
    gpus = _safe(_gpus_from_nvml)
    if gpus is None:
        text = _run(
            ["nvidia-smi", f"--query-gpu={_NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]
        )
        gpus = _safe(lambda: _parse_nvidia_smi(text)) if text else None
    return gpus or []


def nvml() -> Any | None:
    """The ``pynvml`` module with NVML initialised (call ``nvmlShutdown`` when done);
    ``None`` without nvidia-ml-py or an NVIDIA driver."""
    try:
        with warnings.catch_warnings():  # the old "pynvml" wrapper package warns on import
            warnings.simplefilter("ignore")
            import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: NVML raises its own error classes
        return None
    return pynvml


def _gpus_from_nvml() -> list[dict[str, Any]] | None:
    """Query GPUs through NVML; ``None`` when nvidia-ml-py is missing or NVML will not start."""
    pynvml = nvml()
    if pynvml is None:
        return None
    try:
        driver = _safe(pynvml.nvmlSystemGetDriverVersion)
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = _safe(lambda h=handle: pynvml.nvmlDeviceGetName(h))
            memory = _safe(lambda h=handle: pynvml.nvmlDeviceGetMemoryInfo(h))
            gpus.append(
                {
                    "index": i,
                    "name": _decode(name),
                    "vram_total": int(memory.total) if memory else None,
                    "vram_used": int(memory.used) if memory else None,
                    "driver": _decode(driver),
                }
            )
        return gpus
    finally:
        _safe(pynvml.nvmlShutdown)


def _decode(value: Any) -> str | None:
    """NVML returns ``bytes`` in older releases and ``str`` in newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None if value is None else str(value)


def _parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version
    --format=csv,noheader,nounits`` output (memory in MiB) into GPU dicts (memory in bytes).

    Lines that do not have the five fields are skipped; ``[N/A]`` values become ``None``.
    """
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        index, total, used, driver = parts[0], parts[-3], parts[-2], parts[-1]
        name = ", ".join(parts[1:-3])  # a name containing a comma is split; join it back
        gpus.append(
            {
                "index": _to_int(index),
                "name": name or None,
                "vram_total": _mib_to_bytes(total),
                "vram_used": _mib_to_bytes(used),
                "driver": None if _not_available(driver) else driver,
            }
        )
    return gpus


def _not_available(value: str) -> bool:
    """nvidia-smi prints ``[N/A]`` (or ``N/A``) for fields a GPU does not report."""
    return value.strip("[]").upper() in ("", "N/A", "NOT SUPPORTED")


def _to_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _mib_to_bytes(value: str) -> int | None:
    try:
        return int(float(value) * _MIB)
    except ValueError:
        return None


def _format_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; ``None`` -> 'unknown'."""
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"
