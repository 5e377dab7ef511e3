"""Prompt ensembling (`inference/ensembles.py`): majority votes, combined label scores, one batch for N prompts.

Votes are checked on constructed outputs; `ensemble_generate` against `mixed_generate` of the same rows in
another batch order, and `score_labels` against each example's log-likelihood run alone after
`model.set_adapter(name)`. The `build` fixture (three prompts loaded through PEFT) is in tests/conftest.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TEXTS, padded_batch

from softprompt_ext.inference.ensembles import (
    answer_key,
    combine_label_scores,
    ensemble_classify,
    ensemble_generate,
    majority_vote,
    score_labels,
)
from softprompt_ext.inference.mixed_batches import mixed_generate

NAMES = ["p3", "p7", "p7", "p3"]
EOS, PAD = 1, 0
TOL = {"rtol": 1e-4, "atol": 1e-4}



def _alone_ids(ids: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
    return ids[i][mask[i].bool()][None]  # [1, T_i]


def _until_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


# ---------------------------------------------------------------------------------------------- voting
A, B, C = [5, 6, EOS, PAD], [7, EOS, PAD, PAD], [8, 9, 9, EOS]


def _stack(*outputs_per_prompt: list[list[int]]) -> torch.Tensor:
    return torch.tensor(outputs_per_prompt)  # [N, B, L]


@pytest.mark.parametrize(
    ("outputs", "winner", "votes"),
    [
        ([A, B, B], 1, 2),  # plain majority
        ([A, B, B, A], 0, 2),  # tie: the earliest prompt among the tied answers
        ([B, A, A, B], 0, 2),
        ([C, A, B, B, A], 1, 2),  # tie between A (first at 1) and B (first at 2): A wins
        ([A, B, C], 0, 1),  # all different: the first prompt
        ([C], 0, 1),  # N = 1
    ],
)
def test_majority_vote_on_constructed_outputs(outputs, winner, votes):
    got_winner, got_votes = majority_vote(_stack(*[[o] for o in outputs]), eos_token_id=EOS)
    assert got_winner.tolist() == [winner] and got_votes.tolist() == [votes]


def test_majority_vote_ignores_tokens_after_eos_and_votes_per_example():
    same_answer = [[5, EOS, PAD, PAD], [5, EOS, 7, 7]]  # generate pads after EOS; anything there is not voted
    outputs = _stack([same_answer[0], A], [same_answer[1], B], [C, B])  # N=3 prompts, B=2 examples
    winner, votes = majority_vote(outputs, eos_token_id=[EOS, 99])
    assert winner.tolist() == [0, 1] and votes.tolist() == [2, 2]
    assert answer_key([5, 6, EOS, 4], EOS) == (5, 6, EOS)
    assert answer_key([5, 6], None) == (5, 6)


def test_majority_vote_rejects_bad_shapes():
    with pytest.raises(
        ValueError, match=r"sequences must be a \[N, B, L\] tensor with N >= 1 prompts, got \(2, 3\)"
    ):
        majority_vote(torch.zeros(2, 3, dtype=torch.long))


def test_combine_label_scores_vote_and_mean():
    scores = torch.tensor(
        [  # N=3 prompts, B=3 examples, C=3 labels
            [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]],
            [[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]],
            [[9.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
        ]
    )
    voted = combine_label_scores(scores, "vote")
    # example 0: votes 1, 1, 0 -> label 1; example 1: 0, 1, 2 all tied -> first prompt's label 0;
    # example 2: 2, 0, 0 -> label 0 with two votes
    assert voted.predictions.tolist() == [1, 0, 0]
    assert voted.support.tolist() == [[1, 2, 0], [1, 1, 1], [2, 0, 1]]
    mean = combine_label_scores(scores, "mean")
    expected = scores.softmax(-1).mean(0)
    torch.testing.assert_close(mean.support, expected)
    assert mean.predictions.tolist() == expected.argmax(-1).tolist() == [0, 1, 2]
    tie = combine_label_scores(torch.zeros(2, 1, 3), "mean")  # all equal: lowest label index
    assert tie.predictions.tolist() == [0]
    with pytest.raises(ValueError, match=r"method='max' is not known; use one of \('vote', 'mean'\)"):
        combine_label_scores(scores, "max")
    with pytest.raises(ValueError, match=r"scores must be a non-empty \[N, B, C\] tensor .* got \(3, 3\)"):
        combine_label_scores(scores[0], "vote")


# ---------------------------------------------------------------------------------------------- ensembles
@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_ensemble_generate_votes_over_one_batch(build, tokenizer, kind, tmp_path):
    model = build(kind)
    # the same prompt twice: two votes that always agree
    model.load_adapter(str(tmp_path / "p3"), adapter_name="p3_again")
    ids, mask = padded_batch(tokenizer, "left" if kind != "t5" else "right")
    names = ["p7", "p3", "p5", "p3_again"]
    out = ensemble_generate(model, ids, mask, names, tokenizer=tokenizer, max_new_tokens=4, do_sample=False)
    assert out.candidates.shape[:2] == (4, len(TEXTS))
    # candidate n is what adapter n generates: the same rows in another batch order give the same tokens
    order = [(n, b) for n in reversed(range(len(names))) for b in range(len(TEXTS))]
    rows = torch.tensor([b for _, b in order])
    again = mixed_generate(
        model, ids[rows], mask[rows], [names[n] for n, _ in order], max_new_tokens=4, do_sample=False
    )
    for row, (n, b) in enumerate(order):
        assert _until_eos(out.candidates[n, b].tolist()) == _until_eos(again[row].tolist())
    winner, votes = majority_vote(out.candidates, EOS)
    assert out.winner.tolist() == winner.tolist() and out.votes.tolist() == votes.tolist()
    assert all(v >= 2 for v in out.votes.tolist())  # p3 and p3_again always agree
    for b in range(len(TEXTS)):
        assert out.sequences[b].tolist() == out.candidates[out.winner[b], b].tolist()
    assert out.texts == tokenizer.batch_decode(out.sequences, skip_special_tokens=True)


def test_ensemble_bad_adapter_lists(build, tokenizer):
    model = build("t5")
    ids, mask = padded_batch(tokenizer, "right")
    with pytest.raises(
        ValueError, match=r"adapter_names repeats \['p3'\]; an ensemble gives every prompt one vote"
    ):
        ensemble_generate(model, ids, mask, ["p3", "p7", "p3"], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"adapter_names is empty; pass the N >= 1 prompt adapters"):
        ensemble_generate(model, ids, mask, [], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"adapter_names\[0\]='nope' is not loaded"):
        ensemble_classify(model, ids, mask, ["nope"], [[5, EOS]])


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_score_labels_equals_alone_log_likelihood(build, tokenizer, kind):
    model = build(kind)
    ids, mask = padded_batch(tokenizer, "right")
    label_ids = [[5, EOS], [7, 8, 9, EOS], [11]]
    with torch.no_grad():
        scores = score_labels(model, ids, mask, NAMES, label_ids)  # [B, C]
        assert scores.shape == (4, 3)
        for b, name in enumerate(NAMES):
            model.set_adapter(name)
            x = _alone_ids(ids, mask, b)
            for c, label in enumerate(label_ids):
                y = torch.tensor([label])
                if kind == "t5":
                    loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss
                else:  # the label continues the input: the EOS the tokenizer appended is dropped
                    x = x[:, :-1] if x[0, -1] == EOS else x
                    full = torch.cat([x, y], 1)
                    loss = model(input_ids=full, labels=torch.cat([torch.full_like(x, -100), y], 1)).loss
                torch.testing.assert_close(scores[b, c], -loss * len(label), **TOL)
        ensemble = ensemble_classify(model, ids, mask, ["p3", "p7", "p5"], label_ids, method="mean")
    assert ensemble.scores.shape == (3, 4, 3)
    for n, name in enumerate(["p3", "p7", "p5"]):
        with torch.no_grad():
            torch.testing.assert_close(
                ensemble.scores[n], score_labels(model, ids, mask, [name] * 4, label_ids), **TOL
            )
    assert ensemble.predictions.tolist() == combine_label_scores(ensemble.scores, "mean").predictions.tolist()
    with pytest.raises(
        ValueError, match=r"label_ids must be a non-empty list of non-empty token-id lists, got \[\]"
    ):
        score_labels(model, ids, mask, NAMES, [])
