"""Nothing lost: an adapter save killed at any point leaves the previous adapter loadable.

Real subprocesses are killed with SIGKILL: (1) at each stage of `save_adapter_atomically`, stopped there by
its own `on_stage` hook; (2) at random moments while saving a large prompt over and over, which lands
kills in the middle of writing files. After `recover_adapter_dir` the directory always holds one whole
adapter -- the previous or the new one -- that `validate_adapter` and `load_adapter_safely` accept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from softprompt_ext import SoftPromptConfig
from softprompt_ext.adapters.atomic import (
    STAGES,
    last_complete_checkpoint,
    recover_adapter_dir,
    save_adapter_atomically,
)
from softprompt_ext.adapters.validation import AdapterError, load_adapter_safely, validate_adapter
from softprompt_ext.tiny_models import build_t5

VOCAB, P, H = 64, 4, 16

def test_saved_files_get_ordinary_permissions(tmp_path):
    # atomic_write makes its temporary file with mkstemp (0600); before, adapter_config.json, README.md and
    # softprompt_config.json stayed 0600 while PEFT's own JSON and card are 0666 minus the umask (0644). The
    # weights file is PEFT's (safetensors writes it 0600 in plain PEFT too) and is not ours to change.
    old = os.umask(0o022)
    try:
        config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM")
        get_peft_model(build_t5(VOCAB, d_model=H), config).save_pretrained(str(tmp_path / "a"))
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / "a" / name).st_mode & 0o777 for name in os.listdir(tmp_path / "a")}
    assert {"adapter_config.json", "softprompt_config.json", "README.md", "adapter_model.safetensors"} <= set(modes)
    ours = {name: mode for name, mode in modes.items() if name != "adapter_model.safetensors"}
    assert set(ours.values()) == {0o644}, modes


# One process imports torch/PEFT once, then forks a worker per save: each worker is a real process that the
# test SIGKILLs, without paying the import for every kill. SIGCHLD is ignored so killed workers are reaped.
ZYGOTE = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch
    from peft import get_peft_model
    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.adapters.atomic import save_adapter_atomically
    from softprompt_ext.tiny_models import build_t5

    def work(directory, stop_at, marker, rows, width):
        config = SoftPromptConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=rows, prompt_tuning_init="RANDOM_UNIFORM"
        )
        model = get_peft_model(build_t5(64, d_model=width, num_heads=2), config)
        weight = model.prompt_encoder["default"].embedding.weight

        def on_stage(stage):
            if stage == stop_at:
                open(marker, "w").close()
                time.sleep(600)  # the test kills us here

        value = 2.0
        open(marker + ".started", "w").close()
        while True:  # stop_at="loop": save again and again, each prompt filled with a new value
            with torch.no_grad():
                weight.fill_(value)
            save_adapter_atomically(model, directory, on_stage=on_stage)
            if stop_at != "loop":
                return
            value += 1.0

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        directory, stop_at, marker, rows, width = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                work(directory, stop_at, marker, int(rows), int(width))
            except BaseException:
                import traceback
                with open(marker + ".error", "w") as handle:
                    traceback.print_exc(file=handle)
            finally:
                os._exit(0)
        print(pid, flush=True)
    """
)


@pytest.fixture(scope="module")
def saver(tmp_path_factory):
    """`saver(directory, stop_at, marker, rows, width) -> pid`: start a worker saving a prompt of 2.0s."""
    script = tmp_path_factory.mktemp("zygote") / "zygote.py"
    script.write_text(ZYGOTE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    zygote = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def start(directory, stop_at, marker, rows=P, width=H):
        zygote.stdin.write(f"{directory} {stop_at} {marker} {rows} {width}\n")
        zygote.stdin.flush()
        line = zygote.stdout.readline()
        assert line, f"the zygote died (exit {zygote.poll()})"
        return int(line)

    yield start
    zygote.stdin.close()
    zygote.wait(timeout=60)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(path, pid, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert alive(pid), f"worker {pid} exited before reaching {path}"
        assert time.monotonic() < deadline, f"worker {pid} never reached {path}"
        time.sleep(0.02)


def no_worker_error(marker):
    """A worker that raised exits quietly (the zygote writes the traceback beside its marker): fail on it."""
    error = marker + ".error"
    assert not os.path.exists(error), open(error).read()


def kill(pid):
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} survived SIGKILL"
        time.sleep(0.01)


def t5_model(value: float, rows: int = P, width: int = H):
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=rows, prompt_tuning_init="RANDOM_UNIFORM"
    )
    model = get_peft_model(build_t5(VOCAB, d_model=width), config)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.fill_(value)
    return model


def saved_value(directory) -> float:
    """The single value the saved prompt is filled with (validating the whole adapter first)."""
    report = validate_adapter(directory)
    values = report.prompt.unique()
    assert values.numel() == 1, f"a prompt mixing two saves: {values}"
    return float(values[0])


# -------------------------------------------------------------------------------------------- in-process
def test_first_save_and_replacement(tmp_path):
    directory = tmp_path / "adapter"
    stages = []
    assert save_adapter_atomically(t5_model(1.0), directory, on_stage=stages.append) == str(directory)
    assert stages == ["saved", "done"] and saved_value(directory) == 1.0
    stages.clear()
    save_adapter_atomically(t5_model(2.0), directory, on_stage=stages.append)
    assert stages == list(STAGES) and saved_value(directory) == 2.0
    assert sorted(os.listdir(tmp_path)) == ["adapter"]  # no .old, no staging left


def test_save_that_raises_midway_keeps_the_old_adapter(tmp_path):
    directory = tmp_path / "adapter"
    save_adapter_atomically(t5_model(1.0), directory)

    class Broken:  # writes part of an adapter, then fails like a full disk would
        def save_pretrained(self, target, **kwargs):
            with open(os.path.join(target, "adapter_model.safetensors"), "wb") as handle:
                handle.write(b"\x00" * 10)
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_adapter_atomically(Broken(), directory)
    assert saved_value(directory) == 1.0 and sorted(os.listdir(tmp_path)) == ["adapter"]


def test_refuses_to_swap_away_foreign_files(tmp_path):
    directory = tmp_path / "run"
    save_adapter_atomically(t5_model(1.0), directory)
    (directory / "train.log").write_text("step 1 loss 3.2\n")
    with pytest.raises(
        ValueError, match=r"holds \['train\.log'\], which the new adapter save does not write"
    ):
        save_adapter_atomically(t5_model(2.0), directory)
    assert (directory / "train.log").read_text() == "step 1 loss 3.2\n" and saved_value(directory) == 1.0
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_edited_model_card_is_carried_into_the_new_save(tmp_path):
    directory = tmp_path / "adapter"
    save_adapter_atomically(t5_model(1.0), directory)
    card = directory / "README.md"
    card.write_text(card.read_text() + "\nMy own notes about this prompt.\n")
    save_adapter_atomically(t5_model(2.0), directory)
    assert "My own notes about this prompt." in card.read_text() and saved_value(directory) == 2.0


def test_named_adapters_save_into_subfolders(tmp_path):
    model = t5_model(1.0)
    model.add_adapter("other", model.peft_config["default"])
    directory = save_adapter_atomically(model, tmp_path / "multi")
    assert os.path.isfile(os.path.join(directory, "adapter_model.safetensors"))
    assert os.path.isfile(os.path.join(directory, "other", "adapter_model.safetensors"))


def test_directory_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass the adapter's directory"):
        save_adapter_atomically(t5_model(1.0), tmp_path / "f")


def test_recover_states(tmp_path):
    directory = tmp_path / "adapter"
    assert recover_adapter_dir(directory) == "nothing"
    save_adapter_atomically(t5_model(1.0), directory)
    (tmp_path / ".adapter.tmp-abc").mkdir()
    assert recover_adapter_dir(directory) == "cleaned" and sorted(os.listdir(tmp_path)) == ["adapter"]
    # a kill between the two renames ("restored") is test_sigkill_at_every_stage_loses_nothing's moved_old;
    # an unmarked adapter.old is a user's own backup, left alone (tests/test_security.py)


# -------------------------------------------------------------------------------------------- killed
def test_sigkill_at_every_stage_loses_nothing(tmp_path, saver):
    """stage -> (value after recovery, what recovery does): killed before the swap, the old adapter stays."""
    expected = {"saved": (1.0, "cleaned"), "moved_old": (1.0, "restored"), "swapped": (2.0, "cleaned")}
    workers = {}
    for stage in expected:
        directory = tmp_path / stage / "adapter"
        save_adapter_atomically(t5_model(1.0), directory)
        marker = str(tmp_path / f"{stage}.marker")
        workers[stage] = (directory, marker, saver(directory, stage, marker))
    for stage, (directory, marker, pid) in workers.items():
        wait_for(marker, pid)
        kill(pid)
        no_worker_error(marker)
        value, action = expected[stage]
        if stage == "moved_old":
            assert not directory.exists()
            with pytest.raises(AdapterError, match="a save was interrupted"):
                validate_adapter(directory)
        else:
            assert saved_value(directory) == value  # loadable even before recovery
        assert recover_adapter_dir(directory) == action
        assert saved_value(directory) == value
        assert sorted(os.listdir(directory.parent)) == ["adapter"]
        model = load_adapter_safely(build_t5(VOCAB, d_model=H), directory)
        torch.testing.assert_close(
            model.prompt_encoder["default"].embedding.weight, torch.full((P, H), value)
        )


class _Killed(BaseException):
    """Stands for SIGKILL: raised from inside a deletion, and nothing after it runs."""


@pytest.mark.parametrize("deletions_before_kill", range(7))  # 6 files (mark last), then the folder
def test_killed_while_deleting_the_old_adapter_recovery_still_knows_it(tmp_path, monkeypatch, deletions_before_kill):
    """The kill the random-moment test once hit: after the swap, midway through deleting `adapter.old`.

    With `shutil.rmtree` the mark could go first, leaving an unmarked `adapter.old` that recovery must treat as
    a user's backup; the mark is deleted last, so every prefix of the deletion stays recoverable.
    """
    directory = tmp_path / "adapter"
    save_adapter_atomically(t5_model(1.0), directory)
    old = str(directory) + ".old"
    real_unlink, real_rmdir, count = os.unlink, os.rmdir, [0]

    def counted(real):
        def delete(path, *args, **kwargs):
            if str(path).startswith(old):
                if count[0] == deletions_before_kill:
                    raise _Killed
                count[0] += 1
            return real(path, *args, **kwargs)

        return delete

    monkeypatch.setattr(os, "unlink", counted(real_unlink))
    monkeypatch.setattr(os, "rmdir", counted(real_rmdir))
    with pytest.raises(_Killed):
        save_adapter_atomically(t5_model(2.0), directory)
    monkeypatch.undo()
    assert os.path.isdir(old)  # the kill left it, partly deleted
    assert recover_adapter_dir(directory) == "cleaned"
    assert sorted(os.listdir(tmp_path)) == ["adapter"] and saved_value(directory) == 2.0
    save_adapter_atomically(t5_model(3.0), directory)  # and a later save is not refused
    assert saved_value(directory) == 3.0


def test_sigkill_at_random_moments_while_saving_a_large_prompt(tmp_path, saver):
    """A 20,000 x 64 prompt (5 MB) saved in a loop; kills land in the middle of writes too."""
    rows, width = 20_000, 64
    workers = []
    for i, delay in enumerate([0.1, 0.35, 0.8, 1.5]):
        directory = tmp_path / f"run{i}" / "adapter"
        save_adapter_atomically(t5_model(1.0, rows, width), directory)
        marker = str(tmp_path / f"run{i}.marker")
        workers.append((directory, delay, marker, saver(directory, "loop", marker, rows, width)))
    for _, _, marker, pid in workers:
        wait_for(marker + ".started", pid)
    started = time.monotonic()
    for _, delay, _, pid in workers:
        time.sleep(max(0.0, started + delay - time.monotonic()))
        kill(pid)
    values = []
    for directory, _, marker, _ in workers:
        no_worker_error(marker)
        recover_adapter_dir(directory)
        values.append(saved_value(directory))  # whole and one value: 1.0 (first) or one the loop saved
        saved = load_file(os.path.join(directory, "adapter_model.safetensors"))["prompt_embeddings"]
        assert saved.shape == (rows, width)
        assert sorted(os.listdir(directory.parent)) == ["adapter"]
    assert all(v == int(v) and v >= 1.0 for v in values), values


# -------------------------------------------------------------------------------------------- checkpoints
def test_last_complete_checkpoint_skips_a_half_written_one(tmp_path):
    for step, state in (
        (4, '{"global_step": 4}'),
        (8, '{"global_step": 8}'),
        (12, None),
        (16, '{"global_st'),
    ):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-20").write_text("a file, not a checkpoint")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
    assert last_complete_checkpoint(tmp_path / "missing") is None
