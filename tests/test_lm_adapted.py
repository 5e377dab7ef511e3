"""Registry of LM-adapted checkpoints and the span-corruption warning (paper section 3.3). No network."""

from __future__ import annotations

import json
import os
import warnings

import pytest
from peft import get_peft_model
from transformers import AutoModelForSeq2SeqLM, T5Config

from softprompt_ext import SoftPromptConfig, lm_adapted
from softprompt_ext.lm_adapted import (
    LM_ADAPTED,
    SPAN_CORRUPTION_ONLY,
    SPAN_CORRUPTION_TO_LM_ADAPTED,
    is_span_corruption_only,
    lm_adapted_counterpart,
    resolve_lm_adapted,
    span_corruption_checkpoint,
)

# hub id: (params, d_model, d_ff, layers per stack, heads) -- PAPER.md, "Released LM-adapted checkpoints"
RELEASED = {
    "google/t5-small-lm-adapt": ("77M", 512, 1024, 8, 6),
    "google/t5-base-lm-adapt": ("250M", 768, 2048, 12, 12),
    "google/t5-large-lm-adapt": ("800M", 1024, 2816, 24, 16),
    "google/t5-xl-lm-adapt": ("3B", 2048, 5120, 24, 32),
    "google/t5-xxl-lm-adapt": ("11B", 4096, 10240, 24, 64),
}
SPAN_TO_ADAPTED = {
    "t5-small": "google/t5-small-lm-adapt",
    "t5-base": "google/t5-base-lm-adapt",
    "t5-large": "google/t5-large-lm-adapt",
    "t5-3b": "google/t5-xl-lm-adapt",
    "t5-11b": "google/t5-xxl-lm-adapt",
    "google-t5/t5-small": "google/t5-small-lm-adapt",
    "google-t5/t5-base": "google/t5-base-lm-adapt",
    "google-t5/t5-large": "google/t5-large-lm-adapt",
    "google-t5/t5-3b": "google/t5-xl-lm-adapt",
    "google-t5/t5-11b": "google/t5-xxl-lm-adapt",
    "google/t5-v1_1-small": "google/t5-small-lm-adapt",
    "google/t5-v1_1-base": "google/t5-base-lm-adapt",
    "google/t5-v1_1-large": "google/t5-large-lm-adapt",
    "google/t5-v1_1-xl": "google/t5-xl-lm-adapt",
    "google/t5-v1_1-xxl": "google/t5-xxl-lm-adapt",
}
T5_V1_0_BASE = {"model_type": "t5", "vocab_size": 32128, "d_model": 768, "d_ff": 3072, "num_layers": 12, "num_heads": 12}
T5_V1_1_BASE = {**T5_V1_0_BASE, "d_ff": 2048, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


@pytest.fixture(autouse=True)
def _fresh_warning_registry(monkeypatch):
    """Each test starts with no model warned about yet."""
    monkeypatch.setattr(lm_adapted, "_warned", set())


def _write_config(directory, config: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return str(directory)


def _span_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "span-corruption" in str(w.message)]


def _prompt_tune(model, **kwargs):
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="RANDOM_UNIFORM", init_seed=0, **kwargs
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        peft_model = get_peft_model(model, config)
    return peft_model, record


# ---------------------------------------------------------------------------------------------- registry
def test_registry_holds_the_five_released_checkpoints_with_their_shapes():
    table = {hub_id: (i.params, i.d_model, i.d_ff, i.num_layers, i.num_heads) for hub_id, i in LM_ADAPTED.items()}
    assert table == RELEASED
    assert {info.vocab_size for info in LM_ADAPTED.values()} == {32128}
    assert SPAN_CORRUPTION_TO_LM_ADAPTED == SPAN_TO_ADAPTED


@pytest.mark.parametrize(("name", "adapted"), sorted(SPAN_TO_ADAPTED.items()))
def test_every_span_corruption_name_resolves(name, adapted):
    assert lm_adapted_counterpart(name) == adapted
    assert resolve_lm_adapted(name) == adapted
    assert is_span_corruption_only(name)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_adapted_ids_resolve_to_themselves(name):
    assert lm_adapted_counterpart(name) == name
    assert lm_adapted_counterpart(name.upper()) == name  # Hub ids are case-insensitive
    assert not is_span_corruption_only(name)


@pytest.mark.parametrize(
    ("path", "adapted"),
    [
        ("/home/u/.cache/huggingface/hub/models--google--t5-v1_1-base/snapshots/0123abcd", "google/t5-base-lm-adapt"),
        ("/home/u/.cache/huggingface/hub/models--google-t5--t5-3b/snapshots/0123abcd/", "google/t5-xl-lm-adapt"),
        ("C:\\hf\\hub\\models--google--t5-v1_1-xl\\snapshots\\0123abcd", "google/t5-xl-lm-adapt"),
        ("/home/u/.cache/huggingface/hub/models--google--t5-small-lm-adapt/snapshots/0123", "google/t5-small-lm-adapt"),
        ("./models/t5-v1_1-large", "google/t5-large-lm-adapt"),
        ("t5-v1_1-small", "google/t5-small-lm-adapt"),
        ("GOOGLE/T5-V1_1-XXL", "google/t5-xxl-lm-adapt"),
    ],
)
def test_cache_snapshots_and_local_copies_resolve(path, adapted):
    assert lm_adapted_counterpart(path) == adapted


@pytest.mark.parametrize("name", [None, "", "bert-base-uncased", "google/flan-t5-base", "facebook/bart-base"])
def test_unknown_names_have_no_counterpart(name):
    assert lm_adapted_counterpart(name) is None
    assert not is_span_corruption_only(name)


def test_resolve_says_what_to_do_when_there_is_no_counterpart():
    with pytest.raises(ValueError, match=r"'bert-base-uncased' has no known LM-adapted counterpart \(known: t5-"):
        resolve_lm_adapted("bert-base-uncased")
    with pytest.raises(ValueError, match="softprompt-lm-adapt --model_name_or_path bert-base-uncased --train_files"):
        resolve_lm_adapted("bert-base-uncased")
    assert "google/mt5-base" in SPAN_CORRUPTION_ONLY and is_span_corruption_only("google/mt5-base")
    with pytest.raises(ValueError, match="'google/byt5-small' has no released LM-adapted counterpart; LM-adapt it"):
        resolve_lm_adapted("google/byt5-small")


# ---------------------------------------------------------------------------------------------- config detection
def test_original_t5_shape_is_detected_from_config_json(tmp_path):
    local = _write_config(tmp_path / "my-summariser", T5_V1_0_BASE)
    assert span_corruption_checkpoint(local) == "t5-base"
    assert lm_adapted_counterpart(local) == "google/t5-base-lm-adapt"
    shape_only = T5Config(vocab_size=32128, d_model=512, d_ff=2048, num_layers=6, num_heads=8)
    assert span_corruption_checkpoint(None, shape_only) == "t5-small"


def test_t5_1_1_shape_alone_is_ambiguous(tmp_path):
    # span-corruption, LM-adapted and Flan-T5 checkpoints share it: no guess
    assert span_corruption_checkpoint(_write_config(tmp_path / "some-model", T5_V1_1_BASE)) is None


def test_locally_adapted_directory_is_adapted_whatever_its_name(tmp_path):
    adapted = {**T5_V1_1_BASE, "lm_adaptation": {"objective": "prefix_lm", "steps": 100}}
    local = _write_config(tmp_path / "t5-v1_1-base", adapted)
    assert not is_span_corruption_only(local)
    assert lm_adapted_counterpart(local) == local
    assert not is_span_corruption_only(_write_config(tmp_path / "x" / "t5-base", {**T5_V1_0_BASE, **adapted}))


def test_continued_span_corruption_keeps_its_source(tmp_path):
    record = {"objective": "span_corruption", "steps": 10, "source": "google/t5-v1_1-small"}
    local = _write_config(tmp_path / "domain-t5", {**T5_V1_1_BASE, "continued_pretraining": record})
    assert span_corruption_checkpoint(local) == "google/t5-v1_1-small"
    assert lm_adapted_counterpart(local) == "google/t5-small-lm-adapt"


# ---------------------------------------------------------------------------------------------- warning
def test_warning_fires_once_names_the_replacement_and_points_at_the_caller(make_model):
    model = make_model("t5")
    model.name_or_path = "google/t5-v1_1-base"
    peft_model, record = _prompt_tune(model)
    messages = _span_warnings(record)
    assert len(messages) == 1
    assert "'google/t5-v1_1-base' is a span-corruption checkpoint" in messages[0]
    assert "'google/t5-base-lm-adapt'" in messages[0] and "section 3.3" in messages[0]
    assert "warn_if_not_lm_adapted=False" in messages[0]
    assert [w.filename for w in record if "span-corruption" in str(w.message)] == [__file__]
    assert peft_model.get_nb_trainable_parameters()[0] == 4 * 16  # still prompt-tunes

    again = make_model("t5")
    again.name_or_path = "google/t5-v1_1-base"
    assert _span_warnings(_prompt_tune(again)[1]) == []  # once per model


def test_warning_can_be_silenced(make_model):
    model = make_model("t5")
    model.name_or_path = "google/t5-v1_1-base"
    assert _span_warnings(_prompt_tune(model, warn_if_not_lm_adapted=False)[1]) == []


@pytest.mark.parametrize("name", ["google/t5-base-lm-adapt", "google/flan-t5-small", ""])
def test_no_warning_for_adapted_or_unknown_names(make_model, name):
    model = make_model("t5")
    model.name_or_path = name
    assert _span_warnings(_prompt_tune(model)[1]) == []


def test_mt5_warning_points_to_lm_adapting_it_yourself(make_model):
    model = make_model("t5")
    model.name_or_path = "google/mt5-small"
    (message,) = _span_warnings(_prompt_tune(model)[1])
    assert "No LM-adapted counterpart is released" in message
    assert "softprompt-lm-adapt --model_name_or_path google/mt5-small" in message


def test_locally_adapted_checkpoint_loaded_from_disk_does_not_warn(make_model, tmp_path):
    plain_dir, adapted_dir = str(tmp_path / "plain" / "t5-v1_1-small"), str(tmp_path / "adapted" / "t5-v1_1-small")
    model = make_model("t5")
    model.save_pretrained(plain_dir)
    model.config.lm_adaptation = {"objective": "prefix_lm", "steps": 20, "source": plain_dir}
    model.save_pretrained(adapted_dir)

    (message,) = _span_warnings(_prompt_tune(AutoModelForSeq2SeqLM.from_pretrained(plain_dir))[1])
    assert "'google/t5-small-lm-adapt'" in message  # known by its directory name
    assert _span_warnings(_prompt_tune(AutoModelForSeq2SeqLM.from_pretrained(adapted_dir))[1]) == []
