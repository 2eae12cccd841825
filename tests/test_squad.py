"""SQuAD: official-definition metrics by hand, the reader on the real dev set and on bad input,
tokenizer character offsets, windows over every dev answer, and post-processing round trips."""

import json
import logging
import unicodedata
import zipfile

import numpy as np
import pytest

from bert_jax.data import shared_data, tokenization
from bert_jax.tasks import squad, squad_metrics
from bert_jax.tasks.squad import SquadExample


@pytest.fixture(scope="module")
def dev_path(data_dir):
    return str(shared_data.shared_data_path("squad", "dev-v1.1.json.zip"))


@pytest.fixture(scope="module")
def dev(dev_path):
    examples, version = squad.read_squad(dev_path)
    assert version == "1.1"
    return examples


@pytest.fixture(scope="module")
def wordpiece(data_dir):
    vocab = shared_data.shared_data_path("bert_vocab", "vocab.txt")
    return tokenization.WordPieceTokenizer(str(vocab), lowercase=True)


@pytest.fixture(scope="module")
def sentencepiece(dev, tmp_path_factory):
    contexts = list(dict.fromkeys(e.context for e in dev))[:600]  # a few seconds' training
    prefix = str(tmp_path_factory.mktemp("spm") / "squad")
    return tokenization.train_sentencepiece(contexts, 1000, prefix)


@pytest.fixture(scope="module")
def dev_features(dev, wordpiece):
    return squad.make_features(dev, wordpiece, training=False)  # 384 / 128 / 64


def _example(qid, context, answers=(), is_impossible=False, title="t", question="q?"):
    return SquadExample(qid, title, question, context, tuple(answers), is_impossible)


# ----------------------------------------------------------------------------------------------
# Metrics (evaluate-v1.1.py / evaluate-v2.0.py definitions), values worked out by hand.


def test_normalize_answer():
    assert squad_metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert squad_metrics.normalize_answer("an apple, a pear") == "apple pear"
    # Articles go only as whole words; punctuation goes before that, so "the-end" -> "theend".
    assert squad_metrics.normalize_answer("Theory of the-end") == "theory of theend"
    assert squad_metrics.normalize_answer("  A.  ") == ""


def test_v1_scores_by_hand():
    examples = [
        _example("q1", "", [("The Denver Broncos", 0), ("Denver Broncos", 4)]),
        _example("q2", "", [("Santa Clara, California", 0)]),
        _example("q3", "", [("a cat", 0), ("the black cat", 0)]),
        _example("q4", "", [("anything", 0)]),
    ]
    predictions = {"q1": "denver broncos!", "q2": "Santa Clara", "q3": "black dog"}
    # q1: exact after normalisation -> EM 1, F1 1.
    # q2: pred {santa, clara} vs gold {santa, clara, california}: P 1, R 2/3 -> F1 0.8.
    # q3: vs "cat" nothing shared; vs "black cat" P = R = 1/2 -> F1 0.5 (max over golds).
    # q4: no prediction -> 0. EM 1/4 = 25 %, F1 (1 + 0.8 + 0.5 + 0) / 4 = 57.5 %.
    scores = squad_metrics.squad_v1_scores(examples, predictions)
    assert scores == pytest.approx({"exact_match": 25.0, "f1": 57.5})
    assert squad_metrics.f1_score("Santa Clara", "Santa Clara, California") == pytest.approx(0.8)
    assert squad_metrics.exact_match_score("the Broncos.", "Broncos") == 1.0


def test_f1_of_answers_that_normalise_to_nothing():
    # v1.1: no shared token -> 0, even when both are empty; v2.0: both empty -> 1.
    assert squad_metrics.f1_score("the", "a") == 0.0
    assert squad_metrics.f1_score("the", "a", version_2=True) == 1.0
    assert squad_metrics.f1_score("", "Paris", version_2=True) == 0.0
    assert squad_metrics.f1_score("Paris", "", version_2=True) == 0.0


V2_EXAMPLES = [
    _example("A", "", [("Normans", 0)]),
    _example("B", "", [("in France", 0)]),
    _example("C", "", [], is_impossible=True),
    _example("D", "", [], is_impossible=True),
    _example("E", "", [("10th and 11th centuries", 0)]),
]
V2_PREDICTIONS = {"A": "the Normans", "B": "", "C": "", "D": "Rollo", "E": "10th century"}


def test_v2_scores_by_hand():
    # Raw (exact, f1): A (1, 1); B (0, 0) empty vs an answer; C (1, 1) both empty; D (0, 0);
    # E: {10th, century} vs {10th, and, 11th, centuries}: P 1/2, R 1/4 -> F1 1/3, EM 0.
    scores = squad_metrics.squad_v2_scores(V2_EXAMPLES, V2_PREDICTIONS)
    assert scores == pytest.approx({
        "exact": 100 * 2 / 5, "f1": 100 * (2 + 1 / 3) / 5, "total": 5,
        "HasAns_exact": 100 / 3, "HasAns_f1": 100 * (1 + 1 / 3) / 3, "HasAns_total": 3,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
    })


def test_v2_threshold_and_its_search_by_hand():
    diff = {"A": -2.0, "B": 0.5, "C": 3.0, "D": 1.5, "E": -1.0}
    scores = squad_metrics.squad_v2_scores(V2_EXAMPLES, V2_PREDICTIONS, diff, threshold=1.0)
    # diff > 1.0 for C and D: both count as "no answer", right for both (no gold answer), so
    # D's wrong "Rollo" turns into 1: exact (1+0+1+1+0)/5 = 60 %, f1 (3 + 1/3)/5.
    assert scores["exact"] == pytest.approx(60.0)
    assert scores["f1"] == pytest.approx(100 * (3 + 1 / 3) / 5)
    assert scores["NoAns_exact"] == 100.0 and scores["HasAns_exact"] == pytest.approx(100 / 3)
    # The search starts from all "no answer" (C, D right: 2) and admits questions by diff:
    # A(-2) +1 -> 3 (best, thresh -2); E(-1) exact +0 / f1 +1/3; B(0.5) +0; D(1.5) non-empty
    # prediction of a no-answer question -1; C(3.0) +0. Best exact 3/5 at -2.0, best f1
    # (3 + 1/3)/5 at -1.0.
    assert scores["best_exact"] == pytest.approx(60.0)
    assert scores["best_exact_thresh"] == -2.0
    assert scores["best_f1"] == pytest.approx(100 * (3 + 1 / 3) / 5)
    assert scores["best_f1_thresh"] == -1.0
    # When admitting any question only loses, the best is "all no answer", reported at 0.0.
    lone = [_example("N", "", [], is_impossible=True)]
    best = squad_metrics.squad_v2_scores(lone, {"N": "x"}, {"N": 5.0})
    assert (best["best_exact"], best["best_exact_thresh"]) == (100.0, 0.0)
    assert best["exact"] == 100.0 and "HasAns_total" not in best  # 5.0 > 1.0: "no answer"
    assert squad_metrics.squad_v2_scores(lone, {"N": "x"})["exact"] == 0.0


def test_missing_predictions_score_zero_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        scores = squad_metrics.squad_v2_scores(V2_EXAMPLES, {"A": "Normans", "C": ""})
    assert "3 of 5 questions have no prediction" in caplog.text
    assert scores["exact"] == pytest.approx(40.0) and scores["total"] == 5


# ----------------------------------------------------------------------------------------------
# Reading.


def test_read_dev_zip_and_plain_json(dev, dev_path, tmp_path):
    assert len(dev) == 10570
    assert len({e.title for e in dev}) == 48
    assert len({e.qid for e in dev}) == 10570
    assert sum(len(e.answers) for e in dev) == 34726
    assert all(start >= 0 for e in dev for _, start in e.answers)  # all match their context
    assert not any(e.is_impossible for e in dev)
    first = dev[0]
    assert first.title == "Super_Bowl_50" and first.context.startswith("Super Bowl 50 was")
    assert first.answers[0] == ("Denver Broncos", 177)
    with zipfile.ZipFile(dev_path) as archive:
        (tmp_path / "dev.json").write_bytes(archive.read("dev-v1.1.json"))
    assert squad.read_squad(str(tmp_path / "dev.json")) == (dev, "1.1")


def _write_squad(path, paragraphs, version="v2.0"):
    path.write_text(json.dumps({"version": version,
                                "data": [{"title": "T", "paragraphs": paragraphs}]}))
    return str(path)


def test_mismatched_answers_are_counted_warned_and_kept_for_scoring(tmp_path, caplog, wordpiece):
    context = "Paris is the capital of France."
    path = _write_squad(tmp_path / "bad.json", [{"context": context, "qas": [
        {"id": "good", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "half", "question": "Country?", "answers": [
            {"text": "Frances", "answer_start": 24}, {"text": "France", "answer_start": 24}]},
        {"id": "lost", "question": "What?", "answers": [{"text": "Berlin", "answer_start": 3}]},
    ]}])
    with caplog.at_level(logging.WARNING):
        examples, version = squad.read_squad(path)
    assert version == "v2.0"
    assert "2 answers do not match their context" in caplog.text
    assert "half, lost" in caplog.text and path in caplog.text
    assert [e.answers for e in examples] == [
        (("Paris", 0),), (("Frances", -1), ("France", 24)), (("Berlin", -1),)]
    # No training feature for "lost"; "half" trains on its matching answer; all are evaluated.
    train = squad.make_features(examples, wordpiece, max_seq_length=32, max_query_length=8,
                                training=True)
    assert sorted(set(train.example_index.tolist())) == [0, 1]
    row = int(np.flatnonzero(train.example_index == 1)[0])
    spans = train.token_char_spans[row]
    assert context[spans[train.start_positions[row], 0]:spans[train.end_positions[row], 1]] == (
        "France")
    evaluation = squad.make_features(examples, wordpiece, max_seq_length=32, max_query_length=8,
                                     training=False)
    assert sorted(set(evaluation.example_index.tolist())) == [0, 1, 2]
    scores = squad_metrics.squad_v1_scores(examples, {"good": "Paris", "half": "France",
                                                      "lost": "Berlin"})
    assert scores["exact_match"] == 100.0


def test_empty_context_questions_are_skipped(tmp_path, caplog):
    path = _write_squad(tmp_path / "empty.json", [
        {"context": "  \n", "qas": [
            {"id": "e1", "question": "?", "answers": []},
            {"id": "e2", "question": "?", "answers": [{"text": "x", "answer_start": 0}]}]},
        {"context": "Some text.", "qas": [
            {"id": "ok", "question": "?", "answers": [], "is_impossible": True}]},
    ])
    with caplog.at_level(logging.WARNING):
        examples, _ = squad.read_squad(path)
    assert [e.qid for e in examples] == ["ok"] and examples[0].is_impossible
    assert "skipped 2 questions with an empty context" in caplog.text


@pytest.mark.parametrize("content,message", [
    ({"version": "1.1"}, r"bad\.json: has no key 'data'"),
    ({"data": [{"title": "T"}]}, r"data\[0\] has no key 'paragraphs'"),
    ({"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
        {"id": "1", "question": "q", "answers": []}, {"id": "2", "answers": []}]}]}]},
     r"data\[0\]\.paragraphs\[0\]\.qas\[1\] has no key 'question'"),
    ({"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
        {"id": "1", "question": "q", "answers": [{"text": "c", "answer_start": "0"}]}]}]}]},
     r"qas\[0\]\.answers\[0\]\.answer_start is a str, expected int"),
    ({"data": {"title": "T"}}, r"\.data is a dict, expected list"),
    ("{not json", r"bad\.json: not a SQuAD JSON file"),
])
def test_malformed_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message):
        squad.read_squad(str(path))


def test_zip_must_hold_one_json_and_missing_file(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.json", "{}")
        archive.writestr("b.json", "{}")
    with pytest.raises(ValueError, match=r"two\.zip: a SQuAD zip must hold one \.json file"):
        squad.read_squad(str(path))
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        squad.read_squad(str(tmp_path / "nowhere.json"))


def test_examples_from_tfds_records():
    records = [
        {"id": b"q1", "title": b"Caf\xc3\xa9", "context": "Café au lait.".encode(),
         "question": b"What?", "answers": {"text": np.array([b"au lait", b"lait"], object),
                                           "answer_start": np.array([5, 8], np.int32)}},
        {"id": b"q2", "title": b"T", "context": b"Nothing here.", "question": b"Who?",
         "answers": {"text": np.zeros([0], object), "answer_start": np.zeros([0], np.int32)},
         "is_impossible": np.bool_(True)},
    ]
    assert squad.examples_from_tfds(records) == [
        SquadExample("q1", "Café", "What?", "Café au lait.", (("au lait", 5), ("lait", 8)), False),
        SquadExample("q2", "T", "Who?", "Nothing here.", (), True),
    ]


def test_split_articles_by_title(dev):
    train, heldout = squad.split_articles(dev, 0.25, seed=3)
    assert len(train) + len(heldout) == len(dev)
    assert not {e.title for e in train} & {e.title for e in heldout}
    assert len({e.title for e in heldout}) == 12  # 0.25 of 48 articles
    again = squad.split_articles(dev, 0.25, seed=3)
    assert again == (train, heldout)
    assert squad.split_articles(dev, 0.25, seed=4)[1] != heldout
    assert squad.split_articles(dev, 0.0, seed=3) == (list(dev), [])
    few = dev[:1000]  # 2 articles: one each side, however small the fraction
    assert len({e.title for e in few}) == 2
    assert len({e.title for e in squad.split_articles(few, 0.01, seed=0)[1]}) == 1
    with pytest.raises(ValueError, match="heldout_fraction"):
        squad.split_articles(dev, 1.0, seed=0)


# ----------------------------------------------------------------------------------------------
# Tokenizer character offsets.


def _strip_accents_lower(text):
    return "".join(c for c in unicodedata.normalize("NFD", text.lower())
                   if unicodedata.category(c) != "Mn")


def _offsets_mismatches(tokenizer, texts, normalize, piece_text):
    """(pieces checked, pieces whose span's text differs from the piece, ids that differ)."""
    encoded = tokenizer.encode_batch_with_offsets(texts)
    plain = tokenizer.encode_batch(texts)
    ids_differ = sum(ids != expected for (ids, _), expected in zip(encoded, plain))
    checked, bad = 0, []
    for text, (ids, spans) in zip(texts, encoded):
        assert len(ids) == len(spans)
        for i, (start, end) in zip(ids, spans):
            assert 0 <= start <= end <= len(text)
            if start < end and i not in tokenizer.special_ids:
                checked += 1
                if normalize(text[start:end]) != piece_text(tokenizer.id_to_token(i)):
                    bad.append((tokenizer.id_to_token(i), text[start:end]))
    return checked, bad, ids_differ


def test_wordpiece_offsets(wordpiece, dev):
    texts = list(dict.fromkeys(e.context for e in dev))
    texts += ["Beyoncé's naïve CAFÉ: 北京 [MASK] x\u200bz", "", "   "]
    checked, bad, ids_differ = _offsets_mismatches(
        wordpiece, texts, _strip_accents_lower, lambda p: p.removeprefix("##"))
    assert ids_differ == 0
    assert checked > 300_000 and bad == []
    ids, spans = wordpiece.encode_with_offsets("Beyoncé's naïve CAFÉ: 北京 [MASK]")
    assert ids == wordpiece.encode("Beyoncé's naïve CAFÉ: 北京 [MASK]")
    assert spans[0] == (0, 7) and spans[-1] == (25, 31) and spans[-3:-1] == [(22, 23), (23, 24)]


def test_sentencepiece_offsets_count_characters(sentencepiece, dev):
    texts = list(dict.fromkeys(e.context for e in dev))[:400]
    texts += ["Beyoncé's naïve café ½ [MASK] end", "é [SEP] é"]
    checked, bad, ids_differ = _offsets_mismatches(
        sentencepiece, texts, lambda s: unicodedata.normalize("NFKC", s),
        lambda p: p.replace("\u2581", ""))
    assert ids_differ == 0
    # NFKC expansions (½ -> 1⁄2 in three pieces) are the only mismatches.
    assert checked > 50_000 and len(bad) <= checked // 5000, bad
    # Character, not byte, offsets: after "é" a byte offset would be one further.
    text = "é [SEP] é"
    ids, spans = sentencepiece.encode_with_offsets(text)
    assert ids == sentencepiece.encode(text)  # no lone "▁" before [SEP]
    assert [text[a:b] for a, b in spans if a < b] == ["é", "[SEP]", "é"]
    # The answers of those contexts map to pieces but where a piece runs on past them, as
    # "DTIME(n2)" in "DTIME(n2),", with a 1000-piece vocabulary that merges ")," into one.
    contexts = dict(zip(texts[:400], sentencepiece.encode_batch_with_offsets(texts[:400])))
    aligned = [squad.align_answer(np.array(contexts[e.context][1]), text, start)
               for e in dev if e.context in contexts for text, start in e.answers]
    assert len(aligned) == 7241 and None not in aligned
    assert sum(not exact for _, _, exact in aligned) <= 40  # 28


def test_tokenizer_without_offsets_says_so():
    class NoOffsets(tokenization.Tokenizer):
        vocab_size = 5
        encode_batch = _decode = id_to_token = token_to_id = _starts_word = _save_files = None

    with pytest.raises(NotImplementedError, match="NoOffsets has no character offsets"):
        NoOffsets(dict(zip(tokenization.SPECIAL_TOKENS, range(5)))).encode_with_offsets("x")


# ----------------------------------------------------------------------------------------------
# Windows.


def _rows_by_example(features):
    order = np.argsort(features.example_index, kind="stable")
    bounds = np.searchsorted(features.example_index[order],
                             np.arange(features.example_index.max() + 2))
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def _inside_a_piece(spans, position):
    """Whether a character position falls strictly inside a piece (not at its boundary)."""
    return bool(np.any((spans[:, 0] < position) & (position < spans[:, 1])))


def test_every_dev_answer_maps_into_a_window(dev, dev_features):
    f = dev_features
    assert len(f) == 10833 and f.input_ids.shape == (10833, 384)
    rows_of = _rows_by_example(f)
    mapped, inside_piece = 0, []
    for index, example in enumerate(dev):
        for text, start in example.answers:
            end = start + len(text)
            found = False
            for row in rows_of[index]:
                spans = f.token_char_spans[row]
                first = np.flatnonzero(spans[:, 0] == start)
                last = np.flatnonzero(spans[:, 1] == end)
                if len(first) and len(last) and last[0] >= first[0]:
                    assert example.context[spans[first[0], 0]:spans[last[0], 1]] == text
                    found = True
                    break
            if found:
                mapped += 1
                continue
            every = f.token_char_spans[rows_of[index]].reshape(-1, 2)  # -1 rows: inside nothing
            assert _inside_a_piece(every, start) or _inside_a_piece(every, end), (text, start)
            inside_piece.append(text)
    print(f"\n{len(inside_piece)} of {mapped + len(inside_piece)} dev answers start or end "
          f"inside a WordPiece (e.g. {inside_piece[:5]})")
    assert mapped + len(inside_piece) == 34726
    assert len(inside_piece) <= 100  # 77 with the uncased BERT vocab: "gold" in "golden"...


def test_windows_cover_long_contexts_once_each(dev, wordpiece):
    f = squad.make_features(dev, wordpiece, max_seq_length=128, doc_stride=64, training=True)
    rows_of, context_mask = _rows_by_example(f), f.context_mask
    assert sum(len(rows) > 1 for rows in rows_of) > 5000  # most contexts need several windows
    contexts = list(dict.fromkeys(e.context for e in dev))
    pieces = dict(zip(contexts, wordpiece.encode_batch_with_offsets(contexts)))
    widened = 0
    for index, example in enumerate(dev):
        rows = rows_of[index]
        assert len(rows)
        piece_starts = np.array(pieces[example.context][1])[:, 0]  # distinct: pieces are disjoint
        max_context = np.zeros(len(piece_starts), np.int64)
        covered = np.zeros(len(piece_starts), bool)
        previous = None
        for row in rows:
            n = int(f.lengths[row])
            assert n <= 128 and f.input_ids[row, 0] == wordpiece.cls_id
            assert f.input_ids[row, n - 1] == wordpiece.sep_id
            assert np.all(f.input_ids[row, n:] == wordpiece.pad_id)
            context = context_mask[row]
            position = np.searchsorted(piece_starts, f.token_char_spans[row, context, 0])
            assert np.all(np.diff(position) == 1)  # consecutive pieces
            if previous is not None:
                assert position[0] - previous == 64  # slides by doc_stride
            previous = position[0]
            covered[position] = True
            max_context[position] += f.token_is_max_context[row, context]
            assert np.all(f.token_type_ids[row, :n] == (np.arange(n) >= np.argmax(context)))
            s, e = int(f.start_positions[row]), int(f.end_positions[row])
            if s:  # the window holds the first answer: its pieces, widened at most
                text, start = example.answers[0]
                got = example.context[f.token_char_spans[row, s, 0]:f.token_char_spans[row, e, 1]]
                widened += got != text
                assert text in got and e >= s
        assert covered.all() and np.all(max_context == 1)
        assert position[-1] == len(piece_starts) - 1  # the last window ends the context
    assert widened <= 50  # the first answers inside a piece (a subset of the 77)


def test_max_context_window_is_the_original_choice():
    # 10 pieces, windows [0, 6) and [4, 10): piece 4 has context (4 left, 1 right) in the first
    # and (0, 5) in the second: min 1 vs 0 -> first; piece 5: (5, 0) vs (1, 4) -> second.
    windows = [squad._Window(0, 0, 6, (-1, -1)), squad._Window(0, 4, 6, (-1, -1))]
    assert squad._max_context_window(windows, 10).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert squad._window_spans(10, 6, 4) == [(0, 6), (4, 6)]
    assert squad._window_spans(11, 6, 4) == [(0, 6), (4, 6), (8, 3)]


def test_make_features_rejects_a_window_without_room(wordpiece):
    with pytest.raises(ValueError, match="leaves no room for the context"):
        squad.make_features([], wordpiece, max_seq_length=67, max_query_length=64, training=True)


# ----------------------------------------------------------------------------------------------
# Predictions.


def test_postprocess_round_trip_on_dev(dev, wordpiece, tmp_path):
    examples = dev[:1500]
    f = squad.make_features(examples, wordpiece, max_seq_length=192, doc_stride=64,
                            training=False)
    rng = np.random.default_rng(0)
    start = rng.normal(size=f.input_ids.shape).astype(np.float32)  # [F, L] noise around 0
    end = rng.normal(size=f.input_ids.shape).astype(np.float32)
    rows_of, gold = _rows_by_example(f), {}
    for index, example in enumerate(examples):
        text, char = example.answers[-1]  # the last answer: not the features' target
        for row in rows_of[index]:
            spans = f.token_char_spans[row]
            first = np.flatnonzero(spans[:, 0] == char)
            last = np.flatnonzero(spans[:, 1] == char + len(text))
            if len(first) and len(last):
                start[row, first[0]] += 10.0
                end[row, last[0]] += 10.0
                gold[example.qid] = text
    assert len(gold) > 1490
    predictions, null_diff, nbest = squad.postprocess(examples, f, start, end)
    assert null_diff == {}
    assert {q: predictions[q] for q in gold} == gold
    scored = [e for e in examples if e.qid in gold]  # not those whose answers all split pieces
    assert squad_metrics.squad_v1_scores(scored, predictions)["exact_match"] == 100.0
    for qid, entries in nbest.items():
        scores = [e["start_logit"] + e["end_logit"] for e in entries]
        assert entries[0]["text"] == predictions[qid] and len(entries) <= 20
        assert scores == sorted(scores, reverse=True)
        assert len({e["text"] for e in entries}) == len(entries)
        assert sum(e["probability"] for e in entries) == pytest.approx(1.0)
    squad.write_predictions(str(tmp_path / "out" / "predictions.json"), predictions)
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == predictions


def test_postprocess_v2_null_answer(wordpiece):
    context = "The Normans gave their name to Normandy, a region in France."
    examples = [_example("q0", context, [("Normandy", 31)]),
                _example("q1", context, [("France", 53)]),
                _example("q2", context, [], is_impossible=True)]
    f = squad.make_features(examples, wordpiece, max_seq_length=48, max_query_length=8,
                            training=False)
    assert len(f) == 3 and f.start_positions[2] == 0 and f.end_positions[2] == 0
    start = np.zeros(f.input_ids.shape, np.float32)
    end = np.zeros(f.input_ids.shape, np.float32)
    for row in range(2):
        start[row, f.start_positions[row]] = end[row, f.end_positions[row]] = 5.0
    start[0, 0] = end[0, 0] = 8.0  # q0: null 16 beats "Normandy" 10 by 6
    start[1, 0] = end[1, 0] = 1.0  # q1: null 2, "France" 10
    start[2, 0] = end[2, 0] = 3.0  # q2: null 6, every span 0
    predictions, diff, nbest = squad.postprocess(examples, f, start, end,
                                                 version_2_with_negative=True)
    assert predictions == {"q0": "", "q1": "France", "q2": ""}
    assert diff == pytest.approx({"q0": 6.0, "q1": -8.0, "q2": 6.0})
    assert nbest["q0"][0]["text"] == "" and nbest["q0"][1]["text"] == "Normandy"
    assert "" in [e["text"] for e in nbest["q1"]]  # the null answer is always listed
    lenient, _, _ = squad.postprocess(examples, f, start, end, version_2_with_negative=True,
                                      null_score_diff_threshold=7.0)
    # q2: 6 <= 7, so its best span: all spans score 0, the first start and end win ties.
    assert lenient == {"q0": "Normandy", "q1": "France", "q2": "The"}
    plain, none, _ = squad.postprocess(examples, f, start, end)
    assert plain["q0"] == "Normandy" and none == {}


# Ten one-piece words: context token k of a window starting at piece a sits at row position
# 4 + k - a, after [CLS] q ? [SEP].
NUMBERS = "one two three four five six seven eight nine ten"


def _number_features(wordpiece, max_seq_length, doc_stride=128):
    example = _example("n", NUMBERS, [("one", 0)])
    f = squad.make_features([example], wordpiece, max_seq_length=max_seq_length,
                            doc_stride=doc_stride, max_query_length=4, training=False)
    assert f.input_ids[0, :4].tolist() == [wordpiece.cls_id, *wordpiece.encode("q?"),
                                           wordpiece.sep_id]
    zeros = np.zeros(f.input_ids.shape, np.float32)
    return [example], f, zeros, zeros.copy()


def test_longest_answer_has_exactly_max_answer_length_tokens(wordpiece):
    """The original keeps a span when end - start + 1 <= max_answer_length: a best-scoring span
    one token longer is skipped, one exactly at the limit is the answer."""
    examples, f, start, end = _number_features(wordpiece, 32)
    assert len(f) == 1
    start[0, 4 + 1] = 10.0  # "two"
    end[0, 4 + 4] = 10.0  # "five": "two ... five" is 4 tokens, score 20
    end[0, 4 + 3] = 9.0  # "four": "two three four" is 3 tokens, score 19
    at_limit, _, nbest = squad.postprocess(examples, f, start, end, max_answer_length=3)
    assert at_limit == {"n": "two three four"}
    assert "two three four five" not in [e["text"] for e in nbest["n"]]
    longer, _, _ = squad.postprocess(examples, f, start, end, max_answer_length=4)
    assert longer == {"n": "two three four five"}


def test_a_start_is_taken_only_from_its_max_context_window(wordpiece):
    """Windows [0, 6) and [4, 10) share "five" and "six"; "six" (piece 5) has more context in
    the second. A start on it in the first window is not a candidate, however high its logit,
    as in the original's token_is_max_context check: the answer "six" scores from window 2."""
    examples, f, start, end = _number_features(wordpiece, 11, doc_stride=4)
    assert len(f) == 2 and f.lengths.tolist() == [11, 11]
    assert f.token_is_max_context[0, 4:10].tolist() == [True] * 5 + [False]
    assert f.token_is_max_context[1, 4:10].tolist() == [False] + [True] * 5
    start[0, 4 + 5] = 20.0  # "six" in window 1 (not its max context): "six" would score 20
    start[1, 4 + 1] = end[1, 4 + 1] = 8.0  # "six" in window 2: 16
    predictions, _, nbest = squad.postprocess(examples, f, start, end)
    assert predictions == {"n": "six"}
    assert (nbest["n"][0]["start_logit"], nbest["n"][0]["end_logit"]) == (8.0, 8.0)


def test_null_score_is_the_smallest_over_the_windows(wordpiece):
    """The original run_squad.py keeps the smallest [CLS] start + end logit over a question's
    windows as its null score: windows scoring 10, 2, 2 give 2, so "one", scoring 6, wins."""
    examples, f, start, end = _number_features(wordpiece, 11, doc_stride=2)
    assert len(f) == 3
    start[0, 0] = end[0, 0] = 5.0  # null 10 in window 1
    start[1:, 0] = end[1:, 0] = 1.0  # null 2 in windows 2 and 3
    start[0, 4] = end[0, 4] = 3.0  # "one" (only in window 1): 6
    predictions, diff, nbest = squad.postprocess(examples, f, start, end,
                                                 version_2_with_negative=True)
    assert diff == pytest.approx({"n": 2.0 - 6.0})
    assert predictions == {"n": "one"}
    assert nbest["n"][0]["text"] == "one"
    assert [e["start_logit"] for e in nbest["n"] if e["text"] == ""] == [1.0]


def test_answer_ending_in_a_combining_mark_keeps_it(wordpiece):
    """The uncased vocabulary's normalisation drops a decomposed accent (e + U+0301), so the
    piece's offsets end before it; the answer is the whole word, as the gold answer is."""
    word = "Montre\u0301al"  # decomposed: the mark inside the word
    ending = "cafe\u0301"  # decomposed: the mark ends the word, and the answer
    context = f"The {ending} in {word} opened in 1910."
    examples = [_example("q0", context, [(ending, 4)]), _example("q1", context, [(word, 13)])]
    f = squad.make_features(examples, wordpiece, max_seq_length=48, max_query_length=8,
                            training=True)
    spans = f.token_char_spans[0]
    assert spans[f.end_positions[0], 1] == 4 + len(ending) - 1  # the offsets lose the mark
    start = np.zeros(f.input_ids.shape, np.float32)
    end = np.zeros(f.input_ids.shape, np.float32)
    for row in range(2):
        start[row, f.start_positions[row]] = end[row, f.end_positions[row]] = 5.0
    predictions, _, _ = squad.postprocess(examples, f, start, end)
    assert predictions == {"q0": ending, "q1": word}
    assert squad_metrics.squad_v1_scores(examples, predictions)["exact_match"] == 100.0


@pytest.mark.parametrize("key", ["n_best_size", "max_answer_length"])
def test_answer_search_settings_below_one_are_refused(key):
    # 0 answered every question with "" (and was stored with the fine-tuned checkpoint).
    import importlib.util
    import pathlib

    from bert_jax.tasks import question_answering

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "finetune" / "squad.py"
    spec = importlib.util.spec_from_file_location("squad_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.get_config().data
    data[key] = 0
    with pytest.raises(ValueError, match=rf"data.{key}=0: expected >= 1"):
        question_answering.SquadFinetuneTask(data)
