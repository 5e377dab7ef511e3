"""Saving a multi-task run (`training/multitask_save.py`) and per-task evaluation (`inference/per_task.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from softprompt_ext import SoftPromptConfig, get_task, rank_classify
from softprompt_ext.inference.per_task import evaluate_per_task
from softprompt_ext.placement import mixed_forward
from softprompt_ext.training.multitask import build_multitask_model
from softprompt_ext.training.multitask_save import save_task_prompts

TASKS = {"animal": 3, "food": 5}


def model_and_rows(make_model, tokenizer):
    configs = {name: SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=p, init_seed=k,
                                      prompt_tuning_init="RANDOM_UNIFORM")
               for k, (name, p) in enumerate(TASKS.items())}
    model = build_multitask_model(make_model("t5"), configs)
    task = get_task("supersense")
    rows = task.format(task.load("dev")).to_list()
    return model, task, {"animal": rows[:12], "food": rows[12:20]}


@pytest.mark.slow
def test_each_prompt_is_a_plain_peft_adapter_and_the_summary_lists_scores(make_model, tokenizer, tmp_path):
    model, task, rows = model_and_rows(make_model, tokenizer)
    scores = evaluate_per_task(model, tokenizer, {name: (task, rows[name]) for name in TASKS})
    # each task's own metric on its own rows, as rank_classify gives it with that adapter active
    for name in TASKS:
        model.set_adapter(name)
        ranked = rank_classify(model, tokenizer, [r["inputs"] for r in rows[name]], list(task.class_labels))
        assert scores[name] == task.compute_metrics(ranked.predicted_labels, rows[name])
    saved = save_task_prompts(model, tmp_path / "run", scores=scores, extra={"steps": 0})
    assert sorted(saved) == sorted(TASKS)
    summary = json.loads((tmp_path / "run" / "multitask.json").read_text())
    assert summary["tasks"]["food"]["num_virtual_tokens"] == 5 and summary["tasks"]["food"]["scores"] == scores["food"]
    assert summary["steps"] == 0
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| `animal` | 3 | `RANDOM_UNIFORM` |" in card
    for name in TASKS:
        assert sorted(p.name for p in (tmp_path / "run" / name).iterdir()) == [
            "README.md", "adapter_config.json", "adapter_model.safetensors", "softprompt_config.json",
            "softprompt_digest.json"]

    # plain PEFT, in a process that never imports softprompt_ext, loads each directory: same loss per example
    base_dir = tmp_path / "base"
    model.get_base_model().save_pretrained(str(base_dir))
    enc = tokenizer(["a dog barks", "bread"], return_tensors="pt", padding=True)
    labels = tokenizer(["animal", "food"], return_tensors="pt", padding=True).input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    ours = {}
    for name in TASKS:
        out = mixed_forward(model, enc.input_ids, enc.attention_mask, [name, name], labels=labels)
        ours[name] = out.loss.item()
    script = textwrap.dedent(f"""
        import json, sys, torch
        from peft import PeftModel
        from transformers import AutoModelForSeq2SeqLM
        ids = torch.tensor({enc.input_ids.tolist()}); mask = torch.tensor({enc.attention_mask.tolist()})
        labels = torch.tensor({labels.tolist()})
        out = {{}}
        for name in {list(TASKS)!r}:
            base = AutoModelForSeq2SeqLM.from_pretrained({str(base_dir)!r})
            model = PeftModel.from_pretrained(base, {str(tmp_path / 'run')!r} + '/' + name).eval()
            out[name] = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        assert "softprompt_ext" not in sys.modules
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    for name in TASKS:
        assert plain[name] == pytest.approx(ours[name], rel=1e-5)


def test_bad_names_are_refused(make_model, tokenizer, tmp_path):
    model, task, rows = model_and_rows(make_model, tokenizer)
    with pytest.raises(ValueError, match="not adapters of this model"):
        save_task_prompts(model, tmp_path, tasks=["nope"])
    with pytest.raises(ValueError, match="not an adapter of this model"):
        evaluate_per_task(model, tokenizer, {"nope": (task, rows["food"])})
    with pytest.raises(TypeError, match="no class_labels"):
        evaluate_per_task(model, tokenizer, {"food": (object(), rows["food"])})
