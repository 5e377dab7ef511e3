"""What a result was measured on: machine, accelerator, library versions, date, command and load.

The load average is recorded before and after a run because this benchmark is meant to be run on
shared machines too: a ratio measured while other processes held the cores is still meaningful
(`timing.py` pairs its samples), but absolute seconds are not comparable to an idle machine's.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import warnings

import torch

from softprompt_ext.precision import bf16_is_fast, cpu_flags, cpu_model

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "softprompt-ext")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def own_peak_rss_mb() -> float | None:
    """This process's resident-set high-water mark (the benchmark driver itself, not a memory child)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise), so blocks don't pile up."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def cpu_pressure() -> float | None:
    """Share of the last 60 s in which some runnable task waited for a CPU (Linux PSI), in percent."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        return float(dict(item.split("=") for item in some[1:])["avg60"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(device: torch.device, argv: list[str], mode: str, name: str, module: str = "run") -> dict:
    """Machine, accelerator, versions, date and git commit, with `python -m benchmarks.<module> <argv>` as the
    command (`common.run_info` is the entry points' way in)."""
    from benchmarks.common import command_line

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    info = {
        "name": name,
        "mode": mode,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(module, argv),
        "device": str(device),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "bf16_is_fast": bf16_is_fast(device),  # softprompt_ext.precision: whether bf16 autocast speeds up here
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _memory_gb(),
        "versions": versions,
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def quiet_libraries() -> None:
    """No progress bars or deprecation chatter in the benchmark's log."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient checkpointing.*")
