"""Which of PEFT's prompt-tuning cases are expected to fail, in which variant, and why.

A case id is the pytest node id relative to PEFT's `tests/` folder, with softprompt-ext's class name replaced by
PEFT's (`SoftPromptConfig` -> `PromptTuningConfig`) and the index pytest appends to unnamed dict parameters
dropped (`config_kwargs22` -> `config_kwargs`), so one id names the same case in both variants and across PEFT
releases that reorder their config lists. In an entry's `case`, `*` matches any text and every other character
(brackets included) stands for itself.

Kinds:
* "intended": softprompt-ext differs from PEFT on purpose (the variant is "softprompt"). xfail(strict=True).
* "upstream": a bug of PEFT / transformers that fails with PEFT's own class too. xfail(strict=True): when
  upstream fixes it, the case passes, the strict xfail fails the run, and the entry should go.
* "environment": the case needs what this harness does not provide (`requires`: "network" for the real
  Hugging Face Hub, or an importable module such as "sklearn"); skipped, with the reason, only while missing.

CONTRIBUTING.md's table of intended differences is generated from this file:
`python scripts/peft_suite/run.py --table` prints it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("intended", "upstream", "environment")
VARIANTS = ("peft", "softprompt")
BOTH = VARIANTS
OURS = ("softprompt",)

# tests without a config_cls parameter that still exercise prompt tuning: (file, function)
EXTRA_TESTS = {
    ("test_config.py", "test_from_peft_type"),  # every PeftType, PROMPT_TUNING among them
}


# PEFT's pyproject turns transformers' DeprecationWarning / FutureWarning into errors; these are added after
# its filters (pytest's -W, which take precedence). Each is a deprecation that PEFT's own code triggers.
WARNING_FILTERS: tuple[tuple[str, str], ...] = (
    (
        "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",
        "PEFT 0.21 reads `model.is_gradient_checkpointing` in PeftModel.__init__ (peft_model.py); transformers 5.x "
        "deprecated it for `is_activation_checkpointing`, so every get_peft_model fails under PEFT's "
        "error::FutureWarning:transformers filter (upstream, both variants; softprompt-ext's pyproject ignores "
        "the same warning)",
    ),
    (
        "ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning",
        "PEFT 0.21's test bodies and `prepare_model_for_kbit_training` call `model.gradient_checkpointing_enable()`, "
        "deprecated in transformers 5.x for `activation_checkpointing_enable` (upstream, both variants)",
    ),
)


# test_config.py's ALL_CONFIG_CLASSES pairs each class with its mandatory kwargs: `(PromptTuningConfig, {})`.
# SoftPromptConfig has one mandatory kwarg, task_type (an intended difference, pinned by the
# test_valid_task_type[None-...] entry below), so in the softprompt variant a case of that table gets these
# instead of `{}` -- unless the test passes task_type itself. Without it every case would stop at the
# constructor and test nothing else.
SOFTPROMPT_MANDATORY_KWARGS = {"task_type": "CAUSAL_LM"}


@dataclass(frozen=True)
class Expectation:
    case: str  # case id, `*` matching any text
    kind: str  # one of KINDS
    variants: tuple[str, ...]  # variants it applies to
    peft: str  # what PEFT does
    ours: str  # what softprompt-ext does (for "upstream": the same failure, or "-")
    why: str
    link: str = ""  # upstream issue / PR, or the code that shows it
    transformers: str = ""  # a version specifier (">=5.1"): applies only to those transformers versions
    peft_versions: str = ""  # a version specifier ("<0.22"): applies only to those PEFT versions
    requires: str = ""  # kind "environment": "network" or a module name


_GENERATE_CACHE_BUG = (
    "PeftModelForCausalLM.prepare_inputs_for_generation (peft/peft_model.py) looks for the KV cache under "
    "model_kwargs['past_key_values'], but transformers 5.x's GenerationMixin.prepare_inputs_for_generation "
    "(transformers/generation/utils.py) returns it as model_inputs['cache'] from transformers 5.24 on (5.23 and "
    "older still say 'past_key_values'); PEFT then takes every decoding step "
    "for the first one, keeps the full input_ids and prepends the virtual tokens again. On OPT that gives 11 "
    "input embeddings (10 virtual + 1 new token) against 0 position embeddings; other models run on and decode "
    "the wrong tokens, which PEFT's tests do not check (tests/test_peft_contract.py pins that case)."
)
_GENERATE_CACHE_LINK = (
    "no upstream issue found (searched huggingface/peft and huggingface/transformers issues); related: "
    "https://github.com/huggingface/peft/issues/1962 (PEFT's prompt learning vs the transformers cache API)"
)
_PICKLE = (
    "softprompt_ext never loads a pickled adapter (unpickling can run code), so SoftPromptConfig.save_pretrained "
    "refuses to write adapter_config.json next to the adapter_model.bin that safe_serialization=False just "
    "wrote: the folder does not become an adapter the library then refuses (README, threat model)"
)

EXPECTATIONS: tuple[Expectation, ...] = (
    # ------------------------------------------------------------------ intended differences (softprompt only)
    Expectation(
        case="*::test_save_pretrained_pickle[PromptTuningConfig-*",
        kind="intended", variants=OURS,
        peft="`save_pretrained(safe_serialization=False)` writes adapter_model.bin and loads it back",
        ours="ValueError naming adapter_model.bin: pickled adapters are refused",
        why=_PICKLE,
    ),
    Expectation(
        case="*::test_save_pretrained_selected_adapters_pickle[PromptTuningConfig-*",
        kind="intended", variants=OURS,
        peft="`save_pretrained(safe_serialization=False, selected_adapters=...)` writes adapter_model.bin per adapter",
        ours="ValueError naming adapter_model.bin: pickled adapters are refused",
        why=_PICKLE,
    ),
    Expectation(
        case="test_config.py::TestPeftConfig::test_valid_task_type[None-PromptTuningConfig-*",
        kind="intended", variants=OURS,
        peft="`PromptTuningConfig(task_type=None)` is accepted (get_peft_model fails later with KeyError: None)",
        ours="ValueError: task_type is required",
        why="where the prompt goes (encoder input of a seq2seq model, or in front of a decoder-only model's "
        "input) depends on the task type, so SoftPromptConfig asks for it at construction",
    ),
    Expectation(
        case="test_config.py::TestPeftConfig::test_from_pretrained[PromptTuningConfig-*",
        kind="intended", variants=OURS,
        peft="`PromptTuningConfig.from_pretrained(<a LoRA adapter>)` returns a LoraConfig (from_peft_type "
        "dispatches on the file's peft_type, whatever class it is called on)",
        ours="ValueError: '<id>' is a LORA adapter; SoftPromptConfig loads prompt-tuning adapters only. Load it "
        "with peft.PeftConfig.from_pretrained",
        why="`SoftPromptConfig.from_pretrained` promises a SoftPromptConfig (it reads the record beside the config); "
        "PEFT's generic entry points (PeftConfig.from_pretrained, PromptTuningConfig.from_pretrained) still "
        "dispatch on peft_type, tested in tests/test_registration.py",
    ),
    Expectation(
        case="test_config.py::TestPeftConfig::test_save_pretrained_with_runtime_config[PromptTuningConfig-*",
        kind="intended", variants=OURS,
        peft="loads the LoRA adapter's config through PromptTuningConfig.from_pretrained (a LoraConfig) and "
        "round-trips its runtime_config",
        ours="ValueError at the first from_pretrained: a LORA adapter is not a SoftPromptConfig",
        why="SoftPromptConfig.from_pretrained refuses another method's adapter, as in test_from_pretrained above",
    ),
    # ------------------------------------------------------------------ upstream bugs (both variants)
    Expectation(
        case="test_decoder_models.py::TestDecoderModels::test_generate_half_prec[PromptTuningConfig-*-"
        "peft-internal-testing/tiny-random-OPTForCausalLM]",
        kind="upstream", variants=BOTH,
        peft="RuntimeError: The size of tensor a (11) must match the size of tensor b (0) at non-singleton "
        "dimension 1 (OPT's learned positions, second decoding step)",
        ours="the same: placement at generation is PEFT's",
        why=_GENERATE_CACHE_BUG,
        link=_GENERATE_CACHE_LINK,
        transformers=">=5.24",
        peft_versions="<0.22",  # 0.22 reads the cache under the name transformers passes
    ),
    Expectation(
        case="test_decoder_models.py::TestDecoderModels::test_prompt_tuning_prepare_inputs_for_generation_4d_attention_mask",
        kind="upstream", variants=BOTH,
        peft="TypeError: create_masks_for_generate() missing 2 required positional arguments: 'input_embeds' and "
        "'cache_position'",
        ours="the same: the mask is PEFT's",
        why="peft/utils/other.py create_attention_mask calls transformers' create_masks_for_generate with the "
        "signature of transformers >= 5.2 (inputs_embeds=, no cache_position) whenever transformers >= 5.0; "
        "5.0 and 5.1 still take input_embeds and cache_position",
        link="no upstream issue found; the transformers side changed with the cache_position removal "
        "(https://github.com/huggingface/transformers/pull/44130, https://github.com/huggingface/transformers/pull/44181)",
        transformers="<5.2",
    ),
    # ------------------------------------------------------------------ environment (skipped)
    Expectation(
        case="test_config.py::TestPeftConfig::test_from_pretrained_cache_dir[PromptTuningConfig-*",
        kind="environment", variants=BOTH, requires="network",
        peft="downloads the adapter config into a fresh, empty cache_dir", ours="-",
        why="a fresh cache_dir can only be filled from the real Hub; this harness never reaches the network",
    ),
    Expectation(
        case="test_config.py::TestPeftConfig::test_from_peft_type",
        kind="environment", variants=BOTH, requires="sklearn",
        peft="builds every PeftType's config; AdamssConfig (after PROMPT_TUNING) imports scikit-learn",
        ours="-",
        why="scikit-learn is no dependency of softprompt-ext itself (the test extra brings it, through lm-eval, and "
        "then the case runs and passes); the PROMPT_TUNING step itself (the registry's class comes back) is pinned by "
        "tests/test_registration.py::test_from_peft_type_without_a_record_is_the_registry_class",
    ),
)


_KWARGS_INDEX = re.compile(r"\b(config_kwargs|mandatory_kwargs)\d+\b")


def case_id(nodeid: str) -> str:
    """The variant-independent id of a pytest node id (see the module docstring)."""
    nodeid = nodeid.replace("\\", "/")
    if nodeid.startswith("tests/"):
        nodeid = nodeid[len("tests/") :]
    return _KWARGS_INDEX.sub(r"\1", nodeid.replace("SoftPromptConfig", "PromptTuningConfig"))


def _in(specifier: str, version: str) -> bool:
    from packaging.specifiers import SpecifierSet

    return not specifier or SpecifierSet(specifier).contains(version, prereleases=True)


def applies(entry: Expectation, variant: str, transformers_version: str, peft_version: str) -> bool:
    return (variant in entry.variants and _in(entry.transformers, transformers_version)
            and _in(entry.peft_versions, peft_version))


def pattern_matches(pattern: str, case: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, case) is not None


def matching(case: str, variant: str, transformers_version: str, peft_version: str) -> list[Expectation]:
    return [e for e in EXPECTATIONS
            if applies(e, variant, transformers_version, peft_version) and pattern_matches(e.case, case)]
