"""What every benchmark entry point shares: run info, atomic report writing, result folders, a free port.

    from benchmarks.common import free_port, result_dir, run_info, write_json, write_text

* `run_info(name, module, argv)`: the one layout of "what this was measured on" (`machine.describe`: machine,
  accelerator, versions, date, git commit) with the command as it is typed, `python -m benchmarks.<module> ...`.
* `write_text` / `write_json`: a report is replaced atomically, so a run killed mid-write leaves the old file.
* `result_dir(benchmark)`: `benchmarks/results/<benchmark>/`, created on demand; `RESULTS.md` indexes them all.

Entry points run as modules from the repository root (`python -m benchmarks.run`), so none edits `sys.path`;
the serving load tests (`python -m benchmarks.serving`, `python -m benchmarks.serving_params`) start their
servers on `free_port()` and write under `results/serving/`.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")


def result_dir(benchmark: str, root: str = RESULTS) -> str:
    """`<root>/<benchmark>/`, created if missing: every benchmark's reports live in a folder of its own."""
    path = os.path.join(root, benchmark)
    os.makedirs(path, exist_ok=True)
    return path


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reruns this measurement: `python -m benchmarks.<module> <argv...>`."""
    return shlex.join(["python", "-m", f"benchmarks.{module}", *argv])


def run_info(name: str, module: str, argv: Sequence[str], device: Any = None, mode: str = "full") -> dict:
    """Machine, accelerator, versions, date, git commit, load and the command of a run (`machine.describe`)."""
    import torch

    from benchmarks import machine

    info = machine.describe(torch.device(device or "cpu"), list(argv), mode, name, module=module)
    info["load_average_before"] = machine.load_average()
    return info


def write_text(path: str, text: str) -> str:
    """Replace `path` with `text` atomically (a temporary file renamed over it); return the path."""
    from softprompt_ext.adapters.atomic import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)
    return path


def write_json(path: str, data: Any, indent: int | None = 2) -> str:
    """`write_text` of `data` as JSON (a trailing newline); return the path."""
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it); loopback only."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
