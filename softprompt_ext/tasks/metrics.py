"""Metrics of the paper's evaluations, with the standard definitions: pure functions of strings.

(Task metrics; `inference/serving/metrics.py` counts the server's requests. Same name, each in its package.)

Lester et al. (2021) report SuperGLUE dev scores (section 3, Figure 1, Table 1), SQuAD -> MRQA F1 (section 5,
Table 2) and QQP <-> MRPC accuracy / F1 (section 5, Table 3). They use T5's metrics; this module implements
the same definitions in plain Python (no scikit-learn, no `evaluate` download):

* accuracy: the generated string equals the label string exactly (after stripping outer whitespace). Any
  other output, e.g. an invented label, is wrong.
* binary F1 (MRPC, QQP; MultiRC's F1a): F1 of the positive label. An output that is no label counts as the
  wrong class (a false negative when the gold is positive, a false positive when it is negative), as T5's
  `f1_score_with_invalid` does.
* macro F1 (CB): the unweighted mean of the per-class F1 over all classes. An invalid output is a false
  negative of the gold class only. A class with no gold and no prediction scores 0 (scikit-learn's default).
* MultiRC: F1a is the binary F1 over *all answer options*; exact match is, per question, whether every answer
  option of that question is right, averaged over questions.
* ReCoRD, SQuAD, MRQA: exact match and token F1 after SQuAD's answer normalisation (lowercase, drop
  punctuation, drop the articles a/an/the, collapse whitespace), maximised over the gold answers, averaged
  over questions. ReCoRD keeps one prediction per query (the first), like T5's de-duplication.
  Empty strings follow the SQuAD 2.0 script: when the prediction or the gold normalises to nothing, F1 is
  1 if both do and 0 otherwise (the v1.1 script and T5 give 0 even when both are empty); a question without
  gold answers is scored against the empty answer.

All scores are percentages (0-100), as in the paper's tables.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------------------------- answers
def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 (0..1) of the normalised strings (bag of whitespace tokens)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # SQuAD 2.0 convention: an empty answer is right only against an empty answer
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 in percent, each the max over an example's gold answers, then the mean."""
    check_lengths(predictions, golds, "golds")
    if not predictions:
        raise ValueError("squad_metrics got no predictions; pass at least one example.")
    em, f1 = [], []
    for prediction, answers in zip(predictions, golds, strict=True):
        if isinstance(answers, str):
            raise TypeError(
                f"each gold entry must be a list of answer strings, got the string {answers!r}; "
                f"wrap it: [{answers!r}]."
            )
        answers = list(answers) or [""]
        em.append(max(exact_match_score(prediction, gold) for gold in answers))
        f1.append(max(token_f1_score(prediction, gold) for gold in answers))
    return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


# ---------------------------------------------------------------------------------------------- labels
def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percentage of predictions equal to their reference label string (outer whitespace ignored)."""
    check_lengths(predictions, references, "references")
    if not predictions:
        raise ValueError("accuracy got no predictions; pass at least one example.")
    hits = [p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)]
    return 100.0 * float(np.mean(hits))


def binary_f1(predictions: Sequence[str], references: Sequence[str], positive: str, negative: str) -> float:
    """F1 (percent) of the `positive` label; an output that is neither label counts as the wrong class."""
    check_lengths(predictions, references, "references")
    tp = fp = fn = 0
    for prediction, reference in zip(predictions, references, strict=True):
        gold_pos = reference.strip() == positive
        pred = prediction.strip()
        pred_pos = (
            pred == positive if pred in (positive, negative) else not gold_pos
        )  # invalid: opposite of gold
        tp += pred_pos and gold_pos
        fp += pred_pos and not gold_pos
        fn += (not pred_pos) and gold_pos
    return 100.0 * _f1(tp, fp, fn)


def macro_f1(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over `labels` of the per-class F1 (percent), as T5 scores CB."""
    check_lengths(predictions, references, "references")
    if not labels:
        raise ValueError("macro_f1 needs the label strings, got an empty list; pass e.g. task.class_labels.")
    pairs = [(p.strip(), r.strip()) for p, r in zip(predictions, references, strict=True)]
    per_class = []
    for label in labels:
        tp = sum(p == label and r == label for p, r in pairs)
        fp = sum(p == label and r != label for p, r in pairs)
        fn = sum(p != label and r == label for p, r in pairs)
        per_class.append(_f1(tp, fp, fn))
    return 100.0 * float(np.mean(per_class))


def multirc_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    groups: Sequence[str],
    positive: str = "True",
    negative: str = "False",
) -> dict[str, float]:
    """MultiRC F1a (binary F1 over all answer options) and exact match (all options right, per question)."""
    check_lengths(predictions, references, "references")
    check_lengths(predictions, groups, "groups")
    per_question: dict[str, list[bool]] = collections.defaultdict(list)
    for prediction, reference, group in zip(predictions, references, groups, strict=True):
        per_question[group].append(prediction.strip() == reference.strip())
    return {
        "f1a": binary_f1(predictions, references, positive, negative),
        "exact_match": 100.0 * float(np.mean([all(hits) for hits in per_question.values()])),
    }


_DETERMINERS = frozenset(
    "a an few her his each every many much my our some that".split()
    + "the their these this those which whose your".split()
)


def wsc_referent_match(prediction: str, referent: str) -> bool:
    """Whether a generated referent names the candidate (T5's "WSC simple" rule).

    Case and determiners are ignored; the word sets must contain one another, and a possessive on one side
    only ("Bob" vs "Bob's hat") is no match. An empty prediction never matches.
    """

    def words(text: str) -> list[str]:
        return [w for w in text.strip().lower().split() if w not in _DETERMINERS]

    pred, ref = words(prediction), words(referent)
    if not pred:
        return False
    if any("'" in w for w in pred) != any("'" in w for w in ref):
        return False
    return set(pred) <= set(ref) or set(ref) <= set(pred)


def _f1(tp: int, fp: int, fn: int) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def check_lengths(predictions: Sequence[Any], other: Sequence[Any], name: str) -> None:
    if len(predictions) != len(other):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(other)} {name}; "
            "pass one entry per example, in order."
        )
