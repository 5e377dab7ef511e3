"""Multi-task prompt tuning (`training/multitask.py`): K prompts trained in one run equal K separate runs.

The reference for task t is an ordinary single-adapter PEFT run: `get_peft_model(base, config_t)`,
`paper_optimizer`, PEFT's own forward, the same examples in the same order. Dropout is off (the tiny models
are built with dropout 0) and the base weights are the same seeded weights in every run.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from softprompt_ext import SoftPromptConfig, paper_optimizer
from softprompt_ext.placement import mixed_forward
from softprompt_ext.special_tokens import IGNORE_INDEX
from softprompt_ext.training.multitask import (
    MultiTaskCollator,
    build_multitask_model,
    multitask_loss,
    multitask_optimizer,
    multitask_step_loss,
    task_prompt_parameters,
)

TASK_TYPES = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}
LENGTHS = {"animals": 3, "food": 5, "verbs": 4}
DATA = {
    "animals": [("the cat sat", "animal"), ("a dog ran far away", "animal"), ("birds sing", "animal"),
                ("the horse", "animal"), ("fish swim in the river", "animal"), ("a cow", "animal")],
    "food": [("bread and butter", "food"), ("an apple", "food"), ("cheese on the table", "food"),
             ("rice", "food"), ("soup is hot", "food"), ("a cake with cream", "food")],
    "verbs": [("to run", "verb"), ("she sings loudly", "verb"), ("they eat", "verb"),
              ("walk to the house", "verb"), ("swim", "verb"), ("read a book", "verb")],
}
PER_TASK_BATCH = 2
STEPS = 5


def configs(kind: str) -> dict[str, SoftPromptConfig]:
    return {
        name: SoftPromptConfig(task_type=TASK_TYPES[kind], num_virtual_tokens=length, init_seed=k,
                               prompt_tuning_init="RANDOM_UNIFORM")
        for k, (name, length) in enumerate(LENGTHS.items())
    }


def encode(tokenizer, kind: str, pairs) -> list[dict]:
    """One feature dict per example: seq2seq (input, target) or causal (input + target, loss on the target)."""
    features = []
    for source, target in pairs:
        if kind == "t5":
            features.append({"input_ids": tokenizer(source).input_ids, "labels": tokenizer(target).input_ids})
        else:
            ids_in = tokenizer(source, add_special_tokens=False).input_ids
            ids_out = tokenizer(" " + target).input_ids
            features.append({"input_ids": ids_in + ids_out, "labels": [IGNORE_INDEX] * len(ids_in) + ids_out})
    return features


def collate(tokenizer, kind: str, features: list[dict]) -> dict:
    """Right padding: ids with pad, labels with -100 (decoder-only: labels aligned to input_ids)."""
    width = max(len(f["input_ids"]) for f in features)
    label_width = width if kind != "t5" else max(len(f["labels"]) for f in features)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]),
        "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                        for f in features]),
        "labels": torch.tensor([f["labels"] + [IGNORE_INDEX] * (label_width - len(f["labels"])) for f in features]),
    }


def step_examples(step: int) -> slice:
    start = (step * PER_TASK_BATCH) % len(DATA["animals"])
    return slice(start, start + PER_TASK_BATCH)


def separate_runs(make_model, tokenizer, kind: str, dtype=torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for name, config in configs(kind).items():
        model = get_peft_model(make_model(kind), config).to(dtype)
        optimizer, _ = paper_optimizer(model)
        features = encode(tokenizer, kind, DATA[name])
        for step in range(STEPS):
            loss = model(**collate(tokenizer, kind, features[step_examples(step)])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        out[name] = model.prompt_encoder["default"].embedding.weight.detach().clone()
    return out


def joint_run(make_model, tokenizer, kind: str, dtype=torch.float32):
    model = build_multitask_model(make_model(kind), configs(kind)).to(dtype)
    frozen_before = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters()}
    optimizer, _ = multitask_optimizer(model, list(LENGTHS))
    features = {name: encode(tokenizer, kind, DATA[name]) for name in DATA}
    collator = MultiTaskCollator(lambda rows: collate(tokenizer, kind, rows))
    for step in range(STEPS):
        rows = [dict(f, task=name) for name in LENGTHS for f in features[name][step_examples(step)]]
        loss, _ = multitask_step_loss(model, collator(rows))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    prompts = {name: p.detach().clone() for name, p in task_prompt_parameters(model, list(LENGTHS)).items()}
    return model, prompts, frozen_before


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_k_prompts_trained_together_equal_k_separate_runs(make_model, tokenizer, kind):
    """5 steps of 3 tasks (P = 3, 5, 4), 2 examples per task per step, lr 0.3: joint == separate.

    The reference is the float64 separate run. The float32 joint run must be as close to it as the float32
    separate run itself is (a control in the same process, no machine-tuned threshold): Adafactor's normalised
    update turns round-off of small gradient entries into update differences, which grow over steps.
    Measured here (5 steps, prompt entries of size ~1): largest distance from float64, separate / joint,
    t5 5.4e-5 / 6.1e-5, llama 4.1e-6 / 4.7e-6 (Llama's rotary tables are float32 even in a float64 model).
    """
    separate64 = separate_runs(make_model, tokenizer, kind, torch.float64)
    separate32 = separate_runs(make_model, tokenizer, kind)
    model, joint32, frozen_before = joint_run(make_model, tokenizer, kind)
    for name in LENGTHS:
        initial = get_peft_model(make_model(kind), configs(kind)[name]).prompt_encoder["default"].embedding.weight
        assert joint32[name].shape == initial.shape
        assert (separate32[name] - initial).abs().max() > 0.1, "the prompts must train for the test to mean anything"
        control = (separate32[name].double() - separate64[name]).abs().max()
        error = (joint32[name].double() - separate64[name]).abs().max()
        assert error <= 10 * control + 1e-6, (name, float(error), float(control))
    # the frozen model stays frozen: no gradient flag, no change
    for n, p in model.get_base_model().named_parameters():
        assert not p.requires_grad, n
        assert torch.equal(p, frozen_before[n]), n
    if kind == "t5":  # all-float64 model: the two runs are the same mathematics (measured 6e-11 after 5 steps,
        # 3e-15 after 1: the growth is Adafactor amplifying float64 round-off)
        _, joint64, _ = joint_run(make_model, tokenizer, kind, torch.float64)
        for name in LENGTHS:
            torch.testing.assert_close(joint64[name], separate64[name], rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_gradient_reaches_only_each_examples_own_prompt(make_model, tokenizer, kind):
    model = build_multitask_model(make_model(kind), configs(kind))
    params = task_prompt_parameters(model, list(LENGTHS))
    features = encode(tokenizer, kind, DATA["animals"][:2] + DATA["food"][:1])
    names = ["animals", "food", "animals"]
    batch = collate(tokenizer, kind, features)
    out = mixed_forward(model, batch["input_ids"], batch["attention_mask"], names, labels=batch["labels"])
    loss, per_task = multitask_loss(out, names)
    loss.backward()
    assert params["verbs"].grad is None  # not in the batch: untouched, so Adafactor skips it
    assert params["animals"].grad.abs().sum() > 0 and params["food"].grad.abs().sum() > 0
    # each prompt's gradient is the gradient of its own task's mean loss alone
    for name in ("animals", "food"):
        rows = [i for i, n in enumerate(names) if n == name]
        alone = collate(tokenizer, kind, [features[i] for i in rows])
        own = mixed_forward(model, alone["input_ids"], alone["attention_mask"], [name] * len(rows),
                            labels=alone["labels"]).loss
        (grad,) = torch.autograd.grad(own, params[name])
        torch.testing.assert_close(params[name].grad, grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(per_task[name], own.detach(), rtol=1e-5, atol=1e-6)


def test_one_param_group_per_task(make_model):
    model = build_multitask_model(make_model("t5"), configs("t5"))
    optimizer, _ = multitask_optimizer(model, list(LENGTHS))
    assert [g["task"] for g in optimizer.param_groups] == list(LENGTHS)
    assert [tuple(g["params"][0].shape) for g in optimizer.param_groups] == [(3, 16), (5, 16), (4, 16)]


def test_bad_input_is_named(make_model, tokenizer):
    with pytest.raises(ValueError, match="non-empty mapping"):
        build_multitask_model(make_model("t5"), {})
    frozen = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, inference_mode=True)
    with pytest.raises(ValueError, match="inference_mode=True"):
        build_multitask_model(make_model("t5"), {"a": frozen})
    with pytest.raises(TypeError, match="SoftPromptConfig per task"):
        build_multitask_model(make_model("t5"), {"a": object()})
    model = build_multitask_model(make_model("t5"), configs("t5"))
    with pytest.raises(ValueError, match="have no adapter"):
        task_prompt_parameters(model, ["nope"])
    with pytest.raises(ValueError, match="has no 'task' field"):
        MultiTaskCollator(lambda rows: rows)([{"input_ids": [1]}])
    with pytest.raises(ValueError, match="no 'task_names'"):
        multitask_step_loss(model, collate(tokenizer, "t5", encode(tokenizer, "t5", DATA["food"][:1])))


# ---------------------------------------------------------------------------------------------- Trainer
def uneven_steps(tokenizer, kind: str, per_step: dict[str, int], steps: int):
    """A training set whose every step holds `per_step[t]` examples of task t (in task order), each task's
    examples read cyclically."""
    from datasets import Dataset

    features = {name: encode(tokenizer, kind, DATA[name]) for name in LENGTHS}
    taken = dict.fromkeys(LENGTHS, 0)
    rows = []
    for _ in range(steps):
        for name, count in per_step.items():
            for _ in range(count):
                rows.append(dict(features[name][taken[name] % len(features[name])], task=name))
                taken[name] += 1
    return Dataset.from_list(rows)


def trainer_run(make_model, tokenizer, output_dir, max_steps, resume=None, kind="t5", batch=None,
                accumulation=1, dtype=torch.float32, save_steps=2, train=None):
    """`MultiTaskTrainer` on `train` (default: the equal-steps mixture, 2 examples of every task per step).

    `batch` is the per-device batch (default: one step's 6 rows); `accumulation` the micro-batches per step.
    Returns the trainer, the final prompts, and the prompts' gradients at every optimizer step (as the
    optimizer sees them, after accumulation and any cross-process reduction)."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, TrainerCallback

    from softprompt_ext import PaperTrainingArguments
    from softprompt_ext.training.mixing import equal_steps
    from softprompt_ext.training.multitask import MultiTaskTrainer

    model = build_multitask_model(make_model(kind), configs(kind)).to(dtype)
    params = task_prompt_parameters(model, list(LENGTHS))
    if train is None:
        data = {name: Dataset.from_list(encode(tokenizer, kind, DATA[name])) for name in LENGTHS}
        train = equal_steps(data, PER_TASK_BATCH, 4)
    args = PaperTrainingArguments(
        str(output_dir), max_steps=max_steps, per_device_train_batch_size=batch or PER_TASK_BATCH * len(LENGTHS),
        gradient_accumulation_steps=accumulation, eval_strategy="no", save_steps=save_steps, logging_steps=1,
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    grads: list[dict] = []

    class RecordGrads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads.append({n: None if p.grad is None else p.grad.detach().clone() for n, p in params.items()})

    if kind == "t5":
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
    else:
        collator = lambda rows: collate(tokenizer, kind, rows)  # noqa: E731
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=train, data_collator=MultiTaskCollator(collator),
                               callbacks=[RecordGrads()])
    trainer.train(resume_from_checkpoint=resume)
    prompts = {n: p.detach().clone() for n, p in params.items()}
    return trainer, prompts, grads


def test_trainer_trains_every_prompt_like_the_manual_joint_loop_and_resumes(make_model, tokenizer, tmp_path):
    import test_multitask as here

    trainer, prompts, _ = trainer_run(make_model, tokenizer, tmp_path / "full", 4)
    assert [g["task"] for g in trainer.optimizer.param_groups] == list(LENGTHS)
    previous, here.STEPS = here.STEPS, 4
    try:
        _, manual, _ = joint_run(make_model, tokenizer, "t5")
    finally:
        here.STEPS = previous
    for name in LENGTHS:  # same batches, same optimizer: measured identical (difference 0.0)
        torch.testing.assert_close(prompts[name], manual[name], rtol=0, atol=1e-6)
    # every prompt is in the checkpoint (PEFT's layout: one sub-folder per adapter)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert all((checkpoint / name / "adapter_model.safetensors").is_file() for name in LENGTHS)
    # resume from step 2: the same prompts as the uninterrupted run
    _, resumed, _ = trainer_run(make_model, tokenizer, tmp_path / "full", 4, resume=str(checkpoint))
    for name in LENGTHS:
        torch.testing.assert_close(resumed[name], prompts[name], rtol=0, atol=1e-6)


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


UNEVEN = {"animals": 2, "food": 3, "verbs": 1}  # one step: a a f | f f v as 2 micro-batches of 3


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_gradient_accumulation_equals_the_full_batch(make_model, tokenizer, tmp_path, kind):
    """2 micro-batches of 3 per step == 1 batch of 6, for every prompt: gradients, prompts, logged loss.

    Every step is animals, animals, food | food, food, verbs: "food" is split 1 + 2 over the micro-batches, so
    the mean of the micro-batch means weighs its examples 1/2, 1/4, 1/4 instead of 1/3 each, and
    "animals" / "verbs" sit in one micro-batch only, so dividing by the number of micro-batches halves their
    gradient. The controls below show that the gradient check tells both mistakes apart (the prompts alone
    could not show the halving: Adafactor's update is nearly scale-invariant).
    """
    train = uneven_steps(tokenizer, kind, UNEVEN, 3)
    full, full_prompts, full_grads = trainer_run(make_model, tokenizer, tmp_path / "full", 3, kind=kind, batch=6,
                                                 save_steps=10, train=train)
    acc, acc_prompts, acc_grads = trainer_run(make_model, tokenizer, tmp_path / "acc", 3, kind=kind, batch=3,
                                              accumulation=2, save_steps=10, train=train)
    assert full.state.global_step == acc.state.global_step == 3
    assert len(full_grads) == len(acc_grads) == 3
    for step, (g_full, g_acc) in enumerate(zip(full_grads, acc_grads, strict=True)):
        # step 0: the same prompts, so only the summation order differs; later steps start from prompts that
        # already differ by round-off (relative to the gradient's largest entry, measured at most 8e-6)
        tolerance = 1e-5 if step == 0 else 1e-4
        for name in LENGTHS:
            assert g_full[name] is not None and g_acc[name] is not None, (step, name)
            error = float((g_acc[name] - g_full[name]).abs().max())
            assert error <= tolerance * float(g_full[name].abs().max()), (step, name, error)
    for name in LENGTHS:  # float32 round-off through 3 Adafactor steps (measured up to 5e-6; entries ~1)
        torch.testing.assert_close(acc_prompts[name], full_prompts[name], rtol=0, atol=5e-5)
    torch.testing.assert_close(torch.tensor(losses(acc)), torch.tensor(losses(full)), rtol=1e-5, atol=0)

    # the controls, on step 0's food examples (f0 | f1 f2) and verbs example (v0, second micro-batch only)
    model = build_multitask_model(make_model(kind), configs(kind))
    params = task_prompt_parameters(model, list(LENGTHS))

    def grad_of_mean(name, rows):
        b = collate(tokenizer, kind, rows)
        out = mixed_forward(model, b["input_ids"], b["attention_mask"], [name] * len(rows), labels=b["labels"])
        return torch.autograd.grad(out.loss, params[name])[0]

    food = encode(tokenizer, kind, DATA["food"][:3])
    right = grad_of_mean("food", food)
    assert float((right - full_grads[0]["food"]).abs().max()) <= 1e-5 * float(right.abs().max())
    naive = 0.5 * grad_of_mean("food", food[:1]) + 0.5 * grad_of_mean("food", food[1:])
    verbs = grad_of_mean("verbs", encode(tokenizer, kind, DATA["verbs"][:1]))
    assert float((verbs - full_grads[0]["verbs"]).abs().max()) <= 1e-5 * float(verbs.abs().max())
    for wrong, correct in ((naive, right), (verbs / 2, verbs)):
        assert (wrong - correct).abs().max() > 1e-2 * correct.abs().max(), "the control must differ"


def test_accumulation_token_counts_are_checked_and_named(make_model, tokenizer):
    model = build_multitask_model(make_model("t5"), configs("t5"))
    rows = encode(tokenizer, "t5", DATA["food"][:2])
    batch = collate(tokenizer, "t5", rows)
    out = mixed_forward(model, batch["input_ids"], batch["attention_mask"], ["food", "food"], labels=batch["labels"])
    with pytest.raises(ValueError, match=r"token_counts\['food'\] = 1 but this batch alone holds"):
        multitask_loss(out, ["food", "food"], {"food": 1})
    with pytest.raises(ValueError, match=r"token_counts\['food'\] = None"):
        multitask_loss(out, ["food", "food"], {"animals": 10})
    # a window count twice this batch's halves the task's loss: its share of the window mean
    alone, _ = multitask_loss(out, ["food", "food"])
    tokens = int(out.num_label_tokens.sum())
    shared, _ = multitask_loss(out, ["food", "food"], {"food": 2 * tokens})
    torch.testing.assert_close(shared, alone / 2)


def test_trainer_names_a_micro_batch_it_cannot_count(make_model, tokenizer, tmp_path):
    from softprompt_ext import PaperTrainingArguments
    from softprompt_ext.training.multitask import MultiTaskTrainer

    args = PaperTrainingArguments(str(tmp_path), gradient_accumulation_steps=2, eval_strategy="no", report_to=[],
                                  use_cpu=True)
    trainer = MultiTaskTrainer(model=build_multitask_model(make_model("t5"), configs("t5")), args=args,
                               tasks=["animals", "food"])
    batch = dict(collate(tokenizer, "t5", encode(tokenizer, "t5", DATA["verbs"][:1] + DATA["food"][:1])),
                 task_names=["verbs", "food"])
    with pytest.raises(ValueError, match=r"micro-batch 1 holds examples of tasks \['verbs'\], which are not among"):
        trainer.get_batch_samples(iter([{**batch, "task_names": ["food", "food"]}, batch]), 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="micro-batch 0 has no 'task_names'"):
        trainer.get_batch_samples(iter([{k: v for k, v in batch.items() if k != "task_names"}]), 1, "cpu")
    with pytest.raises(ValueError, match="micro-batch 0 has no 'labels'"):
        trainer.get_batch_samples(iter([{k: v for k, v in batch.items() if k != "labels"}]), 1, "cpu")


@pytest.mark.parametrize("kind", ["t5", "gpt2"])
def test_label_token_counts_match_the_forward(make_model, tokenizer, kind):
    from softprompt_ext.training.multitask import label_token_counts

    model = build_multitask_model(make_model(kind), configs(kind))
    rows = encode(tokenizer, kind, DATA["animals"][:3] + DATA["verbs"][:2])
    batch = collate(tokenizer, kind, rows)
    names = ["animals"] * 3 + ["verbs"] * 2
    out = mixed_forward(model, batch["input_ids"], batch["attention_mask"], names, labels=batch["labels"])
    assert torch.equal(label_token_counts(batch, kind == "t5"), out.num_label_tokens)
