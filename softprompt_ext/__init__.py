"""softprompt-ext: Lester et al. (2021) prompt tuning for T5 and decoder-only models, as a PEFT plugin.

    from peft import get_peft_model
    from softprompt_ext import SoftPromptConfig     # importing registers the prompt encoder with PEFT

    model = get_peft_model(base, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=100))
"""

__version__ = "0.1.0"

from .checkpoints import (  # noqa: E402
    LM_ADAPTED,
    is_span_corruption_only,
    lm_adapted_counterpart,
    resolve_lm_adapted,
)
from .config import SoftPromptConfig, SoftPromptInit  # noqa: E402
from .encoder import SoftPromptEmbedding  # noqa: E402
from .hub import push_adapter  # noqa: E402
from .metrics import make_compute_metrics  # noqa: E402
from .rank_classification import rank_classify  # noqa: E402
from .registration import register  # noqa: E402
from .tasks import get_task, list_tasks  # noqa: E402
from .transfer import get_transfer  # noqa: E402

register()

__all__ = [
    "LM_ADAPTED",
    "SoftPromptConfig",
    "SoftPromptEmbedding",
    "SoftPromptInit",
    "__version__",
    "get_task",
    "is_span_corruption_only",
    "get_transfer",
    "list_tasks",
    "lm_adapted_counterpart",
    "make_compute_metrics",
    "rank_classify",
    "push_adapter",
    "resolve_lm_adapted",
]
