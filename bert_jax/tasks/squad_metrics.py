"""SQuAD exact match and F1 as the official evaluate-v1.1.py and evaluate-v2.0.py define them.

    scores = squad_v1_scores(examples, {qid: text})
    scores = squad_v2_scores(examples, {qid: text}, null_score_diff={qid: diff})

Both normalise answers the same way (lower case, no punctuation, no articles, single spaces).
They differ where an answer normalises to nothing: v1.1 scores F1 0 whenever no token is shared,
while v2.0 drops empty gold answers (a question left without any is a no-answer question, whose
only gold answer is "") and scores F1 1 when gold and prediction are both empty.

A question missing from the predictions scores 0 under both (v1.1 prints a message and does the
same; v2.0 leaves it out of `total` and then fails on its has-answer breakdown), with a warning.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, punctuation removed, articles a/an/the removed, whitespace collapsed."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, *, version_2: bool = False) -> float:
    """Bag-of-tokens F1 of the normalised answers.

    With `version_2` (evaluate-v2.0.py), an answer that normalises to nothing scores 1 against
    another such answer and 0 against anything else; v1.1 scores 0 whenever no token is shared.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if version_2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_v1_scores(examples: Sequence, predictions: Mapping[str, str]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent: the best over each question's gold answers, averaged."""
    exact = f1 = 0.0
    missing = _warn_missing(examples, predictions)
    for example in examples:
        if example.qid in missing:
            continue
        prediction, golds = predictions[example.qid], [text for text, _ in example.answers]
        exact += max((exact_match_score(prediction, g) for g in golds), default=0.0)
        f1 += max((f1_score(prediction, g) for g in golds), default=0.0)
    total = max(len(examples), 1)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def squad_v2_scores(
    examples: Sequence,
    predictions: Mapping[str, str],
    null_score_diff: Mapping[str, float] | None = None,
    threshold: float = 1.0,
) -> dict[str, float]:
    """evaluate-v2.0.py's scores: exact, f1, total, HasAns_*, NoAns_* and, with
    `null_score_diff` (its na-prob file: higher = more likely no answer), best_exact,
    best_exact_thresh, best_f1, best_f1_thresh.

    A question whose null_score_diff exceeds `threshold` counts as predicted "no answer" (right
    exactly when it has none), whatever its prediction text; the best_* entries search that
    threshold over the given values, as the official script does.
    """
    missing = _warn_missing(examples, predictions)
    has_ans = np.array([bool(e.answers) for e in examples], bool)  # [N]
    predicted = np.array([e.qid not in missing for e in examples], bool)  # [N]
    raw = {"exact": np.zeros(len(examples)), "f1": np.zeros(len(examples))}  # each [N]
    for i, example in enumerate(examples):
        if predicted[i]:
            raw["exact"][i], raw["f1"][i] = _v2_raw_scores(example, predictions[example.qid])
    na = np.full(len(examples), -np.inf)  # [N] no null_score_diff: never "no answer"
    if null_score_diff is not None:
        for i, example in enumerate(examples):
            if predicted[i] and example.qid in null_score_diff:
                na[i] = float(null_score_diff[example.qid])
    says_no_answer = predicted & (na > threshold)  # [N] right exactly when it has no answer
    final = {name: np.where(says_no_answer, ~has_ans, scores) for name, scores in raw.items()}
    out: dict[str, float] = {}
    everything = np.ones(len(examples), bool)
    for prefix, rows in (("", everything), ("HasAns_", has_ans), ("NoAns_", ~has_ans)):
        total = int(rows.sum())
        if prefix and not total:
            continue  # as the official script: no breakdown for a group without questions
        for name, scores in final.items():
            out[prefix + name] = 100.0 * float(scores[rows].sum()) / max(total, 1)
        out[prefix + "total"] = total
    if null_score_diff is not None:
        empty = np.array([not predictions.get(e.qid) for e in examples], bool)  # [N]
        for name, scores in raw.items():
            best, thresh = _best_threshold(scores, has_ans, empty, predicted, na)
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best, thresh
    return out


def _v2_raw_scores(example, prediction: str) -> tuple[float, float]:
    """Best exact and F1 over the gold answers that do not normalise to nothing (else "")."""
    golds = [text for text, _ in example.answers if normalize_answer(text)] or [""]
    return (max(exact_match_score(prediction, g) for g in golds),
            max(f1_score(prediction, g, version_2=True) for g in golds))


def _best_threshold(scores, has_ans, empty, predicted, na) -> tuple[float, float]:
    """(best score in percent, its threshold) of evaluate-v2.0.py's find_best_thresh.

    It starts from "every question is no-answer" (threshold 0.0 reported), then admits the
    questions in increasing null_score_diff order, each adding its score (has answer) or losing
    1 for a non-empty prediction of a no-answer question, and keeps the first strict best.
    Questions without a prediction score 0 and those without a null_score_diff keep their raw
    score at every threshold; neither moves the search.
    """
    searched = predicted & np.isfinite(na)  # [N]
    fixed = float(scores[predicted & ~searched].sum())
    gains = np.where(has_ans, scores, np.where(empty, 0.0, -1.0))[searched]  # [S]
    order = np.argsort(na[searched], kind="stable")
    running = np.sum(searched & ~has_ans) + np.cumsum(gains[order])  # [S]
    best, thresh = float(np.sum(searched & ~has_ans)), 0.0
    if len(running) and running.max() > best:
        first = int(np.argmax(running))
        best, thresh = float(running[first]), float(na[searched][order][first])
    return 100.0 * (best + fixed) / max(len(scores), 1), thresh


def _warn_missing(examples: Sequence, predictions: Mapping[str, str]) -> set[str]:
    missing = {e.qid for e in examples if e.qid not in predictions}
    if missing:
        logging.warning("%d of %d questions have no prediction and score 0 (e.g. %s)",
                        len(missing), len(examples), ", ".join(sorted(missing)[:5]))
    return missing
