"""The model card written next to a saved adapter."""

from __future__ import annotations

from huggingface_hub import ModelCard
from peft import get_peft_model

from softprompt_ext import SoftPromptConfig


def save(make_model, tokenizer_dir, path, **extra):
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=7, prompt_tuning_init="CLASS_LABELS",
        class_labels=["yes", "no"], tokenizer_name_or_path=tokenizer_dir, sample_vocab_size=50, **extra,
    )
    model = get_peft_model(make_model("t5"), config)
    model.save_pretrained(str(path))
    return model


def test_card_metadata_and_section(make_model, tokenizer_dir, tmp_path):
    save(make_model, tokenizer_dir, tmp_path)
    card = ModelCard.load(str(tmp_path / "README.md"))
    assert card.data.library_name == "peft"
    assert {"prompt-tuning", "softprompt-ext"} <= set(card.data.tags)
    assert "| prompt length P | 7 |" in card.text
    assert "| initialisation | `CLASS_LABELS` |" in card.text
    assert "`yes`, `no`" in card.text
    assert "| trainable parameters | 112 |" in card.text  # 7 x 16


def test_resaving_replaces_the_section(make_model, tokenizer_dir, tmp_path):
    model = save(make_model, tokenizer_dir, tmp_path)
    model.save_pretrained(str(tmp_path))
    text = (tmp_path / "README.md").read_text()
    assert text.count("softprompt-ext:begin") == 1


def test_base_model_from_a_named_checkpoint(make_model, tokenizer_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    make_model("t5").save_pretrained(str(tmp_path / "base"))
    base = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "base"))
    get_peft_model(base, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, sample_vocab_size=50)).save_pretrained(str(tmp_path / "a"))
    card = ModelCard.load(str(tmp_path / "a" / "README.md"))
    assert card.data.base_model == str(tmp_path / "base")
    assert f"`{tmp_path / 'base'}`" in card.text


def test_config_alone_writes_no_card(tmp_path):
    SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2).save_pretrained(str(tmp_path))
    assert not (tmp_path / "README.md").exists()
