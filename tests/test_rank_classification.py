"""Batched rank classification equals a brute-force loop of one forward per example per label (model loss)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.inference.rank_classification import rank_classify, score_candidates
from softprompt_ext.tasks.registry import get_task
from softprompt_ext.tiny_models import build_tokenizer

# inputs of different lengths (padding) and labels of 1..many sub-tokens
INPUTS = [
    "the cat sat on the mat",
    "a dog",
    "rain falls from dark clouds in the cold season and the river flows past the old mill",
]
LABELS = ["entailment", "not_entailment", "neutral"]
TASK_TYPES = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}


def prompted(make_model, kind: str, num_virtual_tokens: int = 5):
    config = SoftPromptConfig(
        task_type=TASK_TYPES[kind], num_virtual_tokens=num_virtual_tokens, sample_vocab_size=50, init_seed=0
    )
    model = get_peft_model(make_model(kind), config)
    with torch.no_grad():  # a prompt far from any vocabulary row, so a wrong slice changes the scores
        model.prompt_encoder["default"].embedding.weight.normal_(
            0, 3, generator=torch.Generator().manual_seed(1)
        )
    return model.eval()


def brute_force(model, tokenizer, inputs, candidates, encoder_decoder: bool) -> torch.Tensor:
    """`[B, C]` log-likelihoods from the model's own loss, one unpadded forward per (input, label)."""
    eos = tokenizer.eos_token_id
    out = torch.full((len(inputs), max(len(c) for c in candidates)), float("-inf"))
    with torch.no_grad():
        for i, (text, cands) in enumerate(zip(inputs, candidates, strict=True)):
            context = tokenizer(text)["input_ids"]
            for j, cand in enumerate(cands):
                target = tokenizer(cand, add_special_tokens=False)["input_ids"]
                if encoder_decoder:
                    target = target + [eos]
                    loss = model(input_ids=torch.tensor([context]), labels=torch.tensor([target])).loss
                else:
                    ctx = context[:-1]  # the tiny tokenizer appends EOS; the candidate continues the input
                    ids = torch.tensor([ctx + target])
                    loss = model(input_ids=ids, labels=torch.tensor([[-100] * len(ctx) + target])).loss
                out[i, j] = -loss * len(target)  # mean over label tokens -> sum
    return out


@pytest.mark.parametrize("kind", ["t5", "llama", "gpt2"])
def test_batched_scores_equal_brute_force(make_model, tokenizer, kind):
    model = prompted(make_model, kind)
    result = rank_classify(model, tokenizer, INPUTS, LABELS, batch_size=2)
    expected = brute_force(model, tokenizer, INPUTS, [LABELS] * 3, encoder_decoder=kind == "t5")
    torch.testing.assert_close(result.scores, expected, atol=1e-4, rtol=1e-5)
    assert result.predictions.tolist() == expected.argmax(dim=1).tolist()
    assert result.predicted_labels == [LABELS[i] for i in expected.argmax(dim=1).tolist()]
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) + (kind == "t5") for c in LABELS]
    assert len(set(lengths)) == 3  # the candidates really differ in token length
    assert result.num_tokens.tolist() == [lengths] * 3
    torch.testing.assert_close(result.normalized_scores, expected / torch.tensor(lengths, dtype=torch.float))


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_per_example_candidate_lists_of_different_sizes(make_model, tokenizer, kind):
    model = prompted(make_model, kind)
    candidates = [["cat", "mat"], ["dog", "a dog", "the old mill"], ["rain"]]
    result = rank_classify(model, tokenizer, INPUTS, candidates, batch_size=3)
    expected = brute_force(model, tokenizer, INPUTS, candidates, encoder_decoder=kind == "t5")
    assert result.scores.shape == (3, 3)
    assert torch.isinf(result.scores[0, 2]) and torch.isinf(result.scores[2, 1:]).all()
    assert result.num_tokens[2, 1:].tolist() == [0, 0]
    finite = torch.isfinite(expected)
    torch.testing.assert_close(result.scores[finite], expected[finite], atol=1e-4, rtol=1e-5)
    assert result.predicted_labels[2] == "rain"  # the only candidate wins


def test_left_padding_tokenizer_gives_the_same_scores(make_model, tokenizer):
    model = prompted(make_model, "llama")
    left = build_tokenizer()
    left.padding_side = "left"
    right = rank_classify(model, tokenizer, INPUTS, LABELS, batch_size=3)
    torch.testing.assert_close(rank_classify(model, left, INPUTS, LABELS, batch_size=3).scores, right.scores)


def test_left_padding_would_change_causal_scores(make_model, tokenizer):
    """Why rows are right-padded: a left-padded row is not scored like the unpadded sequence."""
    model = prompted(make_model, "llama")
    ids = tokenizer("a dog", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([ids])).logits[0, -1]
        padded = model(
            input_ids=torch.tensor([[0, 0, 0, *ids]]),
            attention_mask=torch.tensor([[0, 0, 0] + [1] * len(ids)]),
        ).logits[0, -1]
    assert not torch.allclose(plain, padded, atol=1e-4)


def test_batch_size_does_not_change_scores(make_model, tokenizer):
    model = prompted(make_model, "t5")
    one = rank_classify(model, tokenizer, INPUTS, LABELS, batch_size=1)
    all_ = rank_classify(model, tokenizer, INPUTS, LABELS, batch_size=8)
    torch.testing.assert_close(one.scores, all_.scores, atol=1e-4, rtol=1e-5)


def test_length_normalisation_ranks_by_mean(make_model, tokenizer):
    model = prompted(make_model, "t5")
    result = rank_classify(model, tokenizer, INPUTS, LABELS, length_normalize=True)
    assert result.predictions.tolist() == result.normalized_scores.argmax(dim=1).tolist()
    torch.testing.assert_close(result.normalized_scores, result.scores / result.num_tokens)


def test_plain_model_without_prompt(make_model, tokenizer):
    model = make_model("gpt2")
    result = rank_classify(model, tokenizer, INPUTS, LABELS)
    expected = brute_force(model, tokenizer, INPUTS, [LABELS] * 3, encoder_decoder=False)
    torch.testing.assert_close(result.scores, expected, atol=1e-4, rtol=1e-5)


def test_empty_input_is_scored_from_the_prompt(make_model, tokenizer):
    model = prompted(make_model, "llama")
    result = rank_classify(model, tokenizer, [""], ["cat"])
    assert torch.isfinite(result.scores).all()  # the prompt's last position predicts the first token
    with pytest.raises(ValueError, match="input is empty and the model has no soft prompt"):
        rank_classify(make_model("llama"), tokenizer, [""], ["cat"])


def test_model_mode_is_restored(make_model, tokenizer):
    model = prompted(make_model, "t5").train()
    rank_classify(model, tokenizer, INPUTS[:1], LABELS)
    assert model.training


def test_task_labels_end_to_end(make_model, tokenizer):
    task = get_task("rte")
    rows = task.format([{"premise": "the cat sat", "hypothesis": "a cat", "label": 0}])
    result = rank_classify(prompted(make_model, "t5"), tokenizer, rows["inputs"], task.class_labels)
    scores = task.compute_metrics(result.predicted_labels, rows.to_list())
    assert scores["accuracy"] == (100.0 if result.predicted_labels == ["entailment"] else 0.0)


def test_input_validation(make_model, tokenizer):
    model = make_model("t5")
    with pytest.raises(TypeError, match="inputs must be a list of strings"):
        rank_classify(model, tokenizer, "a dog", LABELS)
    with pytest.raises(ValueError, match="candidates must be a non-empty list"):
        rank_classify(model, tokenizer, INPUTS, [])
    with pytest.raises(ValueError, match="got 2 candidate lists for 3 inputs"):
        rank_classify(model, tokenizer, INPUTS, [["a"], ["b"]])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        rank_classify(model, tokenizer, INPUTS, LABELS, batch_size=0)
    with pytest.raises(ValueError, match="candidate '' has no tokens"):
        score_candidates(make_model("llama"), tokenizer, ["a dog"], [[""]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_cuda_scores_match_cpu(make_model, tokenizer, kind):
    model = prompted(make_model, kind)
    cpu = rank_classify(model, tokenizer, INPUTS, LABELS)
    gpu = rank_classify(model.to("cuda"), tokenizer, INPUTS, LABELS)
    assert gpu.scores.device.type == "cpu"  # results come back on the CPU whatever the model's device
    torch.testing.assert_close(gpu.scores, cpu.scores, atol=1e-3, rtol=1e-4)
