"""`megatron doctor`: what this machine will run with, printed before a long job starts (a CPU runtime in
Colab, a full disk or a missing extra is better seen now than an hour in)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from pathlib import Path

import torch

from .cache import cache_root
from .extras import EXTRAS, install_hint
from .precision import resolve_device, resolve_dtype


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux, Colab); None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 2**30:.1f} GiB"


def diagnose(runs: str | os.PathLike = "runs") -> dict[str, str]:
    """Every line `megatron doctor` prints, as name -> value."""
    device = resolve_device("auto")
    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "cuda": torch.version.cuda or "none (CPU build)", "device": str(device)}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        memory = torch.cuda.get_device_properties(device).total_memory
        name = torch.cuda.get_device_name(device)
        facts["gpu"] = f"{name} (compute capability {major}.{minor}, {gib(memory)})"
    else:
        facts["gpu"] = "none: every stage runs on the CPU (slow for depth maps and fine-tuning)"
    facts["precision"] = str(resolve_dtype("auto", device)).removeprefix("torch.")
    facts["free memory"] = gib(available_memory_bytes())
    caches, run_folder = cache_root().resolve(), Path(runs).resolve()
    for name, folder in (("caches", caches), ("runs", run_folder)):
        existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
        facts[name] = f"{folder} ({gib(shutil.disk_usage(existing).free)} free)"
    for extra, needs in EXTRAS.items():
        found = importlib.util.find_spec(needs.module) is not None
        facts[f"extra {extra}"] = "installed" if found else f"not installed ({install_hint(extra)})"
    return facts


def report(runs: str | os.PathLike = "runs") -> str:
    facts = diagnose(runs)
    width = max(map(len, facts))
    return "\n".join(f"{name:<{width}}  {value}" for name, value in facts.items())
