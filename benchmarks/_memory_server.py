"""Preloaded by the memory fork server: import the libraries and fault in their code once.

Shared-library code pages (libtorch, oneDNN, bitsandbytes) are loaded lazily, the first time a kernel
runs, and count in the resident set. Running one tiny training step of each model family here, before
any child is forked, makes those pages part of every child's starting resident set, so a child's
"training memory" (peak minus start) is the data it allocated -- weights, gradients, optimizer state,
activations -- and not a few tens of MB of code that every configuration would pay alike.
"""

from __future__ import annotations

import torch

from . import memory
from . import workloads as wl


def _warm_up() -> None:
    inputs = wl.Inputs(batch_size=1, input_len=4, target_len=2)
    for shape in (wl.T5_TINY, wl.LLAMA_TINY):
        base = wl.build_base(shape)
        batch = wl.make_batch(shape, inputs, torch.device("cpu"))
        model = wl.wrap(base, shape, "softprompt", 2)
        for precision in ("fp32", "bf16_autocast"):
            wl.Step(model, batch, torch.device("cpu"), precision=precision)()
        wl.Step(model, batch, torch.device("cpu"), train=False)()
    try:
        import bitsandbytes  # noqa: F401  (8-bit configurations)
    except ImportError:
        pass


_warm_up()
__all__ = ["memory"]
