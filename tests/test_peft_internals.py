"""Contract tests of the PEFT seam (`peft_internals.py`): one test per function or constant there.

Each names, in its docstring, the PEFT behaviour that the function relies on, and checks it against real tiny
models (T5, Llama, GPT-2 from tests/conftest.py) through PEFT's public entry points (`get_peft_model`,
`PeftModel.from_pretrained`, `get_peft_model_state_dict`). A PEFT upgrade that moves one of these fails here,
and `peft_internals.py` is the one file to fix. (tests/test_peft_contract.py pins PEFT behaviour that shapes
the design, such as why softprompt-ext keeps `peft_type=PROMPT_TUNING`.)
"""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import peft
import pytest
import torch
from helpers import blind_to_the_cache
from packaging.version import Version
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
    get_peft_model_state_dict,
)
from safetensors.torch import load_file

from softprompt_ext import SoftPromptConfig, SoftPromptEmbedding
from softprompt_ext import peft_internals as pi
from softprompt_ext.peft_internals import (
    CONFIG_NAME,
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
    PROMPT_KEY,
    SAFETENSORS_WEIGHTS_NAME,
    WEIGHTS_NAME,
    BasePromptEncoder,
    PeftType,
    PromptEmbedding,
    PromptEncoderBase,
    active_prompt_config,
    causal_generate_reinserts_prompt,
    gather_params_ctx,
    has_prompt_encoder,
    input_embeddings,
    is_prompt_tuning,
    prompt_parameters,
    prompt_tuning_registry_entries,
    prompt_weight,
    saved_prompt_rows,
    set_prompt_tuning_registry_entries,
    split_from_pretrained_kwargs,
    warn_if_causal_generate_is_broken,
)
from softprompt_ext.registration import PromptTuningConfigLoader

TASK_TYPES = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}
P, H = 3, 16  # prompt rows, the tiny models' d_model
BROKEN_GENERATE = r"re-inserts a soft prompt at every step of a causal LM's model\.generate\(\.\.\.\)"


def _soft(kind: str, num_virtual_tokens: int = P) -> SoftPromptConfig:
    return SoftPromptConfig(
        task_type=TASK_TYPES[kind], num_virtual_tokens=num_virtual_tokens, sample_vocab_size=50, init_seed=0
    )


def _forward_logits(model, kind: str) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 23, 42, 1]])
    with torch.no_grad():
        if kind == "t5":
            return model(input_ids=ids, labels=torch.tensor([[7, 8, 1]])).logits
        return model(input_ids=ids).logits


def _broken_generate_warnings(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if "re-inserts a soft prompt" in str(w.message)]


@pytest.fixture
def registry():
    """PEFT's PROMPT_TUNING registry entries as they were, put back after the test whatever it set."""
    entries = prompt_tuning_registry_entries()
    yield entries
    set_prompt_tuning_registry_entries(*entries)


@pytest.fixture
def fresh_probe():
    """An empty cache for `causal_generate_reinserts_prompt`, before and after the test."""
    causal_generate_reinserts_prompt.cache_clear()
    yield
    causal_generate_reinserts_prompt.cache_clear()


# ---------------------------------------------------------------------------------------------- constants
def test_file_names_are_the_ones_peft_saves():
    """PEFT's `save_pretrained` writes CONFIG_NAME and SAFETENSORS_WEIGHTS_NAME (WEIGHTS_NAME without
    safetensors), and `from_pretrained` reads them: the reader and validation look for these names."""
    assert (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME) == (
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.bin",
    )


def test_save_pretrained_writes_those_files_with_the_prompt_under_prompt_key(make_model, tmp_path):
    """PEFT saves a prompt-tuning adapter as CONFIG_NAME + SAFETENSORS_WEIGHTS_NAME holding one tensor named
    PROMPT_KEY ("prompt_embeddings"), or WEIGHTS_NAME with `safe_serialization=False`."""
    model = get_peft_model(make_model("t5"), _soft("t5"))
    model.save_pretrained(str(tmp_path / "safe"))
    assert {CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME} <= set(os.listdir(tmp_path / "safe"))
    assert WEIGHTS_NAME not in os.listdir(tmp_path / "safe")
    assert PROMPT_KEY == "prompt_embeddings"
    saved = load_file(str(tmp_path / "safe" / SAFETENSORS_WEIGHTS_NAME))
    assert list(saved) == [PROMPT_KEY]
    assert torch.equal(saved[PROMPT_KEY], prompt_weight(model, "default").detach())
    # PEFT writes WEIGHTS_NAME (a pickle) with safe_serialization=False; for a SoftPromptConfig softprompt_ext then
    # refuses to finish the save (it would refuse to load it), so the pin uses a plain PEFT config
    plain = get_peft_model(make_model("t5"), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3))
    plain.save_pretrained(str(tmp_path / "bin"), safe_serialization=False)
    assert WEIGHTS_NAME in os.listdir(tmp_path / "bin")
    assert SAFETENSORS_WEIGHTS_NAME not in os.listdir(tmp_path / "bin")
    with pytest.raises(ValueError, match=r"save_pretrained\(safe_serialization=False\) wrote a pickled adapter"):
        model.save_pretrained(str(tmp_path / "soft-bin"), safe_serialization=False)


def test_registry_dicts_are_the_ones_peft_reads():
    """`get_peft_model` and `PeftModel.from_pretrained` look prompt-tuning classes up in these very dicts."""
    assert PEFT_TYPE_TO_TUNER_MAPPING is peft.PEFT_TYPE_TO_TUNER_MAPPING
    assert PEFT_TYPE_TO_CONFIG_MAPPING is peft.PEFT_TYPE_TO_CONFIG_MAPPING
    assert PEFT_TYPE_TO_CONFIG_MAPPING is peft.peft_model.PEFT_TYPE_TO_CONFIG_MAPPING  # from_pretrained's lookup


def test_peft_type_is_peft_enum_with_the_prompt_tuning_string():
    """Prompt-tuning configs (PEFT's and SoftPromptConfig) carry `PeftType.PROMPT_TUNING`, value "PROMPT_TUNING",
    which is what adapter_config.json stores."""
    assert PeftType is peft.PeftType
    assert PeftType.PROMPT_TUNING.value == "PROMPT_TUNING"
    assert PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P).peft_type is PeftType.PROMPT_TUNING
    assert _soft("t5").peft_type is PeftType.PROMPT_TUNING


def test_prompt_embedding_is_peft_own_encoder_on_the_prompt_encoder_base():
    """PEFT's prompt-tuning encoder is `PromptEmbedding`, a `BasePromptEncoder` whose `_load_adapter_state_dict`
    PEFT calls to load saved prompts; `PromptEncoderBase` (and so SoftPromptEmbedding) subclasses it."""
    assert PromptEmbedding is peft.PromptEmbedding
    assert issubclass(PromptEmbedding, BasePromptEncoder)
    assert "_load_adapter_state_dict" in vars(BasePromptEncoder)
    assert issubclass(SoftPromptEmbedding, PromptEncoderBase) and issubclass(PromptEncoderBase, PromptEmbedding)


def test_gather_params_ctx_is_a_no_op_without_deepspeed(make_model):
    """PEFT's `gather_params_ctx` gathers ZeRO-3 shards; without DeepSpeed it yields and changes nothing, so the
    initialiser may read the embedding table inside it on every set-up."""
    table = make_model("t5").get_input_embeddings()
    before = table.weight.detach().clone()
    with gather_params_ctx(table.parameters()) as inside:
        assert torch.equal(table.weight, before)
    assert inside is None
    assert torch.equal(table.weight, before)


# ---------------------------------------------------------------------------------------------- registries
def test_prompt_tuning_registry_entries_are_the_classes_get_peft_model_uses(make_model, registry):
    """While softprompt_ext is imported, PEFT's two PROMPT_TUNING slots hold SoftPromptEmbedding (which
    `get_peft_model` instantiates as the prompt encoder, for plain PromptTuningConfig too) and
    PromptTuningConfigLoader."""
    tuner, config_class = registry
    assert (tuner, config_class) == (SoftPromptEmbedding, PromptTuningConfigLoader)
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PROMPT_TUNING] is tuner
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.PROMPT_TUNING] is config_class
    plain = get_peft_model(make_model("t5"), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P))
    soft = get_peft_model(make_model("t5"), _soft("t5"))
    assert type(plain.prompt_encoder["default"]) is tuner
    assert type(soft.prompt_encoder["default"]) is tuner


def test_set_prompt_tuning_registry_entries_round_trips_and_peft_uses_what_is_set(make_model, tmp_path, registry):
    """`get_peft_model` builds whatever tuner class the slot holds, and `PeftModel.from_pretrained` calls
    `.from_pretrained` on whatever config class the slot holds."""
    built, loaded_from = [], []

    class RecordingEmbedding(SoftPromptEmbedding):
        def __init__(self, config, word_embeddings):
            built.append(config.num_virtual_tokens)
            super().__init__(config, word_embeddings)

    class RecordingLoader(PromptTuningConfigLoader):
        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
            loaded_from.append(pretrained_model_name_or_path)
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    set_prompt_tuning_registry_entries(RecordingEmbedding, RecordingLoader)
    assert prompt_tuning_registry_entries() == (RecordingEmbedding, RecordingLoader)
    model = get_peft_model(make_model("t5"), _soft("t5"))
    assert type(model.prompt_encoder["default"]) is RecordingEmbedding and built == [P]
    model.save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(make_model("t5"), str(tmp_path))
    assert loaded_from == [str(tmp_path)]
    assert isinstance(loaded.peft_config["default"], SoftPromptConfig)
    assert built == [P, P]

    set_prompt_tuning_registry_entries(PromptEmbedding, PromptTuningConfig)  # PEFT's own classes
    assert prompt_tuning_registry_entries() == (PromptEmbedding, PromptTuningConfig)
    plain = get_peft_model(make_model("t5"), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P))
    assert type(plain.prompt_encoder["default"]) is PromptEmbedding

    set_prompt_tuning_registry_entries(*registry)
    assert prompt_tuning_registry_entries() == registry


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P), True),
        (SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=P), True),
        (SimpleNamespace(peft_type="PROMPT_TUNING"), True),  # as a loaded JSON config may carry it
        (LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"]), False),
        (PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P), False),
        (PromptEncoderConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, encoder_hidden_size=8), False),
        (object(), False),
        (None, False),
    ],
    ids=["PromptTuningConfig", "SoftPromptConfig", "string", "LoraConfig", "PrefixTuning", "P-tuning", "object", "None"],
)
def test_is_prompt_tuning(config, expected):
    """PEFT marks a config's method with `peft_type` (a `PeftType` member, or its string value)."""
    assert is_prompt_tuning(config) is expected


def test_is_prompt_tuning_of_a_config_loaded_by_peft(make_model, tmp_path):
    """`PeftConfig.from_pretrained` gives back a config whose `peft_type` says PROMPT_TUNING."""
    get_peft_model(make_model("t5"), _soft("t5")).save_pretrained(str(tmp_path))
    assert is_prompt_tuning(PeftConfig.from_pretrained(str(tmp_path))) is True


@pytest.mark.parametrize(
    ("kind", "config_class", "rows"),
    [
        ("t5", PromptTuningConfig, 2 * P),  # plain PEFT on SEQ_2_SEQ_LM: an encoder and a decoder prompt
        ("llama", PromptTuningConfig, P),
        ("gpt2", PromptTuningConfig, P),
        ("t5", SoftPromptConfig, P),  # encoder only (paper section 2)
        ("gpt2", SoftPromptConfig, P),
    ],
)
def test_saved_prompt_rows_is_what_peft_allocates_and_saves(make_model, tmp_path, kind, config_class, rows):
    """PEFT fills a missing `num_transformer_submodules` with 2 for SEQ_2_SEQ_LM and 1 otherwise, and allocates
    (and saves) P x that many prompt rows; SoftPromptConfig says 1."""
    kwargs = {"sample_vocab_size": 50} if config_class is SoftPromptConfig else {}
    config = config_class(task_type=TASK_TYPES[kind], num_virtual_tokens=P, **kwargs)
    assert saved_prompt_rows(config) == rows  # before PEFT has set the adapter up
    model = get_peft_model(make_model(kind), config)
    assert model.peft_config["default"].num_transformer_submodules == rows // P
    assert saved_prompt_rows(model.peft_config["default"]) == rows
    assert tuple(prompt_weight(model, "default").shape) == (rows, H)
    model.save_pretrained(str(tmp_path))
    assert tuple(load_file(str(tmp_path / SAFETENSORS_WEIGHTS_NAME))[PROMPT_KEY].shape) == (rows, H)


def test_split_from_pretrained_kwargs_is_peft_split():
    """`PeftConfig.from_pretrained` sends `hf_hub_download`'s keywords (revision, token, subfolder, cache_dir) to
    the download and the config class's *own* annotated fields to the config; the rest -- inherited fields such as
    `num_virtual_tokens` (declared on PromptLearningConfig) included -- is left over."""
    kwargs = {
        "revision": "v1",
        "token": "hf_x",
        "subfolder": "sub",
        "cache_dir": "/tmp/cache",
        "tokenizer_name_or_path": "tok",
        "prompt_tuning_init": "TEXT",
        "num_virtual_tokens": 4,
        "inference_mode": True,
        "unknown": 1,
    }
    hub, config, other = split_from_pretrained_kwargs(kwargs)
    assert hub == {"revision": "v1", "token": "hf_x", "subfolder": "sub", "cache_dir": "/tmp/cache"}
    assert config == {"tokenizer_name_or_path": "tok", "prompt_tuning_init": "TEXT"}
    assert other == {"num_virtual_tokens": 4, "inference_mode": True, "unknown": 1}
    assert (hub, config, other) == PromptTuningConfig._split_kwargs(kwargs)


@pytest.mark.parametrize(
    ("config", "prompt"),
    [
        (PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P), True),
        (SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, sample_vocab_size=50), True),
        (PromptEncoderConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, encoder_hidden_size=8), True),
        (PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P), False),  # KV cache, not embeddings
        (LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"]), False),
    ],
    ids=["PromptTuningConfig", "SoftPromptConfig", "P-tuning", "PrefixTuning", "LoRA"],
)
def test_active_prompt_config(make_model, config, prompt):
    """A PeftModel's `active_peft_config` is the active adapter's config; prompt and p-tuning prepend virtual
    tokens to the input embeddings, prefix tuning and LoRA do not."""
    model = get_peft_model(make_model("t5"), config)
    assert active_prompt_config(model) is (model.peft_config["default"] if prompt else None)


def test_active_prompt_config_follows_set_adapter_and_ignores_plain_models(make_model):
    """`set_adapter` changes which config `active_peft_config` gives; a transformers model has none."""
    model = get_peft_model(make_model("t5"), _soft("t5"))
    model.add_adapter("other", _soft("t5", num_virtual_tokens=2))
    assert active_prompt_config(model) is model.peft_config["default"]
    model.set_adapter("other")
    assert active_prompt_config(model) is model.peft_config["other"]
    assert active_prompt_config(make_model("t5")) is None


# ---------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("kind", ["t5", "llama", "gpt2"])
def test_prompt_weight_is_the_parameter_peft_trains_and_saves(make_model, kind):
    """`prompt_encoder[name].embedding.weight` is the one trainable parameter of a prompt-tuned model, the
    `prompt_embeddings` PEFT's `get_peft_model_state_dict` returns, and what the forward pass prepends."""
    model = get_peft_model(make_model(kind), _soft(kind))
    weight = prompt_weight(model, "default")
    assert isinstance(weight, torch.nn.Parameter) and tuple(weight.shape) == (P, H) and weight.requires_grad
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is weight
    state = get_peft_model_state_dict(model)
    assert list(state) == [PROMPT_KEY]
    assert torch.equal(state[PROMPT_KEY], weight.detach())
    before = _forward_logits(model, kind)
    with torch.no_grad():
        weight.add_(1.0)
    assert not torch.allclose(_forward_logits(model, kind), before)
    assert torch.equal(get_peft_model_state_dict(model)[PROMPT_KEY], weight.detach())


def test_prompt_weight_of_a_named_adapter(make_model):
    """PEFT keeps one prompt encoder per adapter name in `prompt_encoder`."""
    model = get_peft_model(make_model("t5"), _soft("t5"))
    model.add_adapter("long", _soft("t5", num_virtual_tokens=5))
    assert tuple(prompt_weight(model, "long").shape) == (5, H)
    assert prompt_weight(model, "long") is not prompt_weight(model, "default")
    assert torch.equal(get_peft_model_state_dict(model, adapter_name="long")[PROMPT_KEY], prompt_weight(model, "long"))


def test_has_prompt_encoder(make_model):
    """`prompt_encoder` is keyed by adapter name on a prompt-learning PeftModel; other models have none."""
    model = get_peft_model(make_model("t5"), _soft("t5"))
    assert has_prompt_encoder(model, "default") is True
    assert has_prompt_encoder(model, "other") is False
    lora = get_peft_model(make_model("t5"), LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"]))
    assert has_prompt_encoder(lora, "default") is False
    assert has_prompt_encoder(make_model("t5"), "default") is False


def test_prompt_parameters(make_model):
    """A prompt-tuned PeftModel's prompt encoders hold exactly its prompts; a transformers model, and a LoRA
    PeftModel (no `prompt_encoder` attribute), hold none."""
    model = get_peft_model(make_model("t5"), _soft("t5"))
    assert [id(p) for p in prompt_parameters(model)] == [id(prompt_weight(model, "default"))]
    model.add_adapter("second", _soft("t5", num_virtual_tokens=2))
    ids = {id(p) for p in prompt_parameters(model)}
    assert ids == {id(prompt_weight(model, "default")), id(prompt_weight(model, "second"))}
    assert len(prompt_parameters(model)) == 2
    assert prompt_parameters(make_model("t5")) == []
    lora = get_peft_model(make_model("t5"), LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"]))
    assert prompt_parameters(lora) == []


@pytest.mark.parametrize("kind", ["t5", "llama", "gpt2"])
def test_input_embeddings_is_the_base_models_embedding_module(make_model, tokenizer, kind):
    """PEFT keeps the base model's input embedding module as `word_embeddings` and embeds the input ids with
    it before prepending the prompt. On T5 (transformers 5) that is the encoder's `embed_tokens`, a module of
    its own whose weight is the shared table."""
    base = make_model(kind)
    model = get_peft_model(base, _soft(kind))
    embeddings = input_embeddings(model)
    if kind == "t5":
        assert embeddings is base.get_encoder().get_input_embeddings()
        assert embeddings is not base.get_input_embeddings()  # `shared`: another module, the same weight
    else:
        assert embeddings is base.get_input_embeddings()
    assert embeddings.weight is base.get_input_embeddings().weight
    assert tuple(embeddings.weight.shape) == (len(tokenizer), H)
    seen = []
    handle = embeddings.register_forward_hook(lambda module, args, output: seen.append(args[0].tolist()))
    try:
        _forward_logits(model, kind)
    finally:
        handle.remove()
    assert seen[0] == [[5, 17, 23, 42, 1]]  # the input ids, embedded by this module


# ---------------------------------------------------------------------------------------------- PromptEncoderBase
def test_init_module_only_sets_up_a_bare_module_without_an_embedding():
    """`BasePromptEncoder.__init__` is plain `nn.Module` set-up; `PromptEmbedding.__init__` (skipped) is what would
    build PEFT's `[P x submodules, H]` table."""

    class Bare(PromptEncoderBase):
        def __init__(self):
            self.init_module_only()

    bare = Bare()
    assert not hasattr(bare, "embedding")
    assert list(bare.parameters()) == [] and list(bare.children()) == []
    bare.embedding = torch.nn.Embedding(2, 4)  # submodules register: the nn.Module machinery is set up
    assert [name for name, _ in bare.named_parameters()] == ["embedding.weight"]
    assert isinstance(bare, PromptEmbedding) and isinstance(bare, BasePromptEncoder)


def test_soft_prompt_encoder_holds_only_its_own_prompt(make_model):
    """With `init_module_only`, a SoftPromptConfig encoder on T5 has P rows, not PEFT's 2P."""
    encoder = get_peft_model(make_model("t5"), _soft("t5")).prompt_encoder["default"]
    assert [(name, tuple(p.shape)) for name, p in encoder.named_parameters()] == [("embedding.weight", (P, H))]


@pytest.mark.parametrize("plain", [False, True], ids=["softprompt", "plain-peft"])
def test_check_saved_state_is_called_by_peft_before_the_prompt_loads(make_model, tmp_path, registry, plain):
    """`PeftModel.from_pretrained` and `load_adapter` load a prompt encoder's weights by calling its
    `_load_adapter_state_dict` with the saved tensors; PromptEncoderBase routes that through `check_saved_state`
    first."""
    calls = []

    class Recording(SoftPromptEmbedding):
        def check_saved_state(self, state_dict):
            calls.append((state_dict[PROMPT_KEY].clone(), self.embedding.weight.detach().clone(), sorted(state_dict)))
            super().check_saved_state(state_dict)

    config = PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P) if plain else _soft("t5")
    trained = get_peft_model(make_model("t5"), config)
    with torch.no_grad():
        prompt_weight(trained, "default").copy_(torch.arange(1.0, 1.0 + saved_prompt_rows(config) * H).view(-1, H))
    saved = prompt_weight(trained, "default").detach().clone()
    trained.save_pretrained(str(tmp_path))

    set_prompt_tuning_registry_entries(Recording, registry[1])
    loaded = PeftModel.from_pretrained(make_model("t5"), str(tmp_path))
    assert len(calls) == 1
    given, before, keys = calls[0]
    assert keys == [PROMPT_KEY]
    assert torch.equal(given, saved)
    assert not torch.equal(before, saved)  # called before the weights are in the encoder
    assert torch.equal(prompt_weight(loaded, "default"), saved)
    loaded.load_adapter(str(tmp_path), adapter_name="again")
    assert len(calls) == 2 and torch.equal(calls[1][0], saved)


def test_check_saved_state_can_refuse_a_load(make_model, tmp_path, registry):
    """An exception raised in `check_saved_state` propagates out of `PeftModel.from_pretrained`."""

    class Refusing(SoftPromptEmbedding):
        def check_saved_state(self, state_dict):
            raise ValueError(f"refused {sorted(state_dict)}")

    get_peft_model(make_model("t5"), _soft("t5")).save_pretrained(str(tmp_path))
    set_prompt_tuning_registry_entries(Refusing, registry[1])
    with pytest.raises(ValueError, match=r"^refused \['prompt_embeddings'\]$"):
        PeftModel.from_pretrained(make_model("t5"), str(tmp_path))


def test_default_check_saved_state_accepts_everything():
    """PromptEncoderBase's own hook refuses nothing: a subclass that does not override it loads as plain PEFT."""
    assert PromptEncoderBase.check_saved_state(SimpleNamespace(), {"anything": torch.zeros(1)}) is None


# ---------------------------------------------------------------------------------------------- the causal generate bug
def _generate_matches_greedy_forward(make_model, arch: str) -> bool:
    """PEFT's causal `model.generate` against greedy decoding by full forwards (no cache), as in
    tests/test_peft_contract.py::test_peft_causal_generate_matches_greedy_forward."""
    torch.manual_seed(0)
    model = get_peft_model(
        make_model(arch), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, sample_vocab_size=50, init_seed=0)
    ).eval()
    with torch.no_grad():
        prompt_weight(model, "default").normal_(0, 1.0)  # a prompt that matters
    ids = torch.tensor([[5, 17, 23, 42, 8, 11]])
    steps = 8
    with torch.no_grad():
        loop = ids
        for _ in range(steps):
            next_id = model(input_ids=loop, attention_mask=torch.ones_like(loop)).logits[:, -1].argmax(-1)
            loop = torch.cat([loop, next_id[:, None]], 1)
        generated = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
            min_new_tokens=steps,
        )
    return generated[0, ids.shape[1] :].tolist() == loop[0, ids.shape[1] :].tolist()


def test_causal_generate_reinserts_prompt_is_a_cached_bool_that_leaves_the_rng_alone(fresh_probe, monkeypatch):
    """The probe builds and runs a random GPT-2 once per process; the user's global torch RNG is not touched."""
    probes = []
    real_probe = pi._probe_causal_generate
    monkeypatch.setattr(pi, "_probe_causal_generate", lambda: probes.append(1) or real_probe())
    state = torch.get_rng_state()
    first = causal_generate_reinserts_prompt()
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(first, bool)
    assert causal_generate_reinserts_prompt() is first
    assert probes == [1]  # the second answer came from the cache
    info = causal_generate_reinserts_prompt.cache_info()
    assert (info.hits, info.misses) == (1, 1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_generate_reinserts_prompt_agrees_with_a_direct_check(make_model, arch):
    """True exactly when PEFT's causal generate differs from greedy decoding of the same model (PEFT 0.21 with
    transformers 5: `prepare_inputs_for_generation` looks for `past_key_values`, generate passes `cache`)."""
    assert causal_generate_reinserts_prompt() is not _generate_matches_greedy_forward(make_model, arch)


def _probe_model(make_model, arch: str):
    torch.manual_seed(0)
    model = get_peft_model(make_model(arch), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    with torch.no_grad():
        prompt_weight(model, "default").normal_(0, 3.0)  # a prompt that matters
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_differs_from_forward_is_true_with_the_bug_and_false_without(make_model, arch):
    """The probe's check, on the same model with and without the re-inserted prompt. Before, it compared
    `scores` (logits after the processors; `min_new_tokens` sets EOS to -inf) with raw logits, so it answered
    True on every install."""
    ids = torch.tensor([[5, 17, 23]])
    model = _probe_model(make_model, arch)
    assert pi.generate_differs_from_forward(model, ids) is causal_generate_reinserts_prompt()
    blind_to_the_cache(model)
    assert pi.generate_differs_from_forward(model, ids) is True


@pytest.mark.skipif(Version(peft.__version__) < Version("0.22"), reason="PEFT 0.21 has the bug under transformers >= 5.24")
def test_peft_022_reads_the_cache_under_either_name_so_no_workaround(fresh_probe):
    """PEFT 0.22's `prepare_inputs_for_generation` reads the cache under the name transformers uses: no warning,
    and softprompt_ext.generate calls PEFT's generate."""
    assert causal_generate_reinserts_prompt() is False


def test_warn_if_causal_generate_is_broken_warns_once_per_process(monkeypatch):
    """With the bug present the warning comes once, however often a causal model is built."""
    monkeypatch.setattr(pi, "_warned", [])
    monkeypatch.setattr(pi, "causal_generate_reinserts_prompt", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            warn_if_causal_generate_is_broken()
    found = _broken_generate_warnings(caught)
    assert len(found) == 1 and found[0].category is UserWarning
    assert pi._warned == [True]


def test_the_warning_names_the_workaround(monkeypatch):
    """The warning says what is wrong with PEFT's causal generate and which call to use instead."""
    monkeypatch.setattr(pi, "_warned", [])
    monkeypatch.setattr(pi, "causal_generate_reinserts_prompt", lambda: True)
    with pytest.warns(UserWarning, match=BROKEN_GENERATE + r".*softprompt_ext\.generate\(model, input_ids=\.\.\."):
        warn_if_causal_generate_is_broken()


def test_building_causal_soft_prompt_models_warns_once_exactly_when_the_bug_is_here(make_model, monkeypatch):
    """SoftPromptEmbedding asks on every causal set-up; the answer on this install decides."""
    monkeypatch.setattr(pi, "_warned", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(make_model("llama"), _soft("llama"))
        get_peft_model(make_model("gpt2"), _soft("gpt2"))
        get_peft_model(make_model("t5"), _soft("t5"))  # seq2seq never asks
    assert len(_broken_generate_warnings(caught)) == (1 if causal_generate_reinserts_prompt() else 0)


def test_no_warning_when_generate_is_fine(make_model, monkeypatch):
    """An install whose PEFT generate is right (the probe answers False) never warns, not even once."""
    monkeypatch.setattr(pi, "_warned", [])
    monkeypatch.setattr(pi, "causal_generate_reinserts_prompt", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_causal_generate_is_broken()
        get_peft_model(make_model("llama"), _soft("llama"))
    assert _broken_generate_warnings(caught) == []
    assert pi._warned == []


def test_the_warning_points_at_the_line_that_called_get_peft_model(make_model, monkeypatch):
    """The warning names the user's line, not a frame inside PEFT (the encoder is built 7 frames below
    get_peft_model, and at other depths below from_pretrained / load_adapter)."""
    monkeypatch.setattr(pi, "_warned", [])
    monkeypatch.setattr(pi, "causal_generate_reinserts_prompt", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(make_model("llama"), _soft("llama"))
    assert [w.filename for w in _broken_generate_warnings(caught)] == [__file__]


def test_causal_lm_model_class_is_the_class_get_peft_model_and_from_pretrained_build(tmp_path):
    """PEFT builds a CAUSAL_LM model from its task registry slot, in get_peft_model and in from_pretrained;
    softprompt_ext's class stands there while it is imported (a subclass under PEFT's class name)."""
    from softprompt_ext import tiny_models
    from softprompt_ext.causal_lm import PeftModelForCausalLM as SharedPrefixModel
    from softprompt_ext.peft_internals import causal_lm_model_class, set_causal_lm_model_class

    assert causal_lm_model_class() is SharedPrefixModel
    config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)

    class Marker(SharedPrefixModel):
        pass

    set_causal_lm_model_class(Marker)
    try:
        model = peft.get_peft_model(tiny_models.build_llama(32), config)
        assert type(model) is Marker
        model.save_pretrained(str(tmp_path))
        assert type(peft.PeftModel.from_pretrained(tiny_models.build_llama(32), str(tmp_path))) is Marker
    finally:
        set_causal_lm_model_class(SharedPrefixModel)
    assert causal_lm_model_class() is SharedPrefixModel
