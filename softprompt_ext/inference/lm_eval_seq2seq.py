"""lm-eval `loglikelihood` on an encoder-decoder (T5) base, through `softprompt serve`'s `POST /v1/classify`.

A T5 prompt's tokens are the encoder's: they have no log-probabilities, so the server refuses `echo` and the
`local-completions` recipe (echo + logprobs over context + continuation) cannot score a continuation. The
text-to-text way is to read the continuation as the decoder's target given the prompted context, which is
exactly what rank classification (`/v1/classify`) scores (Lester et al. 2021, section 3: every task is text to
text; the soft prompt is placed before the encoder input). `seq2seq_loglikelihood` sends one classify call per
set of continuations (the contexts sharing it as `input`, a multiple-choice question's choices as `labels`).

What a number means, token by token
-----------------------------------
* Encoder input: the context as text, tokenised by the server with the tokenizer's special tokens (T5: `...
  </s>`); an empty context is `""` (T5: `</s>` alone). lm-eval's `hf` backend (seq2seq) encodes the context
  the same way, and its empty-context `prefix_token_id` is T5's EOS too.
* Continuation: trailing whitespace of the context moves to the continuation first (lm-eval's `_encode_pair`),
  then it is tokenised alone without special tokens, as lm-eval's seq2seq backend does.
* The score is log p(continuation tokens + EOS | context): `/v1/classify` appends EOS to every label of an
  encoder-decoder (T5's text-to-text targets end in EOS; `rank_classify` scores labels so). lm-eval's `hf`
  seq2seq backend scores the continuation tokens without that EOS, so its numbers differ from these by
  log p(EOS | context, continuation); the classify endpoint has no way to leave the EOS out (nor to return the
  per-token terms), so the two cannot be made equal from the client. `tests/test_lm_eval_t5.py` checks the
  equality that does hold: these scores equal lm-eval's own `hf` seq2seq scoring (`peft=`, fp32) of the same
  requests with EOS appended to each continuation's tokens, sample by sample. With the EOS a choice that is
  a prefix of another ("yes" / "yes please") is no longer favoured for being shorter.
* `is_greedy`: whether greedy decoding from the context yields exactly the continuation's tokens and then EOS
  (the same target): one greedy `/v1/completions` per context (`max_tokens` = the longest continuation + 1,
  `logprobs` 1 to count the steps), true for a continuation when the generation ended in EOS after exactly
  its length + 1 steps and its text tokenises (`POST /tokenize`) back to the continuation's tokens. Since
  greedy decoding picks the arg-max at every step, this equals lm-eval's teacher-forced check (every target
  token the arg-max); it can only differ where two different token sequences of the same length decode to
  the same text, which a tokenizer's canonical spelling does not produce.
* Whitespace-only continuations are refused (classify has no tokens to score for them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Post = Callable[[str, dict], Any]


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's `_encode_pair` rule: the context's trailing whitespace moves to the start of the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def seq2seq_loglikelihood(pairs: Sequence[tuple[str, str]], adapter: str, post: Post,
                          eos_token: str | None) -> list[tuple[float, bool]]:
    """`(log p(continuation + EOS | context), is_greedy)` of each `(context, continuation)`, in order.

    Args:
        pairs: lm-eval's loglikelihood request arguments.
        adapter: the served adapter name (`model` of every call).
        post: `post(path, body) -> JSON answer` against the server root (`/v1/classify`, `/v1/completions`,
            `/tokenize`); it raises on an HTTP error.
        eos_token: the tokenizer's EOS string (GET /tokenizer_info), the last token piece of a greedy run
            that ended.
    """
    split = [split_pair(c, x) for c, x in pairs]
    for i, (_, continuation) in enumerate(split):
        if not continuation.strip():
            raise ValueError(f"request {i} has the whitespace-only continuation {continuation!r}: a T5 base scores "
                             "a continuation as decoder tokens and this one has none; drop the request or give "
                             "the continuation text.")
    contexts = list(dict.fromkeys(c for c, _ in split))
    choices: dict[str, list[str]] = {c: [] for c in contexts}
    for context, continuation in split:
        if continuation not in choices[context]:
            choices[context].append(continuation)
    token_ids = _tokenize(post, adapter, {x for _, x in split})
    scores = _classify(post, adapter, choices)
    greedy = _greedy(post, adapter, choices, token_ids, eos_token)
    return [(scores[c, x], greedy[c, x]) for c, x in split]


def _tokenize(post: Post, adapter: str, texts: set[str]) -> dict[str, list[int]]:
    """Each text's token ids without special tokens (the server's label tokens, EOS aside)."""
    return {t: list(post("/tokenize", {"model": adapter, "prompt": t, "add_special_tokens": False})["tokens"])
            for t in sorted(texts)}


def _classify(post: Post, adapter: str, choices: dict[str, list[str]]) -> dict[tuple[str, str], float]:
    """One `/v1/classify` per distinct tuple of continuations, its contexts as the inputs."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for context, labels in choices.items():
        groups.setdefault(tuple(labels), []).append(context)
    out: dict[tuple[str, str], float] = {}
    for shared, contexts in groups.items():
        answer = post("/v1/classify", {"model": adapter, "input": contexts, "labels": list(shared)})
        for row in answer["data"]:
            for label, score in zip(shared, row["scores"], strict=True):
                out[contexts[row["index"]], label] = float(score)
    return out


def _greedy(post: Post, adapter: str, choices: dict[str, list[str]], token_ids: dict[str, list[int]],
            eos_token: str | None) -> dict[tuple[str, str], bool]:
    """Whether greedy decoding from each context yields a continuation's tokens and then EOS."""
    contexts = list(choices)
    steps = max(len(token_ids[x]) for labels in choices.values() for x in labels) + 1
    answer = post("/v1/completions", {"model": adapter, "prompt": contexts, "max_tokens": steps,
                                      "temperature": 0, "logprobs": 1})
    out: dict[tuple[str, str], bool] = {}
    texts = {}
    for choice in answer["choices"]:
        texts[contexts[choice["index"]]] = choice
    generated_ids = _tokenize(post, adapter, {c["text"] for c in texts.values() if c["text"]})
    for context, labels in choices.items():
        choice = texts[context]
        pieces = choice["logprobs"]["tokens"]
        ended = choice["finish_reason"] == "stop" and bool(pieces) and pieces[-1] == eos_token
        ids = generated_ids.get(choice["text"], [])
        for label in labels:
            target = token_ids[label]
            out[context, label] = ended and len(pieces) == len(target) + 1 and ids == target
    return out


__all__ = ["seq2seq_loglikelihood", "split_pair"]
