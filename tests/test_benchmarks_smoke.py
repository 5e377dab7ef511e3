"""python -m benchmarks.run --smoke: every code path of the benchmark runs and writes JSON, Markdown and plots.

No timing is asserted (tiny models on a shared machine); what is checked is that the report has every
section and the JSON every key a reader of RESULTS.md relies on, with values of the right kind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["softprompt", "peft_prompt_tuning", "lora", "full_finetune"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--smoke",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results" / "run" / "smoke-cpu.json") as f:
        results = json.load(f)
    return out, results, (out / "results" / "run" / "smoke-cpu.md").read_text()


@pytest.mark.slow
def test_smoke_run_records_where_and_how_it_ran(smoke):
    _, results, _ = smoke
    meta = results["meta"]
    assert meta["mode"] == "smoke" and meta["device"] == "cpu" and meta["torch_threads"] == 1
    assert meta["command"].startswith("python -m benchmarks.run --smoke")
    assert {"torch", "transformers", "peft", "softprompt-ext"} <= set(meta["versions"])
    assert meta["date_utc"][:2] == "20" and meta["wall_s"] > 0


@pytest.mark.slow
def test_smoke_run_times_every_method_side_by_side(smoke):
    _, results, _ = smoke
    assert list(results["main"]) == ["t5-tiny", "llama-tiny"]
    for block in results["main"].values():
        cases = block["timing"]["cases"]
        assert set(METHODS + ["forward", "softprompt_bf16_autocast"]) <= set(cases)
        assert all(len(c["wall_s"]) == block["timing"]["rounds"] == 1 for c in cases.values())
        assert {"softprompt_vs_peft_prompt_tuning", "softprompt_vs_full_finetune", "step_vs_forward"} <= set(
            block["ratios"]
        )
        assert {op["op"] for op in block["profile"]["step"]["top"]}  # profiled operators recorded
        assert cases["softprompt"]["trainable_params"] == 4 * 16  # P x d_model
    t5 = results["main"]["t5-tiny"]
    assert (
        t5["timing"]["cases"]["peft_prompt_tuning"]["trainable_params"] == 2 * 4 * 16
    )  # PEFT's 2P rows on T5
    assert "softprompt_dropout0" in t5["timing"]["cases"]
    assert "softprompt_target_loss" in results["main"]["llama-tiny"]["timing"]["cases"]


@pytest.mark.slow
def test_smoke_run_measures_memory_in_fresh_processes(smoke):
    _, results, _ = smoke
    memory = results["memory"]
    assert {"t5:softprompt", "t5:full_finetune", "t5:softprompt:int8_disk", "llama:lora"} <= set(memory)
    failed = {name: r.get("error") for name, r in memory.items() if not r["ok"]}
    assert not failed
    for r in memory.values():
        assert r["train_mb"] > 0 and r["peak_mb"] >= r["rss_ready_mb"] - 1


@pytest.mark.slow
def test_smoke_run_saves_each_adapter_and_finds_peft_twice_the_size_on_t5(smoke):
    _, results, _ = smoke
    sizes = results["main"]["t5-tiny"]["adapter_size"]
    assert set(sizes) == set(METHODS)
    assert "adapter_model.safetensors" in sizes["softprompt"]["files"]
    # 4 x 16 float32 numbers vs PEFT's 8 x 16 (safetensors adds the same small header to both)
    assert sizes["peft_prompt_tuning"]["weights_bytes"] - sizes["softprompt"]["weights_bytes"] == 4 * 16 * 4


@pytest.mark.slow
def test_smoke_run_writes_scaling_curves_and_the_report(smoke):
    out, results, text = smoke
    assert [r["P"] for r in results["scaling"]["prompt_length"]] == [1, 4]
    assert [r["L"] for r in results["scaling"]["input_length"]] == [8, 16]
    for name in ("smoke-cpu-scaling-prompt-length.png", "smoke-cpu-scaling-input-length.png"):
        with open(out / "results" / "run" / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for section in (
        "## Headline",
        "## Step time: t5-tiny",
        "## Peak training memory",
        "## Adapter size on disk",
        "## Scaling",
        "## Where the time goes",
        "## Fast path",
        "## Method",
    ):
        assert section in text
    assert "step: ours / PEFT prompt tuning" in text and "memory: ours / full fine-tuning" in text
    headline = results["headline"]["t5-tiny"]
    assert headline["step: ours / PEFT prompt tuning"]["target"] == "<= 1.0"
    assert headline["memory: ours / full fine-tuning"]["verdict"] in ("met", "not met")


def test_shared_prefix_benchmark_smoke_writes_every_ratio(tmp_path):
    """python -m benchmarks.shared_prefix --smoke: ours/PEFT and saved activations per P, T5 step/forward and profile."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.shared_prefix", "--smoke", "--threads", "1",
         "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "shared_prefix-smoke.json").read_text(encoding="utf-8"))
    (row,) = results["llama"]["rows"]
    assert row["step_ratio"]["ratio"] > 0 and row["saved_activations_ratio"] > 0
    assert results["t5"]["step_vs_forward"]["ratio"] > 0 and results["t5"]["softprompt_vs_peft"]["ratio"] > 0
    assert "categories" in results["t5"]["profile"]["step"] and results["t5"]["eager_vs_sdpa_step"]["ratio"] > 0
    report = (tmp_path / "shared_prefix-smoke.md").read_text(encoding="utf-8")
    assert "ours / PEFT" in report and "step / forward" in report and results["meta"]["commands"]
