"""Prompt tuning a sharded frozen base: FSDP on CPU over gloo, its CUDA twins, the example configs.

What was found on this machine (torch 2.13.0+cpu, accelerate 1.15.0, transformers 5.24.0, peft 0.21.2):

* `accelerate launch --use_fsdp` on CPU does not shard: accelerate's `PartialState` sets `DistributedType.FSDP`
  only for accelerator devices, so with `use_cpu=True` the Trainer trains with DDP (MULTI_CPU, gloo) and says
  nothing (pinned below). Before that, its default `--fsdp_cpu_ram_efficient_loading true` forces
  `sync_module_states`, which raises "There are currently no available devices found" without a GPU.
* Torch's own FSDP1 (`FullyShardedDataParallel(..., device_id=cpu)`) and FSDP2 (`fully_shard`) do run on CPU
  over gloo; `tests/scripts/fsdp_train.py` uses them directly.
* With the prompt left in the root FSDP1 unit, each rank's optimizer sees a 1-D slice of it (here 0 and 64
  elements); the paper's Adafactor on slices is a different optimizer (pinned: it ends far from the
  1-process prompt). FSDP2 keeps a DTensor that Transformers' Adafactor refuses. Keeping the prompt out of
  the shards (`prompt_modules` as ignored modules + `all_reduce_prompt_grads`) gives the 1-process prompt to
  float32 round-off.
* DeepSpeed 0.19.8 installs from PyPI and imports here (it picks its CPU accelerator, gloo), but
  `accelerate launch --use_deepspeed --zero_stage 3` of tests/scripts/ddp_train.py on 2 CPU processes made
  no progress and printed no error in 150 s (killed by the timeout); its test runs on 2+ CUDA devices only.
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
SCRIPT = ROOT / "tests" / "scripts" / "fsdp_train.py"
EXAMPLES = ROOT / "examples" / "accelerate"
TIMEOUT_S = 240
ATOL = 1e-4  # float32 round-off of a different reduction order over 4 Adafactor steps (seen: 9e-6)


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"{command[:4]} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result


def _train(tmp_path: Path, name: str, mode: str, processes: int, device: str = "cpu", extra=()) -> Path:
    out = tmp_path / name
    args = ["--output_dir", str(out), "--mode", mode, "--precision", "fp32", "--device", device, *extra]
    if processes == 1:
        _run([sys.executable, str(SCRIPT), *args], tmp_path)
    else:
        _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
              "--master_port", str(free_port()), str(SCRIPT), *args], tmp_path)
    return out


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, the same global batch, the same optimizer."""
    tmp = tmp_path_factory.mktemp("single")
    return load_file(str(_train(tmp, "single", "single", 1) / "prompt_rank0.safetensors"))


SHARDED = [
    pytest.param("fsdp1-ignored", "cpu", marks=pytest.mark.slow, id="cpu-fsdp1-gloo-2proc"),
    pytest.param("fsdp2-ignored", "cpu", marks=pytest.mark.slow, id="cpu-fsdp2-gloo-2proc"),
    pytest.param("fsdp1-ignored", "cuda", id="cuda-fsdp1-nccl-2gpu", marks=[
        pytest.mark.slow, pytest.mark.gpu,
        pytest.mark.skipif(_cuda_count() < 2, reason="needs 2 CUDA devices for FSDP over NCCL")]),
    pytest.param("fsdp2-ignored", "cuda", id="cuda-fsdp2-nccl-2gpu", marks=[
        pytest.mark.slow, pytest.mark.gpu,
        pytest.mark.skipif(_cuda_count() < 2, reason="needs 2 CUDA devices for FSDP over NCCL")]),
]


@pytest.mark.parametrize(("mode", "device"), SHARDED)
def test_two_process_fsdp_gives_the_single_process_prompt(tmp_path, single, mode, device):
    out = _train(tmp_path, "fsdp", mode, 2, device)
    facts = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    for rank, fact in enumerate(facts):
        assert (fact["rank"], fact["world"]) == (rank, 2)
        assert fact["backend"] == ("gloo" if device == "cpu" else "nccl")
        assert fact["trainable_shapes"] == [list(single["final"].shape)]  # the whole 2-D prompt on each rank
    prompts = [load_file(str(out / f"prompt_rank{r}.safetensors")) for r in (0, 1)]
    assert torch.equal(prompts[0]["final"], prompts[1]["final"])  # identical on every rank
    assert torch.equal(prompts[0]["initial"], single["initial"])
    assert (single["final"] - single["initial"]).abs().max() > 1e-2  # training moved the prompt
    torch.testing.assert_close(prompts[0]["final"], single["final"], atol=ATOL, rtol=0)

    # the saved adapter is an ordinary one: P x d_model, loads with plain PEFT onto a one-device base
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"]
    assert torch.equal(saved["prompt_embeddings"], prompts[0]["final"])
    from peft import PeftModel

    from softprompt_ext.tiny_models import build_t5, build_tokenizer

    loaded = PeftModel.from_pretrained(build_t5(len(build_tokenizer()), seed=0), str(out / "adapter"))
    assert torch.equal(loaded.prompt_encoder["default"].embedding.weight.detach(), prompts[0]["final"])


@pytest.mark.slow
def test_fsdp_run_resumed_from_a_checkpoint_continues_exactly(tmp_path, single):
    # 2 steps, checkpoint (prompt + Adafactor state + step, rank 0), a new 2-process launch resumes for 2 more:
    # the 4-step one-process prompt, as for the uninterrupted run.
    state = tmp_path / "state.pt"
    _train(tmp_path, "first", "fsdp1-ignored", 2, extra=["--max_steps", "2", "--save_state", str(state)])
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 2 and saved["prompt"].shape == single["final"].shape
    assert saved["optimizer"]["state"]  # Adafactor's factored moments travelled
    out = _train(tmp_path, "resumed", "fsdp1-ignored", 2, extra=["--max_steps", "4", "--resume_state", str(state)])
    facts = json.loads((out / "rank0.json").read_text(encoding="utf-8"))
    assert len(facts["losses"]) == 2  # only the remaining steps ran
    final = load_file(str(out / "prompt_rank0.safetensors"))["final"]
    torch.testing.assert_close(final, single["final"], atol=ATOL, rtol=0)


@pytest.mark.slow
def test_adafactor_on_a_sharded_prompt_is_another_optimizer(tmp_path, single):
    # Pins why the configs keep the prompt out of the shards: in the root FSDP1 unit each rank steps a 1-D
    # slice (0 and 64 elements here), Adafactor stops factoring and clips per slice, and the run ends elsewhere.
    out = _train(tmp_path, "sharded", "fsdp1-sharded", 2)
    shapes = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8"))["trainable_shapes"] for r in (0, 1)]
    assert all(len(s) == 1 and len(s[0]) == 1 for s in shapes)  # 1-D views
    final = load_file(str(out / "prompt_rank0.safetensors"))["final"]
    assert final.shape == single["final"].shape  # gathered whole for saving all the same
    assert (final - single["final"]).abs().max() > 1e-2


@pytest.mark.slow
def test_accelerate_fsdp_on_cpu_falls_back_to_ddp(tmp_path):
    # `accelerate launch --use_fsdp` + use_cpu: accelerate picks MULTI_CPU (DDP over gloo), not FSDP.
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--fsdp_cpu_ram_efficient_loading", "false", "--fsdp_sync_module_states", "false",
        "--main_process_port", str(free_port()),
        str(ROOT / "tests" / "scripts" / "ddp_train.py"), "--output_dir", str(out), "--use_cpu", "--world_only",
    ]
    _run(command, tmp_path)
    worlds = [json.loads((out / f"world_rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert {w["distributed_type"] for w in worlds} == {"DistributedType.MULTI_CPU"}


def test_deepspeed_zero3_runs_or_skips_with_the_reason(tmp_path):
    deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    if _cuda_count() < 2:
        pytest.skip(f"DeepSpeed {deepspeed.__version__} imports, but ZeRO-3 training is only run on 2+ CUDA "
                    "devices (see scripts/gpu_scale_out_check.sh)")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(EXAMPLES / "deepspeed_zero3.yaml"), "--num_processes", "2", "--mixed_precision", "no",
               "--main_process_port", str(free_port()), str(ROOT / "tests" / "scripts" / "ddp_train.py"),
               "--output_dir", str(out), "--max_steps", "4"]
    _run(command, tmp_path)
    prompts = [load_file(str(out / f"prompt_rank{r}.safetensors"))["final"] for r in (0, 1)]
    assert torch.equal(prompts[0], prompts[1])
    assert list(load_file(str(out / "adapter" / "adapter_model.safetensors"))) == ["prompt_embeddings"]


# ---- CI-cheap: the example configs parse, the launch entry points answer --help ----

def test_example_configs_parse_with_accelerates_loader():
    from accelerate.commands.config.config_args import load_config_from_file

    fsdp = load_config_from_file(str(EXAMPLES / "fsdp.yaml"))
    assert str(fsdp.distributed_type) == "DistributedType.FSDP"
    assert fsdp.fsdp_config["fsdp_use_orig_params"] is True  # frozen + trainable in one flat parameter
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "T5Block"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp.fsdp_config["fsdp_activation_checkpointing"] is True
    zero3 = load_config_from_file(str(EXAMPLES / "deepspeed_zero3.yaml"))
    assert str(zero3.distributed_type) == "DistributedType.DEEPSPEED"
    assert zero3.deepspeed_config["zero_stage"] == 3


def test_example_config_keys_are_ones_accelerate_launch_knows():
    import yaml
    from accelerate.commands.launch import launch_command_parser

    known = {a.dest for a in launch_command_parser()._actions}
    for name in ("fsdp.yaml", "deepspeed_zero3.yaml"):
        config = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
        nested = {**config.get("fsdp_config", {}), **config.get("deepspeed_config", {})}
        unknown = sorted(k for k in nested if k not in known and k != "fsdp_version")
        assert not unknown, f"{name}: keys accelerate launch would ignore: {unknown}"


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "accelerate.commands.launch", "--help"],
    [sys.executable, str(SCRIPT), "--help"],
])
def test_launch_help(command, tmp_path):
    assert "usage" in _run(command, tmp_path).stdout.lower()


# ---- the helpers without a process group ----

def _tiny_peft():
    from peft import get_peft_model

    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.tiny_models import build_t5, build_tokenizer

    base = build_t5(len(build_tokenizer()), seed=0)
    return get_peft_model(base, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3,
                                                 prompt_tuning_init="RANDOM_UNIFORM", init_seed=0))


def test_helpers_are_plain_on_one_process(tmp_path):
    from softprompt_ext.training.distributed import (
        all_reduce_prompt_grads,
        gather_prompt,
        prompt_modules,
        save_prompt_adapter,
    )

    model = _tiny_peft()
    weight = model.prompt_encoder["default"].embedding.weight
    assert [m.embedding.weight for m in prompt_modules(model)] == [weight]
    assert all_reduce_prompt_grads(model) == 0  # no process group: nothing to do
    gathered = gather_prompt(model)
    assert gathered.shape == (3, 16) and torch.equal(gathered, weight.detach()) and gathered.device.type == "cpu"
    assert save_prompt_adapter(model, tmp_path / "adapter") is True
    assert torch.equal(load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))["prompt_embeddings"],
                       weight.detach())


def test_prompt_checkpoint_round_trip_and_refusal(tmp_path):
    from softprompt_ext.training.distributed import load_prompt_checkpoint, save_prompt_checkpoint
    from softprompt_ext.training.recipe import paper_optimizer

    model = _tiny_peft()
    optimizer, _ = paper_optimizer(model)
    model.prompt_encoder["default"].embedding.weight.grad = torch.ones(3, 16)
    optimizer.step()
    assert save_prompt_checkpoint(model, optimizer, tmp_path / "state.pt", step=7) is True
    other = _tiny_peft()
    other_optimizer, _ = paper_optimizer(other)
    assert load_prompt_checkpoint(other, other_optimizer, tmp_path / "state.pt") == 7
    assert torch.equal(other.prompt_encoder["default"].embedding.weight, model.prompt_encoder["default"].embedding.weight)
    assert other_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    sliced = torch.optim.SGD([torch.nn.Parameter(torch.zeros(48))], lr=0.1)  # what a sharded prompt gives
    with pytest.raises(ValueError, match="whole prompt"):
        save_prompt_checkpoint(model, sliced, tmp_path / "bad.pt", step=1)


def test_ignored_modules_regex_picks_the_prompt_for_accelerate():
    from accelerate.utils.fsdp_utils import get_parameters_from_modules

    from softprompt_ext.peft_internals import prompt_parameters
    from softprompt_ext.training.distributed import IGNORED_MODULES_REGEX

    model = _tiny_peft()
    picked = get_parameters_from_modules(IGNORED_MODULES_REGEX, model, "cpu")  # what accelerate's FSDP ignores
    assert {id(p) for p in picked} == {id(p) for p in prompt_parameters(model)}


def test_prompt_modules_refuses_a_model_without_a_prompt():
    from softprompt_ext.training.distributed import prompt_modules

    with pytest.raises(ValueError, match="no prompt encoder"):
        prompt_modules(torch.nn.Linear(2, 2))


def test_grad_sync_callback_is_a_trainer_callback():
    from transformers import TrainerCallback

    from softprompt_ext.training.distributed import PromptGradSyncCallback

    callback = PromptGradSyncCallback()
    assert isinstance(callback, TrainerCallback)
    model = _tiny_peft()
    assert callback.on_pre_optimizer_step(None, None, "control", model=model) == "control"
