"""The package's shape: no import cycles, no imports back up the layers, PEFT internals in one module only."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402

# attribute paths and imports that reach into PEFT's internals (anything but its public top-level names)
PEFT_INTERNALS = re.compile(
    r"from peft\.|import peft\.|\.prompt_encoder\b|\.word_embeddings\b|\.active_peft_config\b|_split_kwargs"
    r"|PEFT_TYPE_TO_\w+_MAPPING|_load_adapter_state_dict|BasePromptEncoder"
)

INTERNAL_ATTRIBUTES = {"prompt_encoder", "word_embeddings", "active_peft_config", "_split_kwargs"}


def test_import_graph_has_no_cycles_and_no_upward_imports():
    graph = import_graph.build_graph(ROOT)
    assert "softprompt_ext.config" in graph and graph["softprompt_ext.registration"], "the graph saw no imports"
    assert import_graph.find_cycles(graph) == []
    assert import_graph.layer_violations(graph) == []


def test_no_cycle_even_through_type_checking_imports():
    assert import_graph.find_cycles(import_graph.build_graph(ROOT, type_checking=True)) == []


def test_the_checker_sees_type_checking_imports_only_when_asked(tmp_path):
    package = tmp_path / "softprompt_ext"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("from . import a\n")
    assert import_graph.find_cycles(import_graph.build_graph(tmp_path)) == []
    assert import_graph.find_cycles(import_graph.build_graph(tmp_path, type_checking=True)) == [
        ["softprompt_ext.a", "softprompt_ext.b"]
    ]


def test_the_checker_finds_a_cycle_and_an_upward_import():
    graph = {"softprompt_ext.a": {"softprompt_ext.b"}, "softprompt_ext.b": {"softprompt_ext.a"},
             "softprompt_ext.config": {"softprompt_ext.inference.scoring"}, "softprompt_ext.inference.scoring": set()}
    assert import_graph.find_cycles(graph) == [["softprompt_ext.a", "softprompt_ext.b"]]
    assert import_graph.layer_violations(graph) == [
        "softprompt_ext.config (core) imports softprompt_ext.inference.scoring (inference)"
    ]


def test_the_command_line_check_passes():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 cycles, 0 imports across layers" in out.stdout


def code_lines(path: Path) -> dict[int, str]:
    """The source of `path` without strings and comments, line by line (docstrings may name internals)."""
    lines: dict[int, str] = {}
    with open(path, "rb") as handle:
        for token in tokenize.tokenize(handle.readline):
            if token.type == tokenize.STRING and token.string.strip("\"'") in INTERNAL_ATTRIBUTES:
                lines[token.start[0]] = lines.get(token.start[0], "") + "." + token.string.strip("\"'") + " "
                continue  # getattr(model, "prompt_encoder") is an attribute path too
            if token.type in (tokenize.STRING, tokenize.COMMENT, tokenize.ENCODING):
                continue
            lines[token.start[0]] = lines.get(token.start[0], "") + token.string + " "
    return {number: re.sub(r" (?=[.\[\]()])|(?<=[.\[(]) ", "", line) for number, line in lines.items()}


def test_peft_internals_are_touched_in_one_module_only():
    offenders = []
    for path in sorted((ROOT / "softprompt_ext").rglob("*.py")):
        if path.name == "peft_internals.py":
            continue
        for number, code in code_lines(path).items():
            if PEFT_INTERNALS.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {code.strip()}")
    assert offenders == []


def test_code_lines_keep_code_and_drop_strings():
    here = code_lines(Path(__file__))
    assert any("PEFT_INTERNALS.search(code)" in line for line in here.values())
    assert not any("prompt_encoder[name]" in line for line in here.values())  # only inside strings here
    assert any(".active_peft_config" in line for line in here.values())  # the set above, as bare strings


@pytest.mark.parametrize("line, hit", [("from peft.utils import X", True), ("model.prompt_encoder[name]", True),
                                       ("from peft import PeftModel", False), ("word_embeddings.weight", False)])
def test_the_peft_pattern_catches_internals_only(line, hit):
    assert bool(PEFT_INTERNALS.search(line)) is hit


def test_every_public_name_resolves_to_a_real_object():
    import softprompt_ext

    for name in softprompt_ext.__all__:
        assert getattr(softprompt_ext, name) is not None, name
    # the TYPE_CHECKING imports mirror the lazy table, so type checkers see the same names
    tree = ast.parse((ROOT / "softprompt_ext" / "__init__.py").read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    typed = {(node.module, alias.name) for node in block.body for alias in node.names}
    assert typed == {(module, name) for name, module in softprompt_ext._LAZY.items()}


def test_version_is_written_in_one_place():
    import softprompt_ext
    from softprompt_ext.version import __version__

    assert softprompt_ext.__version__ == __version__
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_layout_page_is_generated_from_the_import_graph():
    """docs/reference/layout.md is `python scripts/import_graph.py --write-layout`'s output, naming every module."""
    page = (ROOT / import_graph.LAYOUT).read_text(encoding="utf-8")
    assert page == import_graph.layout_markdown(ROOT), "regenerate: python scripts/import_graph.py --write-layout"
    for path in sorted((ROOT / "softprompt_ext").rglob("*.py")):
        assert f"`{path.relative_to(ROOT).as_posix()}`" in page, path


# the longest function allowed in softprompt_ext/ (the server's create_app is restructured on its own)
MAX_FUNCTION_LINES = 90
LONG_FUNCTIONS_ALLOWED: set[tuple[str, str]] = set()  # none: a long function is split before it lands


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in sorted((ROOT / "softprompt_ext").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_moved_names_still_resolve_from_the_top_level_with_a_warning():
    import importlib

    import softprompt_ext

    assert len(softprompt_ext.__all__) <= 40 and not set(softprompt_ext._MOVED) & set(softprompt_ext.__all__)
    for name, module in softprompt_ext._MOVED.items():
        with pytest.warns(DeprecationWarning, match=rf"import it from softprompt_ext\.{re.escape(module)}"):
            value = getattr(softprompt_ext, name)
        assert value is getattr(importlib.import_module(f"softprompt_ext.{module}"), name), name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        softprompt_ext.not_a_name  # noqa: B018


def test_code_names_no_issue_numbers():
    """An issue number in code goes stale the day the tracker moves; the reason goes in the text instead."""
    found = []
    for path in sorted((ROOT / "softprompt_ext").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bissues? #?\d+|\bissue-\d+", line, re.IGNORECASE):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
