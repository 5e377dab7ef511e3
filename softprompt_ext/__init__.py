"""softprompt-ext: Lester et al. (2021) prompt tuning for T5 and decoder-only models, as a PEFT plugin.

    from peft import get_peft_model
    from softprompt_ext import SoftPromptConfig     # importing registers the prompt encoder with PEFT

    model = get_peft_model(base, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=100))

The core (config, encoder, registration) is imported eagerly; the rest of the public API loads on first
use, so `import softprompt_ext` (and the `softprompt` command) does not pull in the Trainer.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

from .checkpoints import (  # noqa: E402
    LM_ADAPTED,
    is_span_corruption_only,
    lm_adapted_counterpart,
    resolve_lm_adapted,
)
from .config import SoftPromptConfig, SoftPromptInit  # noqa: E402
from .encoder import SoftPromptEmbedding  # noqa: E402
from .registration import register  # noqa: E402

register()

_LAZY = {
    "PaperTrainingArguments": "training",
    "load_for_training": "training",
    "paper_optimizer": "training",
    "push_adapter": "hub",
    "make_compute_metrics": "metrics",
    "rank_classify": "rank_classification",
    "LabelScores": "label_scoring",
    "score_label_ids": "label_scoring",
    "get_task": "tasks",
    "list_tasks": "tasks",
    "get_transfer": "transfer",
    "MixedOutput": "multi_prompt",
    "mixed_forward": "multi_prompt",
    "mixed_generate": "multi_prompt",
    "ClassEnsemble": "prompt_ensemble",
    "EnsembleOutput": "prompt_ensemble",
    "combine_label_scores": "prompt_ensemble",
    "ensemble_classify": "prompt_ensemble",
    "ensemble_generate": "prompt_ensemble",
    "majority_vote": "prompt_ensemble",
    "AdapterError": "safety",
    "AdapterReport": "safety",
    "validate_adapter": "safety",
    "load_adapter_safely": "safety",
    "save_adapter_atomically": "safe_save",
    "recover_adapter_dir": "safe_save",
    "last_complete_checkpoint": "safe_save",
    "bf16_autocast": "fast_path",
    "causal_lm_target_loss": "fast_path",
    "fuse_gelu": "fast_path",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'softprompt_ext' has no attribute {name!r}")


__all__ = [
    "LM_ADAPTED",
    "SoftPromptConfig",
    "SoftPromptEmbedding",
    "SoftPromptInit",
    "__version__",
    "is_span_corruption_only",
    "lm_adapted_counterpart",
    "resolve_lm_adapted",
    *sorted(_LAZY),
]
