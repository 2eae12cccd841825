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
import io
import itertools
import json
import os
import re
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
        """Token ids of many texts at once (multi-threaded native code; the pipeline's path)."""

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

    def __init__(self, vocab_file: str, lowercase: bool = True):
        self.vocab_file = vocab_file
        self.lowercase = lowercase
        self._tokens = _read_vocab_lines(vocab_file)
        vocab = {token: i for i, token in enumerate(self._tokens)}
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(
                f"WordPiece vocab {vocab_file} lacks the special tokens {' '.join(missing)} "
                f"(a BERT vocab needs all of {' '.join(SPECIAL_TOKENS)})"
            )
        super().__init__({t: vocab[t] for t in SPECIAL_TOKENS})
        self._tok = _build_wordpiece(vocab, lowercase, bert_normalizer=True)
        self._plain_tok = _build_wordpiece(vocab, lowercase, bert_normalizer=False)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # BertNormalizer costs ~4x the rest of the pipeline; texts it leaves as they are (see
        # _is_plain) take a tokenizer that only lowercases, giving the same ids.
        plain = [_is_plain(text) is not None for text in texts]
        fast = iter(_ids(self._plain_tok, [t for t, p in zip(texts, plain) if p]))
        slow = iter(_ids(self._tok, [t for t, p in zip(texts, plain) if not p]))
        return [next(fast) if p else next(slow) for p in plain]

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
        }


def _read_vocab_lines(vocab_file: str) -> list[str]:
    """One token per line; line i is id i."""
    lines = _read_bytes(vocab_file, what="WordPiece vocab").decode("utf-8").split("\n")
    if lines[-1] == "":  # the final newline ends the last line; it does not start a new one
        lines.pop()
    return [line.rstrip("\r") for line in lines]


# Characters BertNormalizer leaves alone (no control, accent or CJK character; NFD-invariant)
# apart from lowercasing: printable ASCII, \t \n \r, and typographic punctuation such as ’ “ ” —.
_is_plain = re.compile(r"[\t\n\r\x20-\x7e\u2010-\u2027]*").fullmatch


def _ids(tok: tokenizers.Tokenizer, texts: list[str]) -> list[list[int]]:
    # encode_batch_fast skips character offsets, which the pipeline never needs.
    return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def _build_wordpiece(
    vocab: dict[str, int], lowercase: bool, bert_normalizer: bool
) -> tokenizers.Tokenizer:
    """The BERT pipeline: clean + (lowercase, strip accents) + split CJK, punctuation, ##pieces.

    Without `bert_normalizer` it only lowercases (if asked): for plain text (_is_plain) only.
    """
    tok = tokenizers.Tokenizer(
        models.WordPiece(
            vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100
        )
    )
    if bert_normalizer:
        # strip_accents=None follows `lowercase`, as BERT's uncased/cased releases do.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
    elif lowercase:
        tok.normalizer = normalizers.Lowercase()
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
        self.model_file = model_file
        self._proto = _read_bytes(model_file, what="SentencePiece model")
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
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
    def special_ids(self) -> frozenset[int]:
        return self._all_special

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        batch = self._sp.encode(list(texts), out_type=int, num_threads=os.cpu_count() or 1)
        for row, text in enumerate(texts):
            if any(piece in text for piece in self._text_specials):
                batch[row] = self._drop_space_before(batch[row])
        return batch

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
            # nmt_nfkc_cf = NFKC plus Unicode case folding.
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            character_coverage=character_coverage,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=0 if verbose else 2,
        )
    except RuntimeError as e:  # e.g. vocab_size larger than the corpus supports, or too small
        raise ValueError(f"SentencePiece training (vocab_size={vocab_size}) failed: {e}") from e
    model_file = output_prefix + ".model"
    _write_bytes(model_file, model.getvalue())
    tokenizer = SentencePieceTokenizer(model_file)
    _write_bytes(output_prefix + ".vocab", _vocab_listing(tokenizer._sp).encode("utf-8"))
    return tokenizer


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
    """Trains on every sentence of a data source spec (`text:GLOB`, `tfds:NAME`, a plain GLOB...)."""
    return train_sentencepiece(
        _source_sentences(source_spec(source)), vocab_size, output_prefix, **options
    )


def source_spec(source: str) -> str:
    """A data source spec; a plain GLOB (no known kind before a colon) means `text:GLOB`."""
    kind = source.split(":", 1)[0]
    return source if kind in _SOURCE_KINDS else f"text:{source}"


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
        path, _, case = rest.rpartition(":")
        if case not in ("cased", "uncased"):
            path, case = rest, "uncased"
        return WordPieceTokenizer(path, lowercase=case == "uncased")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(rest)
    if _isdir(spec):
        return load_tokenizer_dir(spec)
    expected = "wordpiece:VOCAB_TXT[:cased], sentencepiece:MODEL_FILE or a folder from save()"
    if rest:
        raise ValueError(f"unknown tokenizer kind {kind!r} in spec {spec!r}; expected {expected}")
    raise ValueError(f"tokenizer spec {spec!r} is not a folder; expected {expected}")


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
        return WordPieceTokenizer(vocab_file, lowercase=meta["lowercase"])
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
    if not _exists(path) or _isdir(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    gfile = _gfile(path)
    with gfile.GFile(path, "rb") if gfile else open(path, "rb") as f:
        return f.read()


def _write_bytes(path: str, data: bytes) -> None:
    parent = os.path.dirname(path)
    if parent:
        _makedirs(parent)
    gfile = _gfile(path)
    with gfile.GFile(path, "wb") if gfile else open(path, "wb") as f:
        f.write(data)
