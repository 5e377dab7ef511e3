"""Which token ids are special: the one helper every module asks (initialisers, readout, LM objectives).

Three uses need three slightly different sets, all built from the same facts about a tokenizer:

* `excluded_token_ids` -- what sampled-vocabulary initialisation must never draw (paper section 3.2): every
  special token (pad, EOS, UNK, BOS, T5 sentinels, added special tokens) and byte-fallback pieces (`<0x0A>`).
* `readout_skip_ids` -- what a nearest-token readout skips (paper section 7): the same specials and/or the
  sentinels, plus embedding rows past the tokenizer (models pad their tables to a multiple of 64 or 128).
* `ids_to_drop` -- ids that must never come from *text* in an LM objective: specials and sentinels, but not
  UNK (unknown text is text).

`IGNORE_INDEX` (-100) is the one label id that takes no part in a loss. `sentinel_ids` lists
`<extra_id_0>, <extra_id_1>, ...` in order (T5, mT5, ByT5); `add_sentinel_prefix` puts
the first one in front of a target (the paper's "span corruption + sentinel", section 3.3).
"""

from __future__ import annotations

import re
from typing import Any

IGNORE_INDEX = -100  # the label id transformers' and PEFT's losses skip (padding, input positions)
SENTINEL_PATTERN = re.compile(r"^<extra_id_(\d+)>$")  # T5's span-corruption sentinels
BYTE_FALLBACK_PATTERN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # Llama/SentencePiece byte-fallback pieces


def sentinel_ids(tokenizer: Any) -> list[int]:
    """Ids of `<extra_id_0>`, `<extra_id_1>`, ... in that order; `[]` when the tokenizer has none."""
    found = {int(m.group(1)): idx for tok, idx in tokenizer.get_vocab().items() if (m := SENTINEL_PATTERN.match(tok))}
    return [int(found[i]) for i in sorted(found)]


def excluded_token_ids(tokenizer: Any) -> set[int]:
    """Special ids (pad, eos, unk, bos, sentinels, added special tokens) and byte-fallback pieces."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    for token, idx in tokenizer.get_vocab().items():
        if BYTE_FALLBACK_PATTERN.match(token):
            ids.add(int(idx))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(int(i) for i, tok in added.items() if getattr(tok, "special", False))
    return ids


def readout_skip_ids(tokenizer: Any, num_rows: int, *, special: bool = True, sentinels: bool = True) -> set[int]:
    """Ids a readout skips in a table of `num_rows` rows: special tokens and/or sentinels.

    `special` covers `excluded_token_ids` minus the sentinels, and the table rows past the tokenizer;
    `sentinels` covers `<extra_id_i>` -- so `special=True, sentinels=False` keeps the sentinels.
    """
    sentinel = set(sentinel_ids(tokenizer))
    ids: set[int] = set()
    if special:
        ids |= excluded_token_ids(tokenizer) - sentinel
        ids |= set(range(len(tokenizer), num_rows))
    if sentinels:
        ids |= sentinel
    return ids


def ids_to_drop(tokenizer: Any) -> frozenset[int]:
    """Ids that must never come from text: every special token and sentinel except the unknown token."""
    special = set(tokenizer.all_special_ids) | set(sentinel_ids(tokenizer))
    special.discard(tokenizer.unk_token_id)
    return frozenset(special)


def add_sentinel_prefix(label_ids: list[int], tokenizer: Any) -> list[int]:
    """The paper's "span corruption + sentinel" target: `[<extra_id_0>] + label_ids` (unchanged if already there).

    Use it on downstream targets when prompt tuning a span-corruption checkpoint (section 3.3).
    """
    ids = sentinel_ids(tokenizer)
    if not ids:
        raise ValueError(
            "the tokenizer has no <extra_id_N> sentinel tokens; 'span corruption + sentinel' targets need a "
            "T5-style tokenizer (T5, mT5, ByT5)."
        )
    label_ids = list(label_ids)
    return label_ids if label_ids[:1] == [ids[0]] else [ids[0], *label_ids]
