"""Prompt tuning under PyTorch FSDP, on CPU over gloo or on CUDA over NCCL, for test_fsdp.py.

    torchrun --nproc_per_node 2 tests/scripts/fsdp_train.py --output_dir OUT --mode fsdp1-ignored
    python tests/scripts/fsdp_train.py --output_dir OUT --mode single          # the same run on one process

Why torch's FSDP directly and not `accelerate launch --use_fsdp`: accelerate 1.15 only turns FSDP on for
accelerator devices (`PartialState` sets `DistributedType.FSDP` for MULTI_GPU/XPU/NPU/..., never MULTI_CPU),
so on CPU `--use_fsdp` + `use_cpu=True` silently trains with DDP. Torch's own FSDP1 does run on CPU with gloo.

A hand-written loop with the paper's optimizer (`paper_optimizer`: Adafactor, lr 0.3) over a fixed global batch:
every step takes `--global_batch` examples; rank r of N trains on its contiguous 1/N of them. The loss is the
token sum over the rank's examples divided by the global batch's token count, times N (FSDP and
`all_reduce_prompt_grads` average over ranks), so the averaged gradient is the one-process gradient exactly.

Modes: `single` (no process group), `fsdp1-ignored` (T5 blocks wrapped, the prompt encoder FSDP-ignored and
its gradient all-reduced: the whole 2-D prompt steps on every rank), `fsdp1-sharded` (the prompt left in the
root unit's flat parameter: Adafactor then steps 1-D slices), `fsdp2-ignored` (`fully_shard`, prompt ignored).
Every rank writes `OUT/rank{r}.json` (world, losses, peak RSS, trainable shapes it saw) and
`OUT/prompt_rank{r}.safetensors` (initial and gathered final prompt); the adapter goes to `OUT/adapter` through
`save_prompt_adapter`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys

from ddp_train import PAIRS  # the same sentiment pairs as the DDP script beside this one

MODES = ("single", "fsdp1-ignored", "fsdp1-sharded", "fsdp2-ignored")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--mode", choices=MODES, default="fsdp1-ignored")
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument("--num_virtual_tokens", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=16)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--d_ff", type=int, default=None)
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (softprompt_ext.precision)")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_state", help="after training, write prompt + optimizer + step here")
    parser.add_argument("--resume_state", help="start from a --save_state file (prompt, optimizer, step)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    import torch.distributed as dist
    from peft import get_peft_model
    from safetensors.torch import save_file
    from transformers.models.t5.modeling_t5 import T5Block

    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.precision import autocast
    from softprompt_ext.tiny_models import build_t5, build_tokenizer
    from softprompt_ext.training.distributed import (
        all_reduce_prompt_grads,
        gather_prompt,
        load_prompt_checkpoint,
        prompt_modules,
        save_prompt_adapter,
        save_prompt_checkpoint,
    )
    from softprompt_ext.training.recipe import paper_optimizer

    torch.set_num_threads(1)
    distributed = args.mode != "single"
    if distributed:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    tokenizer = build_tokenizer()
    rss_start = _rss_mib()
    base = build_t5(len(tokenizer), d_model=args.d_model, num_layers=args.num_layers, seed=args.seed,
                    d_ff=args.d_ff)  # same seed: same base on every rank
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=args.num_virtual_tokens,
                              prompt_tuning_init="RANDOM_UNIFORM", init_seed=args.seed)
    model = get_peft_model(base, config).to(device)
    n_params = sum(p.numel() for p in model.parameters())  # before sharding
    initial = model.prompt_encoder["default"].embedding.weight.detach().to("cpu", copy=True)

    blocks = {T5Block}
    if args.mode.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        ignored = prompt_modules(model) if args.mode == "fsdp1-ignored" else None
        wrapped = FSDP(
            model,
            auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=blocks),
            use_orig_params=True,  # frozen and trainable tensors share the root unit's flat parameter
            ignored_modules=ignored,
            device_id=device,
        )
    elif args.mode == "fsdp2-ignored":
        from torch.distributed.fsdp import fully_shard

        keep = {p for m in prompt_modules(model) for p in m.parameters()}
        for module in model.modules():
            if isinstance(module, T5Block):
                fully_shard(module)
        wrapped = fully_shard(model, ignored_params=keep)
    else:
        wrapped = model
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    local = [getattr(p, "_local_tensor", p) for p in wrapped.parameters()]  # this rank's shards (FSDP2: DTensor)
    local_param_mib = sum(t.numel() * t.element_size() for t in local) / 2**20
    optimizer, _ = paper_optimizer(wrapped)  # the paper's Adafactor over what this rank holds of the prompt

    first = load_prompt_checkpoint(wrapped, optimizer, args.resume_state) if args.resume_state else 0
    encoded = [(tokenizer(s)["input_ids"], tokenizer(t)["input_ids"]) for s, t in PAIRS]
    losses = []
    for step in range(first, args.max_steps):
        start = (step * args.global_batch) % len(encoded)
        batch = [encoded[(start + i) % len(encoded)] for i in range(args.global_batch)]
        total_tokens = sum(len(t) for _, t in batch)
        per_rank = args.global_batch // world
        mine = batch[rank * per_rank:(rank + 1) * per_rank]
        inputs, labels, mask = _pad(torch, mine, device)
        with autocast(device, args.precision):
            logits = wrapped(input_ids=inputs, attention_mask=mask, labels=labels).logits
        token_loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        (token_loss * world / total_tokens).backward()
        if args.mode.endswith("ignored"):
            all_reduce_prompt_grads(wrapped)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(token_loss.item())

    if args.save_state:
        save_prompt_checkpoint(wrapped, optimizer, args.save_state, step=args.max_steps)
    rss_end = _rss_mib()  # after sharding and training: what this rank keeps
    final = gather_prompt(wrapped)
    os.makedirs(args.output_dir, exist_ok=True)
    save_file({"initial": initial.contiguous(), "final": final.contiguous()},
              os.path.join(args.output_dir, f"prompt_rank{rank}.safetensors"))
    save_prompt_adapter(wrapped, os.path.join(args.output_dir, "adapter"))
    facts = {
        "mode": args.mode, "rank": rank, "world": world, "device": str(device),
        "backend": dist.get_backend() if distributed else None,
        "losses": losses, "trainable_shapes": [list(p.shape) for p in trainable],
        "trainable_types": sorted({type(p).__name__ for p in trainable}),
        "rss_start_mib": rss_start, "rss_end_mib": rss_end,
        "params": n_params, "local_param_mib": local_param_mib,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    with open(os.path.join(args.output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(facts, handle, indent=2)
    if distributed:
        dist.destroy_process_group()


def _rss_mib() -> float:
    """This process's resident set size now (Linux `VmRSS`), in MiB."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pad(torch, pairs, device):
    width = max(len(s) for s, _ in pairs)
    target = max(len(t) for _, t in pairs)
    inputs = torch.tensor([s + [0] * (width - len(s)) for s, _ in pairs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in pairs], device=device)
    labels = torch.tensor([t + [-100] * (target - len(t)) for _, t in pairs], device=device)
    return inputs, labels, mask


if __name__ == "__main__":
    main()
