"""benchmarks/ keeps one home per concern: one index (RESULTS.md) links every report, every default path exists,
every entry point records its run through `benchmarks/common.py`, and none edits `sys.path`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from benchmarks import common, report

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
ENTRY_POINTS = sorted(p for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__"' in p.read_text("utf-8"))


def test_results_md_links_every_report():
    text = (BENCHMARKS / "RESULTS.md").read_text("utf-8")
    files = [p for paths in report.report_files().values() for p in paths]
    assert files, "no reports found"
    missing = [p for p in files if f"(results/{p.replace(os.sep, '/')})" not in text]
    assert missing == []
    assert "(QUALITY.md)" in text


def test_reports_live_in_a_folder_per_benchmark():
    loose = sorted(p.name for p in (BENCHMARKS / "results").iterdir() if p.is_file())
    assert loose == []


def test_every_default_path_exists():
    from benchmarks import memory_plan, quality, serving, serving_params

    assert all((Path(quality.RESULTS) / name).is_file() for name in quality.DEFAULT_OUT.values())
    assert memory_plan.RESULTS.is_file()
    assert (Path(common.RESULTS) / "scoring" / "scoring.json").is_file()
    assert Path(report.RESULTS, "run", "full-cpu.json").is_file()
    assert all(Path(module.OUT, f"{module.__name__.split('.')[-1]}.json").is_file() for module in (serving, serving_params))


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda p: p.name)
def test_entry_points_share_common_and_leave_sys_path_alone(path):
    source = path.read_text("utf-8")
    assert "sys.path" not in source
    if path.name not in ("report.py", "quality_targets.py"):  # report writes through write_all; targets only print
        assert re.search(r"from (benchmarks|\.)(\.common)? import .*\b(run_info|write_json|write_text)\b", source) or (
            "from benchmarks.common import" in source
        ), f"{path.name} does not use benchmarks/common.py"


def test_free_port_gives_a_bindable_loopback_port():
    import socket

    port = common.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
