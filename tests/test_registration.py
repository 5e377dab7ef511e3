"""Every PEFT entry point gives a soft adapter's config the same class, and PEFT's semantics hold.

PeftModel.from_pretrained, PeftConfig.from_pretrained, PromptTuningConfig.from_pretrained, from_peft_type,
get_peft_config: a SoftPromptConfig for an adapter softprompt-ext saved, the registry's PromptTuningConfig
(PEFT's class in every field) for a plain one. `inference_mode=True` on a new prompt initialises it as PEFT does.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from peft import PeftConfig, PeftModel, PromptTuningConfig, get_peft_config, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from softprompt_ext import SoftPromptConfig
from softprompt_ext.adapters.validation import AdapterError, validate_adapter
from softprompt_ext.config import RECORD_KEY, RECORD_NAME
from softprompt_ext.tiny_models import build_t5

VOCAB, H = 64, 16


def soft_config(**overrides) -> SoftPromptConfig:
    fields = dict(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="RANDOM_UNIFORM",
                  init_range=0.5, init_seed=7)
    return SoftPromptConfig(**{**fields, **overrides})


@pytest.fixture
def soft_adapter(tmp_path):
    model = get_peft_model(build_t5(VOCAB, d_model=H), soft_config())
    model.save_pretrained(str(tmp_path / "soft"))
    return tmp_path / "soft", model


def prompt(model) -> torch.Tensor:
    return model.prompt_encoder["default"].embedding.weight.detach().clone()  # [P, H]


@pytest.mark.parametrize(
    "load",
    [
        lambda path: PeftConfig.from_pretrained(path),
        lambda path: PromptTuningConfig.from_pretrained(path),
        lambda path: PEFT_TYPE_TO_CONFIG_MAPPING["PROMPT_TUNING"].from_pretrained(path),
        lambda path: SoftPromptConfig.from_pretrained(path),
        lambda path: PeftModel.from_pretrained(build_t5(VOCAB, d_model=H), path).peft_config["default"],
        lambda path: get_peft_config(json.loads((path / "adapter_config.json").read_text())),
        lambda path: PeftConfig.from_peft_type(**json.loads((path / "adapter_config.json").read_text())),
    ],
    ids=["PeftConfig", "PromptTuningConfig", "registry", "SoftPromptConfig", "PeftModel", "get_peft_config",
         "from_peft_type"],
)
def test_every_entry_point_gives_the_soft_config(soft_adapter, load):
    path, model = soft_adapter
    loaded = load(path)
    assert type(loaded) is SoftPromptConfig
    saved = model.peft_config["default"]
    for name in ("init_range", "init_seed", "prompt_tuning_init", "num_virtual_tokens", "token_dim"):
        assert getattr(loaded, name) == getattr(saved, name), name
    assert loaded.auto_mapping is None  # the record copy is not kept in memory


def test_adapter_config_carries_the_record_and_plain_peft_keeps_it(soft_adapter):
    path, _ = soft_adapter
    plain = json.loads((path / "adapter_config.json").read_text())
    assert plain["auto_mapping"][RECORD_KEY] == json.loads((path / RECORD_NAME).read_text())
    # PeftConfig.from_pretrained alone (no sidecar): still the record, from the copy
    os.unlink(path / RECORD_NAME)
    assert type(PeftConfig.from_pretrained(str(path))) is SoftPromptConfig
    assert validate_adapter(path).config.init_seed == 7


def test_an_edited_record_copy_is_refused_naming_both(soft_adapter):
    path, _ = soft_adapter
    plain = json.loads((path / "adapter_config.json").read_text())
    plain["auto_mapping"][RECORD_KEY]["init_seed"] = 8
    (path / "adapter_config.json").write_text(json.dumps(plain))
    with pytest.raises(AdapterError, match=r"auto_mapping\['softprompt_ext'\] differs from softprompt_config\.json"):
        validate_adapter(path)


def test_from_peft_type_without_a_record_is_the_registry_class():
    config = PeftConfig.from_peft_type(peft_type="PROMPT_TUNING", task_type="CAUSAL_LM", num_virtual_tokens=3)
    assert type(config) is PEFT_TYPE_TO_CONFIG_MAPPING["PROMPT_TUNING"]
    assert isinstance(config, PromptTuningConfig) and not isinstance(config, SoftPromptConfig)
    assert config.to_dict() == PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3).to_dict()


def test_unknown_key_warning_names_peft_class_not_ours(tmp_path):
    model = get_peft_model(build_t5(VOCAB, d_model=H), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2))
    model.save_pretrained(str(tmp_path))
    plain = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**plain, "added_in_a_newer_peft": 1}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = PeftConfig.from_pretrained(str(tmp_path))
    messages = [str(w.message) for w in caught]
    assert any("added_in_a_newer_peft" in m for m in messages), messages
    assert not any("Loader" in m for m in messages), messages
    assert config.num_virtual_tokens == 2


def test_from_json_file_includes_the_record_fields(soft_adapter):
    path, _ = soft_adapter
    loaded = SoftPromptConfig.from_json_file(str(path / "adapter_config.json"))
    assert loaded["init_seed"] == 7 and loaded["init_range"] == 0.5 and loaded["auto_mapping"] is None
    plain = PromptTuningConfig.from_json_file(str(path / "adapter_config.json"))
    assert "init_seed" not in plain  # PEFT's own method stays PEFT's


def test_a_json_that_is_not_an_adapter_config_is_a_type_error_as_in_peft(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"foo": 1}')
    with pytest.raises(TypeError, match="peft_type"):
        PeftConfig.from_pretrained(str(tmp_path))
    with pytest.raises(TypeError, match=r"The SoftPromptConfig config .* missing required keys: \{'peft_type'\}.*not a PEFT"):
        SoftPromptConfig.from_pretrained(str(tmp_path))


# ------------------------------------------------------------------------------------- inference_mode
def test_inference_mode_true_initialises_the_prompt_like_peft():
    trained = get_peft_model(build_t5(VOCAB, d_model=H), soft_config())
    frozen = get_peft_model(build_t5(VOCAB, d_model=H), soft_config(inference_mode=True))
    weight = frozen.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(weight, prompt(trained), rtol=0, atol=0)  # the same init, not zeros
    assert weight.abs().sum() > 0 and not weight.requires_grad
    # and PEFT's own class does the same with inference_mode=True (a non-zero prompt)
    peft_frozen = get_peft_model(
        build_t5(VOCAB, d_model=H), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, inference_mode=True)
    )
    assert peft_frozen.prompt_encoder["default"].embedding.weight.abs().sum() > 0


def test_loading_skips_the_init_but_a_reused_loaded_config_initialises(soft_adapter):
    path, model = soft_adapter
    torch.manual_seed(0)
    build_t5(VOCAB, d_model=H)
    after_build = torch.rand(3)  # the RNG after building a base alone
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(build_t5(VOCAB, d_model=H), str(path))
    torch.testing.assert_close(torch.rand(3), after_build)  # loading drew no random numbers for an init
    torch.testing.assert_close(prompt(loaded), prompt(model), rtol=0, atol=0)
    # the loaded config reused for a new prompt (PeftConfig.from_pretrained -> get_peft_model, as PEFT's docs do):
    # initialised from the saved recipe, not left at zeros
    again = get_peft_model(build_t5(VOCAB, d_model=H), loaded.peft_config["default"], adapter_name="again")
    reused = again.prompt_encoder["again"].embedding.weight
    torch.testing.assert_close(reused, prompt(model), rtol=0, atol=0)  # init_seed=7: the same RANDOM_UNIFORM rows


def test_loading_needs_nothing_the_init_needs(tmp_path, tokenizer, make_model):
    """A TEXT-initialised adapter loads after its tokenizer is gone: the saved rows replace the init anyway."""
    from softprompt_ext.tiny_models import save_tokenizer

    tokenizer_dir = save_tokenizer(tokenizer, str(tmp_path / "tokenizer"))
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="TEXT",
                              prompt_tuning_init_text="the cat sat", tokenizer_name_or_path=tokenizer_dir)
    model = get_peft_model(make_model("t5"), config)
    model.save_pretrained(str(tmp_path / "adapter"))
    __import__("shutil").rmtree(tokenizer_dir)
    loaded = PeftModel.from_pretrained(make_model("t5"), str(tmp_path / "adapter"))
    torch.testing.assert_close(prompt(loaded), prompt(model), rtol=0, atol=0)


def test_soft_config_from_pretrained_on_another_method_names_it(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "task_type": "CAUSAL_LM"}')
    with pytest.raises(ValueError, match="is a LORA adapter; SoftPromptConfig loads prompt-tuning adapters only"):
        SoftPromptConfig.from_pretrained(str(tmp_path))
    assert type(PeftConfig.from_pretrained(str(tmp_path))).__name__ == "LoraConfig"  # PEFT's entry point still works
