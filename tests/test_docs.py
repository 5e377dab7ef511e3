"""The docs site stays true: its Python blocks run offline, its API reference covers `__all__`, it builds strictly.

Every ```python block under docs/ runs (the blocks of one page in order, in one namespace, in a temporary working
directory) unless the line right above it is `<!-- docs-test: skip (reason) -->`; see docs/contributing-docs.md.
"""

from __future__ import annotations

import filecmp
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import softprompt_ext

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(?:\((.*?)\))?\s*-->")
NEEDS = re.compile(r"<!--\s*docs-test:\s*needs\s+([\w.]+)\s*-->")  # runs only where that module imports
DIRECTIVE = re.compile(r"^::: *([\w.]+)[ \t]*\n((?:[ \t]+.*\n?)*)", re.M)


@dataclass
class Block:
    page: Path
    line: int
    code: str
    skip_reason: str | None  # None: runs
    needs: str | None = (
        None  # an optional module (an extra) the block needs; skipped with a reason without it
    )


def python_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = SKIP.fullmatch(before.strip())
        reason = (marker.group(1) or "").strip() if marker else None
        needs = NEEDS.fullmatch(before.strip())
        blocks.append(
            Block(
                page, text.count("\n", 0, match.start()) + 1, match.group(2), reason, needs and needs.group(1)
            )
        )
    return blocks


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


RUNNABLE_PAGES = [page for page in PAGES if any(b.skip_reason is None for b in python_blocks(page))]


def test_docs_have_python_blocks():
    assert RUNNABLE_PAGES, "no runnable ```python blocks found under docs/"


def test_every_skip_marker_has_a_reason_and_a_block(capsys):
    skipped = []
    for page in PAGES:
        text = FENCE.sub(  # a marker quoted inside a non-Python block (an example of one) is not a marker
            lambda m: m.group(0) if m.group(1) == "python" else "\n" * m.group(0).count("\n"),
            page.read_text(encoding="utf-8"),
        )
        for marker in SKIP.finditer(text):
            line = text.count("\n", 0, marker.start()) + 1
            assert (marker.group(1) or "").strip(), (
                f"{rel(page)}:{line}: docs-test skip marker without a (reason)"
            )
            after = text[marker.end() :].lstrip(" \t").split("\n", 2)
            assert len(after) > 1 and after[1].startswith("```python"), (
                f"{rel(page)}:{line}: a docs-test skip marker must be on the line right above a ```python block"
            )
        skipped += [b for b in python_blocks(page) if b.skip_reason is not None]
    with capsys.disabled():
        print(f"\n{len(skipped)} docs blocks skipped:")
        for block in skipped:
            print(f"  {rel(block.page)}:{block.line}: {block.skip_reason}")


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=rel)
def test_page_python_blocks_run_offline(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # blocks read examples/data/... like the README
    namespace: dict = {"__name__": "__docs__"}
    for block in python_blocks(page):
        if block.skip_reason is not None:
            continue
        if block.needs and importlib.util.find_spec(block.needs) is None:
            pytest.skip(f"{rel(page)}:{block.line}: needs {block.needs}, which is not installed (an extra)")
        source = "\n" * (block.line) + block.code  # tracebacks point at the page's own line numbers
        try:
            exec(compile(source, str(page), "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 -- re-raised with the place it came from
            raise AssertionError(f"{rel(page)}:{block.line + 1}: the block raised {exc!r}") from exc


def api_directives() -> list[tuple[str, dict]]:
    yaml = pytest.importorskip("yaml")
    found = []
    for page in sorted((DOCS / "api").glob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            options = yaml.safe_load(match.group(2)) if match.group(2).strip() else {}
            found.append((match.group(1), (options or {}).get("options", {}) or {}))
    return found


def resolve(path: str):
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def test_api_reference_covers_every_public_name():
    covered: set[str] = set()
    for path, options in api_directives():
        obj = resolve(path)  # a directive to a name that does not exist fails here, before mkdocs does
        if isinstance(obj, type(softprompt_ext)):  # a module: the names it documents
            members = options.get("members")
            names = members if isinstance(members, list) else [n for n in vars(obj) if not n.startswith("_")]
            covered |= {
                n
                for n in names
                if n in softprompt_ext.__all__ and getattr(obj, n) is getattr(softprompt_ext, n)
            }
        else:
            name = path.rsplit(".", 1)[-1]
            if name in softprompt_ext.__all__ and (
                obj is getattr(softprompt_ext, name) or obj == getattr(softprompt_ext, name)
            ):
                covered.add(name)
    missing = sorted(set(softprompt_ext.__all__) - covered)
    assert not missing, f"public names with no ::: directive in docs/api/: {missing}"


def test_benchmark_plots_in_docs_are_the_committed_ones():
    plots = sorted((ROOT / "benchmarks" / "results").rglob("*.png"))
    assert plots
    for plot in plots:
        copy = DOCS / "assets" / "benchmarks" / plot.name
        assert copy.is_file() and filecmp.cmp(plot, copy, shallow=False), (
            f"{rel(copy)} differs from {rel(plot)}: cp {rel(plot)} docs/assets/benchmarks/"
        )


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in PAGES:
        assert f" {page.relative_to(DOCS).as_posix()}\n" in nav, f"{rel(page)} is not in mkdocs.yml's nav"


def test_mkdocs_build_strict(tmp_path):
    # ~8 s on 2 shared cores (under the 20 s that would make it `slow`)
    if shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed: pip install -e ".[docs]"')
    for module in ("material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f'{module} is not installed: pip install -e ".[docs]"')
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    assert (tmp_path / "site" / "api" / "inference" / "index.html").is_file()
