"""README stays true: its offline code blocks run, and its set-up commands name files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one `## section` of the README."""
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match, f"README has no section {section!r}"
    return re.findall(r"```python\n(.*?)```", match.group(1), flags=re.S)


def test_evaluate_section_runs_offline(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)  # the block reads examples/data/superglue/rte.jsonl
    (block,) = python_blocks("Evaluate like the paper")
    block = block.replace('"/tmp/tiny-tok"', repr(str(tmp_path / "tok")))
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "->" in printed and "accuracy" in printed and "(73.1, 76.3)" in printed


@pytest.mark.parametrize("path", ["examples/quickstart.py", "examples/supersense.py", "examples/train_text2text.py",
                                  "examples/superglue.py", "benchmarks/run.py", "benchmarks/multi_prompt.py",
                                  "benchmarks/quality.py", "scripts/build_embedded_model.py"])
def test_commands_named_in_readme_exist(path):
    assert path in README
    assert (ROOT / path).is_file()


def test_many_prompts_section_runs_offline(capsys):
    (block,) = python_blocks("One frozen model, many prompts")
    exec(compile(block, "README.md", "exec"), {})
    assert "tensor(" in capsys.readouterr().out


def test_main_job_runs_the_embedded_default():
    """The set-up block's main command prompt-tunes the shipped LM-adapted model (issue 9), offline."""
    main, tests = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README)[:2]
    assert main.endswith("pip install -e . && python examples/supersense.py")
    assert tests.endswith('pip install -e ".[test]" && python -m pytest -q')
    from softprompt_ext.embedded import DEFAULT_KIND, default_model_path, embedded_model_path

    assert DEFAULT_KIND == "lm_adapt" and default_model_path() == embedded_model_path("lm_adapt")
