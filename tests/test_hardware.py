"""The hardware profile: real probes on this machine, and the parsers on captured text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jupyter_localllm import hardware
from jupyter_localllm.hardware import HardwareProfile, hardware_profile

NVIDIA_SMI_SAMPLE = """\
0, NVIDIA H100 80GB HBM3, 81559, 523, 550.54.15
1, NVIDIA GeForce RTX 4090, 24564, [N/A], 550.54.15
"""

CPUINFO_X86 = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu pni ssse3 fma avx avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8 sha_ni

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu pni ssse3 fma avx avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8 sha_ni
"""

CPUINFO_ARM = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""


def test_profile_has_every_key_with_its_type():
    hw = hardware_profile()
    assert isinstance(hw, HardwareProfile) and isinstance(hw, dict)
    assert isinstance(hw["os"], str) and hw["os"]
    assert hw["python"] == ".".join(map(str, sys.version_info[:3]))
    assert hw["cpu_model"] is None or isinstance(hw["cpu_model"], str)
    assert isinstance(hw["cores_physical"], int) and hw["cores_physical"] >= 1
    assert isinstance(hw["cores_logical"], int) and hw["cores_logical"] >= hw["cores_physical"]
    assert isinstance(hw["cpu_flags"], list) and hw["cpu_flags"] == sorted(hw["cpu_flags"])
    assert isinstance(hw["has_amx"], bool)
    assert isinstance(hw["gpus"], list)
    assert hw["gpu"] == (hw["gpus"][0] if hw["gpus"] else None)
    for gpu in hw["gpus"]:
        assert set(gpu) == {"index", "name", "vram_total", "vram_used", "driver"}


def test_ram_values_are_plausible():
    hw = hardware_profile()
    assert isinstance(hw["ram_total"], int) and hw["ram_total"] > 0
    assert 0 < hw["ram_available"] <= hw["ram_total"]


def test_attribute_access_and_summary():
    hw = hardware_profile()
    assert hw.ram_total == hw["ram_total"]
    assert hw.gpu is hw["gpu"]
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = hw.nope
    text = repr(hw)
    assert text.startswith("Hardware profile")
    assert "RAM" in text and "GiB" in text
    markdown = hw._repr_markdown_()
    assert markdown.splitlines()[1] == "|---|---|"
    assert "| RAM |" in markdown


def test_core_helpers_agree_with_profile():
    cores = hardware.physical_cores()
    assert isinstance(cores, int) and 1 <= cores <= hardware_profile()["cores_physical"]
    assert hardware.cpu_has_amx() is hardware_profile()["has_amx"]


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_has_amx_matches_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    expected = {"amx_tile", "amx_int8"} <= flags
    assert hardware.cpu_has_amx() is expected
    assert hardware_profile()["has_amx"] is expected
    assert set(hardware_profile()["cpu_flags"]) <= flags | {"sse3", "neon"}


def test_parse_nvidia_smi_sample():
    gpus = hardware._parse_nvidia_smi(NVIDIA_SMI_SAMPLE)
    assert gpus == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "vram_total": 81559 * 1024**2,
            "vram_used": 523 * 1024**2,
            "driver": "550.54.15",
        },
        {
            "index": 1,
            "name": "NVIDIA GeForce RTX 4090",
            "vram_total": 24564 * 1024**2,
            "vram_used": None,
            "driver": "550.54.15",
        },
    ]


def test_parse_nvidia_smi_odd_input():
    assert hardware._parse_nvidia_smi("") == []
    assert hardware._parse_nvidia_smi("No devices were found\n") == []
    (gpu,) = hardware._parse_nvidia_smi("0, Tesla T4, Rev A, 15360, 0, [N/A]\n")
    assert gpu["name"] == "Tesla T4, Rev A"
    assert gpu["vram_total"] == 15360 * 1024**2
    assert gpu["driver"] is None


def test_parse_cpuinfo_x86_and_arm():
    model, flags = hardware._parse_cpuinfo(CPUINFO_X86)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"amx_tile", "amx_int8", "avx512f", "sse3"} <= flags
    model, flags = hardware._parse_cpuinfo(CPUINFO_ARM)
    assert model is None
    assert {"asimd", "neon", "sve", "i8mm"} <= flags


def test_gpu_summary_rows():
    hw = HardwareProfile(
        os="Linux 6.8",
        python="3.11.7",
        cpu_model="Some CPU",
        cores_physical=8,
        cores_logical=16,
        cpu_flags=["avx2"],
        has_amx=False,
        ram_total=32 * 1024**3,
        ram_available=16 * 1024**3,
        gpus=hardware._parse_nvidia_smi(NVIDIA_SMI_SAMPLE),
    )
    text = repr(hw)
    assert "16.0 GiB available of 32.0 GiB" in text
    assert "GPU 0" in text and "NVIDIA H100 80GB HBM3, 79.6 GiB VRAM (523.0 MiB used)" in text
    assert "driver 550.54.15" in text


def test_probes_never_raise(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("probe failed")

    monkeypatch.setattr(hardware.psutil, "virtual_memory", broken)
    monkeypatch.setattr(hardware.subprocess, "run", broken)
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/" + name)
    hw = hardware_profile()
    assert hw["ram_total"] is None and hw["ram_available"] is None
    assert isinstance(hw["gpus"], list)
    assert "RAM" in repr(hw)
