"""Text <-> token ids for `softprompt serve`: the one place that tokenises requests and decodes answers.

The HTTP side uses it (requests are tokenised and checked against `--max-input-tokens` before they are queued,
answers decoded after), and so does the engine; with the engine in its own process (`engine_process.py`) the
HTTP process holds only the tokenizer, not the model.
"""

from __future__ import annotations


def load_tokenizer(base: str | None):
    """The tokenizer of `base` (a Hub id or directory; None: the embedded T5's), without loading the model."""
    from transformers import AutoTokenizer

    if base is None:
        from ...embedded import default_model_path

        base = default_model_path()
    return AutoTokenizer.from_pretrained(base)


class TextCodec:
    """Encode prompts and labels, decode generated ids.

    Args:
        tokenizer: the base model's tokenizer.
        eos_token_id: the id generation stops at (labels of seq2seq models end in it).
        encoder_decoder: True for T5-like bases, whose text-to-text targets end in EOS.
    """

    def __init__(self, tokenizer, eos_token_id: int | None, encoder_decoder: bool):
        self.tokenizer, self.eos, self.encoder_decoder = tokenizer, eos_token_id, encoder_decoder

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included (T5: ends in EOS), as the model reads inputs."""
        return [list(ids) for ids in self.tokenizer(list(texts))["input_ids"]]

    def encode_labels(self, labels: list[str], append_eos: bool = True) -> list[list[int]]:
        """Token ids of each label as a target (seq2seq: + EOS unless `append_eos=False`, as `rank_classify` scores
        them); refuses empty ones."""
        encoded = [list(ids) for ids in self.tokenizer(list(labels), add_special_tokens=False)["input_ids"]]
        if self.encoder_decoder and self.eos is not None and append_eos:
            encoded = [ids + [self.eos] for ids in encoded]
        for text, ids in zip(labels, encoded, strict=True):
            if not ids:
                raise ValueError(f"label {text!r} has no tokens; pass non-empty label strings.")
        return encoded

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
