"""Pre-training examples from tokenized documents: NSP pairs (BERT) or full sentences (RoBERTa).

Works on a *chunk*: a few hundred tokenized documents held as one flat id array plus sentence
offsets, so segments are array slices (no per-token Python). Randomness comes from the chunk's
own numpy Generator, so a chunk's examples are a pure function of its documents and seed.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from bert_jax.data.sources import SkipCounter

NSP, FULL_SENTENCES = "nsp", "full_sentences"
IS_NEXT, NOT_NEXT = 0, 1


@dataclasses.dataclass
class TokenizedChunk:
    """Documents of a chunk: all token ids back to back, and where sentences/documents start."""

    ids: np.ndarray  # [T] int32, every sentence of every document concatenated
    sentence_starts: np.ndarray  # [S + 1] int64 offsets into ids (last = T)
    doc_starts: np.ndarray  # [D + 1] int64 offsets into sentences (last = S)

    @property
    def num_docs(self) -> int:
        return len(self.doc_starts) - 1

    def doc_lengths(self, d: int) -> np.ndarray:
        """Token counts of document d's sentences: [num sentences of d]."""
        s0, s1 = self.doc_starts[d], self.doc_starts[d + 1]
        return np.diff(self.sentence_starts[s0 : s1 + 1])

    def tokens(self, d: int, first: int, end: int) -> np.ndarray:
        """Ids of sentences [first, end) of document d (document-relative sentence indices)."""
        s0 = self.doc_starts[d]
        return self.ids[self.sentence_starts[s0 + first] : self.sentence_starts[s0 + end]]


class Segments(NamedTuple):
    """Where an example's text came from: chunk document and sentence range [first, end)."""

    a_doc: int
    a_first: int
    a_end: int
    b_doc: int = -1  # -1: no segment B (full_sentences)
    b_first: int = 0
    b_end: int = 0


class Example(NamedTuple):
    """One sequence before masking: [CLS] A [SEP] B [SEP] (or [CLS] sentences... [SEP])."""

    ids: np.ndarray  # [n] int32, n <= max_seq_length
    num_a: int  # tokens with token_type 0 ([CLS] A [SEP]); the rest are segment B
    label: int  # IS_NEXT / NOT_NEXT (always IS_NEXT in full_sentences mode)
    origin: Segments | tuple  # provenance; for full_sentences a tuple of Segments


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
    mode: str
    max_seq_length: int
    short_seq_prob: float
    cls_id: int
    sep_id: int


def make_examples(
    chunk: TokenizedChunk, opts: ExampleOptions, rng: np.random.Generator, skips: SkipCounter
) -> list[Example]:
    """All examples of a chunk, in creation order (the caller shuffles)."""
    if opts.mode == NSP:
        examples = []
        for d in range(chunk.num_docs):
            examples.extend(_nsp_document(chunk, d, opts, rng, skips))
        return examples
    if opts.mode == FULL_SENTENCES:
        return _full_sentences(chunk, opts, rng, skips)
    raise ValueError(f"unknown pre-training mode {opts.mode!r}; expected {NSP} or {FULL_SENTENCES}")


def _target_length(max_num_tokens: int, opts: ExampleOptions, rng: np.random.Generator) -> int:
    """max_num_tokens, or with probability short_seq_prob a uniform shorter target (>= 2)."""
    if rng.random() < opts.short_seq_prob:
        return int(rng.integers(2, max_num_tokens + 1))
    return max_num_tokens


def _nsp_document(
    chunk: TokenizedChunk, d: int, opts: ExampleOptions, rng: np.random.Generator,
    skips: SkipCounter,
) -> list[Example]:
    """BERT's create_instances_from_document, with a fresh target length per example.

    Differences from the original, both to keep IsNext at exactly 50%: a document's last
    sentence never stands alone (it joins the chunk before it), and a one-sentence chunk that
    drew IsNext takes the following sentence as B. One-sentence documents cannot give an IsNext
    pair and are skipped.
    """
    lengths = chunk.doc_lengths(d).tolist()  # Python ints: cheaper in the loops below
    n = len(lengths)
    if n < 2:
        skips.add("one-sentence document skipped (nsp needs two)")
        return []
    max_num_tokens = opts.max_seq_length - 3
    examples = []
    i = 0
    while i < n:
        target = _target_length(max_num_tokens, opts, rng)
        j, length = i, 0
        while j < n and length < target:
            length += lengths[j]
            j += 1
        if j == n - 1:
            j = n  # the last sentence alone could not form a pair later
        a_end = int(rng.integers(i + 1, j)) if j - i >= 2 else i + 1
        is_random_next = rng.random() < 0.5
        if is_random_next and chunk.num_docs == 1:
            # No other document to draw B from (one document of a megabyte or more, or the last
            # of an epoch): B comes from elsewhere in this one, when there is text outside A
            # and what follows it (the original draws from anywhere in the one document of a
            # one-document corpus).
            is_random_next = i > 0 or a_end < n - 1
            if is_random_next:
                skips.add("nsp NotNext segment from the same document (a chunk of one document)")
        if is_random_next:
            if a_end == n - 1:
                a_end = n  # putting back only the last sentence would strand it
            a = chunk.tokens(d, i, a_end)
            b_doc, b_first, b_end = _random_segment(chunk, d, target - len(a), rng, i, a_end)
            segments = Segments(d, i, a_end, b_doc, b_first, b_end)
            i = a_end  # the unused sentences go back, as in the original
        else:
            if j - i == 1:
                j = n if j + 1 >= n - 1 else j + 1  # B = the next sentence (+ a stranded last)
            segments = Segments(d, i, a_end, d, a_end, j)
            i = j
        a = chunk.tokens(d, segments.a_first, segments.a_end)
        b = chunk.tokens(segments.b_doc, segments.b_first, segments.b_end)
        if len(a) + len(b) > max_num_tokens:
            a, b = _truncate_pair(a, b, max_num_tokens, rng)
        if len(a) == 0 or len(b) == 0:
            skips.add("empty NSP segment skipped")
            continue
        ids = np.concatenate([[opts.cls_id], a, [opts.sep_id], b, [opts.sep_id]]).astype(np.int32)
        label = NOT_NEXT if is_random_next else IS_NEXT
        examples.append(Example(ids, len(a) + 2, label, segments))
    return examples


def _random_segment(
    chunk: TokenizedChunk, d: int, target_b: int, rng: np.random.Generator, a_first: int,
    a_end: int,
) -> tuple[int, int, int]:
    """Sentences of another document of the chunk, from a random start, up to ~target_b tokens.

    In a chunk of one document they come from document d itself, starting before A (and
    stopping where A starts) or after the sentence that follows A, which the caller checked
    exists.
    """
    if chunk.num_docs == 1:
        other, n = d, len(chunk.doc_lengths(d))
        before, after = a_first, max(0, n - a_end - 1)
        pick = int(rng.integers(0, before + after))
        first, limit = (pick, a_first) if pick < before else (a_end + 1 + pick - before, n)
    else:
        other = int(rng.integers(0, chunk.num_docs - 1))
        other += other >= d  # uniform over the other documents
        first, limit = int(rng.integers(0, len(chunk.doc_lengths(other)))), None
    lengths = chunk.doc_lengths(other)[:limit]
    # Take sentences until target_b tokens are reached (at least one sentence).
    cumulative = np.cumsum(lengths[first:])
    end = first + 1 + int(np.searchsorted(cumulative, max(target_b, 1)))
    return other, first, min(end, len(lengths))


def _truncate_pair(
    a: np.ndarray, b: np.ndarray, max_num_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's truncate_seq_pair in closed form: trims the longer segment (ties: B) token by
    token, each token from the front or the back with equal probability."""
    la, lb = len(a), len(b)
    if la > lb:
        keep_a = max(max_num_tokens - lb, (max_num_tokens + 1) // 2)
        keep_b = max_num_tokens - keep_a
    else:
        keep_b = max(max_num_tokens - la, max_num_tokens // 2)
        keep_a = max_num_tokens - keep_b
    keep_a, keep_b = min(keep_a, la), min(keep_b, lb)
    return _trim(a, keep_a, rng), _trim(b, keep_b, rng)


def _trim(x: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    drop = len(x) - keep
    if drop <= 0:
        return x
    front = int(rng.binomial(drop, 0.5))  # each dropped token: front or back, a fair coin
    return x[front : front + keep]


def _full_sentences(
    chunk: TokenizedChunk, opts: ExampleOptions, rng: np.random.Generator, skips: SkipCounter
) -> list[Example]:
    """Contiguous sentences up to the target length, crossing documents with an extra [SEP]."""
    max_num_tokens = opts.max_seq_length - 2
    examples = []
    pieces: list[np.ndarray] = []
    origin: list[Segments] = []
    length = 0
    target = _target_length(max_num_tokens, opts, rng)
    document_separator = np.array([opts.sep_id], np.int32)  # appended as this very object

    def emit():
        nonlocal pieces, origin, length, target
        if pieces[-1] is document_separator:  # no sentence of the next document fitted
            pieces.pop()  # else the row would end [SEP] [SEP]
        ids = np.concatenate([[opts.cls_id], *pieces, [opts.sep_id]]).astype(np.int32)
        examples.append(Example(ids, len(ids), 0, tuple(origin)))
        pieces, origin, length = [], [], 0
        target = _target_length(max_num_tokens, opts, rng)

    for d in range(chunk.num_docs):
        lengths = chunk.doc_lengths(d).tolist()  # Python ints: cheaper in the loop below
        if pieces:  # a new document in the same sequence: separate it
            if length + 1 >= target:
                emit()
            else:
                pieces.append(document_separator)
                length += 1
        for s, n in enumerate(lengths):
            if pieces and length + n > target:
                emit()
            sentence = chunk.tokens(d, s, s + 1)
            if n > max_num_tokens:  # counted when tokenized; keep its head
                sentence = sentence[:max_num_tokens]
            pieces.append(sentence)
            origin.append(Segments(d, s, s + 1))
            length += len(sentence)
    if pieces:
        emit()
    return examples
