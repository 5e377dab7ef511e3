"""Mixed-task batches with each adapter's prompt computed once (`mixed_prefix.py`) against the per-row placement.

The control is `mixed_forward`'s per-row placement in the same process (its shared path switched off with
`monkeypatch`). Equal: loss, per-example loss and counts, logits, and every adapter's prompt gradient (1e-5
relative in float32), on Llama, GPT-2, OPT and Bloom, left and right padding, prompts of different lengths.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from softprompt_ext import SoftPromptConfig, placement, tiny_models
from softprompt_ext.peft_internals import prompt_weight

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

V, B, T = 64, 4, 7
LENGTHS = {"a": 3, "b": 5, "c": 2}
BUILDERS = {"llama": tiny_models.build_llama, "gpt2": tiny_models.build_gpt2, "opt": tiny_models.build_opt,
            "bloom": tiny_models.build_bloom}


def make_model(arch: str):
    model = get_peft_model(BUILDERS[arch](V), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=LENGTHS["a"]),
                           adapter_name="a")
    for name in ("b", "c"):
        model.add_adapter(name, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=LENGTHS[name]))
        prompt_weight(model, name).requires_grad_(True)
    return model


def make_batch(side: str):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, V, (B, T), generator=generator)
    mask = torch.ones_like(ids)
    if side == "left":
        mask[0, :3] = 0
        mask[2, :1] = 0
    else:
        mask[0, 4:] = 0
        mask[2, 6:] = 0
    labels = ids.clone()
    labels[1, :2] = -100
    return ids, mask, labels


def run(model, ids, mask, labels, names):
    out = placement.mixed_forward(model, ids, mask, names, labels=labels)
    weights = [prompt_weight(model, n) for n in LENGTHS]
    grads = torch.autograd.grad(out.loss, weights, allow_unused=True)
    return out, grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_shared_mixed_batch_equals_the_per_row_placement(arch, side, monkeypatch):
    model = make_model(arch)
    ids, mask, labels = make_batch(side)
    names = ["a", "b", "a", "c"]
    calls: list[tuple[int, ...]] = []
    hook = model.get_base_model().base_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["inputs_embeds"].shape)), with_kwargs=True
    )
    out, grads = run(model, ids, mask, labels, names)
    hook.remove()
    assert calls == [(1, 3, 16), (1, 5, 16), (1, 2, 16), (B, T, 16)]  # each prompt once, then the rows
    monkeypatch.setattr(placement, "per_row_reason", lambda base, options: "control")
    monkeypatch.setattr(placement, "explain_once", lambda reason: None)
    ref, ref_grads = run(model, ids, mask, labels, names)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loss_per_example, ref.loss_per_example, rtol=1e-5, atol=0)
    assert torch.equal(out.num_label_tokens, ref.num_label_tokens)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad is not None and ref_grad is not None
        assert rel(grad, ref_grad) <= 1e-5


def test_without_labels_only_logits(monkeypatch):
    model = make_model("llama")
    ids, mask, _ = make_batch("left")
    out = placement.mixed_forward(model, ids, mask, ["c", "c", "b", "a"])
    monkeypatch.setattr(placement, "per_row_reason", lambda base, options: "control")
    monkeypatch.setattr(placement, "explain_once", lambda reason: None)
    ref = placement.mixed_forward(model, ids, mask, ["c", "c", "b", "a"])
    assert out.loss is None and out.loss_per_example is None
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)


def test_all_labels_ignored_is_the_same_clear_error():
    model = make_model("gpt2")
    ids, mask, _ = make_batch("right")
    with pytest.raises(ValueError, match="the batch has no label tokens"):
        placement.mixed_forward(model, ids, mask, ["a"] * B, labels=torch.full_like(ids, -100))
