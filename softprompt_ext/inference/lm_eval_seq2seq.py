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
* The score is log p(continuation tokens | context), the sum of the continuation tokens' log-probabilities
  under teacher forcing: `/v1/classify` with `append_eos: false` scores each label's own tokens, without the
  EOS it appends by default (T5's text-to-text targets end in EOS). This is what lm-eval's `hf` seq2seq backend
  computes (`_loglikelihood_tokens`); `tests/test_lm_eval_t5.py` compares the two sample by sample (`peft=`,
  fp32). As there, a choice that is a prefix of another ("yes" / "yes please") is favoured for being shorter.
* `is_greedy`: whether the arg-max at every continuation position is the continuation's token (lm-eval's
  check). Greedy decoding picks the arg-max at every step, so this holds exactly when a greedy run of
  len(continuation tokens) steps yields those tokens: one greedy `/v1/completions` per distinct continuation
  length (`max_tokens` = that length, every context with a continuation of that length as a prompt); true for
  a continuation when the run used all its steps (`finish_reason` "length": no EOS on the way) and its text
  tokenises (`POST /tokenize`) back to the continuation's token ids. Whether EOS would follow does not matter.
  It can only differ from lm-eval's where two different token sequences decode to the same text, which a
  tokenizer's canonical spelling does not produce.
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


def seq2seq_loglikelihood(pairs: Sequence[tuple[str, str]], adapter: str, post: Post) -> list[tuple[float, bool]]:
    """`(log p(continuation tokens | context), is_greedy)` of each `(context, continuation)`, in order.

    Args:
        pairs: lm-eval's loglikelihood request arguments.
        adapter: the served adapter name (`model` of every call).
        post: `post(path, body) -> JSON answer` against the server root (`/v1/classify`, `/v1/completions`,
            `/tokenize`); it raises on an HTTP error.
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
    greedy = _greedy(post, adapter, choices, token_ids)
    return [(scores[c, x], greedy[c, x]) for c, x in split]


def _tokenize(post: Post, adapter: str, texts: set[str]) -> dict[str, list[int]]:
    """Each text's token ids without special tokens (the server's label tokens with `append_eos` false)."""
    return {t: list(post("/tokenize", {"model": adapter, "prompt": t, "add_special_tokens": False})["tokens"])
            for t in sorted(texts)}


def _classify(post: Post, adapter: str, choices: dict[str, list[str]]) -> dict[tuple[str, str], float]:
    """One `/v1/classify` per distinct tuple of continuations, its contexts as the inputs."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for context, labels in choices.items():
        groups.setdefault(tuple(labels), []).append(context)
    out: dict[tuple[str, str], float] = {}
    for shared, contexts in groups.items():
        answer = post("/v1/classify", {"model": adapter, "input": contexts, "labels": list(shared),
                                        "append_eos": False})
        for row in answer["data"]:
            for label, score in zip(shared, row["scores"], strict=True):
                out[contexts[row["index"]], label] = float(score)
    return out


def _greedy(post: Post, adapter: str, choices: dict[str, list[str]],
            token_ids: dict[str, list[int]]) -> dict[tuple[str, str], bool]:
    """Whether greedy decoding from each context yields each of its continuations' tokens (no EOS required):
    one greedy completion per distinct continuation length, of exactly that many tokens."""
    lengths: dict[int, list[str]] = {}
    for context, labels in choices.items():
        for label in labels:
            contexts = lengths.setdefault(len(token_ids[label]), [])
            if context not in contexts:
                contexts.append(context)
    out: dict[tuple[str, str], bool] = {}
    for steps, contexts in sorted(lengths.items()):
        answer = post("/v1/completions", {"model": adapter, "prompt": contexts, "max_tokens": steps,
                                          "temperature": 0})
        runs = {contexts[choice["index"]]: choice for choice in answer["choices"]}
        generated = _tokenize(post, adapter, {run["text"] for run in runs.values() if run["text"]})
        for context in contexts:
            run = runs[context]
            full = run["finish_reason"] == "length"  # all `steps` tokens generated, none of them EOS
            ids = generated.get(run["text"], [])
            for label in choices[context]:
                if len(token_ids[label]) == steps:
                    out[context, label] = full and ids == token_ids[label]
    return out


__all__ = ["seq2seq_loglikelihood", "split_pair"]
