"""README stays true: its set-up commands name files that exist, and it links every guide (whose blocks run in
tests/test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", ["examples/quickstart.py", "examples/supersense.py", "examples/train_text2text.py",
                                  "examples/superglue.py", "benchmarks/run.py", "benchmarks/multi_prompt.py",
                                  "benchmarks/quality.py", "scripts/embedded_build/build.py"])
def test_commands_named_in_readme_exist(path):
    assert path in README
    assert (ROOT / path).is_file()


def test_readme_is_short_and_links_every_guide():
    """README holds set-up, quick start and the comparison; the rest lives in the docs site (tests/test_docs.py)."""
    assert len(README.splitlines()) < 200
    for page in sorted((ROOT / "docs" / "guides").glob("*.md")):
        assert f"docs/guides/{page.name}" in README, f"README does not link {page.name}"


def test_main_job_runs_the_embedded_default():
    """The set-up block's main command prompt-tunes the shipped LM-adapted model, offline."""
    main, tests = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README)[:2]
    assert main.endswith("pip install -e . && python examples/supersense.py")
    assert tests.endswith('pip install -e ".[test]" && python -m pytest -q')
    from softprompt_ext.embedded import DEFAULT_KIND, default_model_path, embedded_model_path

    assert DEFAULT_KIND == "lm_adapt" and default_model_path() == embedded_model_path("lm_adapt")
