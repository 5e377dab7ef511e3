"""What each mode of `benchmarks/run.py` measures, and how many times.

`full` is sized from the idle-machine step times in CPU-BUDGET.md (T5 1.1-small prompt-tuning step about
1.8 s, forward 0.65 s) to take about 7 minutes on 2 idle CPU cores -- an estimate: the runs recorded in
RESULTS.md shared their cores with other jobs. On a loaded machine every timing block stops starting new
rounds once its time budget is spent (after its minimum number of rounds), so the run stays bounded.
`quick` is the same shapes with one round and fewer configurations (about a minute on 2 idle cores).
`smoke` runs every code path on tiny models in seconds (used by the test suite; numbers meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import workloads as wl


@dataclass(frozen=True)
class Plan:
    mode: str
    shapes: tuple[wl.Shape, ...]  # the side-by-side comparison, one block per shape
    inputs: wl.Inputs  # batch 8, input 128, target 4 (T5 as in CPU-BUDGET.md; Llama appends the target)
    num_virtual_tokens: int  # P of the comparison (paper: 100)
    repeats: int
    warmup: int
    min_repeats: int
    block_budget_s: float  # no new round of a block starts after this many seconds (past min_repeats)
    scaling_shape: wl.Shape
    scaling_p: tuple[int, ...]  # at input length inputs.input_len (paper Figure 3a's lengths)
    scaling_len: tuple[int, ...]  # at P = num_virtual_tokens
    scaling_peft: bool  # also time PEFT's prompt tuning at every P (ours / PEFT per P)
    scaling_repeats: int
    scaling_budget_s: float
    memory: tuple[str, ...]  # names of memory configurations (see run.memory_specs)
    memory_steps: int = 2  # the optimizer state appears at the first step; the second shows the steady peak
    profile: bool = True
    extra_cases: tuple[str, ...] = field(
        default=("bf16_autocast", "bf16_weights", "dropout0", "grad_ckpt", "fused_gelu", "target_loss")
    )


ALL_MEMORY = (
    "t5:softprompt",
    "t5:peft_prompt_tuning",
    "t5:lora",
    "t5:full_finetune",
    "t5:softprompt:bf16_autocast",
    "t5:softprompt:bf16_weights",
    "t5:softprompt:grad_ckpt",
    "t5:softprompt:fused_gelu",
    "t5:forward",
    "t5:softprompt:fp32_disk",
    "t5:softprompt:int8_disk",
    "llama:softprompt",
    "llama:peft_prompt_tuning",
    "llama:lora",
    "llama:full_finetune",
    "llama:softprompt:target_loss",
    "llama:forward",
)

FULL = Plan(
    mode="full",
    shapes=(wl.T5_SMALL, wl.LLAMA_SMALL),
    inputs=wl.Inputs(batch_size=8, input_len=128, target_len=4),
    num_virtual_tokens=100,
    repeats=3,
    warmup=0,  # every timed call follows an untimed call of the same case (timing.py, "steady state")
    min_repeats=2,
    block_budget_s=110.0,
    scaling_shape=wl.T5_SMALL,
    scaling_p=(1, 5, 20, 100, 150),
    scaling_len=(64, 128, 256, 512),
    scaling_peft=True,
    scaling_repeats=2,
    scaling_budget_s=150.0,
    memory=ALL_MEMORY,
)

QUICK = Plan(
    mode="quick",
    shapes=(wl.T5_SMALL,),
    inputs=FULL.inputs,
    num_virtual_tokens=100,
    repeats=1,
    warmup=0,
    min_repeats=1,
    block_budget_s=0.0,
    scaling_shape=wl.T5_SMALL,
    scaling_p=(1, 20, 100),
    scaling_len=(64, 128),
    scaling_peft=False,
    scaling_repeats=1,
    scaling_budget_s=0.0,
    memory=("t5:softprompt", "t5:full_finetune"),
    profile=False,
    extra_cases=("bf16_autocast",),
)

SMOKE = Plan(
    mode="smoke",
    shapes=(wl.T5_TINY, wl.LLAMA_TINY),
    inputs=wl.Inputs(batch_size=2, input_len=8, target_len=2),
    num_virtual_tokens=4,
    repeats=1,
    warmup=0,
    min_repeats=1,
    block_budget_s=0.0,
    scaling_shape=wl.T5_TINY,
    scaling_p=(1, 4),
    scaling_len=(8, 16),
    scaling_peft=True,
    scaling_repeats=1,
    scaling_budget_s=0.0,
    memory=ALL_MEMORY,
    memory_steps=1,
)

PLANS = {"full": FULL, "quick": QUICK, "smoke": SMOKE}
