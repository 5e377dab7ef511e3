"""Which token ids are special (`special_tokens.py`): exact sets on the tiny tokenizer and on a hand-made one.

The tiny tokenizer (tests/conftest.py) has 0 `<pad>`, 1 `</s>`, 2 `<unk>` and the sentinels `<extra_id_0..7>` at
ids 168..175. The hand-made one adds byte-fallback pieces (`<0x0A>`), which only `excluded_token_ids` and
`readout_skip_ids` treat as special: an LM objective may see them in text.
"""

from __future__ import annotations

import pytest

from softprompt_ext.special_tokens import (
    add_sentinel_prefix,
    excluded_token_ids,
    ids_to_drop,
    readout_skip_ids,
    sentinel_ids,
)


class _VocabOnly:
    """A tokenizer stand-in with a T5-like vocabulary: sentinels at the top of the id range, in reverse."""

    def get_vocab(self) -> dict[str, int]:
        return {"<extra_id_0>": 99, "<extra_id_1>": 98, "<extra_id_10>": 89, "<extra_id_2>": 97, "a": 5, "<extra_id_x>": 3}


# ---------------------------------------------------------------------------------------------- tokenizer facts
def test_sentinel_ids_are_ordered_by_number_not_by_id():
    assert sentinel_ids(_VocabOnly()) == [99, 98, 97, 89]


def test_sentinel_and_special_ids_of_the_tiny_tokenizer(tokenizer):
    expected = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(8)]
    assert sentinel_ids(tokenizer) == expected
    assert ids_to_drop(tokenizer) == frozenset({tokenizer.pad_token_id, tokenizer.eos_token_id, *expected})
    assert tokenizer.unk_token_id not in ids_to_drop(tokenizer)


def test_special_token_ids_split_specials_from_sentinels(tokenizer):
    sentinels = set(range(168, 176))  # <extra_id_0..7>
    padding_rows = {176, 177, 178, 179}  # table rows past the tokenizer name no token
    assert readout_skip_ids(tokenizer, 180) == {0, 1, 2} | sentinels | padding_rows
    assert readout_skip_ids(tokenizer, 180, sentinels=False) == {0, 1, 2} | padding_rows
    assert readout_skip_ids(tokenizer, 180, special=False) == sentinels
    assert readout_skip_ids(tokenizer, 180, special=False, sentinels=False) == set()


def test_excluded_token_ids_of_the_tiny_tokenizer(tokenizer):
    assert excluded_token_ids(tokenizer) == {0, 1, 2} | set(range(168, 176))


# ---------------------------------------------------------------------------------------------- the three sets agree
def _byte_fallback_tokenizer():
    """A word-level tokenizer with pad/eos/unk, two byte-fallback pieces, a look-alike and two sentinels."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<pad>": 0, "</s>": 1, "<unk>": 2,
        "<0x0A>": 3, "<0xFF>": 4,  # byte-fallback pieces (Llama / SentencePiece)
        "cat": 5, "sea": 6,
        "<0x1>": 7,  # not a byte piece: one hex digit
        "<extra_id_0>": 8, "<extra_id_1>": 9,
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<extra_id_0>", "<extra_id_1>"],
    )


def test_excluded_readout_and_drop_sets_agree_as_documented():
    tok = _byte_fallback_tokenizer()
    pad, eos, unk, byte_pieces, sentinels = {0}, {1}, {2}, {3, 4}, {8, 9}
    assert len(tok) == 10
    assert sentinel_ids(tok) == [8, 9]
    # sampled-vocabulary init draws none of: specials (pad, eos, unk, sentinels) and byte-fallback pieces
    excluded = excluded_token_ids(tok)
    assert excluded == pad | eos | unk | byte_pieces | sentinels
    # a readout skips the same ids, plus the table rows past the tokenizer; the flags split it in two
    assert readout_skip_ids(tok, len(tok)) == excluded
    assert readout_skip_ids(tok, 12) == excluded | {10, 11}
    assert readout_skip_ids(tok, 12, sentinels=False) == (excluded - sentinels) | {10, 11}
    assert readout_skip_ids(tok, 12, special=False) == sentinels
    # text never yields specials or sentinels; UNK and byte pieces are text
    assert ids_to_drop(tok) == frozenset(excluded - unk - byte_pieces) == frozenset(pad | eos | sentinels)


# ---------------------------------------------------------------------------------------------- sentinel option
def test_add_sentinel_prefix_is_exact_and_idempotent(tokenizer):
    first = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    target = tokenizer("True")["input_ids"]  # label + EOS
    with_sentinel = add_sentinel_prefix(target, tokenizer)
    assert with_sentinel == [first, *target]
    assert add_sentinel_prefix(with_sentinel, tokenizer) == with_sentinel
    assert tokenizer.decode(with_sentinel, skip_special_tokens=True) == tokenizer.decode(target, skip_special_tokens=True)


def test_add_sentinel_prefix_needs_a_tokenizer_with_sentinels():
    from softprompt_ext.tiny_models import build_tokenizer

    with pytest.raises(
        ValueError, match=r"the tokenizer has no <extra_id_N> sentinel tokens; 'span corruption \+ sentinel' targets"
    ):
        add_sentinel_prefix([5, 1], build_tokenizer(num_sentinels=0))
