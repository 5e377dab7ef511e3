"""Saving without losing work: atomic adapter saves, their recovery, the last *complete* Trainer checkpoint.

Lester, Al-Rfou, Constant (2021), "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691 -- section 3: prompts train for 30,000 steps; on a shared machine such a
run gets killed, and a kill must cost at most the steps since the last checkpoint, never the saved prompt.

`save_adapter_atomically(model, "out/adapter")`
    1. writes the whole adapter (`model.save_pretrained`) into a fresh sibling `.adapter.tmp-XXXX`, fsyncs
       every file and the directory; stage "saved";
    2. renames the existing `adapter` to `adapter.old`; stage "moved_old";
    3. renames the staging directory to `adapter` and fsyncs the parent; stage "swapped";
    4. deletes `adapter.old`; stage "done".
    Each rename is atomic (POSIX `rename`, one file system), so at every instant `adapter` is either the
    complete previous adapter, missing (only between 2 and 3), or the complete new one -- never a mix of
    both, never a half-written file. A kill between 2 and 3 leaves `adapter.old` (complete) and no
    `adapter`: `recover_adapter_dir("out/adapter")` renames it back (the previous adapter, not the new one:
    nothing proves the staging copy complete after a crash). The next `save_adapter_atomically` runs that
    recovery first and removes stale staging directories; `validate_adapter` names the leftover in its error.
    One writer per directory: two processes saving to the same directory at once are not supported.

Swapping replaces the whole directory, so it refuses a directory holding files the new save does not
write (training logs, `checkpoint-N`, `.git`): nothing of the user's is deleted. A `README.md` already
there is carried into the new save first, so an edited model card is updated, not replaced.

`atomic_write(path, write)` / `atomic_write_text(path, text)`: the same rule for one file -- write a
temporary file in the target's directory, fsync it, `os.replace` it over the target, fsync the directory.
The file gets the permissions an ordinary `open(path, "w")` would (0666 minus the umask), as PEFT's files do.

`last_complete_checkpoint(output_dir)`: transformers' `get_last_checkpoint` returns the highest
`checkpoint-N` even when the run was killed while writing it (Trainer writes `trainer_state.json` last).
This returns the highest checkpoint whose `trainer_state.json` parses and says `global_step == N`, so
`trainer.train(resume_from_checkpoint=last_complete_checkpoint(dir))` resumes from one that is whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

CARD_NAME = "README.md"  # the model card a save carries over (model_card.py writes it)
OLD_SUFFIX = ".old"  # the previous adapter while the new one is moved in
STAGING_MARK = ".tmp-"  # staging directories are named .<name>.tmp-XXXXXXXX next to the target
STAGES = ("saved", "moved_old", "swapped", "done")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` to produce the file, then move it over `path` in one durable step."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved adapter is as readable as PEFT's
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)  # the rename itself survives a power cut
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8, newline-terminated) to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")

    atomic_write(path, write)


def save_adapter_atomically(
    peft_model: Any,
    directory: str | os.PathLike,
    *,
    on_stage: Callable[[str], None] | None = None,
    **save_kwargs: Any,
) -> str:
    """Save `peft_model` (anything with `save_pretrained`) to `directory`; a kill never loses the old one.

    Args:
        peft_model: a `PeftModel` (or any object with `save_pretrained(directory, **kwargs)`).
        directory: the adapter directory; created when missing, replaced as a whole when present.
        on_stage: called with each stage name in `STAGES` as it completes (progress, tests).
        **save_kwargs: passed to `save_pretrained` (`selected_adapters`, `safe_serialization`, ...).

    Returns:
        The absolute path of the saved adapter.

    Raises:
        ValueError: `directory` is a file, or holds entries the new save would not write (nothing is deleted).
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.isfile(directory):
        raise ValueError(f"directory={directory!r} is a file; pass the adapter's directory.")
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    recover_adapter_dir(directory)
    stage = on_stage or (lambda _: None)
    old = directory + OLD_SUFFIX
    staging = tempfile.mkdtemp(prefix=f".{name}{STAGING_MARK}", dir=parent)
    try:
        card = os.path.join(directory, CARD_NAME)
        if os.path.isfile(card):  # save_pretrained updates an existing card in place; keep the user's edits
            shutil.copy2(card, os.path.join(staging, CARD_NAME))
        peft_model.save_pretrained(staging, **save_kwargs)
        _check_nothing_foreign(directory, staging)
        _fsync_tree(staging)
        stage("saved")
        if not os.path.isdir(directory):
            os.rename(staging, directory)
            _fsync_dir(parent)
        else:
            os.rename(directory, old)
            stage("moved_old")
            os.rename(staging, directory)
            _fsync_dir(parent)
            stage("swapped")
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.exists(directory) and os.path.isdir(old):  # failed between the two renames: undo
            os.rename(old, directory)
        raise
    stage("done")
    return directory


def recover_adapter_dir(directory: str | os.PathLike) -> str:
    """Repair what an interrupted `save_adapter_atomically` left; return what was done.

    Returns:
        "restored": `directory` was missing and `directory.old` (the previous adapter) was moved back;
        "cleaned": `directory` is whole and a leftover `.old` and/or staging directories were deleted;
        "nothing": there was nothing to repair.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent, name = os.path.split(directory)
    old = directory + OLD_SUFFIX
    done = "nothing"
    if os.path.isdir(old):
        if os.path.exists(directory):  # killed after the swap: the new adapter is in place
            shutil.rmtree(old)
            done = "cleaned"
        else:  # killed between the renames: the previous adapter is the one known to be whole
            os.rename(old, directory)
            _fsync_dir(parent)
            done = "restored"
    if os.path.isdir(parent):
        for entry in os.listdir(parent):
            if entry.startswith(f".{name}{STAGING_MARK}") and os.path.isdir(os.path.join(parent, entry)):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
                done = "cleaned" if done == "nothing" else done
    return done


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest `checkpoint-N` in `output_dir` whose `trainer_state.json` is whole (global_step == N).

    Pass it as `resume_from_checkpoint`; None when there is none (start afresh). A checkpoint the run was
    killed while writing is skipped (and left in place, for inspection).
    """
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), entry)
        for entry in os.listdir(output_dir)
        if (match := _CHECKPOINT.match(entry)) and os.path.isdir(os.path.join(output_dir, entry))
    )
    for step, entry in reversed(steps):
        state_file = os.path.join(output_dir, entry, "trainer_state.json")
        try:
            with open(state_file, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("global_step") == step:
            return os.path.join(output_dir, entry)
    return None


# ------------------------------------------------------------------------------------------- helpers
def _check_nothing_foreign(directory: str, staging: str) -> None:
    """Refuse to swap away entries of `directory` that the new save did not write."""
    if not os.path.isdir(directory):
        return
    foreign = sorted(set(os.listdir(directory)) - set(os.listdir(staging)))
    if foreign:
        raise ValueError(
            f"{directory} holds {foreign}, which the new adapter save does not write; "
            "save_adapter_atomically "
            "replaces the whole directory, so it refuses rather than delete them. Save the adapter into a "
            "directory of its own, or move those entries out."
        )


def _fsync_tree(root: str) -> None:
    """Flush every file and directory under `root` to disk, so a power cut after the rename finds them."""
    for folder, _, files in os.walk(root):
        for file in files:
            with open(os.path.join(folder, file), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; renames there are durable without it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
