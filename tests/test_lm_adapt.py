"""LM adaptation with Trainer: a tiny T5 learns, saves, is known as adapted, prompt-tunes, resumes; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from softprompt_ext import SoftPromptConfig, lm_adapted, tiny_models
from softprompt_ext.training.lm_adapt import lm_adapt, main, resolve_resume
from softprompt_ext.training.lm_objectives import LMObjective, Seq2SeqCollator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"input_length": 16, "target_length": 16}
TRAINING = {
    "max_steps": 20, "save_steps": 10, "logging_steps": 1, "learning_rate": 1e-2, "per_device_train_batch_size": 8,
    "seed": 0, "disable_tqdm": True, "use_cpu": True, "report_to": "none", **LENGTHS,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(tiny_models._CORPUS * 2) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def source(tokenizer, tmp_path_factory) -> str:
    """A tiny span-corruption-style T5 saved under a T5 1.1 name, so the registry knows it by its directory."""
    directory = str(tmp_path_factory.mktemp("hub") / "t5-v1_1-small")
    tiny_models.build_t5(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def adapted(source, corpus, tmp_path_factory):
    """20 steps of prefix-LM adaptation, checkpoints at steps 10 and 20."""
    return lm_adapt(source, str(tmp_path_factory.mktemp("run") / "out"), train_files=[corpus], **TRAINING)


def _batch(tokenizer, corpus: str) -> dict[str, torch.Tensor]:
    objective = LMObjective(tokenizer, seed=123, **LENGTHS)
    with open(corpus, encoding="utf-8") as handle:
        lines = handle.read().splitlines()[:21]
    features = [ex for i, line in enumerate(lines) for ex in objective.examples(line, i)]
    return Seq2SeqCollator(tokenizer.pad_token_id)(features)


def _loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def _span_warnings(model) -> list[str]:
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="RANDOM_UNIFORM")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        get_peft_model(model, config)
    return [str(w.message) for w in record if "span-corruption" in str(w.message)]


@pytest.mark.slow
def test_adaptation_lowers_the_loss(adapted, source, corpus, tokenizer):
    losses = [entry["loss"] for entry in adapted.log_history if "loss" in entry]
    assert adapted.global_step == 20 and len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    batch = _batch(tokenizer, corpus)  # held-out split points (another seed)
    before = _loss(AutoModelForSeq2SeqLM.from_pretrained(source), batch)
    after = _loss(AutoModelForSeq2SeqLM.from_pretrained(adapted.output_dir), batch)
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
def test_checkpoint_loads_and_records_the_adaptation(adapted, source):
    model = AutoModelForSeq2SeqLM.from_pretrained(adapted.output_dir)
    assert AutoTokenizer.from_pretrained(adapted.output_dir).eos_token_id == 1
    record = model.config.lm_adaptation
    assert {k: record[k] for k in ("objective", "steps", "source", "source_steps", "input_length", "data")} == {
        "objective": "prefix_lm", "steps": 20, "source": source, "source_steps": 0, "input_length": 16,
        "data": ["corpus.txt"],
    }
    with open(os.path.join(adapted.output_dir, "checkpoint-10", "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["lm_adaptation"]["steps"] == 10  # intermediate checkpoints are recorded too


@pytest.mark.slow
def test_adapted_model_is_recognised_and_prompt_tunes(adapted, source, tokenizer, corpus, monkeypatch):
    monkeypatch.setattr(lm_adapted, "_warned", set())
    assert lm_adapted.is_span_corruption_only(source) and not lm_adapted.is_span_corruption_only(adapted.output_dir)
    assert len(_span_warnings(AutoModelForSeq2SeqLM.from_pretrained(source))) == 1
    base = AutoModelForSeq2SeqLM.from_pretrained(adapted.output_dir)
    assert _span_warnings(base) == []

    model = get_peft_model(base, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, init_seed=0,
                                                   sample_vocab_size=50, tokenizer_name_or_path=adapted.output_dir))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [tuple(p.shape) for p in trainable] == [(4, 16)]
    batch = _batch(tokenizer, corpus)
    optimizer = torch.optim.Adam(trainable, lr=0.1)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_resume_matches_the_uninterrupted_run(adapted, source, corpus, tmp_path):
    resumed = lm_adapt(
        source, str(tmp_path / "resumed"), train_files=[corpus],
        resume_from_checkpoint=os.path.join(adapted.output_dir, "checkpoint-10"), **TRAINING,
    )
    assert resumed.global_step == 20
    assert [e["step"] for e in resumed.log_history if "loss" in e] == list(range(1, 21))  # 1..10 restored
    restored = [e["loss"] for e in resumed.log_history if "loss" in e]
    original = [e["loss"] for e in adapted.log_history if "loss" in e]
    assert restored == pytest.approx(original, rel=1e-5)  # steps 11..20 retrained to the same losses
    expected = load_file(os.path.join(adapted.output_dir, "model.safetensors"))
    actual = load_file(os.path.join(resumed.output_dir, "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)
    config = AutoModelForSeq2SeqLM.from_pretrained(resumed.output_dir).config
    assert config.lm_adaptation["steps"] == 20 and config.lm_adaptation["source"] == source


@pytest.mark.slow
def test_continuing_an_adapted_checkpoint_adds_its_steps_streaming(adapted, corpus, tmp_path):
    more = lm_adapt(
        adapted.output_dir, str(tmp_path / "more"), train_files=[corpus], streaming=True,
        **{**TRAINING, "max_steps": 2},
    )
    record = AutoModelForSeq2SeqLM.from_pretrained(more.output_dir).config.lm_adaptation
    assert (record["steps"], record["source_steps"], record["source"]) == (22, 20, adapted.output_dir)


@pytest.mark.slow
def test_span_corruption_run_is_recorded_as_not_adapted(source, corpus, tmp_path):
    out = lm_adapt(
        source, str(tmp_path / "domain"), train_files=[corpus], objective="span_corruption",
        **{**TRAINING, "max_steps": 2, "target_length": 8},
    ).output_dir
    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert "lm_adaptation" not in config
    assert (config["continued_pretraining"]["objective"], config["continued_pretraining"]["steps"]) == ("span_corruption", 2)
    # still span corruption: the warning names the source's LM-adapted counterpart
    assert lm_adapted.lm_adapted_counterpart(out) == "google/t5-small-lm-adapt"


def test_a_callback_can_stop_the_run_with_a_checkpoint_to_resume_from(source, corpus, tmp_path):
    """`callbacks` reach the Trainer: one that stops at step 3 leaves checkpoint-3, whatever save_steps says."""
    from transformers import TrainerCallback

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_save = control.should_training_stop = True

    out = tmp_path / "stopped"
    result = lm_adapt(source, str(out), train_files=[corpus], callbacks=[StopAt3()],
                      **{**TRAINING, "max_steps": 6, "save_strategy": "no"})
    assert result.global_step == 3
    assert resolve_resume("last", str(out)) == str(out / "checkpoint-3")


def test_resume_last_finds_the_newest_checkpoint(tmp_path):
    for step in (5, 10):
        os.makedirs(tmp_path / f"checkpoint-{step}")
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    assert resolve_resume("last", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match="holds no checkpoint-N directory"):
        resolve_resume("last", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is not a directory; pass a checkpoint-N"):
        resolve_resume(str(tmp_path / "nope"), str(tmp_path))


def test_python_api_errors(source, corpus, tmp_path, tokenizer):
    with pytest.raises(TypeError, match=r"unknown arguments \['epochs'\]"):
        lm_adapt(source, str(tmp_path / "o"), train_files=[corpus], epochs=3)
    with pytest.raises(ValueError, match="pass exactly one of dataset_name and train_files"):
        lm_adapt(source, str(tmp_path / "o"))
    decoder_only = str(tmp_path / "llama")
    tiny_models.build_llama(len(tokenizer)).save_pretrained(decoder_only)
    with pytest.raises(ValueError, match="'llama' model without an encoder"):
        lm_adapt(decoder_only, str(tmp_path / "o"), train_files=[corpus], **TRAINING)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"body": "the cat sat on the mat"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"text_column='text' is not a column of the dataset \(columns: \['body'\]\)"):
        lm_adapt(source, str(tmp_path / "o"), train_files=[str(rows)], **TRAINING)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input_length", "1"], "input_length must be an int >= 3, got 1"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["--dataset_name", "c4"], "pass exactly one of dataset_name and train_files"),
        (["--resume_from_checkpoint", "last"], "holds no checkpoint-N directory"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(argv, message, source, corpus, tmp_path, capsys):
    base = ["--model_name_or_path", source, "--train_files", corpus, "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main(base + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("softprompt-lm-adapt: error: ") and message in err, err


def test_cli_requires_output_dir(source, corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", source, "--train_files", corpus])
    assert exit_info.value.code == 2 and "output_dir is required" in capsys.readouterr().err


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "softprompt_ext.training.lm_adapt", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0 and shown.startswith("usage: softprompt-lm-adapt")
    for flag in ("--model_name_or_path", "--train_files", "--input_length", "--max_steps", "--resume_from_checkpoint"):
        assert flag in shown


@pytest.mark.slow
def test_python_m_entry_point_reports_a_bad_argument_in_one_line(tmp_path):
    bad = _run("--model_name_or_path", "x", "--train_files", "missing.txt", "--output_dir", str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == (
        "softprompt-lm-adapt: error: train_files: 'missing.txt' is not a file; pass existing .txt or .jsonl files."
    )
    assert "Traceback" not in bad.stderr and "usage:" not in bad.stderr


@pytest.mark.slow
def test_cli_adapts_from_jsonl(source, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"body": line}) + "\n" for line in tiny_models._CORPUS), encoding="utf-8")
    out = str(tmp_path / "cli")
    done = _run(
        "--model_name_or_path", source, "--train_files", str(rows), "--text_column", "body", "--output_dir", out,
        "--max_steps", "3", "--input_length", "12", "--target_length", "8", "--per_device_train_batch_size", "4",
        "--logging_steps", "1", "--use_cpu", "--save_steps", "100",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"softprompt-lm-adapt: wrote {out} after 3 steps of prefix_lm" in done.stdout
    assert "'loss'" in done.stdout + done.stderr  # Trainer logs the loss
    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        record = json.load(handle)["lm_adaptation"]
    assert (record["steps"], record["input_length"], record["target_length"], record["data"]) == (3, 12, 8, ["rows.jsonl"])
    assert not lm_adapted.is_span_corruption_only(out)


def test_the_trainer_builds_t5s_parameter_scaled_adafactor(source, tmp_path):
    """`t5_adafactor` reaches the Trainer through `optimizer_cls_and_kwargs` (Transformers' own optim=adafactor
    sets scale_parameter=False); the flag off, or another optim, leaves the Trainer's choice."""
    from transformers import Trainer
    from transformers.optimization import Adafactor

    from softprompt_ext.training.lm_adapt import LMAdaptTrainingArguments, t5_adafactor

    def built(**overrides):
        args = LMAdaptTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)
        trainer = Trainer(model=AutoModelForSeq2SeqLM.from_pretrained(source), args=args,
                          optimizer_cls_and_kwargs=t5_adafactor(args))
        return trainer.create_optimizer()

    default = built()
    assert isinstance(default, Adafactor)
    assert {g["scale_parameter"] for g in default.param_groups} == {True}
    assert {g["relative_step"] for g in default.param_groups} == {False}
    assert {g["lr"] for g in default.param_groups} == {1e-3}
    unscaled = built(adafactor_scale_parameter=False)
    assert isinstance(unscaled, Adafactor) and {g["scale_parameter"] for g in unscaled.param_groups} == {False}
    assert not isinstance(built(optim="adamw_torch"), Adafactor)
    assert t5_adafactor(LMAdaptTrainingArguments(output_dir=str(tmp_path), optim="adamw_torch")) is None
