"""Multi-process training of a `SoftPromptConfig` model under `accelerate launch`.

`tests/scripts/ddp_train.py` is a plain `Seq2SeqTrainer` script. Here it runs as two processes: DDP over gloo
on this CPU, and on CUDA devices when there are any (those entries skip with a reason otherwise). The checks:
the processes really formed one world and trained on different batches, yet end with the same prompt
(gradients all-reduced), the prompt moved from its initial value, and the adapter rank 0 saved holds
exactly rank 0's prompt.

Launch flags are all on the command line and `HF_HOME` is a temporary directory, so a developer's own
`accelerate config` file cannot change what runs. A free port per launch keeps parallel test runs apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_train.py"
MAX_STEPS = 6
LAUNCH_TIMEOUT_S = 180


def _launch(launch_flags: list[str], script_args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        *launch_flags,
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(SCRIPT), *script_args,
    ]
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),  # no default accelerate config file can apply
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    if result.returncode != 0:
        pytest.fail(f"accelerate launch failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


TWO_PROCESSES = ["--multi_gpu", "--num_processes", "2"]  # torchrun; see test_accelerate_cpu_flag_alone...
ENGINES = [
    # (launch flags, script flags, processes, expected (distributed_type, backend))
    pytest.param(
        TWO_PROCESSES, ["--use_cpu"], 2, ("DistributedType.MULTI_CPU", "gloo"),
        marks=pytest.mark.slow, id="cpu-ddp-gloo-2proc",
    ),
    pytest.param(
        ["--num_processes", "1"], [], 1, ("DistributedType.NO", None),
        marks=[pytest.mark.slow, pytest.mark.gpu, pytest.mark.skipif(_cuda_count() < 1, reason="needs CUDA")],
        id="cuda-1gpu",
    ),
    pytest.param(
        TWO_PROCESSES, [], 2, ("DistributedType.MULTI_GPU", "nccl"),
        marks=[
            pytest.mark.slow, pytest.mark.gpu,
            pytest.mark.skipif(_cuda_count() < 2, reason="needs 2 CUDA devices for DDP over NCCL"),
        ],
        id="cuda-ddp-nccl-2gpu",
    ),
]


@pytest.mark.parametrize(("launch_flags", "script_flags", "processes", "engine"), ENGINES)
def test_multi_process_training_ends_with_one_prompt(tmp_path, launch_flags, script_flags, processes, engine):
    out = tmp_path / "out"
    _launch(launch_flags, ["--output_dir", str(out), "--max_steps", str(MAX_STEPS), *script_flags], tmp_path)

    ranks = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(processes)]
    prompts = [load_file(str(out / f"prompt_rank{r}.safetensors")) for r in range(processes)]
    assert not (out / f"rank{processes}.json").exists()  # exactly the processes asked for
    for rank, facts in enumerate(ranks):
        assert facts["process_index"] == rank and facts["num_processes"] == processes
        assert (facts["distributed_type"], facts["backend"]) == engine
        assert facts["global_step"] == MAX_STEPS
        assert facts["device"].startswith("cpu" if "--use_cpu" in script_flags else "cuda")
    if processes > 1:
        assert ranks[0]["parallel_mode"] == "ParallelMode.DISTRIBUTED"
        assert ranks[0]["batches"] != ranks[1]["batches"]  # each rank trained on its own shard of the data

    final = prompts[0]["final"]  # [P, H]
    for other in prompts[1:]:
        assert torch.equal(other["initial"], prompts[0]["initial"])
        assert torch.equal(other["final"], final)  # all-reduced gradients -> the same update on every rank
    assert (final - prompts[0]["initial"]).abs().max() > 1e-3  # training moved the prompt
    losses = torch.tensor(ranks[0]["losses"])
    assert len(losses) == MAX_STEPS and torch.isfinite(losses).all()  # logging_steps=1

    adapter = out / "adapter"
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"]
    assert torch.equal(saved["prompt_embeddings"], final)
    record = json.loads((adapter / "softprompt_config.json").read_text(encoding="utf-8"))
    assert record["prompt_tuning_init"] == "RANDOM_UNIFORM"


def test_accelerate_cpu_flag_alone_starts_one_process(tmp_path):
    # Pins why the CPU entry above launches with --multi_gpu: `--cpu --num_processes 2` without an MPI
    # hostfile runs the script once, in a world of one, so it would "pass" without any DDP at all.
    out = tmp_path / "out"
    script_args = ["--output_dir", str(out), "--use_cpu", "--world_only"]
    _launch(["--cpu", "--num_processes", "2"], script_args, tmp_path)
    reports = sorted(p.name for p in out.glob("world_rank*.json"))
    assert reports == ["world_rank0.json"]
    world = json.loads((out / "world_rank0.json").read_text(encoding="utf-8"))
    assert world["num_processes"] == 1 and world["distributed_type"] == "DistributedType.NO"
