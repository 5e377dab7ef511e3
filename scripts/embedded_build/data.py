"""The embedded build's text and tokenizer: WordNet glosses, a corpus.py corpus, the Unigram tokenizer.

`pretraining_lines` joins the WordNet glosses (without the dev/test synsets of the bundled task and of the
held-out verb task, whose files it also writes) and the paragraphs of
`--corpus DIR` (read through `text_corpus.read_corpus`, which refuses a corpus.txt its manifest does not
describe), and records every source with its licence. `load_or_train_tokenizer` reuses the work_dir's tokenizer
only when it was trained on the same lines (a stamp beside it says which), so a resumed build keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

from softprompt_ext.adapters.atomic import atomic_write_text

from . import card_text as model_card_text
from . import corpus as text_corpus
from . import plan as build_plan
from . import wordnet as wordnet_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK_DIR = os.path.join(REPO, "softprompt_ext", "data", "wordnet_supersense")
VERB_TASK_DIR = os.path.join(REPO, "softprompt_ext", "data", "wordnet_verb_supersense")  # the held-out task
PER_CLASS = {"train": 250, "dev": 40, "test": 40}
NUM_SENTINELS = 100


def ensure_wordnet() -> None:
    """Install Debian's wordnet-base (needs root) unless its data files are already there."""
    if all(os.path.isfile(os.path.join(wordnet_data.WORDNET_DIR, f)) for f in wordnet_data.DATA_FILES):
        return
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "wordnet-base"], check=True)


def write_licence(directory: str, copyright_file: str = "/usr/share/doc/wordnet-base/copyright") -> None:
    """LICENSE = the WordNet 3.0 licence text as Debian's copyright file states it (its `Files: *` stanza)."""
    with open(copyright_file, encoding="utf-8") as handle:
        text = handle.read()
    stanza = text.split("License: WordNet3.0", 1)[1].split("\nFiles:", 1)[0]
    body = "\n".join("" if line.strip() == "." else line[1:] for line in stanza.strip("\n").splitlines())
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "LICENSE"), "w", encoding="utf-8") as handle:
        handle.write("WordNet 3.0 license (from Debian's wordnet-base copyright file)\n\n" + body.strip() + "\n")


def write_task(splits: dict[str, list[dict[str, str]]], task_dir: str = TASK_DIR, verbs: bool = False) -> None:
    """The splits as `task_dir/{train,dev,test}.jsonl`, with a README and the WordNet licence beside them."""
    os.makedirs(task_dir, exist_ok=True)
    for name, rows in splits.items():
        atomic_write_text(os.path.join(task_dir, f"{name}.jsonl"),
                          "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    atomic_write_text(os.path.join(task_dir, "README.md"), model_card_text.task_readme(PER_CLASS, verbs=verbs))
    write_licence(task_dir)


def task_files() -> set[str]:
    """The dev/test files (repo-relative) that a --corpus must have been leak-filtered against."""
    return {os.path.relpath(os.path.join(d, f"{s}.jsonl"), REPO) for d in (TASK_DIR, VERB_TASK_DIR)
            for s in ("dev", "test")}


def train_tokenizer(lines: list[str], vocab_size: int, num_sentinels: int = 100):
    """Unigram tokenizer with T5's layout; `vocab_size` counts everything, sentinels included."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - num_sentinels, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        shrinking_factor=0.75, max_piece_length=16,
    )
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(num_sentinels)],
    )


WORDNET_SOURCE = {"name": "wordnet", "registry": "apt", "package": "wordnet-base", "licence": "WordNet-3.0"}
WORDNET_LABEL = "WordNet 3.0 glosses and examples (dev/test synsets held out)"


def package_version(package: str) -> str | None:
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    except OSError:  # not a Debian system
        return None
    return done.stdout.strip() or None


def pretraining_lines(args, record: dict) -> list[str]:
    """WordNet glosses (minus the dev/test synsets of both bundled tasks) and the --corpus paragraphs (refused
    unless leak-filtered against those splits); fills record["data"]."""
    lines: list[str] = []
    data: dict = {}
    sources: list[dict] = []
    if not args.without_wordnet:
        ensure_wordnet()
        synsets = wordnet_data.read_wordnet()
        splits = wordnet_data.supersense_splits(synsets, PER_CLASS, seed=args.seed)
        verbs = wordnet_data.supersense_splits(synsets, PER_CLASS, seed=args.seed,
                                               classes=wordnet_data.VERB_SUPERSENSES)
        if not args.verify_steps:
            write_task(splits)
            write_task(verbs, VERB_TASK_DIR, verbs=True)
        held_out = splits["dev"] + splits["test"] + verbs["dev"] + verbs["test"]
        lines = wordnet_data.corpus_lines(synsets, held_out)
        data.update(synsets=len(synsets), held_out_synsets=len(held_out),
                    held_out_tasks=["wordnet_supersense", "wordnet_verb_supersense"])
        sources.append({**WORDNET_SOURCE, "version": package_version("wordnet-base"), "lines": len(lines),
                        "words": sum(len(line.split()) for line in lines)})
    if args.corpus:
        paragraphs, manifest = text_corpus.read_corpus(args.corpus)
        lines = lines + paragraphs
        held = set(manifest.get("held_out") or [])
        needed = task_files()
        data["corpus"] = {"dir": args.corpus, "corpus_sha256": manifest["corpus_sha256"],
                          "held_out": sorted(held), "paragraphs": len(paragraphs), "words": manifest.get("words")}
        if not args.without_wordnet and not needed <= held:  # its prose could hold a dev/test definition
            raise ValueError(f"--corpus {args.corpus}: its manifest.json lists held_out {sorted(held)}, so it was not "
                             f"leak-filtered against {sorted(needed - held)}; rebuild it with `python -m "
                             f"scripts.embedded_build corpus --out {args.corpus}` (its default --held_out covers both tasks).")
        for name, source in manifest.get("sources", {}).items():
            sources.append({"name": name, **{k: source.get(k) for k in
                                             ("registry", "package", "version", "sha256", "licence", "paragraphs", "words")}})
    data.update(corpus_lines=len(lines), corpus_chars=sum(map(len, lines)), sources=sources)
    record["data"] = data
    return lines


def data_label(record: dict) -> str:
    """What the model was trained on, in one line (config.json's `pretraining.data`)."""
    parts = [WORDNET_LABEL] if "synsets" in record["data"] else []
    others = [s["name"] for s in record["data"]["sources"] if s["name"] != "wordnet"]
    if others:
        parts.append(f"{record['data']['corpus']['paragraphs']:,} paragraphs of permissively licensed prose "
                     f"({', '.join(others)}; scripts/embedded_build/corpus.py)")
    return " + ".join(parts)


def tokenizer_sample(lines: list[str], cap: int | None) -> list[str]:
    """At most `cap` evenly spaced lines (every source is in the sample, not only the first)."""
    if not cap or len(lines) <= cap:
        return lines
    return [lines[i * len(lines) // cap] for i in range(cap)]


def load_or_train_tokenizer(lines: list[str], args, record: dict):
    """The work_dir's tokenizer when it was trained on the same lines (minutes saved), else a new one."""
    sample = tokenizer_sample(lines, args.tokenizer_lines)
    stamp = {"vocab_size": args.vocab_size, "lines": len(sample),
             "sha256": hashlib.sha256("\n".join(sample).encode("utf-8")).hexdigest()}
    tokenizer_dir = os.path.join(args.work_dir, "tokenizer")
    stamp_path = os.path.join(args.work_dir, "tokenizer_lines.json")  # not inside tokenizer/: export copies that
    old = None
    if os.path.isfile(stamp_path):
        with open(stamp_path, encoding="utf-8") as handle:
            old = json.load(handle)
    legacy = old is None and not args.corpus and not args.tokenizer_lines  # a work_dir of the WordNet-only build
    trained_on = old["lines"] if old else None
    if os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")) and (old == stamp or legacy):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        record["tokenizer_reused"] = tokenizer_dir
    else:
        tokenizer, trained_on = train_tokenizer(sample, args.vocab_size, NUM_SENTINELS), len(sample)
        tokenizer.save_pretrained(tokenizer_dir)
        atomic_write_text(stamp_path, json.dumps(stamp))
    corpus_tokens = sum(len(ids) for i in range(0, len(lines), 4096) for ids in tokenizer(lines[i : i + 4096])["input_ids"])
    record["tokenizer"] = {"kind": "Unigram (tokenizers)", "tokens": len(tokenizer),
                           "embedding_rows": build_plan.embedding_rows(len(tokenizer)), "corpus_tokens": corpus_tokens,
                           "trained_on_lines": trained_on}
    print("tokenizer", record["tokenizer"], flush=True)
    return tokenizer, tokenizer_dir
