"""Saving a multi-task run (`training/multitask.py`): one ordinary adapter directory per task, one summary.

PEFT's `save_pretrained` puts every adapter but "default" in a sub-folder named after it. Here each task's
prompt becomes its own plain adapter directory, `output_dir/<task>/` (`adapter_config.json`,
`adapter_model.safetensors`, `softprompt_config.json`, its model card), saved atomically
(`adapters.atomic.save_adapter_atomically`): `PeftModel.from_pretrained(base, output_dir/<task>)` loads it,
with or without softprompt_ext imported. `output_dir/multitask.json` and `output_dir/README.md` list the
tasks, their prompts and their scores.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from peft import PeftModel

from ..adapters.atomic import atomic_write_text, save_adapter_atomically

SUMMARY_NAME = "multitask.json"
CARD_NAME = "README.md"


class _OneAdapter:
    """`save_pretrained(directory)` that writes adapter `name` of `model` as a top-level adapter directory."""

    def __init__(self, model: PeftModel, name: str):
        self.model, self.name = model, name

    def save_pretrained(self, directory: str, **kwargs: Any) -> None:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(directory))) as tmp:
            self.model.save_pretrained(tmp, selected_adapters=[self.name], **kwargs)
            source = tmp if self.name == "default" else os.path.join(tmp, self.name)
            for entry in os.listdir(source):
                if os.path.isfile(os.path.join(source, entry)):
                    os.replace(os.path.join(source, entry), os.path.join(directory, entry))


def _describe(model: PeftModel, task: str) -> dict[str, Any]:
    config: Any = model.peft_config[task]
    init = getattr(config, "prompt_tuning_init", None)
    return {
        "adapter": task,
        "num_virtual_tokens": config.num_virtual_tokens,
        "prompt_tuning_init": getattr(init, "value", init),
        "init_seed": getattr(config, "init_seed", None),
    }


def save_task_prompts(
    model: PeftModel,
    output_dir: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Save every task's prompt as `output_dir/<task>/` and write the summary; returns task -> directory.

    Args:
        model: the multi-task `PeftModel` (`build_multitask_model`).
        output_dir: created when missing.
        tasks: the tasks to save (default: every adapter of the model).
        scores: task -> metrics (e.g. `evaluate_per_task`'s result), listed in the summary and card.
        extra: more JSON-serialisable facts for `multitask.json` (steps, mixing, ...).
    """
    tasks = list(tasks) if tasks is not None else list(model.peft_config)
    unknown = [t for t in tasks if t not in model.peft_config]
    if unknown:
        raise ValueError(f"tasks {unknown} are not adapters of this model; adapters: {sorted(model.peft_config)}.")
    bad = [t for t in tasks if not t or os.sep in t or t in (".", "..", CARD_NAME, SUMMARY_NAME)]
    if bad:
        raise ValueError(f"task names {bad} cannot be directory names; rename the adapters.")
    os.makedirs(output_dir, exist_ok=True)
    saved = {t: save_adapter_atomically(_OneAdapter(model, t), os.path.join(output_dir, t)) for t in tasks}
    scores = {t: dict(scores[t]) for t in tasks if scores and t in scores}
    summary = {
        "tasks": {t: {**_describe(model, t), "scores": scores.get(t, {})} for t in tasks},
        "base_model": getattr(model.peft_config[tasks[0]], "base_model_name_or_path", None),
        "loss": "sum over tasks of each task's token-mean loss in the batch",
        **dict(extra or {}),
    }
    atomic_write_text(os.path.join(output_dir, SUMMARY_NAME), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(os.path.join(output_dir, CARD_NAME), _card(summary))
    return saved


def _card(summary: Mapping[str, Any]) -> str:
    metrics = sorted({m for task in summary["tasks"].values() for m in task["scores"]})
    lines = [
        "---",
        "library_name: peft",
        "tags: [prompt-tuning, softprompt-ext, peft, multi-task]",
        "---",
        "",
        "# Soft prompts trained in one multi-task run (softprompt-ext)",
        "",
        f"One frozen base model (`{summary['base_model']}`), one prompt per task, trained together; each prompt "
        "is an ordinary PEFT adapter in the sub-folder named after its task. Loss: "
        f"{summary['loss']} (each prompt gets its single-task gradient).",
        "",
        "| task | P | init | " + " | ".join(metrics) + (" |" if metrics else ""),
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for name, task in summary["tasks"].items():
        cells = [f"{task['scores'][m]:.2f}" if m in task["scores"] else "" for m in metrics]
        lines.append(f"| `{name}` | {task['num_virtual_tokens']} | `{task['prompt_tuning_init']}` | "
                     + " | ".join(cells) + (" |" if cells else ""))
    lines += ["", "```python", "from peft import PeftModel",
              "model = PeftModel.from_pretrained(base_model, 'DIR/<task>')  # one task's prompt", "```", ""]
    return "\n".join(lines)

