"""WordNet 3.0 as text: a parser for the wndb(5) data files, the pretraining corpus and the supersense task.

Why a parser of our own rather than NLTK's WordNet reader: the four `data.*` files of Debian's `wordnet-base`
are one synset per line in a fixed, documented layout (wndb(5)), so ~60 lines read them exactly, with no extra
dependency and no NLTK data-path setup; tests pin the parser on a hand-made three-line snippet.

One `data.*` line, fields separated by single spaces:

    offset lex_filenum ss_type w_cnt (word lex_id)*w_cnt p_cnt (symbol offset pos source_target)*p_cnt
    [f_cnt (+ f_num w_num)*f_cnt]  | gloss

`w_cnt` and `lex_id` are hexadecimal, `p_cnt` and `f_cnt` decimal (frames only in `data.verb`). Words use `_`
for spaces and adjectives may carry a syntactic marker `(a)`, `(p)` or `(ip)`. The gloss is a definition
followed by optional `; "example sentence"` parts. Lines starting with two spaces are the licence header.

The supersense task (Lester et al. 2021 need a classification task with natural label words for class-label
init, section 3.2): input = up to three lemmas and the definition of a noun synset, label = its lexicographer
file (`noun.animal` -> "animal"). Splits are drawn per synset, so no definition occurs in two splits, and the
pretraining corpus leaves out every dev/test synset (and any synset with the same definition text). The verb
task (`VERB_SUPERSENSES`, same form, verb synsets) is held out for evaluation only, its dev/test left out too.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

# lexnames(5): lexicographer file number -> name (Debian's wordnet-base does not ship the lexnames file)
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity "
    "noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_DIR = "/usr/share/wordnet"

# the task's classes: frequent noun lexicographer files whose name is a plain English word
SUPERSENSES = {
    "noun.animal": "animal",
    "noun.artifact": "artifact",
    "noun.body": "body",
    "noun.food": "food",
    "noun.location": "location",
    "noun.person": "person",
    "noun.plant": "plant",
    "noun.substance": "substance",
}
LABELS = tuple(SUPERSENSES.values())

# the held-out evaluation task: the eight most frequent verb lexicographer files with a plain-word
# name (verb.stative, also frequent, is not one). No build decision was taken on it; every decision was taken on
# the noun task, and its dev/test synsets are left out of the pretraining text like the noun task's.
VERB_SUPERSENSES = {
    "verb.change": "change",
    "verb.cognition": "cognition",
    "verb.communication": "communication",
    "verb.contact": "contact",
    "verb.creation": "creation",
    "verb.motion": "motion",
    "verb.possession": "possession",
    "verb.social": "social",
}
VERB_LABELS = tuple(VERB_SUPERSENSES.values())

_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")
_EXAMPLE = re.compile(r'"([^"]*)"')


@dataclass(frozen=True)
class Synset:
    """One parsed `data.*` line (pointers and verb frames are read past, not kept)."""

    offset: int
    lexname: str
    ss_type: str  # n, v, a, s (adjective satellite) or r
    words: tuple[str, ...]  # spaces restored, adjective markers removed
    definition: str
    examples: tuple[str, ...]

    @property
    def synset_id(self) -> str:
        """Offsets are unique within one part of speech only, so the id carries the type."""
        return f"{self.offset:08d}-{self.ss_type}"


def parse_data_line(line: str) -> Synset | None:
    """One wndb(5) line -> `Synset`; `None` for licence-header and blank lines."""
    if not line.strip() or line.startswith("  "):
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex_filenum, ss_type = int(fields[0]), int(fields[1]), fields[2]
    w_cnt = int(fields[3], 16)
    words = tuple(
        _ADJ_MARKER.sub("", fields[4 + 2 * i]).replace("_", " ") for i in range(w_cnt)
    )
    # the pointer count follows the words; pointers (4 fields each) and verb frames are not needed here
    gloss = gloss.strip()
    definition = gloss.split('; "')[0].strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss[len(definition):]) if e.strip())
    return Synset(offset, LEXNAMES[lex_filenum], ss_type, words, definition, examples)


def read_wordnet(directory: str = WORDNET_DIR, files: tuple[str, ...] = DATA_FILES) -> list[Synset]:
    """Every synset of the given `data.*` files, in file order."""
    synsets = []
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"{path!r} is missing; install Debian's wordnet-base (apt-get install wordnet-base).")
        with open(path, encoding="utf-8", errors="replace") as handle:
            synsets += [s for s in map(parse_data_line, handle) if s is not None]
    return synsets


def task_input(synset: Synset) -> str:
    """The text the classifier reads: up to three lemmas, then the definition ("dog, domestic dog: a member...")."""
    return f"{', '.join(synset.words[:3])}: {synset.definition}"


def synset_text(synset: Synset) -> str:
    """A synset as one piece of pretraining text: the task's form, then the example sentences."""
    parts = [task_input(synset) + "."] + [e if e.endswith((".", "!", "?")) else e + "." for e in synset.examples]
    return " ".join(parts)


def supersense_splits(
    synsets: list[Synset], per_class: dict[str, int], seed: int = 0, classes: dict[str, str] | None = None
) -> dict[str, list[dict[str, str]]]:
    """Balanced splits drawn without replacement per class: `{"train": [...], "dev": [...], "test": [...]}`.

    Args:
        per_class: examples per class and split, e.g. `{"train": 250, "dev": 40, "test": 40}`.
        classes: lexicographer file -> label word; `SUPERSENSES` (the noun task) when None,
            `VERB_SUPERSENSES` for the held-out verb task.
    Each record: `{"id": synset id, "text": task input, "label": label word, "lexname": noun.xxx / verb.xxx}`.
    Synsets with an empty definition or a definition shared with another candidate are skipped, so a gloss
    can never occur in two splits.
    """
    counts: dict[str, int] = {}
    for s in synsets:
        counts[s.definition] = counts.get(s.definition, 0) + 1
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, str]]] = {name: [] for name in per_class}
    for lexname, label in (SUPERSENSES if classes is None else classes).items():
        pool = [s for s in synsets if s.lexname == lexname and s.definition and counts[s.definition] == 1]
        need = sum(per_class.values())
        if len(pool) < need:
            raise ValueError(f"{lexname} has {len(pool)} usable synsets, fewer than the {need} requested.")
        chosen = rng.sample(pool, need)
        start = 0
        for name, size in per_class.items():
            splits[name] += [
                {"id": s.synset_id, "text": task_input(s), "label": label, "lexname": lexname}
                for s in chosen[start : start + size]
            ]
            start += size
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def corpus_lines(synsets: list[Synset], held_out: list[dict[str, str]], max_chars: int = 560) -> list[str]:
    """Pretraining text: consecutive synsets packed into lines of at most ~`max_chars` characters.

    Every held-out (dev/test) synset is left out, and so is any synset whose definition equals a held-out one.
    Packing neighbours (the files are ordered by lexicographer file) gives span corruption full-length chunks.
    """
    held_ids = {row["id"] for row in held_out}
    held_defs = {row["text"].split(": ", 1)[1] for row in held_out}
    lines, current = [], ""
    for s in synsets:
        if s.synset_id in held_ids or s.definition in held_defs:
            continue
        text = synset_text(s)
        if current and len(current) + 1 + len(text) > max_chars:
            lines.append(current)
            current = ""
        current = f"{current} {text}" if current else text
    if current:
        lines.append(current)
    return lines
