"""softprompt-ext: Lester et al. (2021) prompt tuning for T5 and decoder-only models, as a PEFT plugin.

    from peft import get_peft_model
    from softprompt_ext import SoftPromptConfig     # importing registers the prompt encoder with PEFT

    model = get_peft_model(base, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=100))

The public API is every name in `__all__`, imported from `softprompt_ext` itself (`from softprompt_ext import
rank_classify`). The core (config, encoder, registration, lm_adapted) is imported eagerly; the rest loads on
first use, so `import softprompt_ext` (and the `softprompt` command) does not pull in the Trainer. Type
checkers see the real objects through the `TYPE_CHECKING` imports below, which mirror the lazy table.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import SoftPromptConfig, SoftPromptInit
from .encoder import SoftPromptEmbedding
from .lm_adapted import (
    LM_ADAPTED,
    is_span_corruption_only,
    lm_adapted_counterpart,
    resolve_lm_adapted,
)
from .registration import register
from .version import __version__

register()

if TYPE_CHECKING:
    from .adapters.atomic import last_complete_checkpoint, recover_adapter_dir, save_adapter_atomically
    from .adapters.hub import push_adapter
    from .adapters.reader import AdapterError
    from .adapters.validation import AdapterReport, load_adapter_safely, validate_adapter
    from .analysis.readout import adapter_info, adapter_readout, format_readout, model_readout
    from .analysis.similarity import most_similar, prompt_similarity, similarity_matrix
    from .embedded import default_model_and_tokenizer, default_model_path, embedded_model_path, load_embedded
    from .inference.ensembles import (
        ClassEnsemble,
        EnsembleOutput,
        combine_label_scores,
        ensemble_classify,
        ensemble_generate,
        majority_vote,
    )
    from .inference.generate import generate, generate_texts
    from .inference.mixed_batches import MixedOutput, mixed_forward, mixed_generate
    from .inference.per_task import evaluate_per_task
    from .inference.rank_classification import RankClassificationOutput, rank_classify
    from .inference.scoring import LabelScores, score_label_ids
    from .inference.serving import serve
    from .precision import autocast, bf16_autocast, bf16_is_fast, resolve_precision
    from .tasks.base import ClassificationTask, Task, tokenize_for_seq2seq
    from .tasks.registry import get_task, list_tasks, make_compute_metrics
    from .tasks.transfer import get_transfer
    from .training.mixing import equal_steps, mix_tasks, mixing_rates
    from .training.multitask import (
        MultiTaskCollator,
        MultiTaskTrainer,
        build_multitask_model,
        multitask_loss,
        multitask_optimizer,
    )
    from .training.multitask_save import save_task_prompts
    from .training.recipe import (
        PaperTrainingArguments,
        check_trainable_prompt,
        load_for_training,
        paper_optimizer,
    )
    from .training.step_savings import causal_lm_target_loss, fuse_gelu

# public name -> the module (below this package) that defines it; keep in step with the imports above
_LAZY = {
    "PaperTrainingArguments": "training.recipe",
    "check_trainable_prompt": "training.recipe",
    "load_for_training": "training.recipe",
    "paper_optimizer": "training.recipe",
    "causal_lm_target_loss": "training.step_savings",
    "MultiTaskCollator": "training.multitask",
    "MultiTaskTrainer": "training.multitask",
    "build_multitask_model": "training.multitask",
    "multitask_loss": "training.multitask",
    "multitask_optimizer": "training.multitask",
    "equal_steps": "training.mixing",
    "mix_tasks": "training.mixing",
    "mixing_rates": "training.mixing",
    "save_task_prompts": "training.multitask_save",
    "evaluate_per_task": "inference.per_task",
    "fuse_gelu": "training.step_savings",
    "autocast": "precision",
    "bf16_autocast": "precision",
    "bf16_is_fast": "precision",
    "resolve_precision": "precision",
    "push_adapter": "adapters.hub",
    "AdapterError": "adapters.reader",
    "AdapterReport": "adapters.validation",
    "load_adapter_safely": "adapters.validation",
    "validate_adapter": "adapters.validation",
    "last_complete_checkpoint": "adapters.atomic",
    "recover_adapter_dir": "adapters.atomic",
    "save_adapter_atomically": "adapters.atomic",
    "get_task": "tasks.registry",
    "list_tasks": "tasks.registry",
    "make_compute_metrics": "tasks.registry",
    "ClassificationTask": "tasks.base",
    "Task": "tasks.base",
    "tokenize_for_seq2seq": "tasks.base",
    "get_transfer": "tasks.transfer",
    "LabelScores": "inference.scoring",
    "score_label_ids": "inference.scoring",
    "RankClassificationOutput": "inference.rank_classification",
    "rank_classify": "inference.rank_classification",
    "MixedOutput": "inference.mixed_batches",
    "mixed_forward": "inference.mixed_batches",
    "mixed_generate": "inference.mixed_batches",
    "serve": "inference.serving",
    "ClassEnsemble": "inference.ensembles",
    "EnsembleOutput": "inference.ensembles",
    "combine_label_scores": "inference.ensembles",
    "ensemble_classify": "inference.ensembles",
    "ensemble_generate": "inference.ensembles",
    "majority_vote": "inference.ensembles",
    "generate": "inference.generate",
    "generate_texts": "inference.generate",
    "adapter_info": "analysis.readout",
    "adapter_readout": "analysis.readout",
    "format_readout": "analysis.readout",
    "model_readout": "analysis.readout",
    "most_similar": "analysis.similarity",
    "prompt_similarity": "analysis.similarity",
    "similarity_matrix": "analysis.similarity",
    "default_model_and_tokenizer": "embedded",
    "default_model_path": "embedded",
    "embedded_model_path": "embedded",
    "load_embedded": "embedded",
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
