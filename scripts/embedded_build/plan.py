"""The embedded model's size: shape flags, parameter count, checkpoint sizes and the cap on what ships.

The shipped checkpoints are capped (span corruption + LM-adapted, fp16 safetensors) at ~60 MB together, so a
shape is sized before anything trains: `python -m scripts.embedded_build --plan` prints `plan(...)` and a build
refuses a shape over the cap unless `--allow_large`. The parameter count comes from the model class itself,
instantiated on the meta device (no memory, no init), so it is exact for every shape; the tied embedding table
counts once, as safetensors stores it once (the shipped 9,445,120-parameter model is 18,901,472 bytes: 2 bytes a
parameter plus an 11 kB header).
"""

from __future__ import annotations

import argparse

import torch

# T5 1.1 proportions at CPU scale (d_ff = 8/3 d_model for GeGLU); the shipped embedded model's shape
MODEL_SHAPE = {"d_model": 256, "d_kv": 64, "d_ff": 683, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 4}
SHAPE_FLAGS = ("d_model", "d_ff", "num_layers", "num_heads", "d_kv")
SHIPPED_CAP_BYTES = 60_000_000  # span + LM-adapted checkpoints together, fp16
VOCAB_MULTIPLE = 64  # embedding rows rounded up, as T5 pads 32,100 to 32,128


def add_shape_flags(parser: argparse.ArgumentParser) -> None:
    helps = {"d_model": "width of the residual stream", "d_ff": "GeGLU hidden width (T5 1.1: ~8/3 d_model)",
             "num_layers": "encoder layers (the decoder gets as many)", "num_heads": "attention heads",
             "d_kv": "width of one head's keys and values"}
    for name in SHAPE_FLAGS:
        parser.add_argument(f"--{name}", type=int, default=MODEL_SHAPE[name],
                            help=f"{helps[name]} (default {MODEL_SHAPE[name]}, the shipped model's)")


def shape_from_args(args: argparse.Namespace) -> dict[str, int]:
    """The T5Config shape fields from the flags (decoder as deep as the encoder), in MODEL_SHAPE's key order."""
    for name in SHAPE_FLAGS:
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name}={value}: a model dimension must be >= 1 (default {MODEL_SHAPE[name]}).")
    values = {name: getattr(args, name) for name in SHAPE_FLAGS}
    return {key: values["num_layers"] if key == "num_decoder_layers" else values[key] for key in MODEL_SHAPE}


def embedding_rows(tokens: int) -> int:
    return -(-tokens // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def t5_config(shape: dict[str, int], vocab_rows: int):
    """T5 1.1 layers (GeGLU, relative attention, dropout 0) with T5 1.0's tied, unit-scale embeddings."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_rows, **shape, feed_forward_proj="gated-gelu", tie_word_embeddings=True,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def plan(shape: dict[str, int], vocab_rows: int, batch_size: int, input_length: int, target_length: int) -> dict:
    """Parameters, bytes of one fp16 and one int8 checkpoint, bytes shipped (two fp16), tokens per step (at most).

    int8 is an estimate of row-wise quantised storage: 1 byte per matrix entry plus one fp16 scale per row;
    vectors (layer norms) stay fp16.
    """
    from transformers import T5ForConditionalGeneration

    with torch.device("meta"):
        params = list(T5ForConditionalGeneration(t5_config(shape, vocab_rows)).parameters())  # tied table once
    count = sum(p.numel() for p in params)
    int8 = sum(p.numel() + 2 * p.shape[0] if p.dim() == 2 else 2 * p.numel() for p in params)
    return {"model_shape": dict(shape), "embedding_rows": vocab_rows, "parameters": count, "fp16_bytes": 2 * count,
            "int8_bytes": int8, "shipped_fp16_bytes": 4 * count, "cap_bytes": SHIPPED_CAP_BYTES,
            "tokens_per_step": batch_size * (input_length + target_length)}


def format_plan(sized: dict, pretrain_steps: int, adapt_steps: int) -> str:
    mb = 1e6
    shape = ", ".join(f"{k} {v}" for k, v in sized["model_shape"].items())
    over = sized["shipped_fp16_bytes"] > sized["cap_bytes"]
    return "\n".join([
        f"shape: {shape}; embedding rows {sized['embedding_rows']} (at most: --vocab_size rounded up)",
        f"parameters: {sized['parameters']:,}",
        f"checkpoint: fp16 {sized['fp16_bytes'] / mb:.1f} MB, int8 ~{sized['int8_bytes'] / mb:.1f} MB (row scales)",
        f"shipped (span + LM-adapted, fp16): {sized['shipped_fp16_bytes'] / mb:.1f} MB of the "
        f"{sized['cap_bytes'] / mb:.0f} MB cap: {'OVER' if over else 'fits'}",
        f"tokens per step: at most {sized['tokens_per_step']:,} (batch x (input + target length)); "
        f"{pretrain_steps:,} pretraining steps: at most {pretrain_steps * sized['tokens_per_step'] / 1e6:.1f}M "
        f"tokens; then {adapt_steps:,} LM-adaptation steps",
    ])


def check_size(sized: dict, allow_large: bool) -> None:
    """Refuse a shape whose shipped checkpoints exceed the cap, unless `allow_large`."""
    if sized["shipped_fp16_bytes"] > sized["cap_bytes"] and not allow_large:
        raise ValueError(
            f"model shape {sized['model_shape']} has {sized['parameters']:,} parameters: the shipped checkpoints "
            f"(span + LM-adapted, fp16) would take {sized['shipped_fp16_bytes'] / 1e6:.1f} MB, over the "
            f"{sized['cap_bytes'] / 1e6:.0f} MB cap on what ships; choose smaller --d_model/--d_ff/--num_layers/"
            "--vocab_size, or pass --allow_large for a model that will not ship."
        )
