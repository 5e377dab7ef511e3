"""The build of the embedded model (`softprompt_ext/data/embedded/`) and its supersense tasks, offline.

One entry point, run from the repository root:

    python -m scripts.embedded_build corpus --out build/corpus     # the prose corpus (corpus.py)
    python -m scripts.embedded_build --corpus build/corpus ...     # pretrain, LM-adapt, export, check (build.py)
    python -m scripts.embedded_build cards softprompt_ext/data/embedded   # rewrite the cards from the record

Modules: `build` (the training driver), `plan` (shape and size before anything trains), `sittings` (a build
stopped and resumed), `data` (WordNet text, corpus, tokenizer), `wordnet` (the WordNet 3.0 parser and task
splits), `corpus` (the prose corpus and its manifest), `card_text` (every card and task README, from the
build record). Guide: docs/guides/embedded-model.md.
"""
