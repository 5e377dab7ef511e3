"""`MultiTaskTrainer` in 2 processes (DDP over gloo on this CPU) equals 1 process with the global batch.

`tests/scripts/multitask_ddp_train.py` trains 4 prompts on tiny T5 for 3 steps of 8 rows; a task's examples
are split over the ranks (and, with accumulation, over micro-batches) with different label counts, and one
task ("rare") is in step 0 on rank 1 only. Each task's loss must be its summed NLL over the global batch
divided by its label tokens in the global batch: the per-task counts are all-reduced, and every prompt's
gradient is summed over the ranks (the mixed-batch forward bypasses DDP's own reduction). Compared with
the 1-process run: the gradient the optimizer sees at every step (this pins sum vs mean over ranks, which
Adafactor's normalised update would hide in the prompts), the final prompts, the logged loss.

Launch flags as in tests/test_distributed.py: all on the command line, `HF_HOME` a temporary directory, a
free port per launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "multitask_ddp_train.py"
TIMEOUT_S = 180
sys.path.insert(0, str(SCRIPT.parent))
from helpers import free_port  # noqa: E402
from multitask_ddp_train import LAYOUT  # noqa: E402

pytestmark = pytest.mark.slow


def _run(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if result.returncode != 0 and "--main_process_port" in command and "address already in use" in result.stderr.lower():
        # the free port was taken between free_port() and the launcher binding it: once more, on a new port
        command = list(command)
        command[command.index("--main_process_port") + 1] = str(free_port())
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"{command[:4]} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n"
                    f"{result.stderr[-6000:]}")


def _train(tmp_path: Path, processes: int, batch: int, accumulation: int) -> Path:
    out = tmp_path / f"w{processes}_b{batch}_m{accumulation}"
    args = [str(SCRIPT), "--output_dir", str(out), "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accumulation), "--use_cpu"]
    if processes == 1:
        _run([sys.executable, *args], tmp_path)
    else:
        _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), *args], tmp_path)
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, batch 8 (the global batch), no accumulation."""
    out = _train(tmp_path_factory.mktemp("single"), 1, 8, 1)
    return json.loads((out / "rank0.json").read_text()), load_file(str(out / "prompts_rank0.safetensors"))


@pytest.mark.parametrize(("batch", "accumulation"), [(4, 1), (2, 2)], ids=["b4", "b2-accumulate2"])
def test_two_processes_equal_one_process_with_the_global_batch(single, tmp_path, batch, accumulation):
    reference_facts, reference = single
    out = _train(tmp_path, 2, batch, accumulation)
    facts = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    tensors = [load_file(str(out / f"prompts_rank{r}.safetensors")) for r in range(2)]
    assert not (out / "rank2.json").exists()
    for rank, f in enumerate(facts):
        assert (f["process_index"], f["num_processes"]) == (rank, 2)
        assert (f["distributed_type"], f["backend"]) == ("DistributedType.MULTI_CPU", "gloo")
        assert f["wrapped"] == "DistributedDataParallel"  # the Trainer wrapped it; its forward is bypassed
        assert f["global_step"] == reference_facts["global_step"] == len(LAYOUT)
        assert len(f["micro_batches"]) == len(LAYOUT) * accumulation
    # each step's 8 rows were split over the two ranks (and micro-batches), the ranks seeing different tasks
    for step, layout in enumerate(LAYOUT):
        window = slice(step * accumulation, (step + 1) * accumulation)
        per_rank = [[t for mb in f["micro_batches"][window] for t in mb] for f in facts]
        assert Counter(per_rank[0]) + Counter(per_rank[1]) == Counter(layout)
        assert per_rank[0] != per_rank[1]
    rank0_tasks = {t for mb in facts[0]["micro_batches"] for t in mb}
    assert "rare" not in rank0_tasks and "food" in rank0_tasks  # rank 0's "rare" gradient can only come from rank 1

    assert set(tensors[0]) == set(tensors[1]) == set(reference)  # the same prompts have a gradient at each step
    assert "rare/grad0" in reference and "rare/grad1" not in reference  # absent: no gradient, no Adafactor step
    for key, expected in reference.items():
        for rank in range(2):
            got = tensors[rank][key]
            if key.endswith("/initial"):
                assert got.equal(expected), key
            elif "/grad" in key:  # step 0 differs only in summation order; later steps also by the prompts'
                # round-off (measured at most 4e-6 relative to the largest entry)
                tolerance = 1e-5 if key.endswith("grad0") else 1e-4
                error = float((got - expected).abs().max())
                assert error <= tolerance * float(expected.abs().max()), (key, rank, error)
            else:  # final prompts: float32 round-off through 3 Adafactor steps (measured 3e-6; entries ~1)
                assert float((got - expected).abs().max()) <= 5e-5, (key, rank)
        assert tensors[0][key].equal(tensors[1][key]), key  # one reduced gradient, one update on every rank
    for f in facts:  # the logged loss is the global batch's
        assert f["losses"] == pytest.approx(reference_facts["losses"], rel=1e-5)
