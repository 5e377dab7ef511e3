"""Building the embedded model in several sittings: saved state, stop conditions, run segments.

A sitting ends when it is told to (SIGINT/SIGTERM, `--sitting_steps`, `--time_budget_s`) or when the build is
done; what it trained survives in `work_dir`, and `--resume` continues exactly where it stopped:

* `build_state.json` (JSON, written atomically): the build's fingerprint (every flag and input that decides the
  weights: a resume with other ones is refused), its phase ("pretraining", "lm_adaptation", "done"), the
  records of finished phases, the accumulated wall time and the list of run segments.
* `pretrain_state.pt` (`torch.save` of tensors and plain containers only, so it loads with `weights_only=True`,
  written atomically: temporary file, fsync, `os.replace`): model, AdamW, the LR schedule's step, Python and
  torch (and CUDA) RNG states, and the data position (epoch, offset into its shuffled examples, tokens seen,
  the loss curve so far). Span-corruption examples are a pure function of (seed, epoch, line), so the data
  order needs only the position to be restored.
* LM adaptation runs through `softprompt_ext.training.lm_adapt` (Trainer); a stop makes the Trainer write
  `checkpoint-N` (`StopCallback`) and `--resume` passes it as `resume_from_checkpoint`.

A segment is one phase in one sitting: start and end step, wall time, host CPU model, torch version, device,
precision, why it stopped, and the command.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import signal
import sys
import time
from typing import Any

import torch

from softprompt_ext.adapters.atomic import atomic_write, atomic_write_text
from softprompt_ext.precision import cpu_model, resolve_precision

STATE_JSON = "build_state.json"
PRETRAIN_STATE = "pretrain_state.pt"
SIGNALS = (signal.SIGINT, signal.SIGTERM)

HEALTH_EXIT = 3  # a sitting stopped by the pretraining watch (--min_rank)


class Sitting:
    """When this sitting stops: a signal (SIGINT/SIGTERM), a step budget, or a wall-time budget.

    Used as a context manager, it turns SIGINT and SIGTERM into a request to stop after the current step (and
    restores the previous handlers, also right after the first signal, so a second one acts at once).
    """

    def __init__(self, time_budget_s: float | None = None, sitting_steps: int | None = None,
                 started: float | None = None):
        self.time_budget_s, self.sitting_steps = time_budget_s, sitting_steps
        self.started = time.time() if started is None else started
        self.steps = 0  # training steps this sitting, both phases
        self.signal: str | None = None
        self.unhealthy: str | None = None  # set by the pretraining watch (--min_rank): why the encoder failed
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Sitting:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: stopping after this step and saving the state", file=sys.stderr, flush=True)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self) -> str | None:
        """Why to stop now ("SIGTERM", "health", "sitting_steps", "time_budget_s"), or None."""
        if self.signal:
            return self.signal
        if self.unhealthy:
            return "health"
        if self.sitting_steps is not None and self.steps >= self.sitting_steps:
            return "sitting_steps"
        if self.time_budget_s is not None and time.time() - self.started >= self.time_budget_s:
            return "time_budget_s"
        return None

    def step_done(self) -> str | None:
        self.steps += 1
        return self.should_stop()

    def exit_status(self) -> int:
        """0 for a planned stop (a budget), 3 for a health stop, 128 + the signal number for a signal, as a shell
        reports it."""
        if self.signal:
            return 128 + int(signal.Signals[self.signal])
        return HEALTH_EXIT if self.unhealthy else 0


def stop_callback(sitting: Sitting):
    """A TrainerCallback that stops LM adaptation when the sitting ends, saving checkpoint-N first."""
    from transformers import TrainerCallback

    class StopCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if sitting.step_done():
                control.should_save = control.should_training_stop = True

    return StopCallback()


def new_segment(phase: str, start_step: int, device: str, precision: str, command: str) -> dict:
    return {"phase": phase, "start_step": start_step, "end_step": start_step, "wall_seconds": 0.0,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host_cpu": cpu_model(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "precision": precision,
            "stopped": None, "command": command}


def load_state(work_dir: str) -> dict | None:
    path = os.path.join(work_dir, STATE_JSON)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_state(work_dir: str, state: dict) -> None:
    atomic_write_text(os.path.join(work_dir, STATE_JSON), json.dumps(state, indent=1))


def check_fingerprint(saved: dict, current: dict, work_dir: str) -> None:
    """Refuse to resume a build with other inputs than the ones it started with."""
    differ = {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)}
    if differ:
        listed = "; ".join(f"{k}: started with {old!r}, now {new!r}" for k, (old, new) in differ.items())
        raise ValueError(f"--resume: the build in {work_dir} was started with other inputs ({listed}); rerun with "
                         "the flags and data it started with, or pass another --work_dir to start a new build.")


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(saved: dict) -> None:
    random.setstate(saved["python"])
    torch.set_rng_state(saved["torch"])
    if saved.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def save_training_state(work_dir: str, payload: dict) -> None:
    atomic_write(os.path.join(work_dir, PRETRAIN_STATE), lambda tmp: torch.save(payload, tmp))


def load_training_state(work_dir: str) -> dict:
    return torch.load(os.path.join(work_dir, PRETRAIN_STATE), map_location="cpu", weights_only=True)


def precision_label(precision: str, device: str = "cpu") -> str:
    return "bf16 autocast" if resolve_precision(precision, device) == "bf16" else "fp32"


class Build:
    """One sitting of a build in `args.work_dir`: its state file, its run segments, how it stops."""

    def __init__(self, args, device: str, sitting: Sitting, command: str):
        self.args, self.device, self.sitting, self.command = args, device, sitting, command
        self.work_dir = args.work_dir
        self.state = self._start()
        self.wall_before = self.state["wall_seconds"]
        self.segment: dict | None = None  # the running phase's segment; None once that phase finished
        self.segment_started = 0.0
        self.step = 0  # the last step saved, in the current phase

    def _start(self) -> dict:
        """The state to continue (--resume) or a fresh one; refuses to overwrite an unfinished build."""
        args = self.args
        state = load_state(self.work_dir)
        path = os.path.join(self.work_dir, STATE_JSON)
        if args.verify_steps:  # a check: reads and writes no state, and leaves an unfinished build alone
            if state is not None and state["phase"] != "done":
                raise ValueError(f"--verify_steps in --work_dir {self.work_dir}, which holds an unfinished build "
                                 f"({path}); pass another --work_dir for the check.")
            return {"fingerprint": None, "phase": "pretraining", "segments": [], "wall_seconds": 0.0}
        if args.resume:
            if state is None:
                raise ValueError(f"--resume, but {path} does not exist: no build was started in --work_dir "
                                 f"{self.work_dir}; drop --resume to start one there.")
            return state
        if state is not None and state["phase"] != "done":
            raise ValueError(f"{path} holds an unfinished build (phase {state['phase']!r}); pass --resume to "
                             f"continue it, or delete {path} (or pass another --work_dir) to start afresh.")
        for name in (PRETRAIN_STATE, "span", "lm_adapt"):  # outputs of an earlier build here
            target = os.path.join(self.work_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        return {"fingerprint": None, "phase": "pretraining", "segments": [], "wall_seconds": 0.0}

    def begin(self, phase: str, start_step: int) -> dict:
        self.segment = new_segment(phase, start_step, self.device, precision_label(self.args.precision, self.device),
                                   self.command)
        self.segment_started, self.step = time.time(), start_step
        self.state["segments"].append(self.segment)
        return self.segment

    def save(self, end_step: int | None = None, finished: bool = False) -> None:
        """Bring the current segment up to date and write build_state.json (not in --verify_steps)."""
        if self.segment is not None:
            if end_step is not None:
                self.segment["end_step"] = self.step = end_step
            self.segment["wall_seconds"] = round(time.time() - self.segment_started, 1)
            self.segment["stopped"] = None if finished else self.sitting.should_stop()
            if finished:
                self.segment = None
        self.state["wall_seconds"] = round(self.wall_before + time.time() - self.sitting.started, 1)
        if not self.args.verify_steps:
            save_state(self.work_dir, self.state)

    def save_pretraining(self, payload: dict) -> None:
        save_training_state(self.work_dir, payload)
        self.save(payload["progress"]["step"])

    def phase_wall(self, phase: str) -> float:
        return round(sum(s["wall_seconds"] for s in self.state["segments"] if s["phase"] == phase), 1)

    def stopped(self, phase: str, total: int) -> int:
        step = self.step
        again = self.command if "--resume" in self.command.split() else self.command + " --resume"
        print(f"stopped ({self.sitting.should_stop()}) after {phase} step {step}/{total}; the state is in "
              f"{self.work_dir}; continue with: {again}", flush=True)
        return self.sitting.exit_status()
