"""Interrupted training resumes to the same result: real runs killed with SIGKILL, then resumed.

1. Prompt tuning with the stock `Seq2SeqTrainer` (tests/scripts/interrupted_training.py): a subprocess is
   killed once a checkpoint is whole, resumed in-process from the last complete checkpoint, and ends with
   exactly the prompt of an uninterrupted run.
2. A kill while Trainer writes `checkpoint-N` leaves it without a whole `trainer_state.json` (written last).
   Trainer's `resume_from_checkpoint=True` picks that checkpoint and fails (pinned here);
   `adapters.atomic.last_complete_checkpoint` picks the previous one, and the run still ends where it should.
3. The LM-adaptation CLI (`python -m softprompt_ext.training.lm_adapt`) killed mid-run and resumed from the last
   complete checkpoint ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from softprompt_ext import tiny_models
from softprompt_ext.adapters.atomic import last_complete_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scripts", "interrupted_training.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

_spec = importlib.util.spec_from_file_location("interrupted_training", SCRIPT)
training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(training)


def wait_until_complete(
    output_dir: str, process: subprocess.Popen, step: int, timeout: float = 240.0
) -> None:
    """Block until `checkpoint-<step>` is whole (its trainer_state.json exists and parses)."""
    deadline = time.monotonic() + timeout
    target = os.path.join(output_dir, f"checkpoint-{step}")
    while (
        last_complete_checkpoint(output_dir) is None
        or int(last_complete_checkpoint(output_dir).rsplit("-", 1)[1]) < step
    ):
        if process.poll() is not None:
            raise AssertionError(
                f"run ended ({process.returncode}) before {target}: {process.stderr.read()[-3000:]}"
            )
        assert time.monotonic() < deadline, f"no {target} after {timeout} s"
        time.sleep(0.02)


def sigkill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def checkpoint_steps(output_dir: str) -> list[int]:
    return sorted(int(e.split("-")[1]) for e in os.listdir(output_dir) if e.startswith("checkpoint-"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: 12 steps, checkpoints every 4."""
    output_dir = str(tmp_path_factory.mktemp("reference"))
    return output_dir, training.train(output_dir, max_steps=12, save_steps=4)


@pytest.mark.slow
def test_killed_prompt_tuning_resumes_to_the_same_prompt(tmp_path, reference):
    output_dir = str(tmp_path / "killed")
    process = subprocess.Popen(
        [sys.executable, SCRIPT, output_dir, "--max_steps", "12", "--save_steps", "4", "--step_delay", "0.5"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_complete(output_dir, process, step=4)
    sigkill(process)
    assert not os.path.exists(os.path.join(output_dir, "final_prompt.safetensors"))
    last = last_complete_checkpoint(output_dir)
    done = int(last.rsplit("-", 1)[1])
    assert done in (4, 8)

    prompt = training.train(output_dir, max_steps=12, save_steps=4, resume=last)
    torch.testing.assert_close(prompt, reference[1], rtol=0, atol=0)
    state = load_file(os.path.join(output_dir, "checkpoint-12", "adapter_model.safetensors"))[
        "prompt_embeddings"
    ]
    torch.testing.assert_close(state, reference[1], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_half_written_checkpoint_breaks_resume_true_but_not_last_complete_checkpoint(
    tmp_path, reference, damage
):
    """Killed while Trainer writes checkpoint-8: its trainer_state.json (written last) is missing or cut."""
    output_dir = str(tmp_path / "run")
    for step in (4, 8):
        shutil.copytree(
            os.path.join(reference[0], f"checkpoint-{step}"), os.path.join(output_dir, f"checkpoint-{step}")
        )
    state_file = os.path.join(output_dir, "checkpoint-8", "trainer_state.json")
    if damage == "missing":
        os.remove(state_file)
    else:
        with open(state_file, "r+", encoding="utf-8") as handle:
            handle.truncate(40)
    assert last_complete_checkpoint(output_dir) == os.path.join(output_dir, "checkpoint-4")

    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(output_dir) == os.path.join(
        output_dir, "checkpoint-8"
    )  # what `True` resumes from
    misled_dir = str(tmp_path / "misled")
    shutil.copytree(output_dir, misled_dir)
    with pytest.raises((FileNotFoundError, ValueError)):  # transformers 5.x: no usable trainer state
        training.train(misled_dir, max_steps=12, save_steps=4, resume=True)

    resumed = training.train(
        output_dir, max_steps=12, save_steps=4, resume=last_complete_checkpoint(output_dir)
    )
    torch.testing.assert_close(resumed, reference[1], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- lm_adapt CLI
LM_FLAGS = [
    "--input_length",
    "16",
    "--target_length",
    "16",
    "--per_device_train_batch_size",
    "8",
    "--learning_rate",
    "1e-2",
    "--seed",
    "0",
    "--use_cpu",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "1",
    "--save_steps",
    "5",
]


@pytest.fixture
def one_thread():
    """Subprocesses run with one thread (OMP_NUM_THREADS=1); in-process runs must sum in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_killed_lm_adaptation_cli_resumes_to_the_same_weights(tmp_path, tokenizer, one_thread):
    """The CLI runs in a subprocess killed after checkpoint-5; the uninterrupted reference runs meanwhile,
    in-process through the same CLI entry point (`lm_adapt.main`), and so does the resume."""
    from softprompt_ext.training.lm_adapt import main

    source = str(tmp_path / "t5-tiny")
    tiny_models.build_t5(len(tokenizer)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_models._CORPUS * 2) + "\n", encoding="utf-8")
    common = ["--model_name_or_path", source, "--train_files", str(corpus), *LM_FLAGS, "--max_steps", "40"]
    killed_dir, reference_dir = str(tmp_path / "killed"), str(tmp_path / "reference")

    process = subprocess.Popen(
        [sys.executable, "-m", "softprompt_ext.training.lm_adapt", *common, "--output_dir", killed_dir],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    failures: list[BaseException] = []

    def kill_after_checkpoint_5():
        try:
            wait_until_complete(killed_dir, process, step=5)
            sigkill(process)
        except BaseException as exc:  # reported by the main thread
            process.kill()
            failures.append(exc)

    watchdog = threading.Thread(target=kill_after_checkpoint_5)
    watchdog.start()
    assert main([*common, "--output_dir", reference_dir]) == 0
    watchdog.join(timeout=300)
    assert not watchdog.is_alive() and not failures, failures
    assert not os.path.exists(os.path.join(killed_dir, "model.safetensors"))

    resume_from = last_complete_checkpoint(killed_dir)
    assert main([*common, "--output_dir", killed_dir, "--resume_from_checkpoint", resume_from]) == 0
    expected = load_file(os.path.join(reference_dir, "model.safetensors"))
    actual = load_file(os.path.join(killed_dir, "model.safetensors"))
    assert sorted(actual) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_lm_adapt_resume_last_skips_a_half_written_checkpoint(tmp_path):
    from softprompt_ext.training.lm_adapt import resolve_resume

    for step in (5, 10):
        os.makedirs(tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')  # 10 was cut short
    assert resolve_resume("last", str(tmp_path)) == str(tmp_path / "checkpoint-5")
