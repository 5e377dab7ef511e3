"""What the benchmark runs: model shapes, the four training methods, inputs, and one step of each.

Design decisions
----------------
* Random weights: step time and memory depend on shapes, not on what the weights learned, and nothing
  may be downloaded. `T5_SMALL` has the shape of google/t5-v1_1-small / t5-small-lm-adapt (paper
  section 3.3: d_model 512, 8+8 layers, 6 heads of 64, d_ff 1024, GeGLU, vocab 32,128, untied embeddings,
  dropout 0.1 as in its config and the paper's recipe; 76.9M parameters). `LLAMA_SMALL` is a decoder-only model of the
  same size (60M parameters: d_model 512, 8 layers, 8 heads, SwiGLU 1536, vocab 32,000, untied).
* Every method trains with AdamW and the same batch, so the only difference is what is trainable.
  (The paper uses Adafactor; for a frozen model the optimizer's cost is negligible either way, and for
  full fine-tuning AdamW is what users pick.)
* Prompt-tuning variants of one shape share one frozen base model: wrapping it in a prompt-tuning
  PeftModel does not change its modules, and sharing keeps the process at one copy of the weights.
  LoRA (which injects layers) and full fine-tuning (which trains the weights) get their own copies.
* A `Step` is one unit of measured work, ending with a device synchronisation so that a timer around it
  measures finished work on CUDA too.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.precision import autocast as library_autocast
from softprompt_ext.training.step_savings import causal_lm_target_loss

METHODS = ("softprompt", "peft_prompt_tuning", "lora", "full_finetune")
METHOD_LABELS = {
    "softprompt": "SoftPromptConfig",
    "peft_prompt_tuning": "PEFT PromptTuningConfig (defaults)",
    "lora": "LoRA r=8 on q,v",
    "full_finetune": "full fine-tuning",
}
CASE_LABELS = {
    **METHOD_LABELS,
    "softprompt_bf16_autocast": "SoftPromptConfig, bf16 autocast",
    "softprompt_bf16_weights": "SoftPromptConfig, base weights in bf16",
    "softprompt_dropout0": "SoftPromptConfig, dropout 0 (other recipe)",
    "softprompt_grad_ckpt": "SoftPromptConfig, gradient checkpointing",
    "softprompt_fused_gelu": "SoftPromptConfig, fused GELU",
    "softprompt_fused_gelu_bf16_autocast": "SoftPromptConfig, fused GELU + bf16 autocast",
    "softprompt_target_loss": "SoftPromptConfig, target-only logits",
    "softprompt_target_loss_bf16_autocast": "SoftPromptConfig, target-only logits + bf16 autocast",
    "forward": "eval forward, same length",
    "forward_bf16_autocast": "eval forward, bf16 autocast",
    "forward_target_loss": "eval forward, target-only logits",
}
PRECISIONS = ("fp32", "bf16_autocast", "bf16_weights")


@dataclass(frozen=True)
class Shape:
    """A model architecture with random weights. `family` is "t5" (encoder-decoder) or "llama" (decoder-only)."""

    name: str
    family: str
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    d_kv: int  # per-head size (T5 1.1 small: 64, so 6 heads span 384, not d_model)
    d_ff: int
    dropout: float

    def to_dict(self) -> dict:
        return asdict(self)


T5_SMALL = Shape("t5-1.1-small-shaped", "t5", 32128, 512, 8, 6, 64, 1024, 0.1)  # 76.9M parameters
LLAMA_SMALL = Shape("llama-small-shaped", "llama", 32000, 512, 8, 8, 64, 1536, 0.0)  # 60.0M parameters
T5_TINY = Shape("t5-tiny", "t5", 256, 16, 2, 2, 8, 32, 0.1)
LLAMA_TINY = Shape("llama-tiny", "llama", 256, 16, 2, 2, 8, 32, 0.0)
SHAPES = {s.name: s for s in (T5_SMALL, LLAMA_SMALL, T5_TINY, LLAMA_TINY)}


@dataclass(frozen=True)
class Inputs:
    """One batch: `batch_size` rows of `input_len` input tokens and `target_len` target tokens."""

    batch_size: int
    input_len: int
    target_len: int


def task_type(shape: Shape) -> str:
    return "SEQ_2_SEQ_LM" if shape.family == "t5" else "CAUSAL_LM"


def build_base(shape: Shape, seed: int = 0) -> torch.nn.Module:
    """A model of `shape` with random weights (float32, CPU, eval mode)."""
    torch.manual_seed(seed)
    if shape.family == "t5":
        from softprompt_ext.tiny_models import build_t5

        model = build_t5(shape.vocab_size, shape.d_model, shape.num_layers, shape.num_heads, seed,
                         d_kv=shape.d_kv, d_ff=shape.d_ff, dropout_rate=shape.dropout)
        # transformers 5 ties T5's lm_head to the shared embedding whatever the config says; T5 1.1 (and the
        # LM-adapted checkpoints) have an untied one, so give the model its own (loading keeps it untied when
        # the two differ). std 1.0 is T5's own lm_head initialisation.
        head = torch.empty_like(model.shared.weight).normal_(0.0, 1.0)  # [V, H]
        model.lm_head.weight = torch.nn.Parameter(head)
        return model.eval()
    if shape.family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=shape.vocab_size,
            hidden_size=shape.d_model,
            intermediate_size=shape.d_ff,
            num_hidden_layers=shape.num_layers,
            num_attention_heads=shape.num_heads,
            num_key_value_heads=shape.num_heads,
            max_position_embeddings=2048,
            attention_dropout=shape.dropout,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return LlamaForCausalLM(config).eval()
    raise ValueError(f"shape.family={shape.family!r} is not known; use 't5' or 'llama'.")


def make_batch(shape: Shape, inputs: Inputs, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (no padding, so every method sees exactly the same positions).

    T5: `input_ids` `[B, L]`, `attention_mask` `[B, L]`, `labels` `[B, T]`. Llama: the target is appended to
    the input, `input_ids` `[B, L + T]`, `labels` `[B, L + T]` with -100 on the L input positions.
    """
    gen = torch.Generator().manual_seed(seed)
    high = shape.vocab_size
    size = (inputs.batch_size, inputs.input_len)
    if shape.family == "t5":
        batch = {
            "input_ids": torch.randint(3, high, size, generator=gen),  # [B, L]
            "labels": torch.randint(3, high, (inputs.batch_size, inputs.target_len), generator=gen),  # [B, T]
        }
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    else:
        ids = torch.randint(3, high, (inputs.batch_size, inputs.input_len + inputs.target_len), generator=gen)
        labels = ids.clone()  # [B, L + T]
        labels[:, : inputs.input_len] = -100
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def wrap(base: torch.nn.Module, shape: Shape, method: str, num_virtual_tokens: int = 100) -> torch.nn.Module:
    """The model that `method` trains, built on `base` (LoRA injects into it; full fine-tuning trains it)."""
    if method == "softprompt":
        # default init (SAMPLE_VOCAB from the 5,000 most common tokens, paper section 3.2)
        config = SoftPromptConfig(
            task_type=task_type(shape),
            num_virtual_tokens=num_virtual_tokens,
            sample_vocab_size=min(5000, shape.vocab_size - 8),
            init_seed=0,
        )
        return get_peft_model(base, config)
    if method == "peft_prompt_tuning":
        # PEFT's defaults: RANDOM init; on T5 num_transformer_submodules=2 (2 x P rows, P used)
        return get_peft_model(
            base, PromptTuningConfig(task_type=task_type(shape), num_virtual_tokens=num_virtual_tokens)
        )
    if method == "lora":
        targets = ["q", "v"] if shape.family == "t5" else ["q_proj", "v_proj"]
        return get_peft_model(base, LoraConfig(task_type=task_type(shape), r=8, target_modules=targets))
    if method == "full_finetune":
        base.requires_grad_(True)
        return base
    raise ValueError(f"method={method!r} is not known; use one of {METHODS}.")


def fresh_copy(base: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """An independent copy of `base` (optionally cast), for methods that change the model they wrap."""
    model = copy.deepcopy(base)
    return model.to(dtype) if dtype is not None else model


def enable_checkpointing(model: torch.nn.Module) -> torch.nn.Module:
    """Activation (gradient) checkpointing: keep layer inputs only and recompute the rest in backward.

    Non-reentrant, so it needs no input that requires grad other than the prompt PEFT puts there.
    """
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def saved_activation_mb(step: Step) -> float:
    """MB of tensors autograd keeps for the backward pass of one forward of `step` (parameters excluded).

    Exact and independent of machine load: the pack hook sees every tensor saved for backward; storages are
    counted once, and parameters (saved by reference, costing nothing extra) are skipped.
    """
    params = {p.untyped_storage().data_ptr() for p in step.model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    step.model.train(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(step.device, step.precision):
        loss = step.loss()
    del loss  # frees the graph without a backward
    return sum(seen.values()) / 2**20


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Set every dropout module's probability (the 'dropout 0' comparison row)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """The library's precision rule, forced: the "bf16_autocast" cases measure bf16 on purpose, on every machine
    (the report says whether the machine has bf16 units: on one without, bf16 is the slower row)."""
    return library_autocast(device, "bf16" if precision == "bf16_autocast" else "fp32")


class Step:
    """One training step (forward, backward, AdamW) or one eval forward, as a zero-argument callable.

    Args:
        model: the wrapped model (shared models are fine: each call sets train/eval mode itself).
        batch: from `make_batch`.
        device: where it runs; CUDA work is synchronised before the call returns.
        train: True for a training step, False for an eval forward under `torch.no_grad`.
        precision: "fp32", "bf16_autocast" (forward under bf16 autocast), or "bf16_weights" (the caller
            cast the base to bf16; PEFT casts the float32 prompt to the embeddings' dtype).
        target_loss: decoder-only only: compute the loss from the labelled positions' logits
            (`softprompt_ext.training.step_savings.causal_lm_target_loss`) instead of passing `labels` to the model.
        lr: AdamW learning rate (irrelevant for speed; 0.3 is the paper's prompt-tuning rate).
    """

    def __init__(self, model, batch, device, train=True, precision="fp32", target_loss=False, lr=0.3):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not known; use one of {PRECISIONS}.")
        self.model, self.batch, self.device = model, batch, device
        self.train, self.precision, self.target_loss = train, precision, target_loss
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr) if train else None
        self.trainable = sum(p.numel() for p in params)

    def loss(self) -> torch.Tensor:
        if self.target_loss:
            return causal_lm_target_loss(self.model, **self.batch)
        return self.model(**self.batch).loss

    def __call__(self) -> None:
        self.model.train(self.train)
        if self.train:
            with autocast(self.device, self.precision):
                loss = self.loss()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast(self.device, self.precision):
                self.loss()
        synchronize(self.device)
