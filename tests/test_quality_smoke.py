"""benchmarks/quality.py end to end at toy size: every method of the reference panel trains, is scored on test,
and the JSON, table and both plots are written. No accuracy is asserted (2 steps); the committed numbers are in
benchmarks/QUALITY.md."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.mark.slow
def test_quality_benchmark_runs_the_reference_panel(tmp_path, monkeypatch):
    from benchmarks import quality

    monkeypatch.setattr(quality, "RESULTS", str(tmp_path))  # table and plots go next to --out, not into the repo
    out = tmp_path / "q.json"
    assert quality.main(["--steps", "2", "--eval_every", "1", "--dev_size", "4", "--seeds", "0", "--workers", "1",
                         "--panels", "reference", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["model_lr"] == 3e-4 and report["settings"]["lora_lr"] == 1e-3
    assert sorted(r["method"] for r in report["runs"]) == ["lora", "model", "prompt"]
    for run in report["runs"]:
        assert [p["step"] for p in run["dev_curve"]] == [0, 1, 2]
        assert 0.0 <= run["test_accuracy"] <= 1.0 and 0.0 <= run["valid_label_rate"] <= 1.0
    assert [row["label"] for row in report["summary"]["reference"]] == ["prompt tuning", "LoRA r=8", "model tuning"]
    for name in ("q_table.md", "q_ablations.png", "q_time_to_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_held_out_task_runs_are_keyed_apart_and_scored_against_the_verb_labels(monkeypatch):
    from benchmarks import quality, quality_runs
    from benchmarks.quality_runs import RunSpec, run

    spec = RunSpec(task="verb_supersense")
    assert spec.key == "verb_supersense/prompt/CLASS_LABELS/P20/lm_adapt/s0"
    assert RunSpec().key == "prompt/CLASS_LABELS/P20/lm_adapt/s0"  # the committed noun results keep their keys
    assert all(s.task == "verb_supersense" for _, s in quality.panels("verb_supersense")["init"])
    with pytest.raises(ValueError, match=r"task='adjectives' is not a quality task"):
        RunSpec(task="adjectives")
    read, real = [], quality_runs.read_supersense

    def read_supersense(split, directory):
        read.append((split, directory))
        return real(split, directory)[:4]

    monkeypatch.setattr(quality_runs, "read_supersense", read_supersense)
    monkeypatch.setattr(quality_runs, "check_task_held_out", lambda task: None)  # whatever the shipped build held out
    monkeypatch.setattr(quality_runs, "generate_texts", lambda model, tok, texts, **kw: ["motion"] * len(texts))
    result = run(spec, steps=1, batch_size=4, eval_every=1, dev_size=4)
    assert read == [("train", "wordnet_verb_supersense"), ("dev", "wordnet_verb_supersense"),
                    ("test", "wordnet_verb_supersense")]
    assert result["task"] == "verb_supersense" and result["key"] == spec.key
    assert result["valid_label_rate"] == 1.0  # "motion" is a verb label (it would be 0 against the noun labels)


def test_the_held_out_task_is_refused_on_a_model_pretrained_on_its_text(tmp_path):
    from benchmarks.quality_runs import check_task_held_out, held_out_tasks

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"data": {"held_out_synsets": 640}}))  # a record before the verb task existed
    assert held_out_tasks(str(old)) == ["wordnet_supersense"]
    check_task_held_out("supersense", str(old))
    with pytest.raises(ValueError, match=r"task='verb_supersense': the embedded model's build_record.json holds "
                                         r"out only \['wordnet_supersense'\] \(field data.held_out_tasks\)"):
        check_task_held_out("verb_supersense", str(old))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"data": {"held_out_tasks": ["wordnet_supersense", "wordnet_verb_supersense"]}}))
    check_task_held_out("verb_supersense", str(new))


def test_first_token_rank_classification_refuses_labels_that_share_a_first_token():
    from benchmarks.quality_runs import label_token_accuracy

    class SameFirstToken:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [7, len(text)]}

    with pytest.raises(ValueError, match=r"labels \['contact', 'content'\] start with the same token under"):
        label_token_accuracy(None, SameFirstToken(), [], sentinel=False, labels=("contact", "content"))


def test_quality_cli_names_an_unknown_panel(capsys):
    from benchmarks import quality

    with pytest.raises(SystemExit):
        quality.main(["--panels", "lenght"])
    assert "--panels: unknown ['lenght']" in capsys.readouterr().err


def test_quality_cli_only_runs_the_named_settings_and_names_an_unknown_one(tmp_path, monkeypatch, capsys):
    from benchmarks import quality

    monkeypatch.setattr(quality, "RESULTS", str(tmp_path))
    with pytest.raises(SystemExit):
        quality.main(["--panels", "init", "--only", "CLASS_LABEL", "--out", str(tmp_path / "x.json")])
    assert "--only: no setting ['CLASS_LABEL'] in --panels init; choose from ['CLASS_LABELS'" in capsys.readouterr().err
    ran = []
    monkeypatch.setattr(quality.multiprocessing, "get_context", lambda kind: _InlinePool(ran))
    out = tmp_path / "q.json"
    assert quality.main(["--panels", "init", "base", "--only", "SAMPLE_VOCAB", "span corruption", "--seeds", "0",
                         "--out", str(out)]) == 0
    assert sorted(ran) == ["prompt/CLASS_LABELS/P20/span/s0", "prompt/SAMPLE_VOCAB/P20/lm_adapt/s0"]
    settings = json.loads(out.read_text())["settings"]
    assert settings["only"] == ["SAMPLE_VOCAB", "span corruption"]
    assert settings["embedded_model"]["parameters"] > 0


class _InlinePool:
    """multiprocessing context stand-in: records the run keys and returns a minimal finished run."""

    def __init__(self, ran):
        self.ran = ran

    def Pool(self, workers):  # noqa: N802 (multiprocessing's name)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, jobs):
        for spec, _ in jobs:
            self.ran.append(spec.key)
            yield {"key": spec.key, "seed": spec.seed, "test_accuracy": 0.5, "best_dev_accuracy": 0.5,
                   "valid_label_rate": 1.0, "trainable_parameters": 1, "train_seconds": 1.0, "steps": 1,
                   "test_label_token_accuracy": 0.5, "dev_curve": [{"step": 1, "dev_accuracy": 0.5, "seconds": 1.0,
                                                                    "train_loss": 1.0}]}


def _stored(tmp_path, **settings):
    """A quality JSON as an earlier invocation left it: one fp32 run of 800 steps on the shipped model."""
    from benchmarks.quality_runs import embedded_identity

    stored = {"steps": 800, "batch_size": 16, "eval_every": 100, "dev_size": 96, "model_lr": 3e-4, "lora_lr": 1e-3,
              "precision": "auto", "task": "supersense", "embedded_model": embedded_identity(), **settings}
    out = tmp_path / "q.json"
    out.write_text(json.dumps({"command": "python benchmarks/quality.py --steps 800", "settings": stored,
                               "runs": [{"key": "prompt/CLASS_LABELS/P20/lm_adapt/s0", "precision": "fp32"}]}))
    return out


def test_resume_refuses_to_pool_runs_made_with_other_settings(tmp_path, capsys):
    from benchmarks import quality

    out = _stored(tmp_path)
    flags = ["--eval_every", "100", "--seeds", "0", "1", "--out", str(out), "--resume", "--precision", "fp32"]
    with pytest.raises(SystemExit):
        quality.main(["--steps", "200", *flags])
    assert "--steps 200 (the file's runs used 800)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--steps", "800", *flags[:-1], "bf16"])  # fp32 runs, bf16 asked for
    assert "--precision bf16 runs bf16 on this machine (the file's runs used fp32; pass --precision fp32)" in (
        capsys.readouterr().err)


def test_resume_conflicts_compare_resolved_precision_and_the_embedded_build(tmp_path):
    from benchmarks import quality
    from benchmarks.quality_runs import embedded_identity
    from softprompt_ext.precision import resolve_precision

    existing = json.loads(_stored(tmp_path).read_text())
    kwargs = {**existing["settings"], "precision": "auto"}
    expected = [] if resolve_precision("auto", "cpu") == "fp32" else [
        "--precision auto runs bf16 on this machine (the file's runs used fp32; pass --precision fp32)"]
    assert quality.resume_conflicts(existing, kwargs, embedded_identity()) == expected
    assert quality.resume_conflicts(existing, {**kwargs, "precision": "fp32"}, embedded_identity()) == []
    other = {**embedded_identity(), "pretrain_steps": 1}
    assert quality.resume_conflicts(existing, {**kwargs, "precision": "fp32"}, other) == [
        f"the embedded model is {other} (the file's runs used {embedded_identity()})"]
