"""SoftPromptConfig: defaults from the paper, validation messages (field, value, fix), JSON round trip."""

from __future__ import annotations

import json

import pytest

from softprompt_ext import SoftPromptConfig, SoftPromptInit
from softprompt_ext.config import RECORD_NAME


def test_paper_defaults():
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM")
    assert config.num_virtual_tokens == 100  # paper section 3
    assert config.sample_vocab_size is None  # paper section 3.2: 5000, capped at the vocabulary (test_init.py)
    assert config.init_range == 0.5
    assert config.num_transformer_submodules == 1  # encoder only
    assert config.peft_type == "PROMPT_TUNING"
    assert config.prompt_tuning_init == SoftPromptInit.SAMPLE_VOCAB


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_virtual_tokens": 0}, ValueError, r"num_virtual_tokens must be >= 1, got 0"),
        ({"num_virtual_tokens": -3}, ValueError, r"num_virtual_tokens must be >= 1, got -3"),
        ({"num_virtual_tokens": 2.5}, TypeError, r"num_virtual_tokens must be an int, got 2.5"),
        ({"prompt_tuning_init": "LABELS"}, ValueError, r"prompt_tuning_init='LABELS' is not known; use one of .*CLASS_LABELS"),
        ({"init_range": 0}, ValueError, r"init_range must be a finite number > 0, got 0"),
        ({"init_range": -0.5}, ValueError, r"init_range must be a finite number > 0, got -0.5"),
        ({"init_range": float("nan")}, ValueError, r"init_range must be a finite number > 0, got nan"),
        ({"sample_vocab_size": 0}, ValueError, r"sample_vocab_size must be an int >= 1 or None, got 0"),
        ({"init_seed": "7"}, TypeError, r"init_seed must be an int or None, got '7'"),
        ({"num_transformer_submodules": 2}, ValueError, r"num_transformer_submodules=2: .*encoder input only"),
        (
            {"prompt_tuning_init": "CLASS_LABELS", "tokenizer_name_or_path": "tok"},
            ValueError,
            r"prompt_tuning_init='CLASS_LABELS' needs class_labels, got None",
        ),
        (
            {"prompt_tuning_init": "CLASS_LABELS", "class_labels": ["yes", "no"]},
            ValueError,
            r"prompt_tuning_init='CLASS_LABELS' needs tokenizer_name_or_path, got None",
        ),
        (
            {"prompt_tuning_init": "CLASS_LABELS", "class_labels": ["yes", ""], "tokenizer_name_or_path": "t"},
            ValueError,
            r"class_labels\[1\]='' is empty or not a string",
        ),
        (
            {"prompt_tuning_init": "CLASS_LABELS", "class_labels": "yes", "tokenizer_name_or_path": "t"},
            TypeError,
            r"class_labels must be a list of strings, got 'yes'",
        ),
        (
            {"class_labels": ["yes", "no"]},
            ValueError,
            r"class_labels is set but prompt_tuning_init='SAMPLE_VOCAB' does not use it",
        ),
        (
            {"prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "t"},
            ValueError,
            r"prompt_tuning_init='TEXT' needs prompt_tuning_init_text, got None",
        ),
        ({"prompt_tuning_init": "SAVED_PROMPT"}, ValueError, r"'SAVED_PROMPT' needs init_prompt_path, got None"),
    ],
)
def test_bad_input_names_field_value_and_fix(kwargs, error, match):
    with pytest.raises(error, match=match):
        SoftPromptConfig(task_type="SEQ_2_SEQ_LM", **kwargs)


def test_init_accepts_enum_and_string():
    a = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", prompt_tuning_init=SoftPromptInit.RANDOM_UNIFORM)
    b = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", prompt_tuning_init="RANDOM_UNIFORM")
    assert a.prompt_tuning_init == b.prompt_tuning_init == SoftPromptInit.RANDOM_UNIFORM


def test_save_splits_plain_keys_from_record_and_round_trips(tmp_path):
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=7,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=["yes", "no"],
        tokenizer_name_or_path="some/tokenizer",
        sample_vocab_size=123,
        init_seed=5,
    )
    config.save_pretrained(str(tmp_path))
    plain = json.loads((tmp_path / "adapter_config.json").read_text())
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    assert set(plain) <= SoftPromptConfig.peft_field_names()  # plain PEFT knows every key
    assert plain["peft_type"] == "PROMPT_TUNING" and plain["num_transformer_submodules"] == 1
    assert record["class_labels"] == ["yes", "no"] and record["sample_vocab_size"] == 123
    assert record["init_seed"] == 5 and record["prompt_tuning_init"] == "CLASS_LABELS"

    loaded = SoftPromptConfig.from_pretrained(str(tmp_path))
    assert isinstance(loaded, SoftPromptConfig)
    assert loaded.to_dict() == config.to_dict()


def test_from_pretrained_on_plain_peft_adapter_says_what_to_do(tmp_path):
    from peft import PromptTuningConfig

    PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"has no softprompt_config.json: it is a plain PEFT adapter"):
        SoftPromptConfig.from_pretrained(str(tmp_path))


def test_unknown_record_keys_warn_and_are_dropped(tmp_path):
    SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3).save_pretrained(str(tmp_path))
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    record["future_option"] = 1
    (tmp_path / RECORD_NAME).write_text(json.dumps(record))
    with pytest.warns(UserWarning, match=r"Unexpected keyword arguments \['future_option'\] for class SoftPromptConfig, these are ignored"):
        loaded = SoftPromptConfig.from_pretrained(str(tmp_path))
    assert loaded.num_virtual_tokens == 3


def test_damaged_config_json_is_a_clear_error(tmp_path):
    SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3).save_pretrained(str(tmp_path))
    (tmp_path / RECORD_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=r"softprompt_config.json: not valid JSON"):
        SoftPromptConfig.from_pretrained(str(tmp_path))
