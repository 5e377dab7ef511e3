"""Exact tests of the prefix-LM split, span corruption and the seq2seq collator (paper section 3.3)."""

from __future__ import annotations

import random

import pytest
import torch

from softprompt_ext.special_tokens import add_sentinel_prefix, sentinel_ids
from softprompt_ext.training.lm_objectives import (
    LMObjective,
    Seq2SeqCollator,
    apply_span_corruption,
    chunk_token_ids,
    prefix_lm_split,
    random_spans_noise_mask,
    span_corruption_chunk_length,
)

EOS = 1
CHUNK = [10, 11, 12, 13, 14]


def _runs(mask: list[bool]) -> int:
    """Number of runs of True in a mask."""
    return sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))


# ---------------------------------------------------------------------------------------------- prefix LM split
def test_chunking_keeps_order_and_drops_tails_too_short_to_split():
    assert chunk_token_ids(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_token_ids(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # tail [8] cannot be split
    assert chunk_token_ids([7], 4) == []
    assert chunk_token_ids([], 4) == []


def test_split_is_prefix_and_continuation_with_one_eos_each():
    seen = set()
    for seed in range(200):
        out = prefix_lm_split(CHUNK, input_length=8, target_length=8, eos_token_id=EOS, rng=random.Random(seed))
        k = len(out["input_ids"]) - 1
        assert out["input_ids"] == [*CHUNK[:k], EOS]
        assert out["labels"] == [*CHUNK[k:], EOS]
        assert out["input_ids"].count(EOS) == 1 and out["labels"].count(EOS) == 1
        seen.add(k)
    assert seen == {1, 2, 3, 4}  # every split point leaving both sides non-empty occurs


def test_split_points_are_uniform():
    counts = {k: 0 for k in range(1, 5)}
    for seed in range(2000):
        out = prefix_lm_split(CHUNK, input_length=8, target_length=8, eos_token_id=EOS, rng=random.Random(seed))
        counts[len(out["input_ids"]) - 1] += 1
    assert all(400 <= c <= 600 for c in counts.values()), counts


def test_two_token_chunk_has_one_possible_split():
    out = prefix_lm_split([10, 11], input_length=3, target_length=2, eos_token_id=EOS, rng=random.Random(0))
    assert out == {"input_ids": [10, EOS], "labels": [11, EOS]}


def test_continuation_is_truncated_to_target_length_keeping_its_start():
    for seed in range(50):
        out = prefix_lm_split(CHUNK, input_length=8, target_length=3, eos_token_id=EOS, rng=random.Random(seed))
        k = len(out["input_ids"]) - 1
        assert out["labels"] == [*CHUNK[k : k + 2], EOS]
        assert len(out["labels"]) <= 3


def test_split_rejects_chunks_it_cannot_handle():
    with pytest.raises(ValueError, match="at least 2 tokens to be split, got 1"):
        prefix_lm_split([10], input_length=8, target_length=8, eos_token_id=EOS, rng=random.Random(0))
    with pytest.raises(ValueError, match="longer than input_length - 1 = 4"):
        prefix_lm_split(CHUNK, input_length=5, target_length=8, eos_token_id=EOS, rng=random.Random(0))


# ---------------------------------------------------------------------------------------------- LMObjective
def test_objective_examples_never_hold_sentinels_and_end_in_one_eos(tokenizer):
    objective = LMObjective(tokenizer, input_length=6, target_length=4, seed=3)
    text = "the cat sat <extra_id_0> on the mat </s> near the warm fire <pad> and the dog"
    examples = objective.examples(text, index=0)
    forbidden = set(sentinel_ids(tokenizer)) | {tokenizer.pad_token_id}
    assert examples
    for example in examples:
        for side, limit in (("input_ids", 6), ("labels", 4)):
            ids = example[side]
            assert 2 <= len(ids) <= limit
            assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
            assert not forbidden & set(ids)


def test_objective_reassembles_the_text_when_nothing_is_truncated(tokenizer):
    objective = LMObjective(tokenizer, input_length=6, target_length=6, seed=0)
    text = "the cat sat on the mat near the warm fire"
    ids = objective.token_ids(text)
    rebuilt = [t for ex in objective.examples(text, 0) for t in ex["input_ids"][:-1] + ex["labels"][:-1]]
    expected = [t for chunk in chunk_token_ids(ids, 5) for t in chunk]  # chunks of input_length - 1
    assert rebuilt == expected and len(expected) >= len(ids) - 1


def test_short_texts_give_no_examples(tokenizer):
    objective = LMObjective(tokenizer, input_length=8, target_length=8)
    assert len(objective.token_ids("cat")) == 1  # one token: cannot be split
    batch = {"text": ["", "cat", None, "the cat sat on the mat"]}
    rows = objective(batch, [0, 1, 2, 3])
    assert rows["input_ids"] == [ex["input_ids"] for ex in objective.examples("the cat sat on the mat", 3)]
    assert len(rows["labels"]) == len(rows["input_ids"]) >= 1


def test_objective_is_a_pure_function_of_seed_and_index(tokenizer):
    texts = ["the cat sat on the mat near the warm fire", "a ship sails across the sea to a distant port"]
    first = LMObjective(tokenizer, input_length=10, target_length=10, seed=7)
    again = LMObjective(tokenizer, input_length=10, target_length=10, seed=7)
    assert first({"text": texts}, [0, 1]) == again({"text": texts}, [0, 1])
    # a document's examples do not depend on the rest of its batch
    alone = first({"text": texts[1:]}, [1])
    assert alone["input_ids"] == [ex["input_ids"] for ex in first.examples(texts[1], 1)]
    other_seeds = [LMObjective(tokenizer, input_length=10, target_length=10, seed=s)({"text": texts}, [0, 1]) for s in range(8)]
    assert len({str(rows) for rows in other_seeds}) > 1


def test_objective_validation_messages(tokenizer):
    with pytest.raises(ValueError, match="objective='mlm' is not known"):
        LMObjective(tokenizer, objective="mlm")
    with pytest.raises(ValueError, match="input_length must be an int >= 3, got 2"):
        LMObjective(tokenizer, input_length=2)
    with pytest.raises(ValueError, match="target_length must be an int >= 2, got 1"):
        LMObjective(tokenizer, target_length=1)
    with pytest.raises(ValueError, match="noise_density must be in"):
        LMObjective(tokenizer, objective="span_corruption", noise_density=1.5)
    with pytest.raises(ValueError, match="text_column='body' is not a column"):
        LMObjective(tokenizer, text_column="body")({"text": ["the cat"]}, [0])


# ---------------------------------------------------------------------------------------------- span corruption
def test_span_corruption_reproduces_t5_figure_2():
    # "Thank you for inviting me to your party last week", one id per word: 10..19
    chunk = list(range(10, 20))
    mask = [False, False, True, True, False, False, False, False, True, False]
    x0, x1, x2 = 99, 98, 97
    out = apply_span_corruption(chunk, mask, sentinel_ids=[x0, x1, x2], eos_token_id=EOS)
    assert out["input_ids"] == [10, 11, x0, 14, 15, 16, 17, x1, 19, EOS]
    assert out["labels"] == [x0, 12, 13, x1, 18, x2, EOS]


def test_span_corruption_needs_enough_sentinels():
    with pytest.raises(ValueError, match="more than the 1 sentinel tokens"):
        apply_span_corruption([10, 11, 12, 13], [True, False, True, False], sentinel_ids=[99], eos_token_id=EOS)


@pytest.mark.parametrize(
    ("length", "density", "mean", "noise", "spans"),
    [(100, 0.15, 3.0, 15, 5), (20, 0.15, 3.0, 3, 1), (10, 0.25, 1.0, 2, 2), (2, 0.15, 3.0, 1, 1), (30, 0.5, 1.0, 15, 15)],
)
def test_noise_mask_counts(length, density, mean, noise, spans):
    for seed in range(20):
        mask = random_spans_noise_mask(length, density, mean, random.Random(seed))
        assert len(mask) == length and sum(mask) == noise and _runs(mask) == spans
        assert mask[0] is False and mask[-1] is True  # starts with kept text, ends with noise


def test_span_corruption_targets_start_with_the_first_sentinel(tokenizer):
    objective = LMObjective(tokenizer, objective="span_corruption", input_length=16, target_length=8, seed=1)
    assert objective.chunk_length == 17
    first = sentinel_ids(tokenizer)[0]
    examples = [ex for i in range(3) for ex in objective.examples("the cat sat on the mat near the warm fire " * 3, i)]
    assert examples
    for ex in examples:
        assert ex["labels"][0] == first and ex["labels"][-1] == tokenizer.eos_token_id
        assert len(ex["input_ids"]) <= 16 and len(ex["labels"]) <= 8


def test_span_corruption_chunk_length_fits_every_shorter_chunk():
    # n=17: 3 noise tokens in 1 span -> input 17-3+1+1 = 16, target 3+1+1 = 5; n=18 needs 17 input tokens
    assert span_corruption_chunk_length(16, 8, 0.15, 3.0) == 17
    for n in range(2, 18):
        for seed in range(5):
            mask = random_spans_noise_mask(n, 0.15, 3.0, random.Random(seed))
            out = apply_span_corruption(list(range(n)), mask, sentinel_ids=list(range(100, 110)), eos_token_id=EOS)
            assert len(out["input_ids"]) <= 16 and len(out["labels"]) <= 8
    with pytest.raises(ValueError, match="leave no room for span corruption"):
        span_corruption_chunk_length(3, 2, 0.15, 3.0)


def test_span_corruption_needs_a_tokenizer_with_sentinels():
    from softprompt_ext.tiny_models import build_tokenizer

    plain = build_tokenizer(num_sentinels=0)
    with pytest.raises(ValueError, match="needs <extra_id_N> sentinel tokens"):
        LMObjective(plain, objective="span_corruption")
    with pytest.raises(ValueError, match="has no <extra_id_N> sentinel tokens"):
        add_sentinel_prefix([5, 1], plain)


# ---------------------------------------------------------------------------------------------- collator
def test_collator_pads_inputs_and_labels_exactly():
    batch = Seq2SeqCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 1], "labels": [7, 1]}, {"input_ids": [8, 1], "labels": [9, 10, 11, 1]}]
    )
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 1], [8, 1, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[7, 1, -100, -100], [9, 10, 11, 1]]))
    wide = Seq2SeqCollator(pad_token_id=0, pad_to_multiple_of=4)([{"input_ids": [5, 1], "labels": [7, 1]}])
    assert wide["input_ids"].shape == (1, 4) and wide["labels"].tolist() == [[7, 1, -100, -100]]
