"""Where a training step's time goes: torch.profiler's per-operator self time, top operators and categories.

The categories are coarse on purpose (matrix products, attention, dropout, normalisation, ...): they
answer "why is a prompt-tuning step more than twice a forward pass" without reading 200 operator names.
Self time is used (time inside the operator itself, not its children), so categories add up to the total.
Dropout's backward is an elementwise `mul` by the saved mask and lands in "elementwise"; the benchmark's
"dropout 0" row measures dropout's whole cost directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

CATEGORIES: list[tuple[str, re.Pattern]] = [
    ("attention kernel", re.compile(r"scaled_dot_product|flash_attention|efficient_attention|_attention")),
    ("matrix products", re.compile(r"addmm|\bmm\b|bmm|matmul|linear|aten::mm|_int_mm|igemm|mkldnn")),
    ("dropout (forward)", re.compile(r"bernoulli|dropout")),
    ("softmax / loss", re.compile(r"softmax|nll_loss|cross_entropy")),
    ("activations", re.compile(r"gelu|silu|tanh|sigmoid")),
    ("normalisation", re.compile(r"pow|rsqrt|mean|norm|sqrt")),
    ("optimizer", re.compile(r"adam|_foreach|lerp|addcdiv|addcmul")),
    ("embedding", re.compile(r"embedding")),
    (
        "copies / layout",
        re.compile(r"copy|clone|cat|contiguous|_to_copy|transpose|permute|reshape|view|expand|index"),
    ),
    ("elementwise", re.compile(r"mul|add|div|sub|where|fill|zero|neg|exp|masked|ones|full|empty")),
]


def _self_time_us(event, on_cuda: bool) -> float:
    if on_cuda:
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


def categorise(name: str) -> str:
    lowered = name.lower()
    if not lowered.startswith("aten::") and not lowered.startswith("bitsandbytes"):
        return "autograd / python overhead"
    for label, pattern in CATEGORIES:
        if pattern.search(lowered):
            return label
    return "other"


def profile(step: Callable[[], None], device: torch.device, top: int = 12) -> dict:
    """Profile one call of `step`; return total time, the `top` operators by self time, and categories.

    Returns:
        {"total_ms", "top": [{"op", "self_ms", "calls", "share"}], "categories": {label: {"ms", "share"}}}
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with torch_profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    rows = [(e.key, _self_time_us(e, on_cuda) / 1000.0, e.count) for e in events]
    total = sum(ms for _, ms, _ in rows) or 1e-9
    rows.sort(key=lambda r: r[1], reverse=True)
    categories: dict[str, float] = {}
    for name, ms, _ in rows:
        label = categorise(name)
        categories[label] = categories.get(label, 0.0) + ms
    return {
        "total_ms": total,
        "clock": "device self time" if on_cuda else "CPU self time",
        "top": [{"op": n, "self_ms": ms, "calls": c, "share": ms / total} for n, ms, c in rows[:top]],
        "categories": {
            k: {"ms": v, "share": v / total} for k, v in sorted(categories.items(), key=lambda kv: -kv[1])
        },
    }
