"""Prompt similarity (hand-computed values), library ranking, and SPoT-style transfer in two lines."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file

from softprompt_ext import SoftPromptConfig
from softprompt_ext.analysis.similarity import (
    Match,
    cosine_matrix,
    library_entries,
    max_cosine,
    most_similar,
    pooled_cosine,
    prompt_similarity,
    similarity_matrix,
)

E = torch.eye(4)  # unit rows e0..e3 of a 4-wide "model"


def save_adapter(directory, prompt: torch.Tensor, task_type: str = "SEQ_2_SEQ_LM") -> str:
    """A prompt-tuning adapter directory holding exactly `prompt` [P, H]."""
    os.makedirs(directory, exist_ok=True)
    config = SoftPromptConfig(task_type=task_type, num_virtual_tokens=prompt.shape[0], prompt_tuning_init="RANDOM")
    config.save_pretrained(str(directory))
    save_file({"prompt_embeddings": prompt.contiguous()}, os.path.join(directory, "adapter_model.safetensors"))
    return str(directory)


# ---------------------------------------------------------------------------------------------- measures
def test_cosine_matrix_hand_values():
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    expected = torch.tensor([[0.0, 1 / math.sqrt(2)], [0.8, 7 / (5 * math.sqrt(2))]])
    torch.testing.assert_close(cosine_matrix(a, b), expected)


def test_max_cosine_is_the_symmetrised_mean_of_best_row_matches():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[5.0, 0.0]])
    # a -> b: rows of a best-match 1 and 0 -> 0.5; b -> a: 1 -> 1.0; mean of both directions 0.75
    assert max_cosine(a, b) == pytest.approx(0.75)
    assert max_cosine(b, a) == pytest.approx(0.75)
    assert max_cosine(a, a.flip(0) * 3) == pytest.approx(1.0)  # row order and scale do not matter


def test_pooled_cosine_is_the_cosine_of_the_mean_rows():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean (0.5, 0.5)
    b = torch.tensor([[5.0, 0.0]])
    assert pooled_cosine(a, b) == pytest.approx(1 / math.sqrt(2))
    assert pooled_cosine(a, -a) == pytest.approx(-1.0)


def test_prompt_similarity_reads_adapters_and_picks_the_measure(tmp_path):
    path = save_adapter(tmp_path / "a", E[:2].clone())
    assert prompt_similarity(path, E[:1], measure="max_cosine") == pytest.approx(0.75)
    assert prompt_similarity(path, E[:1], measure="pooled_cosine") == pytest.approx(1 / math.sqrt(2))
    with pytest.raises(ValueError, match=r"measure='cosine' is not known; use one of \['max_cosine', 'pooled_cosine'\]"):
        prompt_similarity(path, E[:1], measure="cosine")


def test_d_model_mismatch_names_both_prompts(tmp_path):
    path = save_adapter(tmp_path / "wide", torch.ones(2, 8))
    with pytest.raises(ValueError, match=r"d_model mismatch: prompt '.*wide' is \(2, 8\).*prompt \(tensor\) is \(1, 4\)"):
        prompt_similarity(path, E[:1])


def test_similarity_matrix_is_symmetric_with_unit_diagonal():
    prompts = [E[:2], E[:1], (E[0] + E[2]).unsqueeze(0)]
    r = 1 / math.sqrt(2)  # cos(e0, e0 + e2)
    # [e0, e1] vs [e0 + e2]: best rows r and 0 -> r / 2 one way, r the other way -> 3r / 4
    expected = torch.tensor([[1.0, 0.75, 0.75 * r], [0.75, 1.0, r], [0.75 * r, r, 1.0]])
    torch.testing.assert_close(similarity_matrix(prompts), expected)


# ---------------------------------------------------------------------------------------------- retrieval
@pytest.fixture
def library(tmp_path):
    """Target [e0, e1]; library: same (1.0), [e0, e2] (0.5), [e3] (0.0), and a nested non-adapter folder."""
    root = tmp_path / "library"
    save_adapter(root / "same", E[:2] * 2)
    save_adapter(root / "half", torch.stack([E[0], E[2]]))
    save_adapter(root / "far", E[3:4])
    (root / "notes").mkdir()  # not an adapter: ignored
    target = save_adapter(tmp_path / "target", E[:2].clone())
    return {"root": str(root), "target": target}


def test_most_similar_ranks_a_folder_best_first(library):
    matches = most_similar(library["target"], library["root"])
    assert [os.path.basename(m.path) for m in matches] == ["same", "half", "far"]
    assert [m.score for m in matches] == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)
    assert matches[1] == Match(os.path.join(library["root"], "half"), pytest.approx(0.5), "max_cosine", 2, 4)
    assert len(most_similar(library["target"], library["root"], top_k=2)) == 2


def test_most_similar_on_a_list_ignores_its_order_and_skips_the_target(library):
    root = library["root"]
    paths = [os.path.join(root, name) for name in ("far", "same", "half")] + [library["target"]]
    matches = most_similar(E[:2], paths, measure="pooled_cosine")
    assert [os.path.basename(m.path) for m in matches][:2] == ["same", "target"]  # a tensor target is never skipped
    from_path = most_similar(library["target"], paths)
    assert library["target"] not in [m.path for m in from_path]
    assert [os.path.basename(m.path) for m in from_path] == ["same", "half", "far"]


def test_a_library_prompt_of_another_width_is_an_error_naming_both(library, tmp_path):
    wide = save_adapter(tmp_path / "wide", torch.ones(3, 8))
    with pytest.raises(ValueError, match=r"prompt target '.*target' is \(2, 4\) .* prompt '.*wide' is \(3, 8\)"):
        most_similar(library["target"], [library["root"], wide])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: [], r"library is empty"),
        (lambda root: str(root / "notes"), r"library folder '.*notes' holds no adapters"),
        (lambda root: [str(root / "missing")], r"'.*missing': no such file or directory"),
    ],
)
def test_bad_libraries_are_refused(library, make, message):
    with pytest.raises(ValueError, match=message):
        most_similar(library["target"], make(Path(library["root"])))


def test_library_entries_accepts_an_adapter_a_folder_and_hub_ids(library):
    single = os.path.join(library["root"], "same")
    assert library_entries(single) == [single]
    assert library_entries([library["root"], "org/prompt"]) == [
        os.path.join(library["root"], name) for name in ("far", "half", "same")
    ] + ["org/prompt"]


def test_transfer_from_the_best_match_is_two_lines(library, make_model):
    """SPoT: a prompt trained briefly on the target task retrieves its source; the source starts the new prompt."""
    probe = get_peft_model(make_model("t5"), SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2,
                                                              prompt_tuning_init="RANDOM", init_seed=0))
    root = library["root"]
    sources = {name: torch.randn(2, 16, generator=torch.Generator().manual_seed(i)) for i, name in enumerate("xyz")}
    for name, prompt in sources.items():
        save_adapter(os.path.join(root, "wide16", name), prompt)
    with torch.no_grad():  # the probe "learned" something close to source y
        probe.prompt_encoder["default"].embedding.weight.copy_(sources["y"] + 0.05 * torch.randn(2, 16))

    best = most_similar(probe, os.path.join(root, "wide16"))[0]
    config = SoftPromptConfig.continue_from(best.path)

    assert os.path.basename(best.path) == "y"
    model = get_peft_model(make_model("t5"), config)
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight.detach(), sources["y"])
    explicit = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, prompt_tuning_init="SAVED_PROMPT",
                                init_prompt_path=best.path, sample_vocab_size=20)
    longer = get_peft_model(make_model("t5"), explicit).prompt_encoder["default"].embedding.weight.detach()
    torch.testing.assert_close(longer[:2], sources["y"])  # P=3: the saved 2 rows, then one sampled row
