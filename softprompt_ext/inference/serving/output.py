"""From generated token ids to what a client reads: text cut at stop strings, streamed deltas that never pass a
stop string, and OpenAI's completion log-probabilities.

* `cut_at_stop(text, stops)`: the text before the first stop string (OpenAI: the stop string is not returned).
* `TextStream`: one streamed choice. After every decoding step it sends the text that grew, holding back any
  tail that could be the start of a stop string (`" a"` holds back a trailing `" "`) and any half character.
* `completion_logprobs`: per token its text, log-probability, top alternatives and character offset into the
  choice's text (echoed prompt tokens first; the first has no log-probability, OpenAI's `None`).
"""

from __future__ import annotations

from .sampling import TokenLogprob
from .schemas import CompletionLogprobs
from .tokens import TextCodec


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`(text before the first stop string, whether one occurred)`."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that could begin a stop string (not sent yet)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class TextStream:
    """The text of one streamed choice: `update(tokens)` after a step, `finish(token_ids)` at its end."""

    def __init__(self, codec: TextCodec, stops: tuple[str, ...] = ()):
        self.codec, self.stops = codec, stops
        self.sent = ""
        self.stopped = False  # a stop string was seen: nothing more is sent

    def update(self, tokens: list[int]) -> str:
        """The text to send after a decoding step ("" for nothing)."""
        if self.stopped:
            return ""
        text = self.codec.decode(tokens)
        if not text.startswith(self.sent) or text.endswith("\ufffd"):  # rewritten, or half a character: wait
            return ""
        text, self.stopped = cut_at_stop(text, self.stops)
        if not self.stopped:
            text = text[: len(text) - held_back(text, self.stops)]
        return self._send(text)

    def finish(self, token_ids: list[int]) -> str:
        """The rest of the text once the row is done (its final token ids, EOS excluded)."""
        text, _ = cut_at_stop(self.codec.decode(token_ids), self.stops)
        if not text.startswith(self.sent):  # cannot happen with a stable decode; never resend what was sent
            return ""
        return self._send(text)

    def _send(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def token_pieces(codec: TextCodec, ids: list[int]) -> list[str]:
    """The text each token adds (special tokens as their own string), decoded with a few tokens of context so that
    a word piece keeps its leading space; linear in the number of tokens."""
    tokenizer, pieces = codec.tokenizer, []
    for k in range(len(ids)):
        window = ids[max(0, k - 4): k]
        before = tokenizer.decode(window, skip_special_tokens=False)
        after = tokenizer.decode(window + [ids[k]], skip_special_tokens=False)
        pieces.append(after[len(before):] if after.startswith(before) else tokenizer.decode([ids[k]]))
    return pieces


def completion_logprobs(codec: TextCodec, ids: list[int], entries: list[TokenLogprob | None], start: int = 0,
                        limit: int | None = None) -> CompletionLogprobs:
    """OpenAI's `logprobs` of tokens `ids` with their `entries` (None: no log-probability, the first echoed token).

    Offsets count characters of the choice's text from `start`; special tokens add no text. With `limit` (the
    length of the text a stop string cut), tokens that begin at or after it are left out.
    """
    special = set(getattr(codec.tokenizer, "all_special_ids", []))
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = start
    for token, piece, entry in zip(ids, token_pieces(codec, ids), entries, strict=True):
        if limit is not None and offset >= limit and token not in special:
            break
        tokens.append(piece)
        offsets.append(offset)
        if entry is None:
            values.append(None)
            tops.append(None)
        else:
            value, top = entry
            values.append(value)
            alternatives = {codec.tokenizer.decode([t]): lp for t, lp in top}
            alternatives.setdefault(piece, value)  # the chosen token is always among them (as OpenAI's)
            tops.append(alternatives)
        offset += 0 if token in special else len(piece)
    return CompletionLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets)


__all__ = ["TextStream", "completion_logprobs", "cut_at_stop", "held_back", "token_pieces"]
