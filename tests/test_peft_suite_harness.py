"""The harness that runs PEFT's own prompt-tuning cases (scripts/peft_suite): its table is well-formed and
CONTRIBUTING.md shows it. The harness itself runs from `.ci/run` (`python scripts/peft_suite/run.py`), not here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from peft_suite import expectations  # noqa: E402
from peft_suite.expectations import EXPECTATIONS, KINDS, VARIANTS, case_id, matching, pattern_matches  # noqa: E402
from peft_suite.run import table  # noqa: E402


@pytest.mark.parametrize("entry", EXPECTATIONS, ids=lambda e: e.case)
def test_every_expectation_is_well_formed(entry):
    assert entry.kind in KINDS
    assert entry.variants and set(entry.variants) <= set(VARIANTS)
    assert entry.case.split("::")[0].endswith(".py") or entry.case.startswith("*::")
    assert "SoftPromptConfig" not in entry.case, "case ids use PEFT's class name in both variants"
    assert entry.peft.strip() and entry.ours.strip() and len(entry.why) > 40
    if entry.kind == "intended":
        assert entry.variants == ("softprompt",), "an intended difference is ours: the softprompt variant only"
    if entry.kind == "upstream":
        assert "peft" in entry.variants and entry.link, "an upstream bug fails with PEFT's own class, with a link"
    assert bool(entry.requires) == (entry.kind == "environment")
    if entry.transformers:
        SpecifierSet(entry.transformers)
    if entry.peft_versions:
        SpecifierSet(entry.peft_versions)


def test_no_two_entries_claim_the_same_pattern():
    keys = [(e.case, v) for e in EXPECTATIONS for v in e.variants]
    assert len(keys) == len(set(keys))


def test_case_ids_are_the_same_in_both_variants():
    peft = "tests/test_decoder_models.py::TestDecoderModels::test_generate[PromptTuningConfig-config_kwargs24-m/x]"
    ours = "tests/test_decoder_models.py::TestDecoderModels::test_generate[SoftPromptConfig-config_kwargs24-m/x]"
    assert case_id(peft) == case_id(ours) == "test_decoder_models.py::TestDecoderModels::test_generate[PromptTuningConfig-config_kwargs-m/x]"


def test_patterns_take_brackets_literally():
    assert pattern_matches("a.py::t[P-*]", "a.py::t[P-config_kwargs-m]")
    assert not pattern_matches("a.py::t[P-*]", "a.py::tP-x")  # no character classes
    assert not pattern_matches("a.py::t", "a.py::t[P]")  # whole ids


def test_an_entry_limited_to_some_transformers_versions(monkeypatch):
    entry = expectations.Expectation(case="x.py::t", kind="upstream", variants=("peft",), peft="p", ours="o",
                                     why="w" * 41, link="l", transformers=">=5.3")
    monkeypatch.setattr(expectations, "EXPECTATIONS", (entry,))
    assert matching("x.py::t", "peft", "5.24.0", "0.21.2") == [entry]
    assert matching("x.py::t", "peft", "5.0.0", "0.21.2") == []
    assert matching("x.py::t", "softprompt", "5.24.0", "0.21.2") == []


def test_an_entry_limited_to_some_peft_versions(monkeypatch):
    entry = expectations.Expectation(case="x.py::t", kind="upstream", variants=("peft",), peft="p", ours="o",
                                     why="w" * 41, link="l", transformers=">=5.24", peft_versions="<0.22")
    monkeypatch.setattr(expectations, "EXPECTATIONS", (entry,))
    assert matching("x.py::t", "peft", "5.25.0", "0.21.2") == [entry]
    assert matching("x.py::t", "peft", "5.25.0", "0.22.0") == []
    assert matching("x.py::t", "peft", "5.23.0", "0.21.2") == []


def test_the_harness_builds_every_model_id_peft_tests_load_under_both_names():
    """PEFT 0.22's tests load the tiny Llama models under peft-internal-testing/ ids; 0.21's under trl-internal-testing/."""
    from peft_suite.build_models import MODELS

    for name in ("tiny-random-LlamaForCausalLM", "tiny-LlamaForSequenceClassification-3.2"):
        assert MODELS[f"trl-internal-testing/{name}"] is MODELS[f"peft-internal-testing/{name}"]


def test_contributing_shows_the_tables():
    assert table() in (ROOT / "CONTRIBUTING.md").read_text(), "paste the output of python scripts/peft_suite/run.py --table"
