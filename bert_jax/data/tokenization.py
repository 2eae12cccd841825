"""Tokenizers behind one interface: SentencePiece (trained here) and WordPiece (imported vocabs).

Both kinds share the BERT special tokens [PAD] [UNK] [CLS] [SEP] [MASK]. A SentencePiece model
trained here holds them at ids 0..4; a WordPiece vocab.txt holds them wherever its file puts them
(ids 0, 100..103 in the original BERT vocabs). `[CLS]`, `[SEP]` and `[MASK]` typed in text encode to
their own ids with either kind, so fill-mask prompts work.

A tokenizer is named by a spec string (`load_tokenizer`):
    wordpiece:PATH/vocab.txt[:cased]    uncased unless `:cased`
    sentencepiece:PATH.model
    DIR                                  a folder written by `Tokenizer.save`
Paths may be on gs:// (read and written through tf.io.gfile, imported only for such paths).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import io
import itertools
import json
import os
import re
import tempfile
import threading
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
METADATA_FILE = "bert_jax_tokenizer.json"
_SPM_MODEL_FILE = "sentencepiece.model"
_WORDPIECE_VOCAB_FILE = "vocab.txt"
_SPM_SPACE = "\u2581"  # "▁", SentencePiece's marker for a preceding space
_SOURCE_KINDS = ("text", "prose", "tfds", "builtin")


# ----------------------------------------------------------------------------------------------
# The interface.


class Tokenizer(abc.ABC):
    """What the data pipeline, the tasks and inference need from a tokenizer."""

    def __init__(self, special_ids: dict[str, int]):
        self._special = special_ids  # the five BERT special tokens -> ids
        self._word_starts: np.ndarray | None = None

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (rows of the embedding table)."""

    @property
    def pad_id(self) -> int:
        return self._special[PAD]

    @property
    def unk_id(self) -> int:
        return self._special[UNK]

    @property
    def cls_id(self) -> int:
        return self._special[CLS]

    @property
    def sep_id(self) -> int:
        return self._special[SEP]

    @property
    def mask_id(self) -> int:
        return self._special[MASK]

    @property
    def special_ids(self) -> frozenset[int]:
        """All special/control ids (never masked, never a prediction target)."""
        return frozenset(self._special.values())

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without [CLS]/[SEP]."""
        return self.encode_batch([text])[0]

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once (multi-threaded native code)."""

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode(text)` and each piece's (start, end) character span in `text` as given.

        A span covers the characters the piece stands for (never surrounding whitespace); a
        piece that stands for no character of its own (e.g. the second piece of one expanded
        character) has an empty span.
        """
        return self.encode_batch_with_offsets([text])[0]

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """encode_with_offsets of many texts at once."""
        raise NotImplementedError(f"{type(self).__name__} has no character offsets")

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """encode_batch's ids back to back ([T] int32) and each text's count ([N] int64).

        The pipeline's path: no list per text, which kinds with a faster route override.
        """
        ids = self.encode_batch(texts)
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum()))
        return flat, lengths

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids; special tokens are kept unless `skip_special_tokens`."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = self.special_ids
            ids = [i for i in ids if i not in special]
        return self._decode(ids)

    @abc.abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def id_to_token(self, i: int) -> str:
        """The token (piece) string of id `i`; IndexError when out of range."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int:
        """The id of a token string; unk_id when the vocabulary lacks it."""

    @abc.abstractmethod
    def _starts_word(self, token: str) -> bool:
        """Whether a (non-special) token begins a new whitespace-delimited word."""

    def word_start_table(self) -> np.ndarray:
        """bool [vocab_size]: True where an id begins a new word (for whole-word masking)."""
        if self._word_starts is None:
            table = np.array(
                [self._starts_word(self.id_to_token(i)) for i in range(self.vocab_size)], bool
            )
            table[sorted(self.special_ids)] = True
            self._word_starts = table
        return self._word_starts.copy()  # a copy: callers may edit theirs

    def save(self, directory: str) -> None:
        """Writes the tokenizer's files and a metadata file naming its kind and options."""
        _makedirs(directory)
        metadata = {"format_version": 1, **self._save_files(directory)}
        _write_bytes(
            os.path.join(directory, METADATA_FILE),
            json.dumps(metadata, indent=2, sort_keys=True).encode("utf-8"),
        )

    @abc.abstractmethod
    def _save_files(self, directory: str) -> dict:
        """Writes the model/vocab files into `directory`; returns the metadata that names them."""


# ----------------------------------------------------------------------------------------------
# WordPiece (original BERT vocab.txt files), through Hugging Face `tokenizers`.


class WordPieceTokenizer(Tokenizer):
    """BERT's WordPiece over a vocab.txt, with the original BERT normalisation."""

    def __init__(self, vocab_file: str, lowercase: bool = True, *,
                 strip_accents: bool | None = None, tokens: Sequence[str] | None = None):
        """`tokens` (token i is id i), when given, stand in for the file's lines and
        `vocab_file` only names where they came from (e.g. a tokenizer.json). Accents are
        stripped as `strip_accents` says, by default as `lowercase` (BERT's uncased and cased
        releases); some checkpoints lowercase and keep them."""
        # The file is read once here and not kept: a checkpoint's tokenizer is built from a
        # temporary folder that is gone afterwards (train.checkpoint.tokenizer_from_json).
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self._tokens = _read_vocab_lines(vocab_file) if tokens is None else list(tokens)
        vocab = {token: i for i, token in enumerate(self._tokens)}
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(
                f"WordPiece vocab {vocab_file} lacks the special tokens {' '.join(missing)} "
                f"(a BERT vocab needs all of {' '.join(SPECIAL_TOKENS)})"
            )
        super().__init__({t: vocab[t] for t in SPECIAL_TOKENS})
        # Plain texts (_encode_plain) hold no accent, so only this full pipeline strips them.
        self._tok = _build_wordpiece(vocab, lowercase, self.strip_accents)
        self._plain = _PlainPieces(tokenizers.Tokenizer(_wordpiece_model(vocab)))

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        flat, lengths = self.encode_flat(texts)
        ends = np.cumsum(lengths).tolist()
        ids = flat.tolist()
        return [ids[end - n : end] for end, n in zip(ends, lengths.tolist())]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        # BertNormalizer and BertPreTokenizer cost far more than WordPiece itself, and so does
        # building an Encoding per text. Plain texts (see _not_plain_texts) need neither: there,
        # lowercasing and splitting are str methods, and each distinct word of the batch goes
        # through WordPiece once. Other texts take the full BERT pipeline. Same ids either way.
        texts = list(texts)
        if not texts:
            return np.zeros([0], np.int32), np.zeros([0], np.int64)
        joined = _SEPARATOR.join(texts)
        slow = _not_plain_texts(joined, texts)
        if not slow:
            return self._encode_plain(joined)
        fast = [i for i in range(len(texts)) if i not in slow]
        slow = sorted(slow)
        fast_ids, fast_lengths = self._encode_plain(_SEPARATOR.join(texts[i] for i in fast))
        if not fast:
            fast_lengths = fast_lengths[:0]
        slow_ids = _ids(self._tok, [texts[i] for i in slow])
        slow_lengths = np.fromiter(map(len, slow_ids), np.int64, len(slow))
        slow_ids = np.fromiter(itertools.chain.from_iterable(slow_ids), np.int32,
                               int(slow_lengths.sum()))
        return _interleave(
            len(texts), (fast, fast_ids, fast_lengths), (slow, slow_ids, slow_lengths)
        )

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        # The full BERT pipeline: its offsets are those of the text before normalisation.
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [(e.ids, [tuple(o) for o in e.offsets]) for e in encodings]

    def _encode_plain(self, joined: str) -> tuple[np.ndarray, np.ndarray]:
        """encode_flat of plain texts joined by _SEPARATOR."""
        if self.lowercase:
            joined = joined.lower()  # = the Lowercase normaliser on plain text
        return self._plain.encode(joined)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < len(self._tokens):
            raise IndexError(f"token id {i} out of range [0, {len(self._tokens)})")
        return self._tokens[i]

    def token_to_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        return self.unk_id if i is None else i

    def _starts_word(self, token: str) -> bool:
        return not token.startswith("##")

    def _save_files(self, directory: str) -> dict:
        text = "".join(token + "\n" for token in self._tokens)
        _write_bytes(os.path.join(directory, _WORDPIECE_VOCAB_FILE), text.encode("utf-8"))
        return {
            "kind": "wordpiece",
            "vocab_file": _WORDPIECE_VOCAB_FILE,
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
        }


def _read_vocab_lines(vocab_file: str) -> list[str]:
    """One token per line; line i is id i."""
    data = _read_bytes(vocab_file, what="WordPiece vocab")
    try:
        # utf-8-sig: an editor's byte-order mark would otherwise hide the first token ([PAD]).
        lines = data.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"WordPiece vocab {vocab_file}:{line}: not UTF-8 ({e.reason} at byte "
                         f"{e.start}); a vocab.txt is UTF-8, one token per line") from None
    if lines[-1] == "":  # the final newline ends the last line; it does not start a new one
        lines.pop()
    return [line.rstrip("\r") for line in lines]


# Characters BertNormalizer leaves alone (no control, accent or CJK character; NFD-invariant)
# apart from lowercasing: printable ASCII, \t \n \r, and typographic punctuation such as ’ “ ” —.
_is_plain = re.compile(r"[\t\n\r\x20-\x7e\u2010-\u2027]*").fullmatch
_BREAK = "\x00"  # marks the end of a text in a batch; no plain text holds it
_SEPARATOR = f" {_BREAK} "
# What makes a text not plain: another character, or a special token typed in it (matched
# before normalisation). _BREAK is another character too, and excluded here; "[" is found
# here, and a special token only if one starts there (one character class scans fastest).
_NOT_PLAIN_OR_BRACKET = re.compile(r"[^\x00\t\n\r\x20-\x5a\x5c-\x7e\u2010-\u2027]")
# BertPreTokenizer on plain text without whitespace: runs of letters and digits; every other
# character is punctuation and a word of its own.
_PLAIN_WORD = re.compile(r"[0-9A-Za-z]+|[^0-9A-Za-z]")


class _PlainPieces:
    """WordPiece ids of plain, normalised text: BertPreTokenizer's split with str methods, and
    the pieces of each space-delimited token remembered, up to MEMO_TOKENS distinct tokens.

    The memo is what makes this fast (most tokens of a text were seen before) and is bounded,
    so memory does not grow with the corpus; the ids never depend on what it holds.
    """

    MEMO_TOKENS = 1 << 17  # ~20 MB when full; then it starts afresh with the batch's tokens

    def __init__(self, words_tok: tokenizers.Tokenizer):
        self._words_tok = words_tok  # a bare WordPiece model: words in, pieces out
        self._lock = threading.Lock()  # the memo is shared by the threads that encode
        self._reset()

    def _reset(self):
        self._row = {_BREAK: 0}  # token -> row of the memo
        self._pieces = np.zeros([0], np.int32)  # [P] every row's piece ids back to back
        self._counts = np.zeros([1], np.int64)  # [R] pieces per row (_BREAK: none)

    def encode(self, joined: str) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids and per-text counts of plain texts joined by _SEPARATOR."""
        tokens = joined.split()  # [N] space-delimited tokens, _BREAK between texts
        with self._lock:
            rows = np.fromiter(map(self._row.get, tokens, itertools.repeat(-1)), np.int64,
                               len(tokens))  # [N]
            missing = np.flatnonzero(rows < 0)
            if len(missing):
                new = _distinct([tokens[i] for i in missing])
                if len(self._row) + len(new) > self.MEMO_TOKENS:
                    self._reset()
                    new, missing = _distinct(tokens, drop=_BREAK), np.arange(len(tokens))
                self._add(new)
                rows[missing] = [self._row[tokens[i]] for i in missing]
            flat, lengths = _gather(rows, self._pieces, self._counts)  # [T], [N]
        text_ends = np.cumsum(lengths)[rows == 0]  # tokens before each _BREAK
        return flat, np.diff(text_ends, prepend=0, append=len(flat))

    def _add(self, tokens: list[str]) -> None:
        """Memoises the pieces of new distinct tokens: each distinct word through WordPiece once."""
        words_of = [_PLAIN_WORD.findall(t) for t in tokens]  # BertPreTokenizer's split
        words = list(itertools.chain.from_iterable(words_of))
        vocab = _distinct(words)
        encoding = self._words_tok.encode(vocab, is_pretokenized=True, add_special_tokens=False)
        num_pieces = np.bincount(np.array(encoding.word_ids, np.int64), minlength=len(vocab))
        word_index = dict(zip(vocab, range(len(vocab))))
        word = np.fromiter(map(word_index.__getitem__, words), np.int64, len(words))  # [W]
        pieces, word_counts = _gather(word, np.array(encoding.ids, np.int32), num_pieces)
        owner = np.repeat(np.arange(len(tokens)), list(map(len, words_of)))  # [W] its token
        counts = np.bincount(owner, word_counts, minlength=len(tokens)).astype(np.int64)
        self._row.update(zip(tokens, range(len(self._counts), len(self._counts) + len(tokens))))
        self._pieces = np.concatenate([self._pieces, pieces])
        self._counts = np.concatenate([self._counts, counts])


def _not_plain_texts(joined: str, texts: list[str]) -> set[int]:
    """Indices of the texts that are not plain, `joined` being them joined by _SEPARATOR."""
    ends = np.cumsum([len(t) + len(_SEPARATOR) for t in texts])  # [N] past each separator
    positions = [
        p for p in (m.start() for m in _NOT_PLAIN_OR_BRACKET.finditer(joined))
        if joined[p] != "[" or joined.startswith(SPECIAL_TOKENS, p)
    ]
    slow = set(np.searchsorted(ends, positions, side="right").tolist())
    if joined.count(_BREAK) != len(texts) - 1:  # texts that hold _BREAK: not plain
        slow.update(i for i, t in enumerate(texts) if _BREAK in t)
    return slow


def _distinct(items: list[str], drop: str | None = None) -> list[str]:
    """The distinct items in order of first appearance, without `drop`."""
    unique = dict.fromkeys(items)
    unique.pop(drop, None)
    return list(unique)


def _gather(items: np.ndarray, flat: np.ndarray, counts: np.ndarray):
    """Runs of `flat` (counts[i] values for item i, back to back) for a sequence of items:
    the concatenated values and each item's count."""
    lengths = counts[items]  # [N]
    ends = np.cumsum(lengths)
    first = (np.cumsum(counts) - counts)[items]  # [N] where each item's run starts in flat
    total = int(ends[-1]) if len(ends) else 0
    return flat[np.repeat(first - (ends - lengths), lengths) + np.arange(total)], lengths


def _interleave(n: int, *parts: tuple[list[int], np.ndarray, np.ndarray]):
    """Merges (text indices, flat ids, lengths) parts into the flat ids and lengths of n texts."""
    lengths = np.zeros([n], np.int64)
    for index, _, part_lengths in parts:
        lengths[index] = part_lengths
    starts = np.cumsum(lengths) - lengths  # [N] where each text's ids go
    flat = np.zeros([int(lengths.sum())], np.int32)
    for index, ids, part_lengths in parts:
        if len(ids):
            shift = starts[index] - (np.cumsum(part_lengths) - part_lengths)
            flat[np.repeat(shift, part_lengths) + np.arange(len(ids))] = ids
    return flat, lengths


def _ids(tok: tokenizers.Tokenizer, texts: list[str]) -> list[list[int]]:
    # encode_batch_fast skips character offsets, which the pipeline never needs.
    return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def _wordpiece_model(vocab: dict[str, int]) -> models.WordPiece:
    return models.WordPiece(
        vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100
    )


def _build_wordpiece(vocab: dict[str, int], lowercase: bool,
                     strip_accents: bool) -> tokenizers.Tokenizer:
    """The BERT pipeline: clean + (lowercase, strip accents) + split CJK, punctuation, ##pieces."""
    tok = tokenizers.Tokenizer(_wordpiece_model(vocab))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
        lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # Registered as special so that e.g. "[MASK]" in a prompt matches before lowercasing.
    tok.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return tok


# ----------------------------------------------------------------------------------------------
# SentencePiece (vocabularies trained by this project).


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (unigram or BPE) that holds the BERT special tokens."""

    def __init__(self, model_file: str):
        # Read once, not kept as a path (see WordPieceTokenizer.__init__).
        self._proto = _read_bytes(model_file, what="SentencePiece model")
        self._sp = _parse_sentencepiece(self._proto, model_file)
        super().__init__(_sentencepiece_special_ids(self._sp, model_file))
        n = self._sp.get_piece_size()
        control = {i for i in range(n) if self._sp.is_control(i) or self._sp.is_unknown(i)}
        self._all_special = frozenset(control | set(self._special.values()))
        # Specials the model matches in raw text ([CLS] [SEP] [MASK]); see _drop_space_before.
        self._text_specials = {
            self._sp.id_to_piece(i): i for i in self._special.values() if i not in control
        }
        self._text_special_ids = frozenset(self._text_specials.values())
        self._space_id = self._piece_id(_SPM_SPACE)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def model_proto(self) -> bytes:
        """The serialised SentencePiece model (pieces, scores, normalisation rules)."""
        return self._proto

    @property
    def special_ids(self) -> frozenset[int]:
        return self._all_special

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        batch = self._sp.encode(texts, out_type=int, num_threads=os.cpu_count() or 1)
        joined = "\n".join(texts)  # one search of all texts: specials in text are rare
        if any(piece in joined for piece in self._text_specials):
            for row, text in enumerate(texts):
                if any(piece in text for piece in self._text_specials):
                    batch[row] = self._drop_space_before(batch[row])
        return batch

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        # "offset_mapping" spans count characters (not UTF-8 bytes) of the text before
        # normalisation; a "▁" piece's span takes in the whitespace it stands for, trimmed here.
        texts = list(texts)
        mapped = self._sp.encode(texts, return_type="offset_mapping",
                                 num_threads=os.cpu_count() or 1)
        out = []
        for text, m in zip(texts, mapped):
            ids, offsets = m["ids"], [_trim_span(text, *span) for span in m["offsets"]]
            if any(piece in text for piece in self._text_specials):
                kept = self._drop_space_before(ids)
                offsets = _subsequence_items(ids, kept, offsets)
                ids = kept
            out.append((ids, offsets))
        return out

    def _drop_space_before(self, ids: list[int]) -> list[int]:
        """Drops the lone "▁" SentencePiece emits before a special typed in text.

        "is [MASK]." encodes as ▁is ▁ [MASK] . while whole-word masking in pre-training turns
        ▁is ▁paris . into ▁is [MASK] . ; without the stray "▁" a fill-mask prompt matches that.
        """
        out: list[int] = []
        for i in ids:
            if i in self._text_special_ids and out and out[-1] == self._space_id:
                out.pop()
            out.append(i)
        return out

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < self.vocab_size:
            raise IndexError(f"token id {i} out of range [0, {self.vocab_size})")
        return self._sp.id_to_piece(i)

    def token_to_id(self, token: str) -> int:
        return self._sp.piece_to_id(token)

    def _starts_word(self, token: str) -> bool:
        return token.startswith(_SPM_SPACE)

    def _piece_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def _save_files(self, directory: str) -> dict:
        _write_bytes(os.path.join(directory, _SPM_MODEL_FILE), self._proto)
        return {"kind": "sentencepiece", "model_file": _SPM_MODEL_FILE}


def _trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """(start, end) without the whitespace at either end; (end, end) when only whitespace."""
    while start < end and text[start].isspace():
        start += 1
    if start == end:
        return end, end
    while text[end - 1].isspace():
        end -= 1
    return start, end


def _subsequence_items(full: list[int], kept: list[int], items: list) -> list:
    """The items of the positions of `full` that make up its subsequence `kept`.

    Matches each kept id at its earliest position; right for _drop_space_before, which only
    removes a space piece whose next id (a special) differs from it.
    """
    out, j = [], 0
    for i, item in zip(full, items):
        if j < len(kept) and i == kept[j]:
            out.append(item)
            j += 1
    return out


def _parse_sentencepiece(proto: bytes, model_file: str) -> spm.SentencePieceProcessor:
    """The processor of a .model file's bytes; any other file (its .vocab listing) is named."""
    try:
        # An empty file parses as a model without pieces.
        sp = spm.SentencePieceProcessor(model_proto=proto) if proto else None
    except RuntimeError:  # sentencepiece's "ParseFromArray" names neither file nor cause
        sp = None
    if sp is None:
        prefix, extension = os.path.splitext(model_file)
        hint = (f"; did you mean {prefix}.model? (PREFIX.vocab only lists the pieces, for "
                "people to read)" if extension == ".vocab" else "")
        raise ValueError(f"{model_file} is not a SentencePiece model (PREFIX.model, as "
                         f"`python -m bert_jax.tokenizer train` writes it){hint}")
    return sp


def _sentencepiece_special_ids(sp: spm.SentencePieceProcessor, model_file: str) -> dict[str, int]:
    """Ids of the five BERT specials; every SentencePiece model has an unknown piece of its own."""
    ids = {UNK: sp.unk_id()}
    for token in (PAD, CLS, SEP, MASK):
        i = sp.piece_to_id(token)
        if sp.id_to_piece(i) == token:
            ids[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in ids]
    if missing:
        raise ValueError(
            f"SentencePiece model {model_file} lacks the special pieces {' '.join(missing)}; "
            "train it with train_sentencepiece (python -m bert_jax.tokenizer train)"
        )
    return ids


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    output_prefix: str,
    *,
    model_type: str = "unigram",
    lowercase: bool = False,
    fold_quotes: bool = True,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 10_000_000,
    max_sentence_length: int = 16384,
    num_threads: int | None = None,
    verbose: bool = False,
) -> SentencePieceTokenizer:
    """Trains a SentencePiece model on `texts` (one sentence each) and writes PREFIX.model/.vocab.

    [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4. [PAD] is a control symbol (never produced from
    text); [CLS] [SEP] [MASK] are user-defined symbols: never split, matched when typed in text.
    Sentences stream straight into the trainer (no corpus file); above `input_sentence_size`
    sentences it trains on a random sample of that many. Longer sentences than
    `max_sentence_length` bytes are skipped by the trainer.

    Text is normalised with NFKC (and case-folded with `lowercase`); with `fold_quotes` the
    typographic quotes ‘ ’ “ ” (and ‛ ‟) also become ' and ", in training and whenever the model
    encodes. Books and edited text use the typographic ones, web text and GLUE's files the ASCII
    ones: a vocabulary trained on one style would meet the other as [UNK] (every "n't" and "'s").
    The normalisation is part of the .model file, so the model encodes the same anywhere.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens "
            f"{' '.join(SPECIAL_TOKENS)} alone take {len(SPECIAL_TOKENS)} ids"
        )
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', not {model_type!r}")
    sentences = _nonempty_or_raise(texts)
    model = io.BytesIO()
    try:
        with _normalization_options(lowercase, fold_quotes) as normalization:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=0,
                pad_piece=PAD,
                unk_id=1,
                unk_piece=UNK,
                bos_id=-1,
                eos_id=-1,
                user_defined_symbols=[CLS, SEP, MASK],
                character_coverage=character_coverage,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                max_sentence_length=max_sentence_length,
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=0 if verbose else 2,
                **normalization,
            )
    except RuntimeError as e:  # the trainer's check names the option; the values are given
        options = (f"vocab_size={vocab_size}, model_type={model_type}, "
                   f"character_coverage={character_coverage}")
        raise ValueError(f"SentencePiece training failed ({options}): {e}") from e
    model_file = output_prefix + ".model"
    _write_bytes(model_file, model.getvalue())
    tokenizer = SentencePieceTokenizer(model_file)
    _write_bytes(output_prefix + ".vocab", _vocab_listing(tokenizer._sp).encode("utf-8"))
    return tokenizer


@contextlib.contextmanager
def _normalization_options(lowercase: bool, fold_quotes: bool) -> Iterator[dict[str, str]]:
    """The trainer's normalisation arguments: a built-in rule, or with `fold_quotes` a rule
    table, which the trainer reads from a file only (removed when the context ends)."""
    base_rule = "nmt_nfkc_cf" if lowercase else "nmt_nfkc"  # _cf: plus Unicode case folding
    if not fold_quotes:
        yield {"normalization_rule_name": base_rule}
        return
    with tempfile.TemporaryDirectory(prefix="bert_jax_spm_") as directory:
        rules_file = os.path.join(directory, "rules.tsv")
        with open(rules_file, "w", encoding="utf-8") as f:
            f.write(_rules_tsv_with_quote_folds(base_rule))
        yield {"normalization_rule_tsv": rules_file}


# Typographic quotes and the ASCII character each becomes with fold_quotes.
QUOTE_FOLDS = {"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
               "\u201f": '"'}


@functools.lru_cache(maxsize=2)
def _rules_tsv_with_quote_folds(base_rule: str) -> str:
    """SentencePiece's built-in `base_rule` as a rule table (TSV), plus QUOTE_FOLDS.

    The trainer takes a built-in rule or a table, not both, so the table is read off the
    built-in normaliser itself: every code point, and every canonical and compatibility
    decomposition of one, that it changes (the decompositions are what make e + U+0301 compose
    to é). Text then normalises exactly as with `base_rule` except for the quotes (tested). About
    17k rules; two seconds to make, once per process and rule.
    """
    normalizer = spm.SentencePieceNormalizer(
        rule_name=base_rule, add_dummy_prefix=False, escape_whitespaces=False,
        remove_extra_whitespaces=False)
    rules: dict[str, str] = {}
    for code_point in range(1, 0x110000):
        if 0xD800 <= code_point <= 0xDFFF:  # surrogates: not characters
            continue
        char = chr(code_point)
        for source in (char, unicodedata.normalize("NFD", char),
                       unicodedata.normalize("NFKD", char)):
            if source not in rules:
                target = normalizer.normalize(source)
                if target != source:
                    rules[source] = target
    for quote, ascii_quote in QUOTE_FOLDS.items():
        rules[quote] = ascii_quote

    def code_points(text: str) -> str:
        return " ".join(f"{ord(c):X}" for c in text)

    return "".join(f"{code_points(source)}\t{code_points(target)}\n"
                   for source, target in sorted(rules.items()))


def _nonempty_or_raise(texts: Iterable[str]) -> Iterator[str]:
    """`texts` without empty strings; raises at once if there is no text at all."""
    nonempty = (t for t in texts if t and not t.isspace())
    first = next(nonempty, None)
    if first is None:
        raise ValueError("the SentencePiece training input yields no text (empty or blank only)")
    return itertools.chain([first], nonempty)


def _vocab_listing(sp: spm.SentencePieceProcessor) -> str:
    """PREFIX.vocab as sentencepiece writes it: piece<TAB>score per line, for people to read."""
    return "".join(
        f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())
    )


def train_sentencepiece_from_source(
    source: str, vocab_size: int, output_prefix: str, **options
) -> SentencePieceTokenizer:
    """Trains on every sentence of a data source spec (`text:GLOB`, `tfds:NAME`, a GLOB...)."""
    return train_sentencepiece(
        _source_sentences(source_spec(source)), vocab_size, output_prefix, **options
    )


def source_spec(source: str) -> str:
    """A data source spec; a plain GLOB (no known kind before a colon) means `text:GLOB`, also
    as one of several sources joined by '+'."""
    parts = source.split("+")
    return "+".join(part if part.split(":", 1)[0] in _SOURCE_KINDS else f"text:{part}"
                    for part in parts)


def _source_sentences(spec: str) -> Iterator[str]:
    # Imported here: only training reads sources; tokenizing needs none of that module's graph.
    from bert_jax.data import sources

    for document in sources.iter_documents(spec):
        yield from document


# ----------------------------------------------------------------------------------------------
# Specs, folders and files.


def load_tokenizer(spec: str) -> Tokenizer:
    """`wordpiece:VOCAB_TXT[:cased|:uncased]`, `sentencepiece:MODEL_FILE`, or a saved folder."""
    kind, _, rest = spec.partition(":")
    if kind == "wordpiece":
        path, lowercase = _wordpiece_spec(rest)
        _refuse_folder(path, spec, "a vocab.txt file", example="vocab.txt")
        return WordPieceTokenizer(path, lowercase=lowercase)
    if kind == "sentencepiece":
        _refuse_folder(rest, spec, "a PREFIX.model file", example="spm.model")
        return SentencePieceTokenizer(rest)
    if _isdir(spec):
        return load_tokenizer_dir(spec)
    expected = "wordpiece:VOCAB_TXT[:cased], sentencepiece:MODEL_FILE or a folder from save()"
    if rest:
        raise ValueError(f"unknown tokenizer kind {kind!r} in spec {spec!r}; expected {expected}")
    raise ValueError(f"tokenizer spec {spec!r} is not a folder; expected {expected}")


def _wordpiece_spec(rest: str) -> tuple[str, bool]:
    """(vocab path, lowercase) of the PATH[:cased|:uncased] after `wordpiece:`."""
    path, colon, case = rest.rpartition(":")
    if case in ("cased", "uncased"):
        return path, case == "uncased"
    # A suffix without "/" is a case option (gs://...'s colon is followed by one), unless the
    # whole is a file's name.
    if colon and path and "/" not in case and not _exists(rest):
        raise ValueError(f"tokenizer spec wordpiece:{rest}: unknown suffix ':{case}' after "
                         f"{path}; expected ':cased' or ':uncased' (none means uncased)")
    return rest, True


def _refuse_folder(path: str, spec: str, takes: str, example: str) -> None:
    """A spec's file that is a folder: say so (reading it would report "not found")."""
    if not path or not _isdir(path):
        return
    kind = spec.partition(":")[0]
    saved = (f"; {path} was written by Tokenizer.save: name it alone, without '{kind}:'"
             if _exists(os.path.join(path, METADATA_FILE)) else "")
    raise IsADirectoryError(f"tokenizer spec {spec}: {path} is a folder; {kind}: takes {takes}, "
                            f"e.g. {kind}:{os.path.join(path, example)}{saved}")


def load_tokenizer_dir(directory: str) -> Tokenizer:
    """The tokenizer a `Tokenizer.save(directory)` wrote."""
    meta_path = os.path.join(directory, METADATA_FILE)
    if not _exists(meta_path):
        raise FileNotFoundError(
            f"{directory} has no {METADATA_FILE}: not a folder written by Tokenizer.save"
        )
    meta = json.loads(_read_bytes(meta_path, what="tokenizer metadata"))
    kind = meta.get("kind")
    if kind == "wordpiece":
        vocab_file = os.path.join(directory, meta["vocab_file"])
        # Folders saved before strip_accents was kept strip as they lowercase.
        return WordPieceTokenizer(vocab_file, lowercase=meta["lowercase"],
                                  strip_accents=meta.get("strip_accents"))
    if kind == "sentencepiece":
        return SentencePieceTokenizer(os.path.join(directory, meta["model_file"]))
    raise ValueError(f"{meta_path} names an unknown tokenizer kind {kind!r}")


def _gfile(path: str):
    """tf.io.gfile for remote paths (gs://...), else None: TensorFlow's import costs seconds."""
    if "://" not in path:
        return None
    import tensorflow as tf

    return tf.io.gfile


def _exists(path: str) -> bool:
    gfile = _gfile(path)
    return gfile.exists(path) if gfile else os.path.exists(path)


def _isdir(path: str) -> bool:
    gfile = _gfile(path)
    return gfile.isdir(path) if gfile else os.path.isdir(path)


def _makedirs(path: str) -> None:
    gfile = _gfile(path)
    if gfile:
        gfile.makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def _read_bytes(path: str, what: str) -> bytes:
    if not _exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if _isdir(path):
        raise IsADirectoryError(f"{what} file {path} is a folder, not a file")
    gfile = _gfile(path)
    with gfile.GFile(path, "rb") if gfile else open(path, "rb") as f:
        return f.read()


def _write_bytes(path: str, data: bytes) -> None:
    """Writes `path` whole or not at all: into a temporary name beside it, then renamed over it,
    so a failed write (a full disk) or a kill leaves the previous file as it was."""
    parent = os.path.dirname(path)
    if parent:
        _makedirs(parent)
    partial = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    gfile = _gfile(path)
    try:
        with gfile.GFile(partial, "wb") if gfile else open(partial, "wb") as f:
            f.write(data)
        if gfile:
            gfile.rename(partial, path, overwrite=True)
        else:
            os.replace(partial, path)
    except BaseException:
        _remove_if_there(partial)
        raise


def _remove_if_there(path: str) -> None:
    """Best effort: the error that got here matters more than a leftover temporary file."""
    gfile = _gfile(path)
    with contextlib.suppress(Exception):  # tf's NotFoundError is no OSError
        (gfile.remove if gfile else os.remove)(path)
