"""The shared prompt prefix (`shared_prefix.py`, `causal_lm.py`) against PEFT's per-row forward.

The control is PEFT's own `PeftModelForCausalLM.forward` run on the same model in the same process: every row
carries its own copy of the prompt. Equality is asserted for the loss and the prompt's gradient (1e-5
relative in float32; measured: at most 3e-7 on these tiny models) and for the logits, on each tested
architecture, with left and right padding.
"""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from softprompt_ext import SoftPromptConfig, shared_prefix, tiny_models
from softprompt_ext.causal_lm import PeftModelForCausalLM
from softprompt_ext.precision import autocast

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

V, P, B, T = 64, 5, 3, 7
BUILDERS = {
    "llama": tiny_models.build_llama,
    "gpt2": tiny_models.build_gpt2,
    "opt": tiny_models.build_opt,
    "bloom": tiny_models.build_bloom,
}


def make_model(arch: str, num_virtual_tokens: int = P):
    base = BUILDERS[arch](V)
    return get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens))


def make_batch(side: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, T), generator=generator)
    mask = torch.ones_like(ids)
    if side == "left":
        mask[0, :3] = 0
        mask[1, :1] = 0
    else:
        mask[0, 4:] = 0
        mask[1, 6:] = 0
    return ids, mask, ids.masked_fill(mask == 0, -100)


def prompt_param(model) -> torch.Tensor:
    (weight,) = [p for p in model.parameters() if p.requires_grad]
    return weight


def per_row(model, **kwargs):
    """The control: PEFT's forward, the prompt in every row."""
    return peft.PeftModelForCausalLM.forward(model, **kwargs)


def count_base_calls(model):
    """Record the `inputs_embeds` shape of every call of the base model's layer stack."""
    shapes: list[tuple[int, ...]] = []
    hook = model.get_base_model().base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape)), with_kwargs=True
    )
    return shapes, hook


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


@pytest.fixture(autouse=True)
def fresh_explanations():
    shared_prefix._explained.clear()
    yield
    shared_prefix._explained.clear()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_loss_gradient_and_logits_equal_the_per_row_forward(arch, side):
    model = make_model(arch)
    ids, mask, labels = make_batch(side)
    weight = prompt_param(model)
    shapes, hook = count_base_calls(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback explanation on a supported architecture
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    hook.remove()
    assert shapes == [(1, P, 16), (B, T, 16)]  # the prompt once, then the rows' own tokens
    (grad,) = torch.autograd.grad(out.loss, weight)
    ref = per_row(model, input_ids=ids, attention_mask=mask, labels=labels)
    (ref_grad,) = torch.autograd.grad(ref.loss, weight)
    assert out.logits.shape == ref.logits.shape == (B, P + T, V)
    assert abs(float(out.loss) - float(ref.loss)) <= 1e-5 * abs(float(ref.loss))
    assert rel(grad, ref_grad) <= 1e-5
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)


def test_a_loss_computed_from_the_returned_logits_has_the_per_row_gradient():
    """The returned logits stay differentiable (a custom loss, label smoothing): same gradient as per row."""
    model = make_model("gpt2")
    ids, mask, _ = make_batch("left")
    weight = prompt_param(model)
    grads = []
    for out in (model(input_ids=ids, attention_mask=mask), per_row(model, input_ids=ids, attention_mask=mask)):
        logits = out.logits[:, P - 1 : -1]  # [B, T, V]: what predicts each input token
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids.reshape(-1), label_smoothing=0.1)
        grads.append(torch.autograd.grad(loss, weight)[0])
    assert rel(grads[0], grads[1]) <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_without_mask_and_from_inputs_embeds(arch):
    model = make_model(arch)
    ids, _, _ = make_batch("right")
    embeds = model.get_base_model().get_input_embeddings()(ids)
    out = model(inputs_embeds=embeds, labels=ids)
    ref = per_row(model, input_ids=ids, labels=ids)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)


def test_num_items_in_batch_divides_the_summed_loss_as_transformers_does():
    model = make_model("llama")
    ids, mask, labels = make_batch("left")
    out = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(40))
    ref = per_row(model, input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(40))
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=0)


def test_the_returned_cache_holds_prompt_and_input_keys_of_every_row():
    model = make_model("llama")
    ids, mask, _ = make_batch("left")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        ref = per_row(model, input_ids=ids, attention_mask=mask, use_cache=True)
    cache = out.get("cache", None) or out.past_key_values
    ref_cache = ref.get("cache", None) or ref.past_key_values
    for layer, ref_layer in zip(cache.layers, ref_cache.layers, strict=True):
        assert layer.keys.shape == ref_layer.keys.shape == (B, 2, P + T, 8)
        torch.testing.assert_close(layer.keys, ref_layer.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.values, ref_layer.values, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_the_per_row_forward_under_the_same_autocast():
    model = make_model("llama")
    ids, mask, labels = make_batch("left")
    weight = prompt_param(model)
    with autocast("cpu", "bf16"):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    (grad,) = torch.autograd.grad(out.loss, weight)
    with autocast("cpu", "bf16"):
        ref = per_row(model, input_ids=ids, attention_mask=mask, labels=labels)
    (ref_grad,) = torch.autograd.grad(ref.loss, weight)
    # bf16 rounds differently at batch 1 and batch B: bf16's own resolution (measured on an AVX512-BF16 Xeon:
    # loss 0, prompt gradient 1.9e-3 relative)
    assert abs(float(out.loss) - float(ref.loss)) <= 2e-2 * abs(float(ref.loss))
    assert rel(grad, ref_grad) <= 5e-2


def test_training_a_few_steps_follows_the_per_row_run():
    """A plain PEFT training loop: the shared run and the per-row run end on the same prompt."""
    ids, mask, labels = make_batch("right")
    prompts = []
    for shared in (True, False):
        model = make_model("gpt2")
        model.train()
        weight = prompt_param(model)
        optimizer = torch.optim.SGD([weight], lr=0.5)
        for _ in range(3):
            kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels)
            loss = (model(**kwargs) if shared else per_row(model, **kwargs)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        prompts.append(weight.detach().clone())
    assert rel(prompts[0], prompts[1]) <= 1e-5


@pytest.mark.parametrize("keep", [1, 4, T, T + 2])
def test_logits_to_keep_returns_the_last_positions(keep):
    model = make_model("bloom")
    ids, mask, _ = make_batch("left")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
    ref = per_row(model, input_ids=ids, attention_mask=mask)
    assert out.logits.shape == (B, keep, V)
    torch.testing.assert_close(out.logits, ref.logits[:, -keep:], rtol=1e-5, atol=1e-5)


def test_the_target_loss_fast_path_runs_shared_and_equals_the_full_loss():
    from softprompt_ext.training.step_savings import causal_lm_target_loss

    model = make_model("llama")
    ids, mask, _ = make_batch("right")
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    shapes, hook = count_base_calls(model)
    loss = causal_lm_target_loss(model, ids, labels, attention_mask=torch.ones_like(ids))
    hook.remove()
    assert shapes == [(1, P, 16), (B, T, 16)]
    ref = per_row(model, input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-5, atol=0)


def test_the_trainer_runs_the_shared_prefix_and_ends_where_per_row_training_ends(tmp_path):
    """transformers' Trainer (with its num_items_in_batch) on a SoftPromptConfig model shares the prompt; the same
    run on a plain PromptTuningConfig model (PEFT's class, per row) from the same prompt ends on the same prompt."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ids, mask, labels = make_batch("right")
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})
    shared = make_model("llama")
    per_row_model = get_peft_model(tiny_models.build_llama(V), PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                   num_virtual_tokens=P))
    assert type(per_row_model) is peft.PeftModelForCausalLM
    with torch.no_grad():
        prompt_param(per_row_model).copy_(prompt_param(shared))
    start = prompt_param(shared).detach().clone()
    shapes, hook = count_base_calls(shared)
    finals = []
    for name, model in (("shared", shared), ("per_row", per_row_model)):
        args = TrainingArguments(str(tmp_path / name), per_device_train_batch_size=B, max_steps=2, learning_rate=0.3,
                                 report_to=[], save_strategy="no", use_cpu=True, seed=0, logging_steps=1)
        Trainer(model=model, args=args, train_dataset=data).train()
        finals.append(prompt_param(model).detach().clone())
    hook.remove()
    assert shapes[:2] == [(1, P, 16), (B, T, 16)]
    assert rel(finals[0], start) > 1e-2  # it trained
    assert rel(finals[0], finals[1]) <= 1e-5


# ---------------------------------------------------------------------------------------------- fallbacks
def test_an_unknown_architecture_runs_per_row_and_says_why_once():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    base = MistralForCausalLM(MistralConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=2, sliding_window=3,
                                            pad_token_id=0)).eval()
    model = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    ids, mask, labels = make_batch("left")
    shapes, hook = count_base_calls(model)
    with pytest.warns(UserWarning, match=r"per row .*model_type 'mistral' is not one whose position rule is tested"):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # once per reason
        model(input_ids=ids, attention_mask=mask, labels=labels)
    hook.remove()
    assert shapes == [(B, P + T, 16), (B, P + T, 16)]
    ref = per_row(model, input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss)


def test_gradient_checkpointing_runs_per_row_with_the_same_result():
    model = make_model("llama")
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids, mask, labels = make_batch("right")
    weight = prompt_param(model)
    shapes, hook = count_base_calls(model)
    with pytest.warns(UserWarning, match="gradient checkpointing is on"):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    hook.remove()
    assert shapes == [(B, P + T, 16)]
    (grad,) = torch.autograd.grad(out.loss, weight)
    model.get_base_model().gradient_checkpointing_disable()
    ref = model(input_ids=ids, attention_mask=mask, labels=labels)  # shared, no checkpointing
    (ref_grad,) = torch.autograd.grad(ref.loss, weight)
    assert rel(grad, ref_grad) <= 1e-5


def test_active_dropout_runs_per_row_and_eval_mode_shares_again():
    base = tiny_models.build_gpt2(V)
    base.config.resid_pdrop = 0.1
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    model = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    ids, mask, labels = make_batch("right")
    shapes, hook = count_base_calls(model)
    model.train()
    with pytest.warns(UserWarning, match=r"dropout is active in training mode \(resid_pdrop=0.1"):
        model(input_ids=ids, attention_mask=mask, labels=labels)
    model.eval()
    model(input_ids=ids, attention_mask=mask, labels=labels)
    hook.remove()
    assert shapes == [(B, P + T, 16), (1, P, 16), (B, T, 16)]


@pytest.mark.parametrize("option, match", [
    (dict(output_hidden_states=True), r"\['output_hidden_states'\]"),
    (dict(output_attentions=True), r"\['output_attentions'\]"),
    (dict(return_dict=False), "return_dict=False"),
])
def test_options_with_per_position_outputs_run_per_row(option, match):
    model = make_model("llama")
    ids, mask, labels = make_batch("left")
    with pytest.warns(UserWarning, match=match):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, **option)
    ref = per_row(model, input_ids=ids, attention_mask=mask, labels=labels, **option)
    torch.testing.assert_close(out[0], ref[0])


def test_logits_to_keep_with_labels_goes_to_peft_and_fails_as_there():
    model = make_model("llama")
    ids, mask, labels = make_batch("left")
    with pytest.warns(UserWarning, match="logits_to_keep is combined with labels"):
        with pytest.raises(ValueError, match="Expected input batch_size"):  # transformers' own error, as per row
            model(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=2)


# ---------------------------------------------------------------------------------------------- the class
def test_other_configs_get_peft_own_class():
    plain = get_peft_model(tiny_models.build_llama(V), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    lora = get_peft_model(tiny_models.build_llama(V), LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))
    soft = make_model("llama")
    assert type(plain) is peft.PeftModelForCausalLM and type(lora) is peft.PeftModelForCausalLM
    assert type(soft) is PeftModelForCausalLM and isinstance(soft, peft.PeftModelForCausalLM)
    assert type(soft).__name__ == "PeftModelForCausalLM"  # AutoPeftModelForCausalLM compares class names


def test_a_saved_adapter_loads_into_the_shared_class(tmp_path):
    model = make_model("opt")
    model.save_pretrained(str(tmp_path))
    loaded = peft.PeftModel.from_pretrained(tiny_models.build_opt(V), str(tmp_path))
    assert type(loaded) is PeftModelForCausalLM
    ids, mask, labels = make_batch("left")
    torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask, labels=labels).loss,
                               model(input_ids=ids, attention_mask=mask, labels=labels).loss)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_base_shares_the_prompt_with_the_per_row_result(bits, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_models.build_llama(V, d_model=64, num_heads=4).save_pretrained(str(tmp_path))
    quantization = (BitsAndBytesConfig(load_in_8bit=True) if bits == "8bit"
                    else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path), quantization_config=quantization, device_map="cpu")
    model = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
    # training mode, as prepare_model_for_kbit_training leaves it: in eval mode bitsandbytes repacks 4-bit weights
    # for a CPU kernel without a backward (for PEFT's per-row forward as much as for the shared one)
    model.train()
    ids, mask, labels = make_batch("left")
    weight = prompt_param(model)
    shapes, hook = count_base_calls(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    hook.remove()
    assert shapes == [(1, P, 64), (B, T, 64)]
    (grad,) = torch.autograd.grad(out.loss, weight)
    ref = per_row(model, input_ids=ids, attention_mask=mask, labels=labels)
    (ref_grad,) = torch.autograd.grad(ref.loss, weight)
    # 8-bit quantises activations per token and 4-bit dequantises the weights: both are per-row exact
    assert abs(float(out.loss) - float(ref.loss)) <= 1e-5 * abs(float(ref.loss))
    assert rel(grad, ref_grad) <= 1e-4
