"""Configs from anywhere: property-based tests over SoftPromptConfig fields and adapter JSON files.

Properties:
* any field values either build a config or raise ValueError/TypeError (nothing else);
* a config that builds also builds a model on a tiny T5 that runs a forward, or fails with
  ValueError/TypeError;
* `save_pretrained` -> `SoftPromptConfig.from_pretrained` gives back an equal config;
* any `adapter_config.json` / `softprompt_config.json` content loads or raises ValueError/TypeError with a
  message, through every loader; what `validate_adapter` accepts, PEFT loads.

Wrongly typed inherited PEFT fields (`token_dim="16"`, `inference_mode=(1,)`, `tokenizer_name_or_path=2**70`,
...) and out-of-range ints, which PEFT itself accepts and which would fail late or round-trip lossily, are
pinned as `@example`s: SoftPromptConfig rejects them at construction.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from peft import PeftModel, get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.adapters.validation import load_adapter_safely, validate_adapter
from softprompt_ext.registration import PromptTuningConfigLoader

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
SOME = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

# ------------------------------------------------------------------------------------------------ strategies
huge = st.integers(min_value=2**62, max_value=2**70) | st.integers(max_value=-(2**62))
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    huge,
    st.floats(),
    st.text(max_size=6),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.binary(max_size=3),
    st.tuples(st.integers()),
    st.sets(st.integers(), max_size=2),
)
INITS = st.sampled_from(
    ["CLASS_LABELS", "SAMPLE_VOCAB", "RANDOM_UNIFORM", "TEXT", "SAVED_PROMPT", "RANDOM", "random"]
)
labels = st.lists(st.text(max_size=6), max_size=3) | st.lists(
    st.sampled_from(["positive", "negative", " ", ""]), max_size=3
)
WILD_FIELDS = {
    "num_virtual_tokens": st.integers(-2, 40) | anything,
    "prompt_tuning_init": INITS | anything,
    "class_labels": labels | anything,
    "sample_vocab_size": st.integers(-2, 300) | anything,
    "init_range": st.floats() | anything,
    "init_seed": st.integers(-5, 5) | anything,
    "init_prompt_path": st.text(max_size=5) | anything,
    "warn_if_not_lm_adapted": anything,
    "task_type": st.sampled_from(["SEQ_2_SEQ_LM", "CAUSAL_LM", "SEQ_CLS", "X"]) | anything,
    "tokenizer_name_or_path": st.text(max_size=5) | anything,
    "prompt_tuning_init_text": st.text(max_size=5) | anything,
    "token_dim": anything,
    "num_transformer_submodules": anything,
    "num_attention_heads": anything,
    "num_layers": anything,
    "tokenizer_kwargs": anything,
    "inference_mode": anything,
    "base_model_name_or_path": anything,
    "revision": anything,
    "modules_to_save": anything,
}


@st.composite
def well_typed_kwargs(draw, tokenizer_dir: str, adapter_dir: str, task_types=("SEQ_2_SEQ_LM",)) -> dict:
    """Every field of the right type and mostly valid, the fields an init needs usually present; some values
    are still wrong (P <= 0, an empty label, a missing text, a pool larger than the vocabulary)."""
    init = draw(INITS)
    rarely = st.integers(0, 5).map(lambda n: n == 0)
    kwargs = {
        "task_type": draw(st.sampled_from(task_types)),
        "prompt_tuning_init": init,
        "num_virtual_tokens": draw(st.sampled_from([-1, 0, *range(1, 13)])),
        "tokenizer_name_or_path": draw(st.sampled_from([tokenizer_dir] * 4 + [None])),
        "sample_vocab_size": draw(st.sampled_from([0, 10**6, 1, 7, 50, 150])),
    }
    if init == "CLASS_LABELS" or draw(rarely):
        kwargs["class_labels"] = draw(
            st.lists(st.sampled_from(["positive", "negative", "the cat", ""]), max_size=3)
        )
    if init == "TEXT" or draw(rarely):
        kwargs["prompt_tuning_init_text"] = draw(st.sampled_from(["the cat sat", "a great movie", ""]))
    if init == "SAVED_PROMPT" or draw(rarely):
        kwargs["init_prompt_path"] = adapter_dir
    text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
    optional = {
        "init_range": st.floats(0.01, 2.0) | st.floats(allow_nan=True, allow_infinity=True, width=32),
        "init_seed": st.none() | st.integers(-(2**63), 2**64 - 1),
        "warn_if_not_lm_adapted": st.booleans(),
        "inference_mode": st.booleans(),
        "base_model_name_or_path": st.none() | text,
        "revision": st.none() | text,
        "token_dim": st.none() | st.just(16),
    }
    return {**kwargs, **draw(st.fixed_dictionaries({}, optional=optional))}


def build(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SoftPromptConfig(**kwargs)


def build_or_none(kwargs):
    """The config, or None when it is refused with ValueError/TypeError (any other exception propagates)."""
    try:
        config = build(kwargs)
    except (ValueError, TypeError) as exc:
        assert str(exc), "an error without a message"
        event("config refused")
        return None
    event("config built")
    return config


def run_model(base, config):
    """Build a PEFT model on a copy of `base` and run one forward; ValueError/TypeError count as clear."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(copy.deepcopy(base), config)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        event("model refused")
        return
    event("model built")
    out = model(input_ids=torch.tensor([[5, 6, 1]]), labels=torch.tensor([[7, 1]]))
    assert torch.isfinite(out.loss)


def round_trip(config):
    directory = tempfile.mkdtemp()
    try:
        config.save_pretrained(directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = SoftPromptConfig.from_pretrained(directory)
    finally:
        shutil.rmtree(directory)
    assert loaded.to_dict() == config.to_dict()


@pytest.fixture(scope="module")
def t5(tokenizer):
    from softprompt_ext.tiny_models import build_t5

    return build_t5(len(tokenizer))


# ------------------------------------------------------------------------------------------------ fields
@SOME
@given(st.fixed_dictionaries({}, optional=WILD_FIELDS))
def test_any_fields_build_a_config_or_raise_value_or_type_error(kwargs):
    build_or_none(kwargs)


def test_well_typed_configs_build_a_model_or_raise_clearly(t5, tokenizer_dir, saved_adapter):
    @FEW
    @given(well_typed_kwargs(tokenizer_dir, saved_adapter[0]))
    def check(kwargs):
        config = build_or_none(kwargs)
        if config is not None:
            run_model(t5, config)

    check()


def test_well_typed_configs_round_trip_losslessly(tokenizer_dir, saved_adapter):
    @SOME
    @given(well_typed_kwargs(tokenizer_dir, saved_adapter[0], ("SEQ_2_SEQ_LM", "CAUSAL_LM")))
    def check(kwargs):
        config = build_or_none(kwargs)
        if config is not None:
            round_trip(config)

    check()


def test_any_valid_config_builds_a_model_or_raises_clearly(t5):
    @FEW
    @given(
        st.fixed_dictionaries(
            {"task_type": st.just("SEQ_2_SEQ_LM"), "prompt_tuning_init": st.just("RANDOM_UNIFORM")},
            optional={k: v for k, v in WILD_FIELDS.items() if k not in ("task_type", "prompt_tuning_init")},
        )
    )
    @example(
        {"task_type": "SEQ_2_SEQ_LM", "prompt_tuning_init": "RANDOM_UNIFORM", "num_virtual_tokens": 2**62}
    )
    @example(
        {"task_type": "SEQ_2_SEQ_LM", "prompt_tuning_init": "SAMPLE_VOCAB", "tokenizer_name_or_path": 2**70}
    )
    @example({"task_type": "SEQ_2_SEQ_LM", "prompt_tuning_init": "RANDOM_UNIFORM", "init_seed": 2**64})
    def check(kwargs):
        config = build_or_none(kwargs)
        if config is not None:
            run_model(t5, config)

    check()


@SOME
@given(
    st.fixed_dictionaries(
        {"task_type": st.just("SEQ_2_SEQ_LM")},
        optional={k: v for k, v in WILD_FIELDS.items() if k != "task_type"},
    )
)
@example({"task_type": "SEQ_2_SEQ_LM", "inference_mode": (1,)})
@example({"task_type": "SEQ_2_SEQ_LM", "revision": {1}})
def test_any_valid_config_round_trips_losslessly(kwargs):
    config = build_or_none(kwargs)
    if config is not None:
        round_trip(config)


def test_wrongly_typed_token_dim_is_named_as_a_type_error():
    # today: accepted, then get_peft_model says "token_dim (d_model) is 16 but this model's d_model is 16"
    with pytest.raises(TypeError, match=r"token_dim must be of type int or None, got '16'"):
        SoftPromptConfig(task_type="SEQ_2_SEQ_LM", token_dim="16")


def test_config_without_task_type_fails_at_construction():
    # without the check: builds, then PEFT's get_peft_model raises KeyError: None
    with pytest.raises(ValueError, match="task_type"):
        SoftPromptConfig(num_virtual_tokens=3)


# ------------------------------------------------------------------------------------------- adapter JSON
json_leaf = st.none() | st.booleans() | st.integers(-3, 20) | huge | st.floats() | st.text(max_size=6)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def variations(original: dict):
    """Any JSON value; or the original object with keys dropped, values replaced and keys added."""
    keys = sorted(original)
    replaced = st.fixed_dictionaries({}, optional={k: st.just(original[k]) | json_value for k in keys})
    extra = st.dictionaries(st.text(max_size=6), json_value, max_size=2)
    return json_value | st.builds(lambda d, e: {**e, **d}, replaced, extra)


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory, t5):
    directory = str(tmp_path_factory.mktemp("adapter"))
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="RANDOM_UNIFORM", init_seed=0
    )
    get_peft_model(copy.deepcopy(t5), config).save_pretrained(directory)
    with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as handle:
        plain = json.load(handle)
    with open(os.path.join(directory, "softprompt_config.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    return directory, plain, record


LOADERS = {
    "SoftPromptConfig.from_pretrained": lambda d, base: SoftPromptConfig.from_pretrained(d),
    "PEFT registry loader": lambda d, base: PromptTuningConfigLoader.from_pretrained(d),
    "validate_adapter": lambda d, base: validate_adapter(d, base),
    "load_adapter_safely": lambda d, base: load_adapter_safely(copy.deepcopy(base), d),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_any_adapter_json_loads_or_raises_value_or_type_error(saved_adapter, t5, loader):
    source, plain, record = saved_adapter

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(variations(plain), st.none() | variations(record))
    def check(adapter_config, softprompt_config):
        directory = tempfile.mkdtemp()
        try:
            shutil.copy(os.path.join(source, "adapter_model.safetensors"), directory)
            with open(os.path.join(directory, "adapter_config.json"), "w", encoding="utf-8") as handle:
                json.dump(adapter_config, handle)
            if softprompt_config is not None:
                with open(os.path.join(directory, "softprompt_config.json"), "w", encoding="utf-8") as handle:
                    json.dump(softprompt_config, handle)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    LOADERS[loader](directory, t5)
                except (ValueError, TypeError) as exc:
                    assert len(str(exc)) > 20, f"unclear message: {exc!r}"
        finally:
            shutil.rmtree(directory)

    check()


def test_what_validate_adapter_accepts_peft_loads(saved_adapter, t5):
    source, plain, record = saved_adapter
    benign = {  # values a real adapter may carry; validation may still refuse some combinations
        "inference_mode": st.booleans(),
        "revision": st.none() | st.just("main"),
        "num_virtual_tokens": st.sampled_from([4, 5]),
        "num_transformer_submodules": st.none() | st.sampled_from([1, 2]),
        "tokenizer_kwargs": st.none() | st.just({}),
        "base_model_name_or_path": st.none() | st.just("tiny-t5"),
    }

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.fixed_dictionaries({}, optional=benign), st.booleans())
    def check(changes, with_record):
        directory = tempfile.mkdtemp()
        try:
            shutil.copy(os.path.join(source, "adapter_model.safetensors"), directory)
            with open(os.path.join(directory, "adapter_config.json"), "w", encoding="utf-8") as handle:
                json.dump({**plain, **changes}, handle)
            if with_record:
                with open(os.path.join(directory, "softprompt_config.json"), "w", encoding="utf-8") as handle:
                    json.dump(record, handle)
            try:
                report = validate_adapter(directory, t5)
            except ValueError:
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = PeftModel.from_pretrained(copy.deepcopy(t5), directory)
            torch.testing.assert_close(
                model.prompt_encoder["default"].embedding.weight, report.prompt.float()
            )
        finally:
            shutil.rmtree(directory)

    check()
