"""Does an embedded model read its encoder? Held-out loss with each example's own input vs another's.

    python benchmarks/encoder_use.py lm_adapt      # or: span

A soft prompt acts only through the encoder (Lester et al. 2021, section 2), so prompt tuning can work only
if the decoder's predictions depend on the encoder input. 64 dev glosses of the supersense task (held out of
pretraining) are turned into examples of the model's own objective (prefix LM for "lm_adapt", span
corruption for "span"); the loss with every example's own input is compared with the loss when each
example gets its neighbour's input. Equal losses mean the model ignores its input.
"""

from __future__ import annotations

import json
import sys

import torch

from softprompt_ext.embedded import load_embedded, read_supersense
from softprompt_ext.lm_objectives import LMObjective, Seq2SeqCollator


def main(kind: str) -> dict:
    torch.set_num_threads(1)
    model, tokenizer = load_embedded(kind)
    objective = "span_corruption" if kind == "span" else "prefix_lm"
    texts = [row["text"] for row in read_supersense("dev")[:64]]
    examples = LMObjective(tokenizer, objective=objective, input_length=64, target_length=32, seed=1)
    rows = [ex for i, text in enumerate(texts) for ex in examples.examples(text, i)][:64]
    batch = Seq2SeqCollator(tokenizer.pad_token_id)(rows)  # input_ids [B, S], attention_mask, labels [B, T]
    neighbour = torch.roll(torch.arange(len(rows)), 1)
    with torch.no_grad():
        own = model(**batch).loss.item()
        shuffled = model(input_ids=batch["input_ids"][neighbour], attention_mask=batch["attention_mask"][neighbour],
                         labels=batch["labels"]).loss.item()
    return {"kind": kind, "objective": objective, "own_input_loss": round(own, 3),
            "shuffled_input_loss": round(shuffled, 3)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "lm_adapt")))
