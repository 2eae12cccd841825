"""Entity-level scores as the CoNLL `conlleval` perl script defines them, for IOB tags.

    scores = conlleval.evaluate(gold_tags, predicted_tags)   # lists of per-sentence tag lists
    scores["f1"], scores["per_type"]["PER"]["recall"]

A chunk (entity) is a maximal run of tags found by conlleval's start/end rules, which read IOB1
and IOB2 alike: a chunk starts at every B-X, and at an I-X that follows O (or a sentence start)
or a tag of another type; it ends before O, before B-, and before a tag of another type. So an
I-X after O is a chunk of its own (not an error), and B-PER I-LOC is two chunks.

A predicted chunk is correct when a gold chunk has the same type, start and end. Precision =
correct / predicted chunks, recall = correct / gold chunks, F1 their harmonic mean (0 where a
denominator is 0, as conlleval prints 0.00); accuracy is the fraction of tokens whose whole tag
matches. Scores are fractions in [0, 1] (conlleval prints percentages), like the GLUE metrics.

Sentences are scored apart: a chunk never runs across a sentence boundary (conlleval reads the
blank line between sentences as O and does not count it as a token). Only O, B-X and I-X tags
are accepted; conlleval's rules for IOE (E-X) and brackets are left out, and IOBES (S-X) is
not in the original script at all.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

Chunk = tuple[str, int, int]  # (type, start, end): tags[start:end] form the chunk
_OUTSIDE = ("O", "")  # (prefix, type) of O, and of a sentence start


def split_tag(tag: str) -> tuple[str, str]:
    """("O", "") for O, (prefix, type) for B-X / I-X; ValueError for anything else."""
    if tag == "O":
        return _OUTSIDE
    prefix, dash, kind = tag.partition("-")
    if prefix not in ("B", "I") or not dash or not kind:
        raise ValueError(f"invalid tag {tag!r}: expected O, B-TYPE or I-TYPE")
    return prefix, kind


def _ends(prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    """conlleval's endOfChunk: a chunk ended between the previous and the current token."""
    (prev_prefix, prev_type), (prefix, kind) = prev, cur
    return prev_prefix != "O" and (prefix in ("B", "O") or prev_type != kind)


def _starts(prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    """conlleval's startOfChunk: a chunk starts at the current token."""
    (prev_prefix, prev_type), (prefix, kind) = prev, cur
    return prefix != "O" and (prefix == "B" or prev_prefix == "O" or prev_type != kind)


def chunks(tags: Sequence[str]) -> list[Chunk]:
    """The chunks of one sentence's tags, in order, as (type, start, end) with end exclusive."""
    found: list[Chunk] = []
    prev, start = _OUTSIDE, None
    for i, tag in enumerate(tags):
        cur = split_tag(tag)
        if start is not None and _ends(prev, cur):
            found.append((prev[1], start, i))
            start = None
        if _starts(prev, cur):
            start = i
        prev = cur
    if start is not None:
        found.append((prev[1], start, len(tags)))
    return found


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def evaluate(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """conlleval's scores of predicted against gold tags, both one tag list per sentence.

    Returns {"precision", "recall", "f1", "accuracy", "per_type": {TYPE: {"precision",
    "recall", "f1", "support"}}} (fractions; support = gold chunks of that type), with a row
    for every type found in gold or predicted tags, sorted by name.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    num_gold, num_predicted, num_correct = (collections.Counter() for _ in range(3))
    tokens = correct_tags = 0
    for i, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {i}: {len(gold_tags)} gold tags but "
                             f"{len(predicted_tags)} predicted")
        gold_chunks, predicted_chunks = set(chunks(gold_tags)), set(chunks(predicted_tags))
        num_gold.update(kind for kind, _, _ in gold_chunks)
        num_predicted.update(kind for kind, _, _ in predicted_chunks)
        num_correct.update(kind for kind, _, _ in gold_chunks & predicted_chunks)
        tokens += len(gold_tags)
        correct_tags += sum(g == p for g, p in zip(gold_tags, predicted_tags))
    if not tokens:
        raise ValueError("nothing to evaluate: no tokens")
    per_type = {
        kind: {**_prf(num_correct[kind], num_predicted[kind], num_gold[kind]),
               "support": num_gold[kind]}
        for kind in sorted(num_gold | num_predicted)
    }
    overall = _prf(num_correct.total(), num_predicted.total(), num_gold.total())
    return {**overall, "accuracy": correct_tags / tokens, "per_type": per_type}
