"""Text of the model cards and of the task's README, filled from the build record (no number typed by hand).

    python -m scripts.embedded_build cards softprompt_ext/data/embedded   # rewrite both checkpoints' README.md
                                                                     # from that directory's build_record.json

`tests/test_embedded.py` checks that the shipped cards are exactly what this writes from the shipped record.
"""

from __future__ import annotations

import json
import os
import re
import sys

LICENCE_NAME = "WordNet 3.0 license (Princeton University)"
LICENCE_NOTE = (
    "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Used under the WordNet 3.0 "
    "license (Debian package `wordnet-base`, /usr/share/doc/wordnet-base/copyright): permission to use, copy, "
    "modify and distribute for any purpose and without fee or royalty, provided the copyright notice and "
    "statements, including the disclaimer, appear on all copies. THE DATABASE IS PROVIDED \"AS IS\" AND "
    "PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. The name of Princeton "
    "University or Princeton may not be used in advertising or publicity pertaining to distribution of the "
    "database. Title to copyright in the database shall at all times remain with Princeton University."
)


def _curve_summary(curve: list[dict]) -> str:
    if not curve:
        return "n/a"
    picks = [curve[0], curve[len(curve) // 4], curve[len(curve) // 2], curve[-1]]
    return ", ".join(f"step {p['step']}: {p['loss']:.2f}" for p in picks)


def _where(record: dict, phase: str) -> str:
    """Where a phase ran: its sittings' devices (the build before run segments ran on one thread of 2 CPU cores)."""
    segments = [s for s in record.get("segments", []) if s["phase"] == phase]
    if not segments:
        return "on one thread of 2 shared CPU cores"
    devices = sorted({s["host_cpu"] if s["device"] == "cpu" else s["device"] for s in segments})
    return f"in {len(segments)} sitting{'s' * (len(segments) > 1)} on {' and '.join(devices)}"


def _sources(record: dict) -> str:
    """One line per source of the pretraining text, with its package, version and licence."""
    rows = []
    for s in record["data"].get("sources", []):
        size = f"{s['words']:,} words" if s.get("words") is not None else ""
        rows.append(f"- {s['name']}: {s.get('registry', '')} package `{s['package']}` {s.get('version') or ''}"
                    f" ({size}), licence **{s['licence']}**")
    return "\n".join(rows)


CARD_NAMES = {"lm_adapt": "t5-wordnet-lm-adapt", "span": "t5-wordnet-span"}


def _health(record: dict, kind: str) -> str:
    """The build's encoder-use diagnostics of this checkpoint (benchmarks/encoder_use.py), or a note if skipped."""
    report = record.get("health", {}).get(kind)
    if not report:
        return ("Not in this build's record (older builds did not record it; `--no_health` skips it): "
                "`python benchmarks/encoder_use.py lm_adapt` and `... span` measure it.")
    rank = report["residual_stream"][-1]["effective_rank"] if report.get("residual_stream") else float("nan")
    return (f"Decoder loss with each example's own encoder input {report['own_input_loss']:.3f} vs a neighbour's "
            f"{report['shuffled_input_loss']:.3f} (the decoder reads its input when the first is clearly lower); "
            f"effective rank of the last encoder layer's residual stream {rank:.1f}; a linear probe of the noun "
            f"task on the frozen encoder: dev accuracy {report['linear_probe']['dev_accuracy']:.3f} (chance 0.125).")


def model_card(record: dict, kind: str = "lm_adapt") -> str:
    """The README.md of one shipped checkpoint: `kind` "lm_adapt" (the default base) or "span" (before LM
    adaptation, for the paper's Figure 3 ablation)."""
    if kind not in CARD_NAMES:
        raise ValueError(f"kind={kind!r}: a model card is written for {sorted(CARD_NAMES)}")
    pre, lm = record["pretraining"], record["lm_adaptation"]
    shape = record["model_shape"]
    data = record["data"]
    wordnet = "synsets" in data
    held_out = data.get("held_out_tasks", ["wordnet_supersense"])  # records before the verb task: nouns only
    others = [s for s in data.get("sources", []) if s["name"] != "wordnet"]
    knows = "WordNet's English definitions" if wordnet else ""
    if others:
        prose = f"{sum(s['words'] or 0 for s in others):,} words of permissively licensed English prose"
        knows = f"{knows} and {prose}" if knows else prose
    wordnet_text = (f"WordNet 3.0 glosses and example sentences of all parts of speech ({data['synsets']:,} synsets, "
                    f"Debian `wordnet-base`), leaving out the {data['held_out_synsets']} dev/test synsets of the "
                    f"bundled tasks ({', '.join(f'`{t}`' for t in held_out)}). {LICENCE_NOTE}" if wordnet else "")
    corpus_data = (f"Paragraphs from `scripts/embedded_build/corpus.py` (corpus sha256 {data['corpus']['corpus_sha256'][:16]}..., "
                   "each source's licence as its package states it; paragraphs reproducing a held-out task definition "
                   "were dropped):" if others else "")
    sources = (f"Every source of the pretraining text and its licence:\n{_sources(record)}\n" if data.get("sources")
               else "")
    card = f"""---
license: other
license_name: {"wordnet-3.0" if wordnet else "permissive-mixed"}
language: en
library_name: transformers
tags: [t5, {"lm-adapted" if kind == "lm_adapt" else "span-corruption"}, prompt-tuning, softprompt-ext]
---
# {CARD_NAMES[kind]} (embedded in softprompt-ext)
{_span_note if kind == "span" else ""}
A tiny T5 1.1-shaped encoder-decoder (GeGLU, relative attention; d_model {shape['d_model']},
{shape['num_layers']}+{shape['num_decoder_layers']} layers, d_ff {shape['d_ff']}, {shape['num_heads']} heads,
{record['parameters']:,} parameters, stored in fp16) with T5 1.0's tied embeddings (Transformers 5.x ties T5's
input and output embeddings whatever the config says, so the table is unit-scale and decoder outputs are scaled
by d_model^-0.5) built offline by `scripts/embedded_build/build.py` to make
prompt tuning (Lester et al. 2021) runnable on a laptop CPU. It knows only {knows};
it is a test bed, not a general language model, and it is badly under-trained: pre-training made
{pre['steps'] * pre['batch_size'] / pre['examples_per_epoch']:.1f} passes over its {record['tokenizer']['corpus_tokens']:,}-token corpus, about
{pre['tokens_seen'] / 1e6:.0f}M tokens (what fit the time budget), orders of magnitude short of T5's.

## Training
1. **Span corruption** (T5 pre-training; noise 0.15, mean span 3): {pre['steps']} steps of batch
   {pre['batch_size']} (inputs {pre['input_length']}, targets {pre['target_length']} tokens), {pre['tokens_seen']:,}
   tokens seen, {pre['optimizer']} lr {pre['learning_rate']} ({pre['schedule']}), {pre['precision']},
   {pre['wall_seconds']} s {_where(record, 'pretraining')}. Loss: {_curve_summary(pre['loss_curve'])}.
   That checkpoint ships as `t5-wordnet-span` (for the paper's Figure 3 ablation).
2. **LM adaptation** (prefix LM, paper section 3.3) with `softprompt_ext.training.lm_adapt`: {lm['steps']} steps
   (~{round(100 * lm['steps'] / pre['steps'])}% of pre-training, as the paper's 100K on ~1M), {lm['optimizer']},
   {lm['precision']}, {lm['wall_seconds']} s {_where(record, 'lm_adaptation')}, {lm['loss_curve'][-1]['tokens']:,} input tokens. Loss: {_curve_summary(lm['loss_curve'])}.
   `config.json` records it under `lm_adaptation`.{" Only `t5-wordnet-lm-adapt` had this step." if kind == "span" else ""}

## Health (encoder use, measured by the build)
{_health(record, kind)}

Tokenizer: SentencePiece-style Unigram, {record['tokenizer']['tokens']} tokens (0 pad, 1 `</s>`, 2 `<unk>`,
100 sentinels `<extra_id_i>` last), trained on the same corpus. Full record: `../build_record.json`.

## Data and licence
{wordnet_text}
{corpus_data}

{sources}

## Use
```python
from softprompt_ext.embedded import load_embedded
model, tokenizer = load_embedded("{kind}")
```
"""
    return re.sub(r"\n{3,}", "\n\n", card)  # sections a record lacks leave no run of blank lines


_span_note = ("The span-corruption checkpoint of the build below, before LM adaptation: the paper's Figure 3 base "
              "ablation. Prompt-tune `t5-wordnet-lm-adapt` unless you are comparing the two.\n")


def write_cards(export_dir: str) -> list[str]:
    """Rewrite both checkpoints' README.md from `export_dir/build_record.json`; the paths written."""
    from softprompt_ext.adapters.atomic import atomic_write_text

    with open(os.path.join(export_dir, "build_record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    paths = []
    for kind, folder in CARD_NAMES.items():
        paths.append(os.path.join(export_dir, folder, "README.md"))
        atomic_write_text(paths[-1], model_card(record, kind))
    return paths


def task_readme(per_class: dict[str, int], verbs: bool = False) -> str:
    sizes = ", ".join(f"{name} {count} per class" for name, count in per_class.items())
    if verbs:
        return f"""# wordnet_verb_supersense (held out)

WordNet verb supersense classification, built by `scripts/embedded_build/build.py` from WordNet 3.0 as the
evaluation task that no build decision was taken on (every decision was taken on the noun task,
`wordnet_supersense`). Input (`text`): up to three lemmas and the definition of a verb synset; label (`label`):
its lexicographer file as a word (verb.motion -> `motion`; classes change, cognition, communication, contact,
creation, motion, possession, social: the eight most frequent verb files named by a plain word). Balanced,
drawn per synset with seed 0 ({sizes}); no definition appears in two splits. The embedded model's tokenizer and
pretraining corpus exclude every dev and test synset, and the prose corpus is leak-filtered against them.

## Licence
{LICENCE_NOTE}
"""
    return f"""# wordnet_supersense

WordNet noun supersense classification, built by `scripts/embedded_build/build.py` from WordNet 3.0.
Input (`text`): up to three lemmas and the definition of a noun synset; label (`label`): its lexicographer
file as a word (noun.animal -> `animal`; classes animal, artifact, body, food, location, person, plant,
substance). Balanced, drawn per synset with seed 0 ({sizes}); `id` is `offset-type`, unique across splits, and
no definition appears in two splits. The embedded model's tokenizer and pretraining corpus exclude every dev
and test synset (and those of the held-out verb task, `wordnet_verb_supersense`).

## Licence
{LICENCE_NOTE}
"""


def main(argv: list[str]) -> int:
    """`cards EXPORT_DIR`: rewrite both checkpoints' README.md from EXPORT_DIR/build_record.json."""
    if len(argv) != 1 or not os.path.isfile(os.path.join(argv[0], "build_record.json")):
        sys.exit("usage: python -m scripts.embedded_build cards EXPORT_DIR  (a directory holding build_record.json)")
    for written in write_cards(argv[0]):
        print("wrote", written)
    return 0
