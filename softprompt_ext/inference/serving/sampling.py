"""Choosing each row's next token in the running batch: greedy, sampled, penalised, biased, with log-probabilities.

Every row of `decoding.RunningBatch` carries its own `RowOptions`, so one decoding step mixes greedy rows and
sampled rows, rows asking for log-probabilities and rows that do not, without splitting the batch. The model
call is shared; only this last step (a few vector operations per row that needs them) is per row:

* log-probabilities are those of the model's own distribution, `log_softmax(logits)`, before temperature,
  top-p/top-k, penalties and bias (what lm-eval's log-likelihood requests need);
* `logit_bias` is added to the logits; `presence_penalty` / `frequency_penalty` subtract `presence * [count > 0]
  + frequency * count` over the tokens the row generated so far (OpenAI's definition);
* `temperature` 0 takes the argmax of the (biased, penalised) logits; above 0 the logits are divided by it,
  cut to the `top_k` largest and the smallest set whose probability reaches `top_p`, and one token is drawn
  with the row's own `torch.Generator` (seeded from the request's `seed`), so a seeded row draws the same
  numbers whatever batch it shares.

Rows without options (or with the plain defaults) take the argmax of the logits, exactly as before.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

import torch

FinishReason = Literal["stop", "length"]  # OpenAI's: EOS or a stop string; the token budget
# One entry per scored token: (log-probability of the token, [(token id, log-probability)] of the top-k).
TokenLogprob = tuple[float, list[tuple[int, float]]]


@dataclass(frozen=True)
class RowOptions:
    """Per-row decoding options of one completion (plain values: they cross the engine process's pipe).

    Args:
        temperature: 0 for greedy decoding, else the softmax temperature of sampling.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1: all).
        top_k: keep the `top_k` most likely tokens (0: all).
        seed: seeds the row's generator (None: a random seed).
        presence_penalty, frequency_penalty: OpenAI's penalties over the generated tokens (0: off).
        logit_bias: token id -> value added to its logit.
        logprobs: the top alternatives to report per generated token (0-5); None: no log-probabilities.
        echo: also score the prompt's tokens (decoder-only bases).
        stop: strings that end the completion (the text stops before the first one).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    echo: bool = False
    stop: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        """Greedy, unbiased, no log-probabilities: the batch's argmax is the answer."""
        return self.argmax and self.logprobs is None

    @property
    def argmax(self) -> bool:
        """The token is the argmax of the raw logits (no sampling, penalty or bias)."""
        return (self.temperature == 0 and not self.logit_bias and self.presence_penalty == 0
                and self.frequency_penalty == 0)

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """The row's generator (sampling rows only)."""
        if self.temperature == 0:
            return None
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        return torch.Generator(device=device).manual_seed(seed)


def top_entries(logp: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """`(logp[token], top-k [(id, logp)])` of one position's log-probabilities `logp [V]`."""
    top: list[tuple[int, float]] = []
    if k > 0:
        values, ids = logp.topk(k)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return float(logp[token]), top


def choose(logits: torch.Tensor, rows: list) -> torch.Tensor:
    """The next token of every row `[B]` from the last position's logits `[B, V]`.

    `rows[i]` is a `decoding.Row`: its `options` (None: greedy), `generator`, `tokens` (generated so far, for the
    penalties) and `logprobs` (a list to append this step's `TokenLogprob` to, when it asks for them).
    """
    tokens = logits.argmax(-1)  # [B]
    if all(row.options is None or row.options.plain for row in rows):
        return tokens
    logits = logits.float()
    logp = torch.log_softmax(logits, -1) if any(
        row.options is not None and row.options.logprobs is not None for row in rows) else None
    for i, row in enumerate(rows):
        options: RowOptions | None = row.options
        if options is None or options.plain:
            continue
        if not options.argmax:
            tokens[i] = _pick(logits[i], options, row.tokens, row.generator)
        if logp is not None and options.logprobs is not None and row.max_new_tokens > 0:
            row.logprobs.append(top_entries(logp[i], int(tokens[i]), options.logprobs))
    return tokens


def _pick(logits: torch.Tensor, options: RowOptions, generated: list[int], generator) -> torch.Tensor:
    """One row's token from its logits `[V]` under its options."""
    x = logits.clone()  # [V]
    if options.logit_bias:
        ids = torch.tensor([i for i, _ in options.logit_bias], device=x.device)
        x[ids] += torch.tensor([v for _, v in options.logit_bias], device=x.device, dtype=x.dtype)
    if generated and (options.presence_penalty or options.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, device=x.device), minlength=x.shape[0])[: x.shape[0]]
        x -= options.frequency_penalty * counts + options.presence_penalty * (counts > 0)
    if options.temperature == 0:
        return x.argmax()
    x = x / options.temperature
    if 0 < options.top_k < x.shape[0]:
        kth = x.topk(options.top_k).values[-1]
        x[x < kth] = float("-inf")
    probs = torch.softmax(x, -1)
    if options.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # probability of the tokens ranked above each one
        drop = order[before >= options.top_p]  # never the first: its `before` is 0
        probs[drop] = 0
    return torch.multinomial(probs, 1, generator=generator)[0]


__all__ = ["RowOptions", "TokenLogprob", "choose", "top_entries"]
