"""One rule for numeric precision: bfloat16 autocast only where the hardware makes it faster.

Prompt tuning keeps the prompt, its gradient and the optimizer state in float32 whatever the base model
runs in (paper section 2: only the prompt trains). The frozen model's matrix products may run in bfloat16
under autocast, which changes results by bf16 rounding only -- and is a speed-up only on hardware with bf16
units: CUDA devices that support it, CPUs with AVX512-BF16 or AMX. Other CPUs (AMD Zen 3 and older, most
laptops: AVX2 only) emulate bf16, and autocast makes a training step many times *slower* than float32
(the ratio is in benchmarks/RESULTS.md).

So nothing in the library, its examples, benchmarks or scripts hard-codes a precision. They all ask here:

    with autocast(device, precision):      # precision "auto" (default), "fp32" or "bf16"
        loss = model(**batch).loss
    loss.backward()

`"auto"` turns bf16 on exactly when `bf16_is_fast(device)`; `"bf16"` and `"fp32"` force either (a flag in
every example: `--precision`). Tests must hold on both kinds of CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether `device` has bfloat16 matrix units (so bf16 autocast speeds training up rather than down).

    CUDA: `torch.cuda.is_bf16_supported()`. CPU: AVX512-BF16 or AMX-BF16, as oneDNN reports it; older
    CPUs emulate bf16 and get slower, so they answer False.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
        try:
            return bool(probe()) if probe is not None else False
        except RuntimeError:  # a build without oneDNN
            return False
    return False


def resolve_precision(precision: str = "auto", device: str | torch.device = "cpu") -> str:
    """`"bf16"` or `"fp32"`: what `precision` ("auto", "fp32", "bf16") means on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not known; use one of {PRECISIONS} ('auto' picks bf16 only where "
            "the device has bf16 units)."
        )
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


@contextlib.contextmanager
def autocast(device: str | torch.device = "cpu", precision: str = "auto") -> Iterator[str]:
    """Run the enclosed forward pass in the precision `resolve_precision` picks; yield "bf16" or "fp32".

    Wrap the forward pass and the loss only; call `backward()` and `optimizer.step()` after the block
    (autocast's own rule). Parameters stay float32, so the prompt's gradient and optimizer state do too.
    """
    device = torch.device(device)
    chosen = resolve_precision(precision, device)
    if chosen == "fp32":
        yield chosen
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield chosen


@contextlib.contextmanager
def bf16_autocast(device: str | torch.device = "cpu", enabled: bool | None = None) -> Iterator[bool]:
    """`autocast` with a boolean switch: None picks by hardware, True forces bf16, False float32.

    Yields whether bf16 autocast is on.
    """
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}; None picks by hardware.")
    precision = "auto" if enabled is None else ("bf16" if enabled else "fp32")
    with autocast(device, precision) as chosen:
        yield chosen == "bf16"


def _cpuinfo_fields() -> tuple[str | None, set[str]]:
    """The first "model name" and "flags" of /proc/cpuinfo; (None, empty) where there is none (not Linux)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s "Model name"), else what `platform` knows: the one place that reads it,
    for the benchmark reports and the embedded build's record."""
    import platform

    return _cpuinfo_fields()[0] or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ("avx2", "avx512_bf16", ...); empty where unknown (not Linux)."""
    return _cpuinfo_fields()[1]


def describe(device: str | torch.device = "cpu") -> str:
    """One line on what this machine offers: CPU model, AVX-512 / bf16 / AMX flags, and the "auto" choice."""
    flags = cpu_flags()  # empty where unknown (not Linux): bf16_is_fast still answers
    seen = {name: ("yes" if name in flags else "no") for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}
    return (
        f"cpu: {cpu_model()}; " + ", ".join(f"{k} {v}" for k, v in seen.items())
        + f"; bf16_is_fast({str(torch.device(device))!r}) = {bf16_is_fast(device)}"
        + f" -> precision 'auto' runs {resolve_precision('auto', device)}"
    )


if __name__ == "__main__":  # python -m softprompt_ext.precision
    print(describe())
