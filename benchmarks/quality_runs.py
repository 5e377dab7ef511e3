"""One quality run: tune a soft prompt (or the whole model, or LoRA) on a WordNet supersense task and score it.

The task is the bundled noun task (`supersense`, where every decision about the embedded model was taken) or
the held-out verb task (`verb_supersense`), `RunSpec.task`.

Used by `benchmarks/quality.py`. The recipe follows Lester et al. (2021), section 3, scaled to a CPU: frozen
base, Adafactor at a constant learning rate 0.3 for prompts (`softprompt_ext.training.recipe.paper_optimizer`),
`softprompt_ext.precision.autocast` (bf16 only on hardware with bf16 units, else fp32; `precision` forces either), the prompt that scores best on dev (checked every `eval_every` steps) is the one scored on test.
Model tuning and LoRA use AdamW at standard learning rates (3e-4 / 1e-3) as reference points (Figure 1's
"model tuning" line). Accuracy is exact string match of greedy generations against the label word (the
paper's metric) and, for comparison, rank classification by the labels' first tokens (`label_token_accuracy`).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig, get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.embedded import embedded_model_path, load_embedded
from softprompt_ext.inference.generate import generate_texts
from softprompt_ext.inference.scoring import score_label_ids
from softprompt_ext.precision import autocast, resolve_precision
from softprompt_ext.special_tokens import add_sentinel_prefix
from softprompt_ext.tasks.metrics import accuracy
from softprompt_ext.tasks.supersense import (
    NOUN_DIR,
    SUPERSENSE_LABELS,
    VERB_DIR,
    VERB_SUPERSENSE_LABELS,
    read_supersense,
    supersense_batch,
)
from softprompt_ext.training.recipe import paper_optimizer

# The paper samples from the 5,000 most common of T5's 32,128 tokens (~15%); the embedded vocabulary has 8,192
# rows (8,089 usable), so a pool of the 1,000 most common (~12%) keeps a similar "common words" character.
SAMPLE_VOCAB_SIZE = 1000

# task name -> (bundled directory, label words); "verb_supersense" is the held-out task
TASKS = {"supersense": (NOUN_DIR, SUPERSENSE_LABELS), "verb_supersense": (VERB_DIR, VERB_SUPERSENSE_LABELS)}


@dataclass(frozen=True)
class RunSpec:
    method: str = "prompt"  # "prompt", "model" (full fine-tuning) or "lora"
    init: str = "CLASS_LABELS"
    num_virtual_tokens: int = 20
    base: str = "lm_adapt"  # "lm_adapt" or "span"
    sentinel: bool = False  # targets prefixed with <extra_id_0> (span corruption + sentinel, section 3.3)
    seed: int = 0
    task: str = "supersense"  # a key of TASKS

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not a quality task; use one of {sorted(TASKS)}.")

    @property
    def labels(self) -> tuple[str, ...]:
        return TASKS[self.task][1]

    @property
    def key(self) -> str:
        task = "" if self.task == "supersense" else f"{self.task}/"  # the noun task's keys predate the option
        if self.method != "prompt":
            return f"{task}{self.method}/{self.base}/s{self.seed}"
        base = self.base + ("+sentinel" if self.sentinel else "")
        return f"{task}prompt/{self.init}/P{self.num_virtual_tokens}/{base}/s{self.seed}"


def _build_record(record_path: str | None = None) -> dict:
    """The shipped embedded build's `build_record.json` (or the one at `record_path`)."""
    path = record_path or os.path.join(os.path.dirname(embedded_model_path("lm_adapt")), "build_record.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def held_out_tasks(record_path: str | None = None) -> list[str]:
    """The bundled tasks whose dev/test synsets the shipped embedded model never saw (`build_record.json`'s
    `data.held_out_tasks`; a record without the field is from a build that held out the noun task only)."""
    return _build_record(record_path).get("data", {}).get("held_out_tasks", [NOUN_DIR])


def embedded_identity(record_path: str | None = None) -> dict:
    """Which embedded build a report ran on: its parameter count, pretraining steps and build command."""
    record = _build_record(record_path)
    return {"parameters": record.get("parameters"), "pretrain_steps": record.get("pretraining", {}).get("steps"),
            "build_command": record.get("command")}


def check_task_held_out(task: str, record_path: str | None = None) -> None:
    """Refuse a task whose dev/test text the shipped model was pretrained on: its accuracy would mean nothing."""
    directory = TASKS[task][0]
    held = held_out_tasks(record_path)
    if directory not in held:
        raise ValueError(f"task={task!r}: the embedded model's build_record.json holds out only {held} (field "
                         f"data.held_out_tasks), so it was pretrained on {directory}'s dev/test glosses; rebuild it "
                         "with python -m scripts.embedded_build, which holds out both tasks.")


def first_label_tokens(tokenizer, labels: tuple[str, ...]) -> list[int]:
    """Each label's first token id; a ValueError names labels that share one (first-token rank classification
    could not tell them apart). Checked before a run trains, not after."""
    first = [tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in labels]
    if len(set(first)) < len(first):
        shared = sorted({a for a, ta in zip(labels, first, strict=True) for b, tb in zip(labels, first, strict=True)
                         if a != b and ta == tb})
        raise ValueError(f"labels {shared} start with the same token under this tokenizer, so the benchmark's "
                         "first-token rank classification (test_label_token_accuracy) cannot tell them apart; "
                         "pick label words whose first tokens differ.")
    return first


def _build(spec: RunSpec, prompt_lr: float, model_lr: float = 3e-4, lora_lr: float = 1e-3):
    check_task_held_out(spec.task)
    model, tokenizer = load_embedded(spec.base)
    first_label_tokens(tokenizer, spec.labels)
    torch.manual_seed(spec.seed)
    if spec.method == "prompt":
        extra = {"class_labels": list(spec.labels)} if spec.init == "CLASS_LABELS" else {}
        config = SoftPromptConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=spec.num_virtual_tokens, prompt_tuning_init=spec.init,
            tokenizer_name_or_path=embedded_model_path(spec.base), init_seed=spec.seed,
            warn_if_not_lm_adapted=False, sample_vocab_size=SAMPLE_VOCAB_SIZE, **extra,
        )
        model = get_peft_model(model, config)
        optimizer, _ = paper_optimizer(model, learning_rate=prompt_lr)
    elif spec.method == "lora":
        model = get_peft_model(model, LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=16,
                                                 target_modules=["q", "v"]))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lora_lr)
    elif spec.method == "model":
        optimizer = torch.optim.AdamW(model.parameters(), lr=model_lr)
    else:
        raise ValueError(f"method={spec.method!r} is not known; use 'prompt', 'model' or 'lora'.")
    return model, tokenizer, optimizer


def generate_accuracy(model, tokenizer, rows: list[dict], batch_size: int = 64,
                      precision: str = "auto") -> tuple[float, list[str]]:
    """Exact-match accuracy (a fraction) of greedy generations (special tokens, e.g. a sentinel, removed)."""
    predictions = generate_texts(model, tokenizer, [r["text"] for r in rows], batch_size=batch_size,
                                 max_input_length=64, precision=precision)
    return accuracy(predictions, [r["label"] for r in rows]) / 100, predictions


@torch.no_grad()
def label_token_accuracy(model, tokenizer, rows: list[dict], sentinel: bool, batch_size: int = 64,
                         precision: str = "auto", labels: tuple[str, ...] = SUPERSENSE_LABELS) -> float:
    """Rank classification by the first label token: argmax over the 8 labels' first tokens at the first
    answer position (after the sentinel for sentinel targets). The labels' first tokens must be distinct (a
    ValueError names any two that share one), so this is rank classification with the first token's score only.

    Scored with the library's one label scorer (`softprompt_ext.inference.scoring.score_label_ids`, each input
    encoded once): every candidate is `[sentinel] + [first label token]` and only the first label token's
    log-probability is ranked (`token_log_probs[:, :, len(prefix)]`; the sentinel's is the same for every
    candidate). That is what this metric measured before, so the committed results stay comparable; it stays a
    first-token metric on purpose. Whole-label rank classification (`rank_classify`: every label token and EOS)
    is no longer too slow (the input is no longer re-encoded per candidate), but it is a different metric and
    would need all runs redone. Precision as in `generate_accuracy`; the log-probabilities are float32.
    """
    first = first_label_tokens(tokenizer, labels)
    prefix = add_sentinel_prefix([], tokenizer) if sentinel else []
    label_ids = [prefix + [token] for token in first]  # C = 8 candidates of len(prefix) + 1 tokens
    correct = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        enc = tokenizer([r["text"] for r in chunk], padding=True, truncation=True, max_length=64,
                        return_tensors="pt")
        with autocast("cpu", precision):
            scored = score_label_ids(model, enc["input_ids"], enc["attention_mask"], label_ids)
        picked = scored.token_log_probs[:, :, len(prefix)].argmax(dim=-1)  # [B]
        correct += sum(labels[i] == r["label"] for i, r in zip(picked.tolist(), chunk, strict=True))
    return correct / max(1, len(rows))


def run(spec: RunSpec, steps: int, batch_size: int, eval_every: int, dev_size: int, prompt_lr: float = 0.3,
        model_lr: float = 3e-4, lora_lr: float = 1e-3, precision: str = "auto") -> dict:
    """Train one spec for `steps` steps; return the dev curve (for time-to-accuracy) and test accuracies.
    `prompt_lr` is Adafactor's for prompts, `model_lr` AdamW's for model tuning, `lora_lr` AdamW's for LoRA;
    `precision` is "auto" (bf16 where the hardware is fast), "fp32" or "bf16"."""
    model, tokenizer, optimizer = _build(spec, prompt_lr, model_lr, lora_lr)
    directory = TASKS[spec.task][0]
    train, dev = read_supersense("train", directory), read_supersense("dev", directory)[:dev_size]
    test = read_supersense("test", directory)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rng = random.Random(spec.seed)
    order: list[int] = []
    dev_acc0, _ = generate_accuracy(model, tokenizer, dev, precision=precision)
    curve = [{"step": 0, "seconds": 0.0, "dev_accuracy": dev_acc0}]
    best = (dev_acc0, {n: p.detach().clone() for n, p in trainable})
    train_seconds, losses = 0.0, []
    for step in range(1, steps + 1):
        started = time.time()
        model.train()
        if len(order) < batch_size:
            order += rng.sample(range(len(train)), len(train))
        rows, order = [train[i] for i in order[:batch_size]], order[batch_size:]
        with autocast("cpu", precision):
            loss = model(**supersense_batch(tokenizer, rows, spec.sentinel)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.time() - started
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            acc, _ = generate_accuracy(model, tokenizer, dev, precision=precision)
            curve.append({"step": step, "seconds": round(train_seconds, 1), "dev_accuracy": acc,
                          "train_loss": sum(losses[-eval_every:]) / len(losses[-eval_every:])})
            if acc > best[0]:
                best = (acc, {n: p.detach().clone() for n, p in trainable})
    with torch.no_grad():
        for name, param in trainable:
            param.copy_(best[1][name])
    test_acc, predictions = generate_accuracy(model, tokenizer, test, precision=precision)
    return {
        **asdict(spec), "key": spec.key, "steps": steps, "batch_size": batch_size,
        "prompt_lr": prompt_lr, "model_lr": model_lr, "lora_lr": lora_lr, "precision": resolve_precision(precision),
        "trainable_parameters": sum(p.numel() for _, p in trainable), "train_seconds": round(train_seconds, 1),
        "dev_curve": curve, "best_dev_accuracy": best[0],
        "test_accuracy": test_acc, "test_label_token_accuracy": label_token_accuracy(model, tokenizer, test, spec.sentinel, precision=precision,
                                                          labels=spec.labels),
        "valid_label_rate": sum(p in spec.labels for p in predictions) / len(predictions),
    }
