"""`SoftPromptConfig`: Lester et al. (2021) prompt tuning as a PEFT config.

Lester, Al-Rfou, Constant (2021), "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691

Design decisions
----------------
* The config subclasses PEFT's `PromptTuningConfig` and keeps `peft_type=PROMPT_TUNING`, so every PEFT code
  path (forward, generate, Trainer, save/load, Hub, quantised models) applies unchanged.
* Encoder-only placement (paper section 2): `num_transformer_submodules` is 1 for every task type. On T5
  PEFT's own default is 2, which allocates P decoder rows that are never used but are trained and saved.
* Saving splits the config in two files so that plain PEFT can load the adapter without a warning:
  `adapter_config.json` holds only the keys `PromptTuningConfig` knows; `softprompt_config.json` holds the
  record of how the prompt was made (labels, sample size, seed, ...). Loading with `softprompt_ext`
  imported merges both back into a `SoftPromptConfig` (see `registration.py`).
* What is saved is what can be read back: at construction (and again when saving) both JSON files are
  serialised as they will be written, so a field JSON cannot hold is a `TypeError`, and a config whose file
  would exceed the adapter reader's `MAX_JSON_BYTES` (1 MiB; e.g. 100,000 class labels, a 2 MB init text) is a
  `ValueError` naming the field -- rather than an adapter that the library itself then refuses to load.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from peft import PromptTuningConfig

from .adapters.atomic import atomic_write_text, refresh_digest
from .adapters.model_card import update_model_card
from .peft_internals import (
    CONFIG_NAME,
    SAFETENSORS_WEIGHTS_NAME,
    WEIGHTS_NAME,
    record_peft_version_missing,
    split_from_pretrained_kwargs,
)
from .version import __version__

RECORD_NAME = "softprompt_config.json"  # sidecar file next to adapter_config.json
# adapter_config.json carries a copy of the record under auto_mapping[RECORD_KEY], so that PEFT entry points that
# read only adapter_config.json (PeftConfig.from_pretrained, from_peft_type, get_peft_config) build a
# SoftPromptConfig too. PEFT reads auto_mapping only for task_type=None adapters (AutoPeftModel), which a
# SoftPromptConfig never is, and keeps unknown keys of it as they are, so plain PEFT loads the file unchanged.
RECORD_KEY = "softprompt_ext"
RECORD_FORMAT_VERSION = 1


class SoftPromptInit(str, enum.Enum):
    """How the soft prompt is initialised (paper section 3.2, Figure 3b).

    Being a `str` enum, the value saves to JSON as a plain string that plain PEFT also accepts.
    """

    CLASS_LABELS = "CLASS_LABELS"  # mean sub-token embedding of each label, rest SAMPLE_VOCAB
    SAMPLE_VOCAB = "SAMPLE_VOCAB"  # embeddings of tokens drawn from the most common tokens
    RANDOM_UNIFORM = "RANDOM_UNIFORM"  # U(-init_range, init_range)
    TEXT = "TEXT"  # one sub-token embedding per row, rest SAMPLE_VOCAB
    SAVED_PROMPT = "SAVED_PROMPT"  # start from a saved adapter's prompt (continue training, SPoT transfer)
    RANDOM = "RANDOM"  # PEFT's own initialisation: torch's N(0, 1)


_VALID_INITS = ", ".join(repr(member.value) for member in SoftPromptInit)
_NEEDS_TOKENIZER = (SoftPromptInit.CLASS_LABELS, SoftPromptInit.TEXT)
PAPER_SAMPLE_VOCAB_SIZE = 5000  # paper section 3.2: the 5,000 most common tokens
MAX_VIRTUAL_TOKENS = 100_000  # the paper goes up to 150; a larger P is a typo, not a prompt
# inherited PEFT fields that PromptTuningConfig leaves unchecked: name -> (type, example for the message)
_PEFT_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "token_dim": (int, "768"),
    "num_attention_heads": (int, "12"),
    "num_layers": (int, "12"),
    "tokenizer_name_or_path": (str, "'google/t5-base-lm-adapt'"),
    "prompt_tuning_init_text": (str, "'Classify the sentiment'"),
    "init_prompt_path": (str, "'path/to/adapter'"),
    "base_model_name_or_path": (str, "'google/t5-base-lm-adapt'"),
    "revision": (str, "'main'"),
    "tokenizer_kwargs": (dict, "{'use_fast': True}"),
    "modules_to_save": (list, "['classifier']"),
    "peft_version": (str, "'0.21.2' (or leave it unset: PEFT fills it in)"),
    "auto_mapping": (dict, "{'base_model_class': 'T5ForConditionalGeneration', 'parent_library': 'transformers'}"),
}
MAX_INIT_RANGE = 1.7e38  # U(-r, r) must fit float32, the prompt's dtype: torch's uniform_ needs 2r <= 3.4e38


@dataclass
class SoftPromptConfig(PromptTuningConfig):
    """Configuration of an encoder-side soft prompt of `num_virtual_tokens` x d_model trainable numbers.

    Use it with PEFT's own function: `get_peft_model(model, SoftPromptConfig(...))`; importing `softprompt_ext`
    is all the registration there is.

    Args:
        num_virtual_tokens: prompt length P. Default 100 (paper section 3, Figure 3a: gains are marginal past
            20, large models do slightly worse past 100).
        prompt_tuning_init: a `SoftPromptInit` value. Default `SAMPLE_VOCAB`; the paper's best is
            `CLASS_LABELS` (section 3.2, Figure 3b), which needs `class_labels`.
        class_labels: label strings for `CLASS_LABELS`; label i fills row i with the mean embedding of its
            sub-tokens (tokenised without special tokens). Labels beyond P are dropped with a warning. Also
            kept, as a record, with `SAVED_PROMPT`.
        sample_vocab_size: the pool of `SAMPLE_VOCAB` (and of the rows that `CLASS_LABELS`, `TEXT` and
            `SAVED_PROMPT` leave free): the N most common tokens, special tokens excluded. Default None: the
            paper's 5,000 (section 3.2), or the whole usable vocabulary with a warning when it has fewer, as the
            official implementation does. An explicit N larger than the usable vocabulary is an error (it says
            how many there are). "Most common" is "lowest ids": SentencePiece (T5) orders its vocabulary by
            likelihood and BPE (GPT-2, Llama) by merge order; byte-fallback tokens `<0xNN>` are skipped.
        init_range: `RANDOM_UNIFORM` draws from U(-init_range, init_range). Default 0.5 (paper section 3.2;
            the official code's flax `uniform(0.5)` gives U[0, 0.5), the paper's range is the one used here).
        init_seed: seed of every random choice of the initialiser; `None` uses torch's global generator.
        init_prompt_path: for `SAVED_PROMPT`: an adapter directory, a Hub repo id of an adapter, or a
            `.safetensors` file holding `prompt_embeddings`. A different P is truncated or filled with
            sampled vocabulary; a different d_model is an error.
        warn_if_not_lm_adapted: warn when the base model is a known span-corruption-only T5 checkpoint
            (paper section 3.3, Figure 3c). Set to False to silence.

    The PEFT fields `prompt_tuning_init_text`, `tokenizer_name_or_path` and `tokenizer_kwargs` keep their
    meaning; `CLASS_LABELS` needs `tokenizer_name_or_path` too.
    """

    num_virtual_tokens: int = field(default=100, metadata={"help": "Prompt length P (paper: 100)."})
    prompt_tuning_init: SoftPromptInit | str = field(
        default=SoftPromptInit.SAMPLE_VOCAB, metadata={"help": f"One of {_VALID_INITS}."}
    )
    class_labels: list[str] | None = field(default=None, metadata={"help": "Label strings for CLASS_LABELS."})
    sample_vocab_size: int | None = field(
        default=None, metadata={"help": "Pool of the most common tokens (None: 5000, capped at the vocabulary)."}
    )
    init_range: float = field(default=0.5, metadata={"help": "RANDOM_UNIFORM draws U(-r, r)."})
    init_seed: int | None = field(default=None, metadata={"help": "Seed of the initialiser."})
    init_prompt_path: str | None = field(default=None, metadata={"help": "Adapter to start from (SAVED_PROMPT)."})
    warn_if_not_lm_adapted: bool = field(default=True, metadata={"help": "Warn on span-corruption-only T5."})

    def __post_init__(self) -> None:
        self._validate()
        super().__post_init__()  # PEFT's checks, peft_version, peft_type=PROMPT_TUNING

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        """Every field, in order: task and length, the init, what the init reads, the random draws."""
        self._validate_task_and_length()
        init = self._validate_init()
        self._validate_init_inputs(init)
        self._validate_random_draws()
        self._validate_peft_fields()
        if isinstance(self.prompt_tuning_init_text, str):
            _check_unicode("prompt_tuning_init_text", self.prompt_tuning_init_text)
        self._check_saved_json()

    def _validate_task_and_length(self) -> None:
        """`task_type` is required (it decides the placement); P is an int in [1, MAX_VIRTUAL_TOKENS]."""
        if self.task_type is None:
            # PEFT would accept it and fail later in get_peft_model with a bare KeyError: None
            raise ValueError(
                "task_type is required: the prompt's placement depends on it. Pass task_type='SEQ_2_SEQ_LM' "
                "for T5-style encoder prompt tuning (paper section 2) or task_type='CAUSAL_LM' for decoder-only "
                "models."
            )
        if isinstance(self.num_virtual_tokens, bool) or not isinstance(self.num_virtual_tokens, int):
            raise TypeError(
                f"num_virtual_tokens must be an int, got {self.num_virtual_tokens!r}; "
                "pass the prompt length P, e.g. num_virtual_tokens=100."
            )
        if self.num_virtual_tokens < 1:
            raise ValueError(
                f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}; "
                "the paper uses 100 (1 already works for the largest models)."
            )
        if self.num_virtual_tokens > MAX_VIRTUAL_TOKENS:
            raise ValueError(
                f"num_virtual_tokens must be <= {MAX_VIRTUAL_TOKENS}, got {self.num_virtual_tokens}; "
                "the paper goes up to 150 (section 3, Figure 3a)."
            )

    def _validate_init(self) -> SoftPromptInit:
        """`prompt_tuning_init` as a `SoftPromptInit`; the prompt goes in front of the encoder only."""
        try:
            self.prompt_tuning_init = SoftPromptInit(getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init))
        except ValueError:
            raise ValueError(
                f"prompt_tuning_init={self.prompt_tuning_init!r} is not known; use one of {_VALID_INITS}."
            ) from None
        init = self.prompt_tuning_init

        if self.num_transformer_submodules not in (None, 1):
            raise ValueError(
                f"num_transformer_submodules={self.num_transformer_submodules!r}: SoftPromptConfig places the "
                "prompt in front of the encoder input only (paper section 2); leave it unset (it becomes 1). "
                "For PEFT's encoder+decoder allocation use peft.PromptTuningConfig."
            )
        self.num_transformer_submodules = 1
        return init

    def _validate_init_inputs(self, init: SoftPromptInit) -> None:
        """What the chosen init reads: class labels, a tokenizer, a text, a saved prompt."""
        if self.class_labels is not None:
            if isinstance(self.class_labels, str) or not isinstance(self.class_labels, list | tuple):
                raise TypeError(
                    f"class_labels must be a list of strings, got {self.class_labels!r}; "
                    "e.g. class_labels=['positive', 'negative']."
                )
            self.class_labels = list(self.class_labels)
            for i, label in enumerate(self.class_labels):
                if not isinstance(label, str) or not label.strip():
                    raise ValueError(
                        f"class_labels[{i}]={label!r} is empty or not a string; every label must be the "
                        "non-empty text the model should produce for that class."
                    )
                _check_unicode(f"class_labels[{i}]", label)
            if init not in (SoftPromptInit.CLASS_LABELS, SoftPromptInit.SAVED_PROMPT):
                raise ValueError(
                    f"class_labels is set but prompt_tuning_init={init.value!r} does not use it; "
                    "set prompt_tuning_init='CLASS_LABELS' (paper section 3.2) or drop class_labels."
                )
        if init == SoftPromptInit.CLASS_LABELS and not self.class_labels:
            raise ValueError(
                f"prompt_tuning_init='CLASS_LABELS' needs class_labels, got {self.class_labels!r}; "
                "pass the label strings, e.g. class_labels=['True', 'False']."
            )
        if init in _NEEDS_TOKENIZER and not self.tokenizer_name_or_path:
            raise ValueError(
                f"prompt_tuning_init={init.value!r} needs tokenizer_name_or_path, got "
                f"{self.tokenizer_name_or_path!r}; pass the tokenizer of the base model (a Hub id or a directory)."
            )
        if init == SoftPromptInit.TEXT and not self.prompt_tuning_init_text:
            raise ValueError(
                f"prompt_tuning_init='TEXT' needs prompt_tuning_init_text, got {self.prompt_tuning_init_text!r}; "
                "pass the text whose sub-token embeddings start the prompt."
            )
        if init == SoftPromptInit.SAVED_PROMPT and not self.init_prompt_path:
            raise ValueError(
                f"prompt_tuning_init='SAVED_PROMPT' needs init_prompt_path, got {self.init_prompt_path!r}; "
                "pass an adapter directory, a Hub adapter id or a .safetensors file."
            )

    def _validate_random_draws(self) -> None:
        """The sampled vocabulary, the uniform range and the seed (paper section 3.2 defaults)."""
        if self.sample_vocab_size is not None and (
            isinstance(self.sample_vocab_size, bool)
            or not isinstance(self.sample_vocab_size, int)
            or self.sample_vocab_size < 1
        ):
            raise ValueError(
                f"sample_vocab_size must be an int >= 1 or None, got {self.sample_vocab_size!r}; "
                "None (the default) samples from the paper's 5000 most common tokens, or the whole vocabulary "
                "when it is smaller."
            )
        if (
            isinstance(self.init_range, bool)
            or not isinstance(self.init_range, int | float)
            or not math.isfinite(self.init_range)
            or self.init_range <= 0
        ):
            raise ValueError(
                f"init_range must be a finite number > 0, got {self.init_range!r}; "
                "the paper draws from U(-0.5, 0.5), i.e. init_range=0.5."
            )
        if self.init_range > MAX_INIT_RANGE:
            raise ValueError(
                f"init_range={self.init_range!r} overflows float32, the prompt's dtype (U(-r, r) needs "
                f"r <= {MAX_INIT_RANGE:.2g}); the paper draws from U(-0.5, 0.5), i.e. init_range=0.5."
            )
        if self.init_seed is not None and (isinstance(self.init_seed, bool) or not isinstance(self.init_seed, int)):
            raise TypeError(f"init_seed must be an int or None, got {self.init_seed!r}.")
        if self.init_seed is not None and not -(2**63) <= self.init_seed < 2**64:
            raise ValueError(f"init_seed={self.init_seed} does not fit torch's 64-bit seed; pass a smaller int.")

    def _check_saved_json(self) -> None:
        """Both files serialise as they will be written, each within what the adapter reader accepts."""
        # local import: the reader imports torch and huggingface_hub
        from .adapters.reader import MAX_JSON_BYTES

        try:
            texts = self._saved_json()
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the config cannot be saved as JSON ({exc}); every field must hold JSON values (str, int, float, "
                "bool, None, and lists / dicts of them)."
            ) from None
        for filename, text in zip((CONFIG_NAME, RECORD_NAME), texts, strict=True):
            size = len(text.encode("utf-8")) + 1
            if size > MAX_JSON_BYTES:
                sizes = {f.name: len(json.dumps(getattr(self, f.name), default=str)) for f in dataclasses.fields(self)}
                biggest = max(sizes, key=sizes.__getitem__)
                raise ValueError(
                    f"{biggest} ({sizes[biggest]:,} bytes of JSON) makes the saved {filename} {size:,} bytes, over "
                    f"the {MAX_JSON_BYTES:,} an adapter reader accepts; shorten it (class labels beyond "
                    "num_virtual_tokens and init text beyond P sub-tokens are never used)."
                )

    def _validate_peft_fields(self) -> None:
        """Types of the inherited PEFT fields, which PEFT does not check: a wrong type would fail late
        (`os.stat` of an int tokenizer path, a set JSON cannot save) or load back as something else."""
        for name, (kind, example) in _PEFT_FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, os.PathLike) and kind is str:
                value = os.fspath(value)
                setattr(self, name, value)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise TypeError(
                    f"{name} must be of type {kind.__name__} or None, got {value!r}; e.g. {name}={example}."
                )
        if self.token_dim is not None and self.token_dim < 1:
            raise ValueError(f"token_dim must be >= 1 (the base model's d_model) or None, got {self.token_dim}.")
        if self.modules_to_save is not None and not all(isinstance(m, str) for m in self.modules_to_save):
            raise TypeError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}.")
        for name in ("inference_mode", "warn_if_not_lm_adapted"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    # ------------------------------------------------------------------ saving
    @classmethod
    def peft_field_names(cls) -> set[str]:
        """Names of the fields plain PEFT's `PromptTuningConfig` knows; they go to `adapter_config.json`."""
        return {f.name for f in dataclasses.fields(PromptTuningConfig)}

    @classmethod
    def record_field_names(cls) -> list[str]:
        """Names of the fields only softprompt-ext knows; they go to `softprompt_config.json`."""
        peft_names = cls.peft_field_names()
        return [f.name for f in dataclasses.fields(cls) if f.name not in peft_names]

    def record(self) -> dict[str, Any]:
        """The record of how the prompt was made (also in `adapter_config.json`: init, P, tokenizer, text)."""
        extra = {name: getattr(self, name) for name in self.record_field_names()}
        return {
            "format_version": RECORD_FORMAT_VERSION,
            "softprompt_ext_version": _version(),
            "prompt_tuning_init": SoftPromptInit(self.prompt_tuning_init).value,
            **extra,
        }

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write `adapter_config.json` (plain PEFT keys) and `softprompt_config.json` (the record), atomically.

        When the directory holds an adapter (weights or a model card), its model card gains a soft-prompt
        section and the tags `prompt-tuning` and `softprompt-ext`.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory!r} is a file; pass a directory.")
        os.makedirs(save_directory, exist_ok=True)
        _refuse_pickled_weights(save_directory)
        self._check_saved_json()  # fields may have changed since construction
        plain_text, record_text = self._saved_json(kwargs.pop("auto_mapping_dict", None))
        atomic_write_text(os.path.join(save_directory, CONFIG_NAME), plain_text)
        atomic_write_text(os.path.join(save_directory, RECORD_NAME), record_text)

        update_model_card(save_directory, self)
        # last: over an adapter saved by save_adapter_atomically, a save killed before this line leaves the old
        # digest, so the reader refuses the mix of old and new files; a completed save loads
        refresh_digest(save_directory)

    def _saved_json(self, auto_mapping_dict: dict | None = None) -> tuple[str, str]:
        """The texts of `adapter_config.json` and `softprompt_config.json`, exactly as `save_pretrained` writes."""
        peft_names = self.peft_field_names()
        plain = {k: v for k, v in dataclasses.asdict(self).items() if k in peft_names}
        plain = {k: (list(v) if isinstance(v, set) else v) for k, v in plain.items()}
        plain["prompt_tuning_init"] = SoftPromptInit(self.prompt_tuning_init).value
        record = self.record()
        mapping = dict(auto_mapping_dict if auto_mapping_dict is not None else plain.get("auto_mapping") or {})
        plain["auto_mapping"] = {**mapping, RECORD_KEY: record}
        return json.dumps(plain, indent=2, sort_keys=True), json.dumps(record, indent=2, sort_keys=True)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> SoftPromptConfig:
        """Load `adapter_config.json` + `softprompt_config.json` from a directory or a Hub repo.

        Raises `ValueError` when the adapter has no softprompt record (a plain PEFT adapter: load it with
        `peft.PromptTuningConfig.from_pretrained`, or start a new prompt from it with
        `SoftPromptConfig.continue_from`).
        """
        from .adapters.reader import (
            read_adapter_json,  # local import keeps huggingface_hub out of config construction
        )

        hub_kwargs, class_kwargs, _ = split_from_pretrained_kwargs(kwargs)
        plain = read_adapter_json(pretrained_model_name_or_path, CONFIG_NAME, subfolder, **hub_kwargs)
        record = read_adapter_json(pretrained_model_name_or_path, RECORD_NAME, subfolder, **hub_kwargs)
        if plain is None:
            raise ValueError(f"No {CONFIG_NAME} at {pretrained_model_name_or_path!r}; is it an adapter?")
        if "peft_type" not in plain:  # PEFT raises TypeError for a JSON file that is not an adapter config
            # worded as PEFT's own error for the same file, so code matching PEFT's message keeps working
            raise TypeError(
                f"The {cls.__name__} config that is trying to be loaded is missing required keys: {{'peft_type'}}. "
                f"({CONFIG_NAME} at {pretrained_model_name_or_path!r} is not a PEFT adapter config.)"
            )
        if plain["peft_type"] != "PROMPT_TUNING":
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is a {plain['peft_type']} adapter; SoftPromptConfig loads "
                "prompt-tuning adapters only. Load it with peft.PeftConfig.from_pretrained."
            )
        plain, embedded = split_embedded_record(plain)
        record = record if record is not None else embedded
        if record is None:
            raise ValueError(
                f"{pretrained_model_name_or_path!r} has no {RECORD_NAME}: it is a plain PEFT adapter. Load it "
                "with peft.PromptTuningConfig.from_pretrained, or start a new soft prompt from its weights with "
                "SoftPromptConfig.continue_from(path)."
            )
        config = cls.from_parts(plain, record, **class_kwargs)
        record_peft_version_missing(config, plain)
        return config

    @classmethod
    def from_parts(cls, plain: dict[str, Any], record: dict[str, Any], **overrides: Any) -> SoftPromptConfig:
        """Build a config from the two saved JSON objects; unknown keys are dropped with a warning."""
        plain, _ = split_embedded_record(plain)
        merged = {**plain, **{k: v for k, v in record.items() if k not in ("format_version", "softprompt_ext_version")}}
        merged.update(overrides)
        if merged.get("peft_type") not in (None, "PROMPT_TUNING"):
            raise ValueError(
                f"peft_type={merged.get('peft_type')!r} in the adapter config; SoftPromptConfig loads "
                "PROMPT_TUNING adapters only."
            )
        return cls(**known_fields(cls, merged, stacklevel=4))

    @classmethod
    def from_json_file(cls, path_json_file: str, **kwargs: Any) -> dict[str, Any]:
        """The keys of a saved config file as one dict, record fields included (PEFT's method, extended).

        For an `adapter_config.json` the record comes from the copy inside it, else from the
        `softprompt_config.json` beside it; a plain PEFT file gives PEFT's keys only.
        """
        loaded = super().from_json_file(path_json_file, **kwargs)
        loaded, record = split_embedded_record(loaded)
        sidecar = os.path.join(os.path.dirname(os.fspath(path_json_file)), RECORD_NAME)
        if record is None and os.path.basename(os.fspath(path_json_file)) == CONFIG_NAME and os.path.isfile(sidecar):
            with open(sidecar, encoding="utf-8") as handle:
                record = json.load(handle)
        if isinstance(record, dict):
            loaded.update({k: v for k, v in record.items() if k not in ("format_version", "softprompt_ext_version")})
        return loaded

    @classmethod
    def continue_from(cls, adapter: str, **overrides: Any) -> SoftPromptConfig:
        """A trainable config that starts from a saved prompt: the way to continue training a saved adapter.

        PEFT refuses `PeftModel.from_pretrained(..., is_trainable=True)` for prompt adapters. Instead:

            config = SoftPromptConfig.continue_from("my-adapter")
            model = get_peft_model(base, config)      # prompt starts from my-adapter's prompt, trainable

        Works for softprompt-ext adapters (settings kept) and plain PEFT prompt-tuning adapters (their
        encoder rows are used). `overrides` replace fields, e.g. `num_virtual_tokens=20` (truncate or fill).
        """
        from .adapters.reader import read_adapter_json

        plain = read_adapter_json(adapter, CONFIG_NAME, None)
        if plain is None:
            raise ValueError(f"No {CONFIG_NAME} at {adapter!r}; pass an adapter directory or Hub adapter id.")
        plain, embedded = split_embedded_record(plain)
        record = read_adapter_json(adapter, RECORD_NAME, None) or embedded or {}
        keep = {"task_type", "num_virtual_tokens", "tokenizer_name_or_path", "class_labels", "sample_vocab_size",
                "init_seed", "warn_if_not_lm_adapted", "base_model_name_or_path", "revision"}
        base = {k: v for k, v in {**plain, **record}.items() if k in keep and v is not None}
        base.update(prompt_tuning_init=SoftPromptInit.SAVED_PROMPT, init_prompt_path=adapter)
        base.update(overrides)
        return cls(**base)


def split_embedded_record(plain: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`adapter_config.json`'s keys without the record copy in `auto_mapping[RECORD_KEY]`, and that copy."""
    mapping = plain.get("auto_mapping")
    if not isinstance(mapping, dict) or RECORD_KEY not in mapping:
        return plain, None
    rest = {k: v for k, v in mapping.items() if k != RECORD_KEY}
    record = mapping[RECORD_KEY]
    return {**plain, "auto_mapping": rest or None}, (record if isinstance(record, dict) else None)


def _check_unicode(name: str, text: str) -> None:
    """Text a tokenizer can encode: no lone surrogates (what `str(bytes, errors='surrogateescape')` leaves)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name}={text!r} is not valid Unicode text: it holds the lone surrogate {text[exc.start]!r} at "
            f"index {exc.start}, which no tokenizer can encode; decode the label's bytes as UTF-8 first."
        ) from None


def _refuse_pickled_weights(save_directory: str) -> None:
    """`save_pretrained(safe_serialization=False)` writes `adapter_model.bin` before the config: refuse there.

    softprompt_ext never loads a pickled adapter (unpickling can run code), so the config is not written next
    to one: the directory does not become an adapter that the library then refuses. A `.bin` older than the
    directory's `adapter_model.safetensors` is an old file, not this save's, and is left alone.
    """
    pickled = os.path.join(save_directory, WEIGHTS_NAME)
    safe = os.path.join(save_directory, SAFETENSORS_WEIGHTS_NAME)
    if os.path.isfile(pickled) and (not os.path.isfile(safe) or os.path.getmtime(pickled) > os.path.getmtime(safe)):
        raise ValueError(
            f"{pickled}: save_pretrained(safe_serialization=False) wrote a pickled adapter, which softprompt_ext "
            f"refuses to load (unpickling can run code), so {CONFIG_NAME} was not written next to it. Save with "
            f"safe_serialization=True (PEFT's default) and delete {WEIGHTS_NAME}."
        )


def known_fields(config_class: type, data: dict[str, Any], source: str = "", stacklevel: int = 3) -> dict[str, Any]:
    """`data` restricted to the init fields of the config dataclass; unknown keys dropped with one warning.

    The warning names `config_class` (PEFT's `PromptTuningConfig` for a plain adapter, as PEFT's own does).

    Both config classes load this way (`SoftPromptConfig.from_parts`, a plain `PromptTuningConfig` in
    `adapters.validation.build_config`), as PEFT does: a key a newer PEFT or softprompt-ext wrote is ignored.
    """
    known = {f.name for f in dataclasses.fields(config_class) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        # the message starts as PEFT's own for the same case, so filters written for PEFT's warning still match
        where = f" ({source})" if source else ""
        warnings.warn(
            f"Unexpected keyword arguments {unknown} for class {config_class.__name__}, these are ignored.{where} "
            "The adapter was saved by a newer PEFT or softprompt-ext: upgrade them to keep these settings.",
            stacklevel=stacklevel,
        )
    return {k: v for k, v in data.items() if k in known}


def _version() -> str:
    return __version__
