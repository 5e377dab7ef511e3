"""SoftPromptConfig through PEFT's own `get_peft_model`: a case matrix over init strategies x model kinds."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from softprompt_ext import SoftPromptConfig, SoftPromptEmbedding

P = 5


def init_kwargs(init: str, tokenizer_dir: str) -> dict:
    return {
        "CLASS_LABELS": dict(class_labels=["positive", "negative"], tokenizer_name_or_path=tokenizer_dir, sample_vocab_size=50),
        "SAMPLE_VOCAB": dict(tokenizer_name_or_path=tokenizer_dir, sample_vocab_size=50),
        "RANDOM_UNIFORM": dict(),
        "TEXT": dict(prompt_tuning_init_text="the cat sat on the mat", tokenizer_name_or_path=tokenizer_dir, sample_vocab_size=50),
        "RANDOM": dict(),
    }[init]


CASES = [(init, kind) for init in ("CLASS_LABELS", "SAMPLE_VOCAB", "RANDOM_UNIFORM", "TEXT", "RANDOM") for kind in ("t5", "llama", "gpt2")]


def make_config(init, kind, tokenizer_dir, **extra):
    return SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM" if kind == "t5" else "CAUSAL_LM",
        num_virtual_tokens=P,
        prompt_tuning_init=init,
        init_seed=0,
        **init_kwargs(init, tokenizer_dir),
        **extra,
    )


def batch(tokenizer, kind):
    enc = tokenizer(["the cat sat on the mat", "a great movie"], return_tensors="pt", padding=True)
    if kind == "t5":
        enc["labels"] = tokenizer(["positive", "negative"], return_tensors="pt", padding=True)["input_ids"]
    else:
        enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc


@pytest.mark.parametrize(("init", "kind"), CASES)
def test_only_p_times_d_model_parameters_train(init, kind, make_model, tokenizer, tokenizer_dir):
    model = get_peft_model(make_model(kind), make_config(init, kind, tokenizer_dir))
    d_model = model.get_base_model().get_input_embeddings().weight.shape[1]
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == P * d_model
    assert isinstance(model.prompt_encoder["default"], SoftPromptEmbedding)
    assert model.prompt_encoder["default"].embedding.weight.shape == (P, d_model)

    out = model(**batch(tokenizer, kind))
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert list(grads) == ["prompt_encoder.default.embedding.weight"]
    assert grads["prompt_encoder.default.embedding.weight"].abs().sum() > 0


@pytest.mark.parametrize(("init", "kind"), CASES)
def test_save_reload_gives_identical_logits(init, kind, make_model, tokenizer, tokenizer_dir, tmp_path):
    model = get_peft_model(make_model(kind), make_config(init, kind, tokenizer_dir))
    with torch.no_grad():  # move the prompt off its init so reload is really checked
        model.prompt_encoder["default"].embedding.weight.add_(0.1)
    model.eval()
    inputs = batch(tokenizer, kind)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(str(tmp_path))

    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(tensors) == ["prompt_embeddings"]
    assert tensors["prompt_embeddings"].shape == (P, 16) and tensors["prompt_embeddings"].dtype == torch.float32

    loaded = PeftModel.from_pretrained(make_model(kind), str(tmp_path)).eval()
    assert isinstance(loaded.peft_config["default"], SoftPromptConfig)
    assert loaded.peft_config["default"].init_seed == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["t5", "llama", "gpt2"])
def test_generate(kind, make_model, tokenizer, tokenizer_dir):
    model = get_peft_model(make_model(kind), make_config("SAMPLE_VOCAB", kind, tokenizer_dir)).eval()
    enc = tokenizer(["the cat sat"], return_tensors="pt")
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] >= 3


def test_t5_prompt_goes_to_encoder_only(make_model, tokenizer, tokenizer_dir):
    """The prompted forward equals the base model fed `[prompt; input]` to the encoder, decoder untouched."""
    model = get_peft_model(make_model("t5"), make_config("RANDOM_UNIFORM", "t5", tokenizer_dir)).eval()
    inputs = batch(tokenizer, "t5")
    base = model.get_base_model()
    prompt = model.prompt_encoder["default"].embedding.weight  # [P, H]
    embeds = base.get_input_embeddings()(inputs["input_ids"])  # [B, T, H]
    B = embeds.shape[0]
    with torch.no_grad():
        manual = base(
            inputs_embeds=torch.cat([prompt.unsqueeze(0).expand(B, -1, -1), embeds], dim=1),  # [B, P + T, H]
            attention_mask=torch.cat([torch.ones(B, P, dtype=torch.long), inputs["attention_mask"]], dim=1),
            labels=inputs["labels"],
        )
        peft_out = model(**inputs)
    torch.testing.assert_close(peft_out.logits, manual.logits)
    assert peft_out.logits.shape[1] == inputs["labels"].shape[1]  # no virtual tokens on the decoder side


def test_bf16_base_keeps_float32_prompt(make_model, tokenizer, tokenizer_dir):
    base = make_model("t5").to(torch.bfloat16)
    model = get_peft_model(base, make_config("CLASS_LABELS", "t5", tokenizer_dir))
    assert model.prompt_encoder["default"].embedding.weight.dtype == torch.float32
    out = model(**batch(tokenizer, "t5"))
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert model.prompt_encoder["default"].embedding.weight.grad.dtype == torch.float32


def test_class_labels_on_bf16_base_are_means_in_float32(make_model, tokenizer, tokenizer_dir):
    base = make_model("t5", indexed=True).to(torch.bfloat16)  # ids < 256 are exact in bf16
    model = get_peft_model(base, make_config("CLASS_LABELS", "t5", tokenizer_dir))
    ids = tokenizer("positive", add_special_tokens=False)["input_ids"]
    assert model.prompt_encoder["default"].embedding.weight[0, 0].item() == pytest.approx(sum(ids) / len(ids))


def test_base_model_stays_frozen_after_training_steps(make_model, tokenizer, tokenizer_dir):
    model = get_peft_model(make_model("t5"), make_config("SAMPLE_VOCAB", "t5", tokenizer_dir))
    frozen = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters()}
    start = model.prompt_encoder["default"].embedding.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    inputs = batch(tokenizer, "t5")
    for _ in range(3):
        opt.zero_grad()
        model(**inputs).loss.backward()
        opt.step()
    for name, param in model.get_base_model().named_parameters():
        assert torch.equal(param, frozen[name]), name
    assert not torch.equal(model.prompt_encoder["default"].embedding.weight, start)


def test_loading_prompt_into_other_width_model_names_both(make_model, tmp_path, tokenizer_dir):
    get_peft_model(make_model("t5", d_model=32), make_config("RANDOM_UNIFORM", "t5", tokenizer_dir)).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"adapter's token_dim \(d_model\) is 32 but this model's d_model is 16"):
        PeftModel.from_pretrained(make_model("t5", d_model=16), str(tmp_path))


def test_continue_from_saved_adapter_trains_from_its_prompt(make_model, tmp_path, tokenizer_dir):
    first = get_peft_model(make_model("t5"), make_config("CLASS_LABELS", "t5", tokenizer_dir))
    with torch.no_grad():
        first.prompt_encoder["default"].embedding.weight.mul_(3.0)
    first.save_pretrained(str(tmp_path))
    config = SoftPromptConfig.continue_from(str(tmp_path))
    assert config.class_labels == ["positive", "negative"] and config.num_virtual_tokens == P
    second = get_peft_model(make_model("t5"), config)
    torch.testing.assert_close(
        second.prompt_encoder["default"].embedding.weight, first.prompt_encoder["default"].embedding.weight
    )
    assert second.prompt_encoder["default"].embedding.weight.requires_grad


def test_loaded_adapter_is_frozen(make_model, tmp_path, tokenizer_dir):
    get_peft_model(make_model("t5"), make_config("RANDOM_UNIFORM", "t5", tokenizer_dir)).save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(make_model("t5"), str(tmp_path))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_get_peft_config_round_trips_a_soft_prompt_config():
    # PEFT's own `get_peft_config(config.to_dict())`: before, TypeError on the unknown key 'class_labels'
    import peft

    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5, prompt_tuning_init="CLASS_LABELS",
                              class_labels=["yes", "no"], tokenizer_name_or_path="some/tokenizer", init_seed=3)
    again = peft.get_peft_config(config.to_dict())
    assert isinstance(again, SoftPromptConfig)
    assert again.to_dict() == config.to_dict()
    plain = peft.get_peft_config(peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4).to_dict())
    # a plain PEFT dict stays plain: the registry's class, PEFT's PromptTuningConfig in all but name
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    assert type(plain) is PEFT_TYPE_TO_CONFIG_MAPPING["PROMPT_TUNING"] and not isinstance(plain, SoftPromptConfig)
    assert isinstance(plain, peft.PromptTuningConfig) and repr(plain).startswith("PromptTuningConfig(")
