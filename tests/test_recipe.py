"""The Transformers Trainer with SoftPromptConfig models: the paper's recipe, checkpoints, resume, best model,
continuing a saved prompt. Real Trainer, real PEFT, tiny models; no mocks."""

from __future__ import annotations

import math
import os

import pytest
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file
from transformers import (
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    default_data_collator,
)
from transformers.optimization import Adafactor

from softprompt_ext import SoftPromptConfig
from softprompt_ext.adapters.reader import read_prompt
from softprompt_ext.training.recipe import (
    PaperTrainingArguments,
    check_trainable_prompt,
    load_for_training,
    paper_optimizer,
    transformers_weight_decay,
)

P = 4  # prompt rows
D = 16  # tiny models' d_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


PAIRS = [
    ("the cat sat on the mat", "positive"),
    ("a terrible film with bad acting", "negative"),
    ("a great success", "positive"),
    ("a boring play", "negative"),
]


def soft_config(tokenizer_dir: str, task_type: str = "SEQ_2_SEQ_LM", **kwargs) -> SoftPromptConfig:
    kwargs = {"num_virtual_tokens": P, "sample_vocab_size": 100, "init_seed": 0, **kwargs}
    return SoftPromptConfig(task_type=task_type, tokenizer_name_or_path=tokenizer_dir, **kwargs)


@pytest.fixture(scope="module")
def seq2seq_data(tokenizer) -> Dataset:
    rows = [dict(input_ids=tokenizer(x)["input_ids"], labels=tokenizer(y)["input_ids"]) for x, y in PAIRS]
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def causal_data(tokenizer) -> Dataset:
    rows = []
    for x, y in PAIRS:
        enc = tokenizer(f"{x} {y}", padding="max_length", max_length=16, truncation=True)
        labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
        rows.append(dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels))
    return Dataset.from_list(rows)


def tiny_args(tmp_path, **overrides) -> PaperTrainingArguments:
    """The paper's recipe with a batch and step count for tiny tests."""
    kwargs = dict(
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=8,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    kwargs.update(overrides)
    return PaperTrainingArguments(str(tmp_path / "run"), **kwargs)


def seq2seq_trainer(model, tokenizer, args, data, **kwargs) -> Seq2SeqTrainer:
    collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    return Seq2SeqTrainer(model=model, args=args, train_dataset=data, data_collator=collator, **kwargs)


def prompt_of(model) -> torch.Tensor:
    return model.prompt_encoder["default"].embedding.weight.detach().clone()  # [P, H]


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ---------------------------------------------------------------------------------------------- the recipe
def test_paper_training_args_defaults_are_the_recipe(tmp_path):
    args = PaperTrainingArguments(str(tmp_path))
    assert args.optim == "adafactor"
    assert args.learning_rate == 0.3
    assert args.lr_scheduler_type == "constant"
    assert args.max_grad_norm == 0.0
    assert args.weight_decay == pytest.approx(1e-5 / 0.3)  # T5X's per-step decay, in Transformers' units
    assert (args.per_device_train_batch_size, args.max_steps) == (32, 30_000)
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == (
        "steps",
        1000,
        "steps",
        1000,
    )
    assert args.load_best_model_at_end is True and args.metric_for_best_model == "loss"
    assert args.save_only_model is False
    assert isinstance(args, Seq2SeqTrainingArguments)


def test_paper_training_args_overrides(tmp_path):
    args = PaperTrainingArguments(str(tmp_path), learning_rate=0.1, eval_strategy="no")
    assert args.weight_decay == pytest.approx(1e-4)  # follows the learning rate
    assert args.load_best_model_at_end is False  # nothing to pick the best by
    assert PaperTrainingArguments(str(tmp_path), weight_decay=0.0).weight_decay == 0.0
    with pytest.raises(ValueError, match=r"weight_decay_rate must be a finite number >= 0, got -1"):
        PaperTrainingArguments(str(tmp_path), weight_decay_rate=-1)


def test_paper_training_args_from_the_command_line(tmp_path):
    parser = HfArgumentParser(PaperTrainingArguments)
    argv = ["--output_dir", str(tmp_path), "--learning_rate", "0.01", "--load_best_model_at_end", "false"]
    (args,) = parser.parse_args_into_dataclasses(argv)
    assert args.optim == "adafactor" and args.learning_rate == 0.01
    assert args.weight_decay == pytest.approx(1e-3) and args.load_best_model_at_end is False


def test_paper_optimizer_hyperparameters_and_scope(make_model, tokenizer_dir):
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    optimizer, scheduler = paper_optimizer(model)
    assert isinstance(optimizer, Adafactor)
    (group,) = optimizer.param_groups
    expected = dict(
        lr=0.3,
        decay_rate=-0.8,
        weight_decay=pytest.approx(1e-5 / 0.3),
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        clip_threshold=1.0,
        beta1=None,
    )
    assert {key: group[key] for key in expected} == expected
    assert [p.shape for p in group["params"]] == [torch.Size([P, D])]
    assert group["params"][0] is model.prompt_encoder["default"].embedding.weight
    assert [scheduler.lr_lambdas[0](step) for step in (0, 1, 29_999)] == [1.0, 1.0, 1.0]  # constant 0.3


def test_trainer_builds_the_recipe_from_the_arguments_alone(make_model, tokenizer, tokenizer_dir, tmp_path):
    """optim="adafactor" gives the recipe; `optim_args` can't change it (Transformers ignores them there)."""
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    args = tiny_args(tmp_path, optim_args="decay_rate=-0.5,scale_parameter=True")
    trainer = Seq2SeqTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    prompt = model.prompt_encoder["default"].embedding.weight
    (group,) = [g for g in optimizer.param_groups if any(p is prompt for p in g["params"])]
    assert isinstance(optimizer, Adafactor) and len(group["params"]) == 1
    expected = dict(
        lr=0.3,
        decay_rate=-0.8,
        weight_decay=pytest.approx(1e-5 / 0.3),
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
        clip_threshold=1.0,
        beta1=None,
    )
    assert {key: group[key] for key in expected} == expected


def test_paper_optimizer_rejects_bad_values(make_model, tokenizer_dir):
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    with pytest.raises(
        ValueError, match=r"decay_rate must be in \(0, 1\], got -0.8; .*pass the positive number"
    ):
        paper_optimizer(model, decay_rate=-0.8)
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0, got 0"):
        paper_optimizer(model, learning_rate=0)
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0, got nan"):
        transformers_weight_decay(1e-5, math.nan)


def test_decay_rate_sign_maps_to_the_papers_schedule():
    """Pins Transformers' convention: with decay_rate=-0.8, beta2_t = 1 - t^(-0.8) (the paper's decay 0.8)."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = Adafactor([param], lr=0.3, decay_rate=-0.8, scale_parameter=False, relative_step=False)
    grads = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 4.0])]
    expected = torch.zeros(3)
    for t, grad in enumerate(grads, start=1):
        param.grad = grad.clone()
        optimizer.step()
        beta2 = 1.0 - t**-0.8  # t=1: 0 (no history yet); t=2: 0.4257
        expected = beta2 * expected + (1.0 - beta2) * (grad**2 + 1e-30)
    torch.testing.assert_close(optimizer.state[param]["exp_avg_sq"], expected)


def test_weight_decay_shrinks_by_the_rate_per_step(make_model, tokenizer_dir):
    """T5X's meaning: with a zero gradient a step multiplies the prompt by exactly (1 - weight_decay_rate)."""
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    before = prompt_of(model)
    optimizer, _ = paper_optimizer(model, weight_decay_rate=0.1)
    model.prompt_encoder["default"].embedding.weight.grad = torch.zeros(P, D)
    optimizer.step()
    torch.testing.assert_close(prompt_of(model), 0.9 * before)


@pytest.mark.slow
def test_paper_optimizer_trains_only_the_prompt_and_loss_falls(
    make_model, tokenizer, tokenizer_dir, tmp_path, seq2seq_data
):
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    frozen_before = {n: p.detach().clone() for n, p in model.base_model.named_parameters()}
    prompt_before = prompt_of(model)
    args = Seq2SeqTrainingArguments(
        str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=30,
        max_grad_norm=0.0,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = seq2seq_trainer(model, tokenizer, args, seq2seq_data, optimizers=paper_optimizer(model))
    trainer.train()
    for name, param in model.base_model.named_parameters():
        torch.testing.assert_close(param, frozen_before[name], rtol=0, atol=0, msg=f"{name} changed")
    assert not torch.allclose(prompt_of(model), prompt_before)
    history = losses(trainer)
    assert len(history) == 30
    assert history[-1] < 0.8 * history[0], history  # measured: 13.7 -> 9.8


def test_both_ways_in_train_the_same_prompt(make_model, tokenizer, tokenizer_dir, tmp_path, seq2seq_data):
    """`PaperTrainingArguments` (optim="adafactor") and `optimizers=paper_optimizer(model)` agree."""
    by_args = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    seq2seq_trainer(by_args, tokenizer, tiny_args(tmp_path / "a"), seq2seq_data).train()
    by_pair = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    plain = Seq2SeqTrainingArguments(
        str(tmp_path / "b"),
        per_device_train_batch_size=4,
        max_steps=8,
        max_grad_norm=0.0,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        save_strategy="no",
    )
    seq2seq_trainer(by_pair, tokenizer, plain, seq2seq_data, optimizers=paper_optimizer(by_pair)).train()
    torch.testing.assert_close(prompt_of(by_args), prompt_of(by_pair))


# ---------------------------------------------------------------------------------------------- Trainer flows
def test_seq2seq_trainer_trains_evaluates_and_predicts_with_generate(
    make_model, tokenizer, tokenizer_dir, tmp_path, seq2seq_data
):
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    args = tiny_args(
        tmp_path,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=4,
        predict_with_generate=True,
        generation_max_length=6,
    )
    trainer = seq2seq_trainer(
        model, tokenizer, args, seq2seq_data, eval_dataset=seq2seq_data, processing_class=tokenizer
    )
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [4, 8]
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])

    prediction = trainer.predict(seq2seq_data.select([0, 1]))
    model.eval()
    batch = tokenizer([x for x, _ in PAIRS[:2]], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model.generate(**batch, max_length=6)  # [2, <=6]
    got = torch.as_tensor(prediction.predictions)[:, : expected.shape[1]]
    torch.testing.assert_close(got, expected)


def test_checkpoints_hold_only_the_prompt(make_model, tokenizer, tokenizer_dir, tmp_path, seq2seq_data):
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    trainer = seq2seq_trainer(
        model, tokenizer, tiny_args(tmp_path, save_strategy="steps", save_steps=4), seq2seq_data
    )
    trainer.train()
    run = tmp_path / "run"
    checkpoints = sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"]
    for name in checkpoints:
        folder = run / name
        files = set(os.listdir(folder))
        assert not files & {"model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"}
        weights = load_file(folder / "adapter_model.safetensors")
        assert list(weights) == ["prompt_embeddings"]
        assert (
            weights["prompt_embeddings"].shape == (P, D)
            and weights["prompt_embeddings"].dtype == torch.float32
        )
        size = os.path.getsize(folder / "adapter_model.safetensors")
        assert P * D * 4 <= size <= P * D * 4 + 512  # the P x d floats plus a small header
        optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True)
        assert len(optimizer_state["state"]) == 1  # Adafactor keeps state for the prompt only
    torch.testing.assert_close(read_prompt(str(run / "checkpoint-8")), prompt_of(model))


class StopAt(TrainerCallback):
    """Interrupts training after `step` steps (the checkpoint of that step is written first)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


@pytest.mark.slow
def test_resume_from_checkpoint_ends_where_an_uninterrupted_run_ends(
    make_model, tokenizer, tokenizer_dir, tmp_path, seq2seq_data
):
    # batch 2 over 4 examples: stopping after 3 steps interrupts the second epoch mid-way
    settings = dict(per_device_train_batch_size=2, max_steps=8, save_strategy="steps", save_steps=3)
    whole = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    seq2seq_trainer(whole, tokenizer, tiny_args(tmp_path / "whole", **settings), seq2seq_data).train()

    interrupted = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    args = tiny_args(tmp_path / "parts", **settings)
    seq2seq_trainer(interrupted, tokenizer, args, seq2seq_data, callbacks=[StopAt(3)]).train()
    assert not torch.allclose(prompt_of(interrupted), prompt_of(whole))

    resumed = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))  # a fresh process would start here
    trainer = seq2seq_trainer(resumed, tokenizer, args, seq2seq_data)
    trainer.train(resume_from_checkpoint=str(tmp_path / "parts" / "run" / "checkpoint-3"))
    assert trainer.state.global_step == 8
    torch.testing.assert_close(prompt_of(resumed), prompt_of(whole))


def test_load_best_model_at_end_restores_the_best_checkpoint(
    make_model, tokenizer, tokenizer_dir, tmp_path, seq2seq_data
):
    # "best" = highest eval loss, so the best checkpoint is the first one and differs from the final prompt
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    args = tiny_args(
        tmp_path,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=4,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
    )
    assert args.load_best_model_at_end is True  # the recipe's default whenever there is an evaluation
    trainer = seq2seq_trainer(model, tokenizer, args, seq2seq_data, eval_dataset=seq2seq_data)
    trainer.train()
    run = tmp_path / "run"
    assert trainer.state.best_model_checkpoint == str(run / "checkpoint-4")
    torch.testing.assert_close(prompt_of(model), read_prompt(str(run / "checkpoint-4")))
    assert not torch.allclose(prompt_of(model), read_prompt(str(run / "checkpoint-8")))
    assert model.prompt_encoder["default"].embedding.weight.requires_grad  # still trainable afterwards


@pytest.mark.slow
def test_trainer_trains_a_causal_lm(make_model, tokenizer, tokenizer_dir, tmp_path, causal_data):
    base = make_model("llama")
    # The 0.02-std init of a tiny Llama makes its outputs almost independent of the input, so no prompt can
    # move the loss; wider weights give the prompt something to steer.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in base.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5, generator=generator)
    model = get_peft_model(base, soft_config(tokenizer_dir, task_type="CAUSAL_LM"))
    args = tiny_args(tmp_path, max_steps=20, save_strategy="steps", save_steps=20)
    trainer = Trainer(model=model, args=args, train_dataset=causal_data, data_collator=default_data_collator)
    trainer.train()
    history = losses(trainer)
    assert sum(history[-3:]) < 0.9 * sum(history[:3]), history  # measured: 7.3 -> 6.0 (means of three steps)
    weights = load_file(tmp_path / "run" / "checkpoint-20" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"prompt_embeddings": (P, D)}


# ------------------------------------------------------------------------------------- continue training
@pytest.fixture
def saved_adapter(make_model, tokenizer, tokenizer_dir, tmp_path, seq2seq_data) -> str:
    model = get_peft_model(make_model("t5"), soft_config(tokenizer_dir))
    seq2seq_trainer(model, tokenizer, tiny_args(tmp_path / "first", max_steps=4), seq2seq_data).train()
    path = str(tmp_path / "adapter")
    model.save_pretrained(path)
    return path


def test_peft_refuses_is_trainable_for_prompt_adapters(make_model, saved_adapter):
    """Pins PEFT's behaviour that makes `load_for_training` necessary."""
    with pytest.raises(ValueError, match="Cannot set a prompt learning adapter to trainable"):
        PeftModel.from_pretrained(make_model("t5"), saved_adapter, is_trainable=True)


def test_load_for_training_starts_at_the_saved_prompt_and_trains(
    make_model, tokenizer, saved_adapter, tmp_path, seq2seq_data
):
    saved = load_file(os.path.join(saved_adapter, "adapter_model.safetensors"))["prompt_embeddings"]
    model = load_for_training(make_model("t5"), saved_adapter)
    torch.testing.assert_close(prompt_of(model), saved, rtol=0, atol=0)
    assert model.peft_config["default"].prompt_tuning_init == "SAVED_PROMPT"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "prompt_encoder.default.embedding.weight"
    ]

    trainer = seq2seq_trainer(model, tokenizer, tiny_args(tmp_path, max_steps=6), seq2seq_data)
    trainer.train()
    assert not torch.allclose(prompt_of(model), saved)
    history = losses(trainer)
    assert history[-1] < history[0], history


def test_load_for_training_overrides(make_model, saved_adapter):
    saved = load_file(os.path.join(saved_adapter, "adapter_model.safetensors"))["prompt_embeddings"]
    model = load_for_training(make_model("t5"), saved_adapter, num_virtual_tokens=2)
    torch.testing.assert_close(prompt_of(model), saved[:2], rtol=0, atol=0)


def test_check_trainable_prompt_names_the_fix(make_model, tokenizer_dir):
    # the silent failure it guards against: prepare_model_for_kbit_training on a PeftModel freezes the prompt
    model = prepare_model_for_kbit_training(get_peft_model(make_model("t5"), soft_config(tokenizer_dir)))
    with pytest.raises(
        ValueError, match=r"soft prompt is frozen .*call it on the base model \*before\* get_peft_model"
    ):
        check_trainable_prompt(model)
    with pytest.raises(ValueError, match="load_for_training"):
        paper_optimizer(model)
    with pytest.raises(
        TypeError, match=r"model is a T5ForConditionalGeneration, not a prompt-tuning PeftModel"
    ):
        check_trainable_prompt(make_model("t5"))
