"""Saving without losing work: atomic adapter saves, their recovery, the last *complete* Trainer checkpoint.

Paper section 3: prompts train for 30,000 steps, and a killed run must cost at most the steps since the last
checkpoint, never the saved prompt. `save_adapter_atomically(model, dir)` writes the adapter into a marked
staging directory beside `dir` and swaps it in with two atomic renames, so `dir` is always the whole previous
adapter or the whole new one (`recover_adapter_dir` undoes a swap cut in half); only what a save made is ever
deleted or renamed. A digest file (`DIGEST_NAME`) lets the strict reader refuse a directory whose files this
save did not write. `atomic_write` / `atomic_write_text` apply the same rule to one file;
`last_complete_checkpoint` is the highest `checkpoint-N` whose Trainer state is whole.

The one decision: swapping replaces the whole directory, so a save refuses a directory holding files it would
not write (logs, `checkpoint-N`, `.git`) instead of deleting them. The stages, the marks and what plain
`save_pretrained` can still lose: docs/reference/design-notes.md, "Atomic saves".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

CARD_NAME = "README.md"  # the model card a save carries over (model_card.py writes it)
OLD_SUFFIX = ".old"  # the previous adapter while the new one is moved in
STAGING_MARK = ".tmp-"  # staging directories are named .<name>.tmp-XXXXXXXX next to the target
MARK_NAME = ".softprompt_atomic_save.json"  # in a staging or .old directory a save made: its token
DIGEST_NAME = "softprompt_digest.json"  # sha256 of each adapter file, written by the atomic save
MADE_BY = "softprompt_ext.save_adapter_atomically"
UNDIGESTED = (CARD_NAME, DIGEST_NAME, MARK_NAME)  # files a digest does not cover (users edit the card)
STAGES = ("saved", "moved_old", "swapped", "done")
_ADAPTER_CONFIG = "adapter_config.json"  # PEFT's CONFIG_NAME: a folder holding it is an adapter
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
        directory: the adapter directory; created when missing, replaced as a whole when present. A symlink
            is followed (the adapter is saved at its target).
        on_stage: called with each stage name in `STAGES` as it completes (progress, tests).
        **save_kwargs: passed to `save_pretrained` (`selected_adapters`, `safe_serialization`, ...).

    Returns:
        The absolute path of the saved adapter (the symlink's target for a symlink).

    Raises:
        ValueError: `directory` is a file, holds entries the new save would not write, or `directory.old`
            exists and is not this module's (nothing is deleted).
    """
    directory = os.path.realpath(os.fspath(directory))
    if os.path.isfile(directory):
        raise ValueError(f"directory={directory!r} is a file; pass the adapter's directory.")
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    recover_adapter_dir(directory)
    stage = on_stage or (lambda _: None)
    old = directory + OLD_SUFFIX
    if os.path.isdir(directory) and os.path.lexists(old):
        raise ValueError(
            f"{old} exists and was not left by save_adapter_atomically (or belongs to another version of "
            f"{directory}); it is left alone. Move or rename it, then save again."
        )
    token = uuid.uuid4().hex
    staging = tempfile.mkdtemp(prefix=f".{name}{STAGING_MARK}", dir=parent)
    moved = False
    try:
        _write_mark(staging, token)
        card = os.path.join(directory, CARD_NAME)
        if os.path.isfile(card):  # save_pretrained updates an existing card in place; keep the user's edits
            shutil.copy2(card, os.path.join(staging, CARD_NAME))
        peft_model.save_pretrained(staging, **save_kwargs)
        for folder, _, files in os.walk(staging):
            if _ADAPTER_CONFIG in files:
                write_digest(folder, token)
        _check_nothing_foreign(directory, staging)
        _fsync_tree(staging)
        stage("saved")
        if not os.path.isdir(directory):
            os.rename(staging, directory)
            _fsync_dir(parent)
        else:
            _write_mark(directory, token)
            os.rename(directory, old)
            moved = True
            stage("moved_old")
            os.rename(staging, directory)
            _fsync_dir(parent)
            stage("swapped")
            _remove_tree(old)
        _remove_mark(directory)
    except BaseException:
        _remove_tree(staging, ignore_errors=True)
        if moved and not os.path.exists(directory) and os.path.isdir(old):  # failed between the renames: undo
            os.rename(old, directory)
        if _mark_token(directory) == token:
            _remove_mark(directory)
        raise
    stage("done")
    return directory


def recover_adapter_dir(directory: str | os.PathLike) -> str:
    """Repair what an interrupted `save_adapter_atomically` left; return what was done.

    Only directories and files that a save marked as its own are touched (see the module docstring).

    Returns:
        "restored": `directory` was missing and `directory.old` (the previous adapter) was moved back;
        "cleaned": `directory` is whole and a leftover `.old`, staging directories or marks were deleted;
        "nothing": there was nothing to repair.
    """
    directory = os.path.realpath(os.fspath(directory))
    parent, name = os.path.split(directory)
    old = directory + OLD_SUFFIX
    done = "nothing"
    old_token = _mark_token(old) if os.path.isdir(old) and not os.path.islink(old) else None
    if old_token is not None:
        if not os.path.exists(directory):  # killed between the renames: the previous adapter is whole
            os.rename(old, directory)
            _fsync_dir(parent)
            done = "restored"
        elif old_token in (_mark_token(directory), _digest_token(directory)):  # killed after the swap
            _remove_tree(old)
            done = "cleaned"
    elif os.path.isdir(directory) and os.path.isdir(old) and not os.path.islink(old) and not os.listdir(old):
        os.rmdir(old)  # killed after `_remove_tree` took the mark, the last file, and before the folder itself
        done = "cleaned"
    if os.path.isdir(directory) and _remove_marks(directory):  # a mark is never part of a saved adapter
        done = "cleaned" if done == "nothing" else done
    if os.path.isdir(parent):
        for entry in os.listdir(parent):
            path = os.path.join(parent, entry)
            if entry.startswith(f".{name}{STAGING_MARK}") and os.path.isdir(path) and not os.path.islink(path):
                if _mark_token(path) is None and not all(_is_mark_file(e) for e in os.listdir(path)):
                    continue  # not a staging directory of ours (ours are marked, or empty but for the mark)
                _remove_tree(path, ignore_errors=True)
                done = "cleaned" if done == "nothing" else done
    return done


def interrupted_leftover(directory: str | os.PathLike) -> str | None:
    """`directory.old` when an interrupted `save_adapter_atomically` left it (marked), else None."""
    old = os.path.realpath(os.fspath(directory)) + OLD_SUFFIX
    if os.path.isdir(old) and not os.path.islink(old) and _mark_token(old) is not None:
        return old
    return None


def file_digests(folder: str) -> dict[str, str]:
    """sha256 (hex) of every file directly in `folder` but the model card, the digest and a mark."""
    digests = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry not in UNDIGESTED and os.path.isfile(path):
            digests[entry] = sha256_file(path)
    return digests


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digest(folder: str, token: str | None = None) -> None:
    """Write `DIGEST_NAME` into `folder`: the sha256 of each file there (see `file_digests`)."""
    record = {
        "format_version": 1,
        "made_by": MADE_BY,
        "token": token or uuid.uuid4().hex,
        "algorithm": "sha256",
        "files": file_digests(folder),
    }
    atomic_write_text(os.path.join(folder, DIGEST_NAME), json.dumps(record, indent=2, sort_keys=True))


def refresh_digest(folder: str) -> None:
    """Rewrite the digest of a folder that has one (called last by a completed `save_pretrained`)."""
    if os.path.isfile(os.path.join(folder, DIGEST_NAME)):
        write_digest(folder)


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
    foreign = sorted(set(os.listdir(directory)) - set(os.listdir(staging)) - {MARK_NAME})
    if foreign:
        raise ValueError(
            f"{directory} holds {foreign}, which the new adapter save does not write; "
            "save_adapter_atomically "
            "replaces the whole directory, so it refuses rather than delete them. Save the adapter into a "
            "directory of its own, or move those entries out."
        )


def _remove_tree(folder: str, *, ignore_errors: bool = False) -> None:
    """Delete a directory a save marked, its mark last: a kill midway leaves it marked, so still ours.

    `shutil.rmtree` deletes in directory order, so a kill after it took the mark would leave an unmarked
    `adapter.old` that recovery must treat as a user's own backup (and a later save refuse).
    """
    try:
        for entry in os.listdir(folder):
            if entry == MARK_NAME:
                continue
            path = os.path.join(folder, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        _remove_mark(folder)
        os.rmdir(folder)
    except OSError:
        if not ignore_errors:
            raise


def _write_mark(folder: str, token: str) -> None:
    atomic_write_text(os.path.join(folder, MARK_NAME), json.dumps({"made_by": MADE_BY, "token": token}))


def _remove_mark(folder: str) -> None:
    try:
        os.unlink(os.path.join(folder, MARK_NAME))
    except FileNotFoundError:
        pass


def _is_mark_file(entry: str) -> bool:
    """The mark, or the temporary file `atomic_write` makes while writing it."""
    return entry == MARK_NAME or (entry.startswith(f".{MARK_NAME}.") and entry.endswith(".tmp"))


def _remove_marks(folder: str) -> bool:
    """Delete this module's marks (and half-written ones) from `folder`; whether there were any."""
    removed = False
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if _is_mark_file(entry) and (entry != MARK_NAME or _mark_token(folder) is not None):
            os.unlink(path)
            removed = True
    return removed


def _read_token(path: str) -> str | None:
    """The token of a small JSON file this module wrote (a mark or a digest); None for anything else."""
    try:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > (1 << 20):
            return None
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(data, dict) and data.get("made_by") == MADE_BY and isinstance(data.get("token"), str):
        return data["token"]
    return None


def _mark_token(folder: str) -> str | None:
    return _read_token(os.path.join(folder, MARK_NAME))


def _digest_token(folder: str) -> str | None:
    return _read_token(os.path.join(folder, DIGEST_NAME))


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
