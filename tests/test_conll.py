"""CoNLL-2003 NER: reading (IOB1/IOB2, bad input), features and word predictions on the real
files, and conlleval's entity scores by hand and against seqeval."""

import re

import numpy as np
import pytest

from bert_jax.data import tokenization
from bert_jax.tasks import conll, conlleval

# sentences, tokens (word lines), -DOCSTART- lines of the staged CoNLL-2003 files
SPLITS = {"train": (14041, 203621, 946), "valid": (3250, 51362, 216), "test": (3453, 46435, 231)}
TYPES = ["LOC", "MISC", "ORG", "PER"]


@pytest.fixture(scope="module")
def splits(data_dir):
    return {name: conll.read_conll(data_dir / "conll2003" / f"{name}.txt") for name in SPLITS}


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return tokenization.WordPieceTokenizer(str(data_dir / "bert_vocab" / "vocab.txt"),
                                           lowercase=True)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# Reading.


@pytest.mark.parametrize("name", SPLITS)
def test_read_real_files(splits, data_dir, name):
    sentences = splits[name]
    num_sentences, num_tokens, num_docstarts = SPLITS[name]
    assert len(sentences) == num_sentences
    assert sum(len(s.words) for s in sentences) == num_tokens
    text = (data_dir / "conll2003" / f"{name}.txt").read_text(encoding="utf-8")
    assert text.count("-DOCSTART-") == num_docstarts
    assert not any("-DOCSTART-" in s.words for s in sentences)
    assert all(len(s.words) == len(s.tags) > 0 for s in sentences)
    assert conll.label_list(sentences) == ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"]
    # The staged files are IOB2 already: strict reading accepts them and changes nothing.
    assert all(s.tags == conll.to_iob2(s.tags) for s in sentences)
    # The first sentence starts after "-DOCSTART- ..." and a blank line.
    assert sentences[0].where.endswith(f"{name}.txt:3")
    if name == "train":
        assert sentences[0].words[:3] == ("EU", "rejects", "German")
        assert sentences[0].tags[:3] == ("B-ORG", "O", "B-MISC")


def test_read_strict_iob2_on_real_file(data_dir, splits):
    strict = conll.read_conll(data_dir / "conll2003" / "valid.txt", scheme="iob2")
    assert strict == splits["valid"]


IOB1_FILE = """-DOCSTART- -X- O O

U.N. NNP I-NP I-ORG
official NN I-NP O
Ekeus NNP I-NP I-PER
heads VBZ I-VP O
Baghdad NNP I-NP I-LOC
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
John NNP I-NP I-PER
Paris NNP I-NP I-LOC
in IN I-PP O
"""


def test_read_iob1_converts_to_iob2(tmp_path):
    path = _write(tmp_path / "iob1.txt", IOB1_FILE)
    sentences = conll.read_conll(path)
    assert [s.tags for s in sentences] == [
        ("B-ORG", "O", "B-PER", "O", "B-LOC", "O"),
        # Smith starts a second PER chunk (B- between two adjacent PER chunks); Paris changes
        # type inside a run of I- tags, so it opens a LOC chunk.
        ("B-PER", "I-PER", "B-PER", "I-PER", "B-LOC", "O"),
    ]
    assert sentences[1].words == ("Peter", "Blackburn", "Smith", "John", "Paris", "in")
    assert [s.where for s in sentences] == [f"{path}:3", f"{path}:10"]
    assert conll.read_conll(path, scheme="iob1") == sentences
    with pytest.raises(ValueError, match=r"iob1\.txt:3: I-ORG opens a chunk"):
        conll.read_conll(path, scheme="iob2")
    # conlleval reads IOB1 directly: the conversion keeps its chunks.
    raw = [line.split()[-1] for line in IOB1_FILE.splitlines()[9:]]
    assert conlleval.chunks(raw) == conlleval.chunks(sentences[1].tags)


def test_read_other_tag_column(tmp_path):
    path = _write(tmp_path / "three.txt", "Peter I-PER B-NP\nlives O B-VP\n\nHe O B-NP\n")
    sentences = conll.read_conll(path, tag_column=1)
    assert [s.tags for s in sentences] == [("B-PER", "O"), ("O",)]


@pytest.mark.parametrize("text, message", [
    ("EU NNP B-NP B-ORG\nrejects VBZ O\n", r"bad\.txt:2: expected 4 .*columns.*got 3"),
    ("EU NNP B-NP B-ORG\n\n\nrejects VBZ B-VP O x\n", r"bad\.txt:4: expected 4 .*got 5"),
    ("EU NNP B-NP B-ORG\nrejects VBZ B-VP X-ORG\n", r"bad\.txt:2: invalid tag 'X-ORG'"),
    ("EU NNP B-NP B-\n", r"bad\.txt:1: invalid tag 'B-'"),
    ("EU NNP B-NP ORG\n", r"bad\.txt:1: invalid tag 'ORG'"),
    ("EU NNP B-NP E-ORG\n", r"bad\.txt:1: invalid tag 'E-ORG'"),
    ("-DOCSTART- -X- O O\n\n", r"bad\.txt: no sentences"),
])
def test_read_bad_input(tmp_path, text, message):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError, match=message):
        conll.read_conll(path)


def test_read_bad_arguments(tmp_path):
    path = _write(tmp_path / "ok.txt", "EU B-ORG\n")
    with pytest.raises(ValueError, match="scheme"):
        conll.read_conll(path, scheme="iobes")
    for column in (0, 2, -3):
        with pytest.raises(ValueError, match=r"ok\.txt:1: 2 columns; tag_column"):
            conll.read_conll(path, tag_column=column)


def test_missing_file_names_data_dir_and_the_expected_files(tmp_path, tokenizer):
    """NER with a data.dir that lacks a CoNLL file: which one, and the files it should hold."""
    from bert_jax.tasks import token_classification
    from configs.finetune import ner

    _write(tmp_path / "valid.txt", "EU B-ORG\n")
    config = ner.get_config()
    config.data.dir = str(tmp_path)
    task = token_classification.NerFinetuneTask(config.data)
    expected = (f"no CoNLL file {tmp_path / 'train.txt'} ({tmp_path} has no train.txt); NER's "
                "data.dir is a folder with the CoNLL-2003 files train.txt, valid.txt, test.txt")
    with pytest.raises(FileNotFoundError) as e:
        task.load(tokenizer)
    assert str(e.value) == expected
    absent = re.escape(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=rf"\(no folder {absent}\); NER's data.dir"):
        conll.read_conll(tmp_path / "absent" / "train.txt")


def test_label_list_from_types():
    assert conll.label_list(["PER", "LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert conll.label_list([]) == ["O"]


# ----------------------------------------------------------------------------------------------
# Features and word predictions.


def _check_rows(features, tokenizer, max_seq_length):
    lengths = features.lengths
    assert features.input_ids.shape == features.label_ids.shape == features.word_index.shape
    assert features.input_ids.shape == (len(features), max_seq_length)
    assert lengths.max() <= max_seq_length and lengths.min() >= 3
    rows = np.arange(len(features))
    assert (features.input_ids[:, 0] == tokenizer.cls_id).all()
    assert (features.input_ids[rows, lengths - 1] == tokenizer.sep_id).all()
    padding = np.arange(max_seq_length) >= lengths[:, None]
    assert (features.input_ids[padding] == tokenizer.pad_id).all()
    labelled = features.label_ids >= 0
    np.testing.assert_array_equal(labelled, features.word_index >= 0)
    assert not labelled[:, 0].any() and not labelled[rows, lengths - 1].any()
    assert not labelled[padding].any()


@pytest.mark.parametrize("max_seq_length", [32, 128])
def test_features_round_trip_on_train(splits, tokenizer, max_seq_length):
    sentences = splits["train"]
    labels = conll.label_list(sentences)
    features = conll.make_features(sentences, tokenizer, labels, max_seq_length=max_seq_length)
    _check_rows(features, tokenizer, max_seq_length)
    num_words = sum(len(s.words) for s in sentences)
    assert (features.label_ids >= 0).sum() == num_words  # one label position per word
    gold = [list(s.tags) for s in sentences]
    assert conll.word_predictions(features, features.label_ids, labels, len(sentences)) == gold

    # A sentence is split exactly when its pieces do not fit between [CLS] and [SEP]; a word
    # without pieces counts one ([UNK]), a word longer than a row keeps only what fits in one.
    budget = max_seq_length - 2
    pieces = [sum(min(max(1, len(ids)), budget) for ids in tokenizer.encode_batch(s.words))
              for s in sentences]
    rows_per_sentence = np.bincount(features.sentence_index, minlength=len(sentences))
    np.testing.assert_array_equal(rows_per_sentence > 1, np.array(pieces) > budget)
    assert (np.diff(features.sentence_index) >= 0).all()
    if max_seq_length == 32:
        assert (rows_per_sentence > 1).sum() > 1000
    else:
        assert 0 < (rows_per_sentence > 1).sum() < 10


def test_split_rows_hold_each_words_pieces(splits, tokenizer):
    """Every row of the sentences split at 32 is [CLS] + its words' own pieces + [SEP]."""
    sentences = splits["train"][:2000]
    labels = conll.label_list(TYPES)
    features = conll.make_features(sentences, tokenizer, labels, max_seq_length=32)
    split = np.flatnonzero(np.bincount(features.sentence_index) > 1)
    assert len(split) > 100
    for f in np.flatnonzero(np.isin(features.sentence_index, split)):
        sentence = sentences[features.sentence_index[f]]
        words = features.word_index[f][features.word_index[f] >= 0]
        assert (np.diff(words) == 1).all()
        # No word of those 2000 sentences has more than 30 pieces, so none was cut.
        word_ids = tokenizer.encode_batch(sentence.words[words[0]:words[-1] + 1])
        row = [tokenizer.cls_id] + [i for ids in word_ids for i in ids] + [tokenizer.sep_id]
        assert features.input_ids[f, :features.lengths[f]].tolist() == row
        labelled = features.label_ids[f] >= 0
        assert [labels[i] for i in features.label_ids[f][labelled]] == [
            sentence.tags[w] for w in words]


def test_features_by_hand(tokenizer):
    """Five one-piece words at max_seq_length 5 (3 pieces a row): rows [a b c] and [d e]."""
    sentences = [
        conll.Sentence(("a", "b", "c", "d", "e"), ("B-PER", "I-PER", "O", "B-LOC", "O"), "x:1"),
        conll.Sentence(("\u200b", "the"), ("O", "B-ORG"), "x:7"),  # zero-width space: no pieces
    ]
    labels = conll.label_list(["LOC", "ORG", "PER"])  # O B-LOC I-LOC B-ORG I-ORG B-PER I-PER
    features = conll.make_features(sentences, tokenizer, labels, max_seq_length=5)
    a, b, c, d, e, the = (tokenizer.encode(w)[0] for w in ("a", "b", "c", "d", "e", "the"))
    cls, sep, pad, unk = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.unk_id
    np.testing.assert_array_equal(features.input_ids, [
        [cls, a, b, c, sep], [cls, d, e, sep, pad], [cls, unk, the, sep, pad]])
    np.testing.assert_array_equal(features.lengths, [5, 4, 4])
    np.testing.assert_array_equal(features.sentence_index, [0, 0, 1])
    np.testing.assert_array_equal(features.label_ids, [
        [-1, 5, 6, 0, -1], [-1, 1, 0, -1, -1], [-1, 0, 3, -1, -1]])
    np.testing.assert_array_equal(features.word_index, [
        [-1, 0, 1, 2, -1], [-1, 3, 4, -1, -1], [-1, 0, 1, -1, -1]])
    assert len(features) == 3

    # Logits, even of a batch padded only to the longest row, give one tag per word.
    logits = np.eye(len(labels))[np.maximum(features.label_ids, 0)]  # [3, 5, 7]
    tags = [list(s.tags) for s in sentences]
    assert conll.word_predictions(features, logits, labels, 2) == tags
    assert conll.word_predictions(features, logits[:, :5], labels, 2) == tags
    with pytest.raises(ValueError, match="do not cover"):
        conll.word_predictions(features, logits[:, :4], labels, 2)
    with pytest.raises(ValueError, match="do not cover"):
        conll.word_predictions(features, logits[:2], labels, 2)
    with pytest.raises(ValueError, match="exactly once"):
        conll.word_predictions(features, logits, labels, 3)
    with pytest.raises(ValueError, match="outside"):
        conll.word_predictions(features, np.full([3, 5], 7), labels, 2)


def test_a_split_word_is_labelled_on_its_first_piece(tokenizer):
    """The original BERT NER recipe (and transformers' token classification) labels a word on
    its first WordPiece and ignores the continuations (-1); predictions are read there too."""
    sentence = conll.Sentence(("Tsipras", "met", "Kwiatkowski", "in", "Athens"),
                              ("B-PER", "O", "B-PER", "O", "B-LOC"), "x:1")
    labels = conll.label_list(["LOC", "PER"])  # O B-LOC I-LOC B-PER I-PER
    features = conll.make_features([sentence], tokenizer, labels, max_seq_length=16)
    pieces = [tokenizer.id_to_token(i) for i in features.input_ids[0, 1:11]]
    assert pieces == ["ts", "##ip", "##ras", "met", "kw", "##ia", "##t", "##kowski", "in",
                      "athens"]
    #                        [CLS] ts ##ip ##ras met kw ##ia ##t ##kowski in athens [SEP]
    assert features.label_ids[0, :12].tolist() == [-1, 3, -1, -1, 0, 3, -1, -1, -1, 0, 1, -1]
    assert features.word_index[0, :12].tolist() == [-1, 0, -1, -1, 1, 2, -1, -1, -1, 3, 4, -1]
    # A model that tags continuations I-PER still predicts each word from its first piece.
    predicted = np.where(features.label_ids >= 0, features.label_ids, 4)  # [1, 16]
    assert conll.word_predictions(features, predicted, labels, 1) == [list(sentence.tags)]


def test_features_bad_input(tokenizer):
    sentence = conll.Sentence(("Paris",), ("B-LOC",), "f.txt:9")
    with pytest.raises(ValueError, match=r"f\.txt:9: tags \['B-LOC'\] are not in the label"):
        conll.make_features([sentence], tokenizer, conll.label_list(["PER"]))
    with pytest.raises(ValueError, match="max_seq_length"):
        conll.make_features([sentence], tokenizer, conll.label_list(["LOC"]), max_seq_length=2)


def test_write_predictions_reads_back(splits, tmp_path):
    sentences = splits["valid"]
    rng = np.random.default_rng(0)
    predicted = _corrupt([s.tags for s in sentences], conll.label_list(TYPES), 0.1, rng)
    path = tmp_path / "predictions.txt"
    conll.write_predictions(path, sentences, predicted)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"{sentences[0].words[0]} {sentences[0].tags[0]} {predicted[0][0]}"
    gold_back = conll.read_conll(path, tag_column=1)
    assert [s.tags for s in gold_back] == [s.tags for s in sentences]
    # Read back (as IOB1: random tags let I- open chunks) the predictions become IOB2, which
    # changes token accuracy but none of conlleval's chunk scores.
    predicted_back = [s.tags for s in conll.read_conll(path, tag_column=2)]
    converted = [conll.to_iob2(tags) for tags in predicted]
    assert predicted_back == converted
    assert [list(tags) for tags in converted] != predicted
    gold = [s.tags for s in sentences]
    scores, scores_back = (conlleval.evaluate(gold, p) for p in (predicted, predicted_back))
    assert scores_back.pop("accuracy") != scores.pop("accuracy")
    assert scores_back == scores
    with pytest.raises(ValueError, match="words but"):
        conll.write_predictions(path, sentences[:1], [predicted[0][1:]])


# ----------------------------------------------------------------------------------------------
# conlleval.


@pytest.mark.parametrize("tags, expected", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    # IOB1: I- opens a chunk; B- splits two adjacent chunks of one type.
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]),
    # An I- tag after O opens a chunk (conlleval does not drop it).
    (["O", "I-ORG", "I-ORG", "O"], [("ORG", 1, 3)]),
    # A type change inside a chunk ends it and opens one of the new type.
    (["B-PER", "I-LOC", "I-LOC", "B-LOC"], [("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)]),
    (["B-MISC", "I-MISC", "B-MISC", "I-MISC", "I-MISC"], [("MISC", 0, 2), ("MISC", 2, 5)]),
    (["B-ORG", "B-PER"], [("ORG", 0, 1), ("PER", 1, 2)]),
    (["O", "O"], []),
    ([], []),
])
def test_chunks_by_hand(tags, expected):
    assert conlleval.chunks(tags) == expected
    assert conlleval.chunks(conll.to_iob2(tags)) == expected


@pytest.mark.parametrize("tag", ["E-PER", "S-PER", "B-", "PER", "b-PER", "", "I"])
def test_chunks_reject_other_tags(tag):
    with pytest.raises(ValueError, match="invalid tag"):
        conlleval.chunks(["O", tag])


def test_evaluate_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "B-MISC"]]
    # gold chunks: PER 0-2, LOC 3-4 | ORG 0-1                     -> 3
    # predicted:   PER 0-2, ORG 3-4 | ORG 0-1 (I- opens), MISC 1-2 -> 4
    # correct:     PER 0-2, ORG 0-1 of sentence 2                  -> 2
    # precision 2/4, recall 2/3, F1 = 2 * 1/2 * 2/3 / (1/2 + 2/3) = 4/7.
    # Tags equal: B-PER I-PER O of sentence 1 (I-ORG != B-ORG although the chunk matches): 3/6.
    scores = conlleval.evaluate(gold, predicted)
    assert scores["precision"] == pytest.approx(1 / 2, abs=1e-12)
    assert scores["recall"] == pytest.approx(2 / 3, abs=1e-12)
    assert scores["f1"] == pytest.approx(4 / 7, abs=1e-12)
    assert scores["accuracy"] == pytest.approx(1 / 2, abs=1e-12)
    assert scores["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},  # predicted only
        "ORG": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


def test_evaluate_keeps_sentences_apart():
    # Gold: a PER chunk in each sentence (the I- after the boundary opens one); merged across
    # the boundary they would be a single chunk and the predicted two would be wrong.
    scores = conlleval.evaluate([["B-PER"], ["I-PER"]], [["B-PER"], ["B-PER"]])
    assert scores["f1"] == 1.0 and scores["per_type"]["PER"]["support"] == 2
    assert scores["accuracy"] == 0.5


def test_evaluate_gold_against_gold_and_bad_input(splits):
    gold = [s.tags for s in splits["test"]]
    scores = conlleval.evaluate(gold, gold)
    assert scores["precision"] == scores["recall"] == scores["f1"] == scores["accuracy"] == 1.0
    # 5648 entities in the CoNLL-2003 test set.
    assert {k: v["support"] for k, v in scores["per_type"].items()} == {
        "LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}
    with pytest.raises(ValueError, match="3453 gold sentences but 1 predicted"):
        conlleval.evaluate(gold, gold[:1])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        conlleval.evaluate([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="no tokens"):
        conlleval.evaluate([], [])


def _corrupt(sentences_tags, labels, rate, rng):
    """Each tag replaced by a random label with probability `rate` (often invalid IOB2)."""
    out = []
    for tags in sentences_tags:
        replace = rng.random(len(tags)) < rate
        picks = rng.integers(len(labels), size=len(tags))
        out.append([labels[p] if r else t for t, r, p in zip(tags, replace, picks)])
    return out


@pytest.mark.parametrize("seed, rate", [(0, 0.05), (1, 0.2), (2, 0.5)])
def test_evaluate_matches_seqeval(splits, seed, rate):
    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    gold = [list(s.tags) for s in splits["test"]]
    predicted = _corrupt(gold, conll.label_list(TYPES), rate, np.random.default_rng(seed))
    scores = conlleval.evaluate(gold, predicted)
    assert scores["precision"] == pytest.approx(seqeval.precision_score(gold, predicted), abs=1e-9)
    assert scores["recall"] == pytest.approx(seqeval.recall_score(gold, predicted), abs=1e-9)
    assert scores["f1"] == pytest.approx(seqeval.f1_score(gold, predicted), abs=1e-9)
    assert scores["accuracy"] == pytest.approx(seqeval.accuracy_score(gold, predicted), abs=1e-9)
    # seqeval's per-type rows are in sorted type order, like ours.
    precision, recall, f1, support = seqeval.precision_recall_fscore_support(gold, predicted)
    assert list(scores["per_type"]) == TYPES
    ours = np.array([[v["precision"], v["recall"], v["f1"], v["support"]]
                     for v in scores["per_type"].values()])
    np.testing.assert_allclose(ours, np.stack([precision, recall, f1, support], 1), atol=1e-9)
    assert 0.1 < scores["f1"] < 0.99
