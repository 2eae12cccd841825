"""CoNLL-2003 named-entity recognition: reader, label list, token features, word predictions.

    train = conll.read_conll("conll2003/train.txt")
    labels = conll.label_list(train)              # ["O", "B-LOC", "I-LOC", ...]
    features = conll.make_features(train, tokenizer, labels, max_seq_length=128)
    ...                                           # logits [F, L, len(labels)] from the model
    tags = conll.word_predictions(features, logits, labels, len(train))
    scores = conlleval.evaluate([s.tags for s in train], tags)

Each word is tokenized on its own; a row is `[CLS] pieces [SEP]` and a word's label sits on its
first piece (label id -1 on later pieces, [CLS], [SEP] and padding: the loss ignores them). A
sentence with more pieces than fit in a row is split at word boundaries into several rows, so
every word gets exactly one prediction. Nothing is truncated but the pieces of a single word
beyond what a row holds (logged; they carry no label). A word that yields no piece is [UNK].
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import numpy as np
from absl import logging

from bert_jax.data import tokenization
from bert_jax.tasks import conlleval

_DOCSTART = "-DOCSTART-"
_SCHEMES = ("auto", "iob1", "iob2")
# The CoNLL-2003 distribution's files (valid = testa, test = testb), as data.dir holds them.
DISTRIBUTION_FILES = ("train.txt", "valid.txt", "test.txt")


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its words and their IOB2 tags, and where it starts ("file:line")."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    where: str


# ----------------------------------------------------------------------------------------------
# Reading.


def _open(path: str, mode: str):
    """A text file, through tf.io.gfile for remote paths (gs://...)."""
    if "://" in path:
        import tensorflow as tf  # imported only here: it costs seconds

        return tf.io.gfile.GFile(path, mode)
    return open(path, mode, encoding="utf-8")


def _exists(path: str) -> bool:
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def _check_file(path: str) -> None:
    """A missing file named with what a CoNLL folder (NER's data.dir) holds, instead of open()'s
    bare "[Errno 2] No such file"."""
    if _exists(path):
        return
    folder, name = os.path.split(path)
    where = f"{folder} has no {name}" if _exists(folder or ".") else f"no folder {folder}"
    raise FileNotFoundError(f"no CoNLL file {path} ({where}); NER's data.dir is a folder with "
                            f"the CoNLL-2003 files {', '.join(DISTRIBUTION_FILES)}")


def _token_lines(path: str) -> Iterable[tuple[int, list[str] | None]]:
    """(line number, fields) of each token line, (line number, None) at each sentence break."""
    with _open(path, "r") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0] == _DOCSTART:
                yield number, None
            else:
                yield number, fields


def _raw_sentences(path: str, tag_column: int) -> list[tuple[int, list[str], list[str]]]:
    """(first line, words, tags) of each sentence as written, columns and tags checked."""
    sentences, words, tags, first, columns = [], [], [], 0, None
    for number, fields in _token_lines(path):
        if fields is None:
            if words:
                sentences.append((first, words, tags))
            words, tags = [], []
            continue
        if columns is None:
            columns = len(fields)
            if columns < 2 or not -columns <= tag_column < columns or tag_column in (0, -columns):
                raise ValueError(f"{path}:{number}: {columns} columns; tag_column={tag_column} "
                                 "does not name a tag column after the word")
        if len(fields) != columns:
            raise ValueError(f"{path}:{number}: expected {columns} space-separated columns "
                             f"(as on the file's first token line), got {len(fields)}")
        try:
            conlleval.split_tag(fields[tag_column])
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}") from None
        if not words:
            first = number
        words.append(fields[0])
        tags.append(fields[tag_column])
    if words:
        sentences.append((first, words, tags))
    return sentences


def _chunk_opening_i(tags: Sequence[str]) -> list[int]:
    """Positions of I-X tags that open a chunk (after O, a sentence start or another type)."""
    previous = ["O", *tags[:-1]]
    return [i for i, (prev, tag) in enumerate(zip(previous, tags))
            if tag.startswith("I-") and prev[2:] != tag[2:]]


def to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """IOB1 (or IOB2) tags as IOB2: an I-X that opens a chunk becomes B-X; conlleval's chunks
    are unchanged, and IOB2 tags are returned as they are."""
    tags = list(tags)
    for i in _chunk_opening_i(tags):
        tags[i] = "B-" + tags[i][2:]
    return tuple(tags)


def read_conll(path, *, scheme: str = "auto", tag_column: int = -1) -> list[Sentence]:
    """Sentences of a CoNLL-2003 style file (`word ... tag` per line, blank lines between
    sentences, -DOCSTART- lines skipped), their tags converted to IOB2.

    scheme: "iob2" requires IOB2 (an I-X that opens a chunk is an error); "iob1" converts IOB1
    (where I-X opens a chunk and B-X only splits adjacent chunks of one type) to IOB2; "auto"
    reads the file as IOB1 if any I-X opens a chunk (follows O, a sentence start or a tag of
    another type), else as IOB2. IOB2 is unchanged by the conversion, so "auto" and "iob1"
    return the same tags; "auto" logs which scheme it found.
    tag_column: which space-separated column holds the tag (the word is column 0).
    """
    path = os.fspath(path)
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {_SCHEMES}, not {scheme!r}")
    _check_file(path)
    raw = _raw_sentences(path, tag_column)
    if not raw:
        raise ValueError(f"{path}: no sentences")
    opening = [(first + i, tags[i]) for first, _, tags in raw for i in _chunk_opening_i(tags)]
    if scheme == "iob2" and opening:
        line, tag = opening[0]
        raise ValueError(f"{path}:{line}: {tag} opens a chunk, which IOB2 does not allow "
                         f"({len(opening)} such tags); read it with scheme='iob1' or 'auto'")
    if scheme == "auto":
        logging.info("%s: %d sentences, read as %s (%d I- tags open a chunk)", path, len(raw),
                     "IOB1" if opening else "IOB2", len(opening))
    return [Sentence(tuple(words), to_iob2(tags), f"{path}:{first}") for first, words, tags in raw]


def label_list(sentences_or_types: Iterable[Sentence | str]) -> list[str]:
    """"O", then B-TYPE, I-TYPE for each entity type in sorted order: the model's label ids.

    Takes sentences (their tags' types are used) or entity type names such as "PER".
    """
    kinds = set()
    for item in sentences_or_types:
        if isinstance(item, Sentence):
            kinds.update(conlleval.split_tag(tag)[1] for tag in item.tags)
        else:
            kinds.add(item)
    kinds.discard("")  # the type of O
    return ["O"] + [f"{prefix}-{kind}" for kind in sorted(kinds) for prefix in ("B", "I")]


# ----------------------------------------------------------------------------------------------
# Features.


@dataclasses.dataclass
class TokenFeatures:
    """Rows `[CLS] pieces [SEP]` padded to max_seq_length L; F rows (one or more per sentence).

    label_ids and word_index are set on the first piece of each word and -1 elsewhere.
    """

    input_ids: np.ndarray  # [F, L] int32, the tokenizer's pad id after `lengths`
    lengths: np.ndarray  # [F] int32 tokens in the row, [CLS] and [SEP] included
    label_ids: np.ndarray  # [F, L] int32 index into the label list, or -1
    sentence_index: np.ndarray  # [F] int32 the sentence the row holds (a part of)
    word_index: np.ndarray  # [F, L] int32 which word of that sentence starts here, or -1

    def __len__(self) -> int:
        return len(self.input_ids)


def _word_pieces(words: list[str], tokenizer: tokenization.Tokenizer, budget: int):
    """(pieces back to back, pieces per word) with [UNK] for a word that yields none and each
    word cut to `budget` pieces."""
    flat, counts = tokenizer.encode_flat(words)  # [P] int32, [W] int64
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        starts = np.cumsum(counts) - counts  # [W] where each word's pieces begin
        flat = np.insert(flat, starts[empty], tokenizer.unk_id)
        counts = np.maximum(counts, 1)
        logging.info("%d words tokenize to nothing; they are [UNK]", len(empty))
    if counts.max(initial=0) > budget:
        within = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)  # [P]
        flat = flat[within < budget]
        logging.warning("%d words have more than %d pieces; the rest of them is dropped",
                        int((counts > budget).sum()), budget)
        counts = np.minimum(counts, budget)
    return flat, counts


def _windows(counts: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of one sentence, each with at most `budget` pieces (greedy)."""
    ends = np.cumsum(counts)  # [W]
    windows, start, done = [], 0, 0
    while start < len(counts) or not windows:  # an empty sentence still gets its row
        end = int(np.searchsorted(ends, done + budget, side="right"))
        windows.append((start, end))
        start, done = end, int(ends[end - 1]) if end else 0
    return windows


def _label_ids(sentences: Sequence[Sentence], labels: Sequence[str]) -> np.ndarray:
    """[W] the label index of every word of every sentence."""
    index = {label: i for i, label in enumerate(labels)}
    for sentence in sentences:
        unknown = set(sentence.tags) - index.keys()
        if unknown:
            raise ValueError(f"{sentence.where}: tags {sorted(unknown)} are not in the label "
                             f"list {list(labels)}")
        if len(sentence.tags) != len(sentence.words):
            raise ValueError(f"{sentence.where}: {len(sentence.words)} words but "
                             f"{len(sentence.tags)} tags")
    return np.array([index[t] for s in sentences for t in s.tags], np.int32)


def make_features(sentences: Sequence[Sentence], tokenizer: tokenization.Tokenizer,
                  labels: Sequence[str], *, max_seq_length: int = 128) -> TokenFeatures:
    """One row per sentence, or several for a sentence of more than max_seq_length - 2 pieces
    (split at word boundaries; logged). Words are tokenized in one batch call."""
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    budget = max_seq_length - 2
    word_labels = _label_ids(sentences, labels)  # [W]
    flat, counts = _word_pieces([w for s in sentences for w in s.words], tokenizer, budget)
    piece_starts = np.cumsum(counts) - counts  # [W] each word's first piece in `flat`
    rows = []  # (sentence, first word of the sentence in `flat` order, window start, end)
    word0 = 0
    for i, sentence in enumerate(sentences):
        n = len(sentence.words)
        rows += [(i, word0, a, b) for a, b in _windows(counts[word0:word0 + n], budget)]
        word0 += n
    sentence_index = np.array([i for i, *_ in rows], np.int32)  # [F]
    split = np.count_nonzero(np.bincount(sentence_index) > 1)
    if split:
        logging.info("%d of %d sentences have more than %d pieces: split into %d more rows",
                     split, len(sentences), budget, len(rows) - len(sentences))
    shape = (len(rows), max_seq_length)
    features = TokenFeatures(
        input_ids=np.full(shape, tokenizer.pad_id, np.int32),
        lengths=np.zeros([len(rows)], np.int32),
        label_ids=np.full(shape, -1, np.int32),
        sentence_index=sentence_index,
        word_index=np.full(shape, -1, np.int32),
    )
    for f, (_, word0, a, b) in enumerate(rows):
        words = slice(word0 + a, word0 + b)
        pieces = flat[piece_starts[word0 + a]:piece_starts[word0 + a] + counts[words].sum()]
        n = len(pieces) + 2
        features.input_ids[f, :n] = [tokenizer.cls_id, *pieces, tokenizer.sep_id]
        features.lengths[f] = n
        first = 1 + piece_starts[words] - piece_starts[word0 + a]  # [w] positions in the row
        features.label_ids[f, first] = word_labels[words]
        features.word_index[f, first] = np.arange(a, b)
    return features


# ----------------------------------------------------------------------------------------------
# Predictions.


def word_predictions(features: TokenFeatures, logits_or_ids: np.ndarray, labels: Sequence[str],
                     num_sentences: int) -> list[list[str]]:
    """One predicted tag per word of each sentence, in sentence order.

    logits_or_ids: [F, L', num_labels] logits or [F, L'] label ids of the features' rows, L' at
    least the longest row (a batch padded less than max_seq_length is fine).
    """
    ids = np.asarray(logits_or_ids)
    if ids.ndim == 3:
        ids = ids.argmax(-1)  # [F, L']
    width = ids.shape[-1] if ids.ndim == 2 else 0
    if ids.ndim != 2 or len(ids) != len(features) or width < features.lengths.max(initial=0):
        raise ValueError(f"predictions of shape {np.shape(logits_or_ids)} do not cover "
                         f"{len(features)} rows of up to {features.lengths.max(initial=0)} tokens")
    rows, positions = np.nonzero(features.word_index[:, :width] >= 0)  # [N] each word's piece
    sentence = features.sentence_index[rows]
    word = features.word_index[rows, positions]
    predicted = ids[rows, positions]
    if predicted.size and not 0 <= predicted.min() <= predicted.max() < len(labels):
        raise ValueError(f"predicted label ids outside [0, {len(labels)})")
    order = np.lexsort((word, sentence))
    sentence, word, predicted = sentence[order], word[order], predicted[order]
    counts = np.bincount(sentence, minlength=num_sentences)  # [S] words per sentence
    expected = np.arange(len(word)) - np.repeat(np.cumsum(counts) - counts, counts)
    covered = np.bincount(features.sentence_index, minlength=num_sentences)  # [S] rows
    if (len(covered) != num_sentences or not covered.all()
            or not np.array_equal(word, expected)):
        raise ValueError(f"the features' rows do not hold each word of {num_sentences} "
                         "sentences exactly once")
    tags = [labels[i] for i in predicted.tolist()]
    ends = np.cumsum(counts).tolist()
    return [tags[end - n:end] for end, n in zip(ends, counts.tolist())]


def write_predictions(path, sentences: Sequence[Sentence],
                      predicted_tags: Sequence[Sequence[str]]) -> None:
    """`word gold predicted` lines, a blank line after each sentence: what conlleval reads."""
    path = os.fspath(path)
    if len(sentences) != len(predicted_tags):
        raise ValueError(f"{len(sentences)} sentences but {len(predicted_tags)} predicted")
    lines = []
    for sentence, predicted in zip(sentences, predicted_tags):
        if len(predicted) != len(sentence.words):
            raise ValueError(f"{sentence.where}: {len(sentence.words)} words but "
                             f"{len(predicted)} predicted tags")
        lines += [f"{w} {g} {p}\n" for w, g, p in zip(sentence.words, sentence.tags, predicted)]
        lines.append("\n")
    with _open(path, "w") as f:
        f.write("".join(lines))
