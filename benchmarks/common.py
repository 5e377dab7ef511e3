"""What every benchmark entry point shares: run info, atomic report writing, a free loopback port, result paths.

    from benchmarks.common import free_port, result_path, run_info, write_json, write_text

`run_info(name, ...)` is the one layout of "what this was measured on" (machine, accelerator, versions, date,
the command as typed, git commit, load); `write_text` / `write_json` replace a report atomically, so a run
killed mid-write leaves the previous file; every report lives under `benchmarks/results/<benchmark>/`.
Run the entry points from the repository root as modules (`python -m benchmarks.run`), so no script edits
`sys.path`.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it); loopback only."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
