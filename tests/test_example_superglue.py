"""`examples/superglue.py` runs end to end offline on the bundled samples (a quick subprocess run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


@pytest.mark.slow
def test_example_runs_offline(tmp_path):
    """CB exercises class-label init, generation metrics (accuracy, macro F1) and rank classification."""
    task = "cb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        os.path.join(ROOT, "examples", "superglue.py"),
        "--task",
        task,
        "--steps",
        "2",
        "--num_virtual_tokens",
        "5",
        "--batch_size",
        "4",
        "--output_dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == task
    assert results["train_rows"] == results["eval_rows"] == 6
    for read_out in ("generate", "rank"):
        assert set(results[read_out]) == {"accuracy", "f1_macro"}
        assert all(0.0 <= v <= 100.0 for v in results[read_out].values())
    assert "chance level" in results["note"]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "softprompt_config.json").is_file()
    record = json.loads((tmp_path / "adapter" / "softprompt_config.json").read_text())
    assert record["prompt_tuning_init"] == "CLASS_LABELS"
    assert record["class_labels"] == ["entailment", "contradiction", "neutral"]
