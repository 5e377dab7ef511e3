"""softprompt-ext: Lester et al. (2021) prompt tuning for T5 and decoder-only models, as a PEFT plugin.

    from peft import get_peft_model
    from softprompt_ext import SoftPromptConfig     # importing registers the prompt encoder with PEFT

    model = get_peft_model(base, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=100))

The top level holds the entry points a user needs first (`__all__`): the config, training, tasks, evaluation,
many prompts, adapters, reading a prompt, the embedded model, serving. Specialist names live in the module that
defines them (`softprompt_ext.precision.autocast`, `softprompt_ext.lm_adapted.resolve_lm_adapted`,
`softprompt_ext.training.step_savings.fuse_gelu`, ...); docs/reference/layout.md maps every module. The config
and the encoder are imported eagerly; the rest loads on first use, so `import softprompt_ext` (and the
`softprompt` command) does not pull in the Trainer. Type checkers see the real objects through the
`TYPE_CHECKING` imports below, which mirror the lazy table (a test keeps them equal).
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import SoftPromptConfig, SoftPromptInit
from .encoder import SoftPromptEmbedding
from .registration import register
from .version import __version__

register()

if TYPE_CHECKING:
    from .adapters.atomic import save_adapter_atomically
    from .adapters.hub import push_adapter
    from .adapters.reader import AdapterError
    from .adapters.validation import load_adapter_safely, validate_adapter
    from .analysis.readout import adapter_readout, format_readout, model_readout
    from .analysis.similarity import most_similar
    from .embedded import default_model_and_tokenizer
    from .inference.ensembles import ensemble_classify, ensemble_generate
    from .inference.generate import generate, generate_texts
    from .inference.mixed_batches import mixed_forward, mixed_generate
    from .inference.per_task import evaluate_per_task
    from .inference.rank_classification import rank_classify
    from .inference.serving import serve
    from .tasks.base import tokenize_for_seq2seq
    from .tasks.registry import get_task, list_tasks, make_compute_metrics
    from .training.mixing import mix_tasks
    from .training.multitask import MultiTaskCollator, MultiTaskTrainer, build_multitask_model
    from .training.multitask_save import save_task_prompts
    from .training.recipe import PaperTrainingArguments, load_for_training, paper_optimizer

# public name -> the module (below this package) that defines it; keep in step with the imports above
_LAZY = {
    "PaperTrainingArguments": "training.recipe",
    "load_for_training": "training.recipe",
    "paper_optimizer": "training.recipe",
    "MultiTaskCollator": "training.multitask",
    "MultiTaskTrainer": "training.multitask",
    "build_multitask_model": "training.multitask",
    "mix_tasks": "training.mixing",
    "save_task_prompts": "training.multitask_save",
    "get_task": "tasks.registry",
    "list_tasks": "tasks.registry",
    "make_compute_metrics": "tasks.registry",
    "tokenize_for_seq2seq": "tasks.base",
    "rank_classify": "inference.rank_classification",
    "generate": "inference.generate",
    "generate_texts": "inference.generate",
    "mixed_forward": "inference.mixed_batches",
    "mixed_generate": "inference.mixed_batches",
    "ensemble_classify": "inference.ensembles",
    "ensemble_generate": "inference.ensembles",
    "evaluate_per_task": "inference.per_task",
    "serve": "inference.serving",
    "AdapterError": "adapters.reader",
    "load_adapter_safely": "adapters.validation",
    "validate_adapter": "adapters.validation",
    "save_adapter_atomically": "adapters.atomic",
    "push_adapter": "adapters.hub",
    "adapter_readout": "analysis.readout",
    "format_readout": "analysis.readout",
    "model_readout": "analysis.readout",
    "most_similar": "analysis.similarity",
    "default_model_and_tokenizer": "embedded",
}

# names the top level used to export -> their module; still importable from here, with a DeprecationWarning
_MOVED = {
    "LM_ADAPTED": "lm_adapted",
    "is_span_corruption_only": "lm_adapted",
    "lm_adapted_counterpart": "lm_adapted",
    "resolve_lm_adapted": "lm_adapted",
    "autocast": "precision",
    "bf16_autocast": "precision",
    "bf16_is_fast": "precision",
    "resolve_precision": "precision",
    "causal_lm_target_loss": "training.step_savings",
    "fuse_gelu": "training.step_savings",
    "check_trainable_prompt": "training.recipe",
    "multitask_loss": "training.multitask",
    "multitask_optimizer": "training.multitask",
    "equal_steps": "training.mixing",
    "mixing_rates": "training.mixing",
    "ClassificationTask": "tasks.base",
    "Task": "tasks.base",
    "get_transfer": "tasks.transfer",
    "LabelScores": "inference.scoring",
    "score_label_ids": "inference.scoring",
    "RankClassificationOutput": "inference.rank_classification",
    "MixedOutput": "inference.mixed_batches",
    "ClassEnsemble": "inference.ensembles",
    "EnsembleOutput": "inference.ensembles",
    "combine_label_scores": "inference.ensembles",
    "majority_vote": "inference.ensembles",
    "AdapterReport": "adapters.validation",
    "last_complete_checkpoint": "adapters.atomic",
    "recover_adapter_dir": "adapters.atomic",
    "adapter_info": "analysis.readout",
    "prompt_similarity": "analysis.similarity",
    "similarity_matrix": "analysis.similarity",
    "default_model_path": "embedded",
    "embedded_model_path": "embedded",
    "load_embedded": "embedded",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        module = f"{__name__}.{_MOVED[name]}"
        warnings.warn(
            f"softprompt_ext.{name} moved out of the top-level namespace; import it from {module} "
            f"(from {module} import {name}).",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(import_module(module), name)
    raise AttributeError(f"module 'softprompt_ext' has no attribute {name!r}")


__all__ = [
    "SoftPromptConfig",
    "SoftPromptEmbedding",
    "SoftPromptInit",
    "__version__",
    *sorted(_LAZY),
]
