"""Peak training memory, measured in a fresh child process per configuration.

Design decisions
----------------
* **One process per configuration.** Memory freed by one configuration stays in the allocator's pools
  or the process's heap, so measuring several in one process under-reports the later ones' peaks (or
  charges them for the earlier ones'). Each configuration runs in its own child.
* **Children fork from a clean server.** A `forkserver` process imports torch, transformers, PEFT and
  softprompt-ext once, runs one tiny step to fault in their code (`_memory_server.py`), and forks one
  child per configuration (`maxtasksperchild=1`). A child starts with the libraries loaded but no model,
  and the benchmark does not pay a 5-20 s import per child.
* **What is measured on CPU.** The Linux resident-set high-water mark (`VmHWM` in /proc/self/status),
  read after two training steps, minus the resident set when the child started (`VmRSS`: the loaded
  libraries). That difference -- "training memory" -- is what the OS had to give the process for the
  weights, gradients, optimizer state, activations and allocator overhead. Before the steps the
  high-water mark is reset (writing 5 to /proc/self/clear_refs), so a one-off peak while building or
  loading the model (e.g. quantising to 8-bit) is reported apart (`setup_peak_mb`) instead of hiding the
  training peak. Where the reset is unavailable the peak includes setup, and `hwm_reset` says so.
  Large tensors are mmap-backed, so freed activations do go back to the OS and the high-water mark
  tracks the largest live set; small-block heap fragmentation is included, as a user would pay it.
* **What is measured on CUDA.** `torch.cuda.max_memory_allocated()` after
  `torch.cuda.reset_peak_memory_stats()` once the model is ready: live tensor bytes, excluding the
  caching allocator's reserve and the CUDA context.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
import traceback

import peft  # noqa: F401  (preloaded in the fork server)
import torch
import transformers  # noqa: F401

import softprompt_ext  # noqa: F401  (registers the prompt encoder with PEFT)

from . import machine
from . import workloads as wl

machine.quiet_libraries()  # runs in the fork server, so every child inherits it

MB = 1024 * 1024


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def _hwm_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    import resource  # non-Linux fallback: ru_maxrss (KiB on Linux, bytes on macOS), never reset

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MB if os.uname().sysname == "Darwin" else rss / 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load(spec: dict, shape: wl.Shape, device: torch.device) -> torch.nn.Module:
    if spec["load"] == "random":
        base = wl.build_base(shape, seed=0)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BitsAndBytesConfig

        auto = AutoModelForSeq2SeqLM if shape.family == "t5" else AutoModelForCausalLM
        if spec["load"] == "int8_disk":
            from peft import prepare_model_for_kbit_training

            placement = {"": device.index or 0} if device.type == "cuda" else None
            base = auto.from_pretrained(
                spec["path"], quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map=placement
            )
            # no gradient checkpointing: only the base's storage differs from the fp32 run
            return prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        base = auto.from_pretrained(spec["path"])
    if spec["precision"] == "bf16_weights":
        base = base.to(torch.bfloat16)
    if spec.get("gradient_checkpointing"):
        wl.enable_checkpointing(base)
    if spec.get("fused_gelu"):
        from softprompt_ext.training.step_savings import fuse_gelu

        fuse_gelu(base)
    return base.to(device)


def probe(spec: dict) -> dict:
    """Build one configuration in this (fresh) process, run `spec["steps"]` steps, report memory.

    `spec` keys: shape, method, num_virtual_tokens, inputs (dict of `workloads.Inputs`), precision, train,
    target_loss, gradient_checkpointing, fused_gelu, load ("random" | "fp32_disk" | "int8_disk"), path, device, threads,
    steps.
    """
    try:
        torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        shape = wl.SHAPES[spec["shape"]]
        rss_start = _rss_mb()
        base = _load(spec, shape, device)
        model = wl.wrap(base, shape, spec["method"], spec["num_virtual_tokens"])
        batch = wl.make_batch(shape, wl.Inputs(**spec["inputs"]), device)
        step = wl.Step(
            model,
            batch,
            device,
            train=spec["train"],
            precision=spec["precision"],
            target_loss=spec["target_loss"],
        )
        gc.collect()
        rss_ready, setup_peak = _rss_mb(), _hwm_mb()
        hwm_reset = _reset_hwm()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            cuda_ready = torch.cuda.memory_allocated(device) / MB
        times = []
        for _ in range(spec["steps"]):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = _hwm_mb()
        out = {
            "ok": True,
            "rss_start_mb": rss_start,
            "rss_ready_mb": rss_ready,
            "setup_peak_mb": setup_peak,
            "peak_mb": peak,
            "hwm_reset": hwm_reset,
            "model_mb": rss_ready - rss_start if rss_start is not None else None,
            "train_mb": peak - rss_start if rss_start is not None else None,
            "step_s": times,
            "trainable_params": step.trainable,
        }
        if device.type == "cuda":
            out.update(cuda_ready_mb=cuda_ready, cuda_peak_mb=torch.cuda.max_memory_allocated(device) / MB)
        return {**spec, **out}
    except Exception as exc:  # noqa: BLE001 -- one failing configuration must not lose the others
        return {
            **spec,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }


def measure_all(specs: list[dict], workers: int = 1) -> list[dict]:
    """Run `probe` for every spec, each in a fresh child forked from a server that preloaded the libraries."""
    if not specs:
        return []
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([__package__ + "._memory_server"])
    with ctx.Pool(processes=workers, maxtasksperchild=1) as pool:
        return pool.map(probe, specs, chunksize=1)
