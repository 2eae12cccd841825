"""The pre-training pipeline: masking statistics, NSP provenance, packing, resume, bad input."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import jax
import ml_collections
import numpy as np
import pytest

from bert_jax.data import masking, pipeline, sources
from bert_jax.data import examples as examples_lib
from bert_jax.data.examples import IS_NEXT, NOT_NEXT
from bert_jax.data.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")


@pytest.fixture(scope="module")
def gutenberg(data_dir):
    return f"prose:{data_dir}/gutenberg/*.txt"


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_config_from_run_config_and_defaults():
    data = ml_collections.ConfigDict(
        {"source": "builtin", "mode": "full_sentences", "max_seq_length": 512,
         "max_predictions_per_seq": None, "tokenizer": "wordpiece:x", "pack": True}
    )
    config = pipeline.PipelineConfig.from_config(data)
    assert (config.source, config.mode, config.pack) == ("builtin", "full_sentences", True)
    assert config.num_predictions == 80
    assert pipeline.PipelineConfig("builtin").num_predictions == 20
    assert masking.default_max_predictions(256) == 40
    # BERT's 20 and 80 are for its 15%; another rate scales with the length there too.
    assert masking.default_max_predictions(128, 0.3) == 40
    assert masking.default_max_predictions(512, 0.4) == 206
    with pytest.raises(ValueError, match="pack"):
        pipeline.PipelineConfig("builtin", mode="nsp", pack=True)
    with pytest.raises(ValueError, match="mode"):
        pipeline.PipelineConfig("builtin", mode="mlm")


@pytest.fixture(scope="module")
def nsp_batches(gutenberg, tokenizer):
    """>= 10k sequences of 128 from the gutenberg books, nsp mode."""
    config = pipeline.PipelineConfig(gutenberg, max_seq_length=128)
    it = pipeline.make_pretraining_iterator(
        config, tokenizer, batch_size=256, seed=3, process_index=0, process_count=1
    )
    batches = _take(it, 40)
    it.close()
    return _concat(batches), _concat(batches[:1])


def test_batches_follow_the_contract(nsp_batches):
    batch, first = nsp_batches
    shapes = {k: (v.shape, v.dtype.name) for k, v in first.items()}
    assert shapes == {
        "input_ids": ((256, 128), "int32"), "token_type_ids": ((256, 128), "int32"),
        "attention_mask": ((256, 128), "int32"), "masked_positions": ((256, 20), "int32"),
        "masked_ids": ((256, 20), "int32"), "masked_weights": ((256, 20), "float32"),
        "next_sentence_label": ((256,), "int32"),
    }
    assert len(batch["input_ids"]) >= 10_000
    # Padding is id 0 exactly where attention is 0; no sequence exceeds max_seq_length (its
    # last [SEP] is inside the row).
    assert np.array_equal(batch["input_ids"] == 0, batch["attention_mask"] == 0)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.max() <= 128 and lengths.min() >= 5


def _masked_slots(batch):
    """(rows, positions) of the batch's real prediction slots, one entry a masked token."""
    w = batch["masked_weights"] > 0  # [N, P]
    rows = np.broadcast_to(np.arange(len(w))[:, None], w.shape)
    return rows[w], batch["masked_positions"][w]


def _unmasked(batch):
    """The batch's input_ids as they were before masking (masked_ids holds the originals)."""
    original = batch["input_ids"].copy()
    original[_masked_slots(batch)] = batch["masked_ids"][batch["masked_weights"] > 0]
    return original


def test_masking_statistics(nsp_batches, tokenizer):
    batch, _ = nsp_batches
    w = batch["masked_weights"] > 0  # [N, P]
    rows = np.broadcast_to(np.arange(len(w))[:, None], w.shape)
    positions = batch["masked_positions"]
    original = _unmasked(batch)  # undo the corruption
    special = np.isin(original, sorted(tokenizer.special_ids))
    maskable = (batch["attention_mask"] > 0) & ~special
    selected_fraction = w.sum() / maskable.sum()
    assert abs(selected_fraction - 0.15) < 0.005, selected_fraction
    # Special tokens and padding are never selected; positions are distinct within a row.
    assert not special[rows[w], positions[w]].any()
    assert all(len(set(p[m])) == m.sum() for p, m in zip(positions, w))
    now = batch["input_ids"][rows[w], positions[w]]
    target = batch["masked_ids"][w]
    is_mask = now == tokenizer.mask_id
    unchanged = now == target
    is_random = ~is_mask & ~unchanged
    assert abs(is_mask.mean() - 0.8) < 0.01
    assert abs(is_random.mean() - 0.1) < 0.01
    assert abs(unchanged.mean() - 0.1) < 0.01
    assert not np.isin(now[is_random], sorted(tokenizer.special_ids)).any()


def test_identical_rows_draw_their_masked_positions_independently(data_dir, tokenizer):
    """Every row draws its own positions: 2,000 copies of one sentence get (nearly) all-distinct
    position sets, and each maskable position is picked about equally often, 15% of the rows. A
    draw shared by the rows would mask the same few positions everywhere and never the rest."""
    text = tokenizer.encode(" ".join(_sentences_of_a_book(data_dir, 8)))
    assert len(text) >= 60
    ids = [tokenizer.cls_id, *text[:60], tokenizer.sep_id]
    rows, length = 2000, 64
    input_ids = np.zeros((rows, length), np.int32)  # [B, L], 2 tokens of padding
    input_ids[:, :len(ids)] = ids
    tables = masking.MaskingTables.from_tokenizer(tokenizer)
    out = masking.mask_batch(
        input_ids, (input_ids > 0).astype(np.int32), tables, max_predictions=10,
        masked_lm_prob=0.15, whole_word=False, rng=np.random.default_rng(0))
    w = out["masked_weights"] > 0
    assert (w.sum(1) == 9).all()  # round(0.15 * 60)
    sets = {tuple(p[m]) for p, m in zip(out["masked_positions"], w)}
    assert len(sets) >= 0.99 * rows
    picked = np.bincount(out["masked_positions"][w], minlength=length)  # [L]
    assert picked[0] == picked[61:].sum() == 0  # [CLS], [SEP] and padding never
    # Binomial(2000, 0.15) per position: 300 +- 16; the bound is ~4.7 standard deviations.
    expected = rows * 9 / 60
    assert np.abs(picked[1:61] - expected).max() < 0.25 * expected, picked[1:61]


@pytest.mark.parametrize("value", [-1, 0, 33])
def test_predictions_per_row_outside_1_to_the_row_length_are_refused(value):
    # -1 failed deep inside jax; more slots than tokens computed logits for nothing.
    with pytest.raises(ValueError, match=rf"data.max_predictions_per_seq={value}: expected 1 "
                                         r"to data.max_seq_length=32"):
        pipeline.PipelineConfig("builtin", max_seq_length=32, max_predictions_per_seq=value)


def test_a_prediction_cap_far_below_the_masking_rate_is_warned(caplog):
    with caplog.at_level("WARNING"):
        pipeline.PipelineConfig("text:x", max_seq_length=512, max_predictions_per_seq=20)
    assert ("data.max_predictions_per_seq=20 caps masking at 3.9% of a full row of 512 tokens, "
            "where data.masked_lm_prob=0.15 asks for ~77") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        pipeline.PipelineConfig("text:x", max_seq_length=128, max_predictions_per_seq=20)
        pipeline.PipelineConfig("text:x", max_seq_length=512, max_predictions_per_seq=76)
    assert "caps masking" not in caplog.text


def test_is_next_is_half(nsp_batches):
    batch, _ = nsp_batches
    labels = batch["next_sentence_label"]
    assert set(np.unique(labels)) == {IS_NEXT, NOT_NEXT}
    assert abs((labels == IS_NEXT).mean() - 0.5) < 0.02


def test_token_types_are_a_through_the_first_sep_and_b_through_the_last(nsp_batches, tokenizer):
    """BERT's create_pretraining_data gives [CLS] A [SEP] type 0 and B [SEP] type 1, padding 0:
    the model's segment embeddings learn that boundary, so the first [SEP] belongs to A."""
    batch, _ = nsp_batches
    is_sep = _unmasked(batch) == tokenizer.sep_id  # [N, L]
    assert (is_sep.sum(1) == 2).all()  # no [SEP] inside a segment
    length = is_sep.shape[1]
    first = np.argmax(is_sep, axis=1)  # [N]
    last = length - 1 - np.argmax(is_sep[:, ::-1], axis=1)  # [N]
    assert np.array_equal(last + 1, batch["attention_mask"].sum(1))  # the row ends on it
    column = np.arange(length)[None, :]
    expected = (column > first[:, None]) & (column <= last[:, None])  # [N, L]
    np.testing.assert_array_equal(batch["token_type_ids"], expected.astype(np.int32))


def _documents_by_position(spec, order=None):
    """{source position: document} for a whole (small) source, in one pass."""
    return dict(sources.HostShard(sources.open_source(spec)).iter_documents(order=order))


def _epoch0_unit_order(spec, seed=0):
    """The unit order of the first train epoch on host 0 (how the stream visits files)."""
    shard = sources.HostShard(sources.open_source(spec))
    return pipeline.train_unit_order(len(shard.units), seed, host=0, epoch=0)


def _is_slice(part, whole):
    """Whether `part` occurs contiguously inside `whole`."""
    key = " " + " ".join(map(str, part)) + " "
    return key in " " + " ".join(map(str, whole)) + " "


def test_nsp_pairs_have_the_right_provenance(gutenberg, tokenizer):
    config = pipeline.PipelineConfig(gutenberg, max_seq_length=128)
    documents = _documents_by_position(gutenberg, _epoch0_unit_order(gutenberg))
    tokenized = {}
    checked = {IS_NEXT: 0, NOT_NEXT: 0}
    for k, (example, positions) in enumerate(pipeline.iter_examples(config, tokenizer, seed=0)):
        if k % 4:  # a sample of ~2,000 pairs keeps the test fast
            continue
        seg = example.origin
        a_pos, b_pos = positions[seg.a_doc], positions[seg.b_doc]
        for p in (a_pos, b_pos):
            if p not in tokenized:
                tokenized[p] = tokenizer.encode_batch(documents[p])
        a_doc, b_doc = tokenized[a_pos], tokenized[b_pos]
        ids = example.ids.tolist()
        a, b = ids[1 : example.num_a - 1], ids[example.num_a : -1]
        assert len(ids) <= 128 and a and b
        assert _is_slice(a, sum(a_doc[seg.a_first : seg.a_end], []))
        assert _is_slice(b, sum(b_doc[seg.b_first : seg.b_end], []))
        if example.label == IS_NEXT:
            assert a_pos == b_pos and seg.a_end == seg.b_first  # consecutive, same document
        else:
            assert a_pos != b_pos  # B from another document
        checked[example.label] += 1
    assert min(checked.values()) > 100


def test_whole_word_masking_never_splits_a_word(gutenberg, tokenizer):
    config = pipeline.PipelineConfig(gutenberg, max_seq_length=128, whole_word_masking=True)
    it = pipeline.make_pretraining_iterator(
        config, tokenizer, batch_size=128, seed=5, process_index=0, process_count=1
    )
    batch = _concat(_take(it, 4))
    it.close()
    w = batch["masked_weights"] > 0
    rows = np.broadcast_to(np.arange(len(w))[:, None], w.shape)
    original = batch["input_ids"].copy()
    original[rows[w], batch["masked_positions"][w]] = batch["masked_ids"][w]
    selected = np.zeros(original.shape, bool)
    selected[rows[w], batch["masked_positions"][w]] = True
    special = np.isin(original, sorted(tokenizer.special_ids))
    # A "##" piece continues the word before it, unless truncation cut that word's head off
    # (then it follows [CLS]/[SEP] and starts what is left of the word).
    continuation = ~tokenizer.word_start_table()[original][:, 1:] & ~special[:, :-1]
    # A continuation piece is selected iff the token before it (same word) is.
    assert np.array_equal(selected[:, 1:][continuation], selected[:, :-1][continuation])
    assert selected[:, 1:][continuation].sum() > 100  # multi-piece words were masked
    fraction = w.sum() / ((batch["attention_mask"] > 0) & ~special).sum()
    assert 0.13 < fraction < 0.155  # never more than asked, beyond max(1, round(.)) rounding


def _sentences_of_a_book(data_dir, count):
    """`count` lines of real prose, one sentence-ish line each, from a staged book."""
    book = sorted((data_dir / "gutenberg").glob("*.txt"))[0].read_text(encoding="utf-8")
    lines = [" ".join(line.split()) for line in book.splitlines() if len(line.split()) > 4]
    return lines[200:200 + count]


@pytest.mark.parametrize("mode", ["nsp", "full_sentences"])
def test_documents_without_tokens_are_skipped_and_counted(tmp_path, data_dir, tokenizer, mode):
    # A BOM, zero-width spaces and soft hyphens encode to no tokens at all: the documents made
    # of them vanish after tokenization, and must neither be drawn for a NotNext segment (an
    # empty draw crashed the input thread) nor add a document separator to a row.
    lines = _sentences_of_a_book(data_dir, 24)
    empty = ["\ufeff", "\u200b\u200b", "\u00ad"]
    documents = [lines[:6], empty, lines[6:12], empty[:1], lines[12:18], empty, lines[18:]]
    (tmp_path / "corpus.txt").write_text("\n\n".join("\n".join(d) for d in documents) + "\n",
                                          encoding="utf-8")
    assert tokenizer.encode_batch(empty) == [[], [], []]
    config = pipeline.PipelineConfig(f"text:{tmp_path}/corpus.txt", max_seq_length=48,
                                     mode=mode, eval_fraction=0.0)
    by_position = _documents_by_position(f"text:{tmp_path}/corpus.txt")
    for seed in range(4):
        examples = list(pipeline.iter_examples(config, tokenizer, seed=seed))
        assert len(examples) > 5
        for example, positions in examples:
            ids = example.ids.tolist()
            assert not any(ids[k] == ids[k + 1] == tokenizer.sep_id for k in range(len(ids) - 1))
            # Provenance still names the right documents: A's head is its document's text.
            origin = example.origin if mode == "nsp" else example.origin[0]
            document = by_position[positions[origin.a_doc]]
            a = sum(tokenizer.encode_batch(document[origin.a_first:origin.a_end]), [])
            assert a and _is_slice(ids[1:4], a)
        if mode == "nsp":
            assert {IS_NEXT, NOT_NEXT} == {e.label for e, _ in examples}
    it = pipeline.make_pretraining_iterator(config, tokenizer, batch_size=2, seed=0,
                                            process_index=0, process_count=1)
    next(it)
    it.close()
    assert it.skipped["document without tokens skipped"] >= 3


def test_a_chunk_of_one_document_still_draws_half_not_next(tmp_path, data_dir, tokenizer):
    # One long document (no blank line): no other document to draw B from, so B comes from
    # elsewhere in it, never from A nor from the sentence that follows A.
    lines = _sentences_of_a_book(data_dir, 400)
    (tmp_path / "one.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = pipeline.PipelineConfig(f"text:{tmp_path}/one.txt", max_seq_length=64,
                                     eval_fraction=0.0)
    examples = [e for e, _ in pipeline.iter_examples(config, tokenizer, seed=0)]
    not_next = [e.origin for e in examples if e.label == NOT_NEXT]
    assert 0.35 < len(not_next) / len(examples) < 0.65
    for seg in not_next:
        assert seg.a_doc == seg.b_doc == 0
        outside_a = seg.b_end <= seg.a_first or seg.b_first > seg.a_end
        assert outside_a, seg  # not A, and not A's continuation (which starts at a_end)
    it = pipeline.make_pretraining_iterator(config, tokenizer, batch_size=2, seed=0,
                                            process_index=0, process_count=1)
    next(it)
    it.close()
    assert it.skipped.get(
        "nsp NotNext segment from the same document (a chunk of one document)", 0) > 0


def _whole_words_as_the_original(ids, maskable, n, word_start, rng):
    """The original's create_masked_lm_predictions selection, row by row: words (a maskable
    token that does not start a word continues the one before) in a random order, each taken
    when its tokens still fit in n, skipped when not."""
    draws = rng.random(ids.shape)  # [B, L]: the k-th word of a row (specials count) gets [b, k]
    selected = np.zeros(ids.shape, bool)
    for b in range(len(ids)):
        words, keys, k = [], [], -1
        for i in range(ids.shape[1]):
            continues = (i > 0 and maskable[b, i] and maskable[b, i - 1]
                         and not word_start[ids[b, i]])
            if not continues:
                k += 1
            if not maskable[b, i]:
                continue
            if continues:
                words[-1].append(i)
            else:
                words.append([i])
                keys.append(draws[b, k])
        words = [w for _, w in sorted(zip(keys, words), key=lambda pair: pair[0])]
        count = 0
        for w in words:
            if count >= n[b]:
                break
            if count + len(w) > n[b]:
                continue
            selected[b, w] = True
            count += len(w)
    return selected


def test_whole_word_selection_skips_a_word_that_does_not_fit_and_goes_on(tokenizer, gutenberg):
    config = pipeline.PipelineConfig(gutenberg, max_seq_length=48, eval_fraction=0.0)
    rows = [e.ids for e, _ in zip((e for e, _ in pipeline.iter_examples(
        config, tokenizer, seed=1)), range(64))]
    ids = np.zeros((len(rows), 48), np.int32)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = row
    tables = masking.MaskingTables.from_tokenizer(tokenizer)
    maskable = tables.maskable[ids] & (ids > 0)
    word_start = tables.word_start
    for seed in range(5):
        n = np.random.default_rng(100 + seed).integers(1, 9, len(ids))
        got = masking._select_whole_words(ids, maskable, n, tables, np.random.default_rng(seed))
        want = _whole_words_as_the_original(ids, maskable, n, word_start,
                                            np.random.default_rng(seed))
        np.testing.assert_array_equal(got, want)
        assert np.all(got.sum(1) <= n)
    assert (want.sum(1) == n).mean() > 0.9  # skipping fills nearly every row to its n


def test_full_sentences_separate_documents_once_and_never_end_on_a_separator():
    # Rows of at most 10 tokens between [CLS] and [SEP]; documents of sentences (lengths):
    # d0 (4, 4), d1 (3), d2 (2). d1's sentence does not fit after d0 and its separator, so the
    # first row is d0 alone (not d0 [SEP] [SEP]); d2 fits after d1 with one separator.
    lengths = [[4, 4], [3], [2]]
    sentence_lengths = [n for doc in lengths for n in doc]
    chunk = examples_lib.TokenizedChunk(
        ids=np.arange(10, 10 + sum(sentence_lengths), dtype=np.int32),
        sentence_starts=np.concatenate([[0], np.cumsum(sentence_lengths)]),
        doc_starts=np.concatenate([[0], np.cumsum([len(doc) for doc in lengths])]))
    options = examples_lib.ExampleOptions(mode=examples_lib.FULL_SENTENCES, max_seq_length=12,
                                          short_seq_prob=0.0, cls_id=2, sep_id=3)
    rows = [e.ids.tolist() for e in examples_lib.make_examples(
        chunk, options, np.random.default_rng(0), sources.SkipCounter())]
    assert rows == [[2, *range(10, 18), 3], [2, 18, 19, 20, 3, 21, 22, 3]]


def _kept_as_the_original(len_a, len_b, max_num_tokens):
    """Segment lengths after the original's truncate_seq_pair, one removal at a time: while the
    pair is too long, the longer segment loses a token, B when they are as long."""
    while len_a + len_b > max_num_tokens:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_truncating_a_pair_keeps_what_the_original_keeps_and_trims_both_ends():
    """_truncate_pair claims the original's rule in closed form: the same kept lengths for any
    lengths, each kept part a contiguous slice, and each dropped token taken from the front or
    the back on a fair coin (so the front share of a segment's d dropped is Binomial(d, 1/2))."""
    lengths = np.random.default_rng(0)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        len_a, len_b = (int(n) for n in lengths.integers(1, 130, 2))
        max_num_tokens = int(lengths.integers(2, 126))
        a, b = np.arange(len_a), np.arange(1000, 1000 + len_b)
        kept_a, kept_b = examples_lib._truncate_pair(a, b, max_num_tokens, rng)
        assert (len(kept_a), len(kept_b)) == _kept_as_the_original(len_a, len_b, max_num_tokens)
        for kept, whole in ((kept_a, a), (kept_b, b)):
            assert np.array_equal(kept, whole[kept[0] - whole[0]:][:len(kept)])
    # A of 60 tokens, B of 10, room for 40: A keeps 30 and drops 30, ~15 of them at its front.
    fronts = np.array([examples_lib._truncate_pair(np.arange(60), np.arange(10), 40, rng)[0][0]
                       for _ in range(4000)])
    assert abs(fronts.mean() - 15) < 0.3 and 6.5 < fronts.var() < 8.5  # Binomial: 15, 7.5


def test_packing_restarts_positions_and_never_overflows(data_dir, tokenizer):
    config = pipeline.PipelineConfig(
        f"text:{data_dir}/bert_sample/sample_text.txt", mode="full_sentences",
        max_seq_length=128, pack=True, short_seq_prob=0.5,
    )
    it = pipeline.make_pretraining_iterator(
        config, tokenizer, batch_size=16, seed=0, process_index=0, process_count=1
    )
    batch = _concat(_take(it, 4))
    it.close()
    assert "next_sentence_label" not in batch
    seq, pos, att = batch["sequence_ids"], batch["position_ids"], batch["attention_mask"]
    assert np.array_equal(seq > 0, att > 0)
    assert seq.max() >= 2  # some rows really hold several examples
    for r in range(len(seq)):
        for k in range(1, seq[r].max() + 1):
            where = np.flatnonzero(seq[r] == k)
            assert np.array_equal(pos[r, where], np.arange(len(where)))
            assert batch["input_ids"][r, where[0]] == tokenizer.cls_id
            assert where[-1] - where[0] + 1 == len(where)  # contiguous


@pytest.mark.parametrize(
    "source, mode, pack, n, m",
    [
        ("gutenberg", "nsp", False, 7, 5),  # resumes in the middle of a chunk
        ("sample", "full_sentences", True, 5, 6),  # crosses epochs (3 short documents)
        ("joined", "full_sentences", False, 6, 5),  # books + sample: host 1 reads both
        ("upsampled", "nsp", False, 6, 5),  # the same, books twice and the sample half the time
    ],
)
def test_resume_continues_the_same_stream(data_dir, tokenizer, source, mode, pack, n, m):
    spec = {
        "gutenberg": f"prose:{data_dir}/gutenberg/*.txt",
        "sample": f"text:{data_dir}/bert_sample/sample_text.txt",
        "joined": f"prose:{data_dir}/gutenberg/*.txt+text:{data_dir}/bert_sample/sample_text.txt",
    }[source.replace("upsampled", "joined")]
    config = pipeline.PipelineConfig(spec, mode=mode, pack=pack, max_seq_length=128,
                                     source_repeats=(2, 0.5) if source == "upsampled" else ())

    def make():
        return pipeline.make_pretraining_iterator(
            config, tokenizer, batch_size=32, seed=11, process_index=1, process_count=2
        )

    uninterrupted = make()
    expected = _take(uninterrupted, n + m)
    uninterrupted.close()
    first = make()
    _take(first, n)
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint would store it
    first.close()
    assert len(json.dumps(state)) < 300
    resumed = make()
    resumed.set_state(state)
    resumed.start()  # making batches before the first next(), as the training loop does;
    resumed.start()  # a second start while running changes nothing
    for got, want in zip(_take(resumed, m), expected[n:]):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    resumed.close()


def _selected(batch):
    """[B, L] bool: the positions the batch masked."""
    selected = np.zeros(batch["input_ids"].shape, bool)
    selected[_masked_slots(batch)] = True
    return selected


def test_hosts_mask_their_rows_independently(gutenberg, tokenizer):
    """Each host seeds its masks with its own index: two hosts' rows at the same index (full
    rows, nearly the same maskable positions) share about 15% of their masked positions, as
    independent draws do; one seed for all hosts would mask the same positions (~90% shared)
    in every host's row k, a correlation across the global batch."""
    config = pipeline.PipelineConfig(gutenberg, max_seq_length=128)
    selected = []
    for host in range(2):
        it = pipeline.make_pretraining_iterator(config, tokenizer, batch_size=64, seed=0,
                                                process_index=host, process_count=2)
        selected.append(_selected(next(it)))
        it.close()
    shared = (selected[0] & selected[1]).sum() / selected[0].sum()
    assert 0.08 < shared < 0.25, shared


def test_each_epoch_makes_new_examples(data_dir, tokenizer):
    """The module's promise: epochs repeat with new pairings and shuffles. With one unit (so the
    same unit order every epoch), the second epoch's examples differ from the first's."""
    config = pipeline.PipelineConfig(f"text:{data_dir}/bert_sample/sample_text.txt",
                                     max_seq_length=64, eval_fraction=0.0)

    def examples(epochs):
        return [e.ids.tobytes() for e, _ in pipeline.iter_examples(config, tokenizer, seed=0,
                                                                   epochs=epochs)]

    first = examples(1)
    both = examples(2)
    assert both[:len(first)] == first and len(both) > len(first) >= 10
    second = both[len(first):]
    # Sequences of 64 tokens from new pairings and lengths: few come out the same again.
    assert len(set(second) & set(first)) <= len(second) // 4, (len(first), len(second))


def test_source_repeats_read_each_source_that_many_times_an_epoch():
    books, sample = [0, 1, 2, 3, 4], [5]  # units of data.source=BOOKS+SAMPLE, say

    def visits(order):
        return [order.count(u) for u in books + sample]

    orders = [pipeline.train_unit_order(6, 0, 0, epoch, [2] * 5 + [1]) for epoch in range(3)]
    assert all(visits(order) == [2] * 5 + [1] for order in orders)
    assert orders[0] != orders[1]  # a new order every epoch
    # A fraction: that share of the source's units, another choice each epoch.
    chosen = []
    for epoch in range(20):
        order = pipeline.train_unit_order(6, 0, 0, epoch, [0.4] * 5 + [1.5], [0] * 5 + [1])
        assert sum(order.count(u) for u in books) == 2 and all(order.count(u) <= 1 for u in books)
        assert order.count(5) in (1, 2)  # 1.5 of one unit: once, or twice every other epoch
        chosen.append(tuple(sorted(set(order) - {5})))
    assert len(set(chosen)) > 3
    # Two sources with the same fraction each get their share: 0.5 of 4 units, 0.5 of 2.
    for epoch in range(5):
        order = pipeline.train_unit_order(6, 0, 0, epoch, [0.5] * 6, [0] * 4 + [1] * 2)
        assert len([u for u in order if u < 4]) == 2 and len([u for u in order if u >= 4]) == 1
    # Without repeats, the order is what it always was (resumed runs read on as before).
    assert pipeline.train_unit_order(6, 0, 0, 1) == np.random.default_rng(
        [0, 0, 1, 0xF11E]).permutation(6).tolist()


def test_source_repeats_multiply_a_sources_examples(data_dir, tokenizer):
    book, sample = (f"prose:{data_dir}/gutenberg/11-0.txt",
                    f"text:{data_dir}/bert_sample/sample_text.txt")

    def examples_in_an_epoch(spec, repeats=()):
        config = pipeline.PipelineConfig(spec, mode="full_sentences", max_seq_length=128,
                                         eval_fraction=0.0, source_repeats=repeats)
        return sum(1 for _ in pipeline.iter_examples(config, tokenizer, seed=0))

    alone = examples_in_an_epoch(book), examples_in_an_epoch(sample)
    upsampled = examples_in_an_epoch(f"{book}+{sample}", (3, 1))
    print(f"book {alone[0]}, sample {alone[1]} examples; 3 x book + sample: {upsampled}")
    assert upsampled == pytest.approx(3 * alone[0] + alone[1], rel=0.02)
    with pytest.raises(ValueError, match=r"data.source_repeats=\(3,\) has 1 values for the 2 "
                                         "source"):
        pipeline.PipelineConfig(f"{book}+{sample}", source_repeats=(3,))
    with pytest.raises(ValueError, match="every value must be > 0"):
        pipeline.PipelineConfig(f"{book}+{sample}", source_repeats=(1, 0))


def test_an_epoch_that_a_fraction_leaves_without_units_is_skipped(data_dir, tokenizer):
    # One file read 0.5 times an epoch: some epochs read nothing, which is no empty corpus.
    book = f"prose:{data_dir}/bert_sample/sample_text.txt"
    config = pipeline.PipelineConfig(book, mode="full_sentences", max_seq_length=64,
                                     eval_fraction=0.0, source_repeats=(0.5,))
    assert [] in [pipeline.train_unit_order(1, 0, 0, epoch, [0.5]) for epoch in range(4)]
    stream = pipeline.make_pretraining_iterator(config, tokenizer, batch_size=8, seed=0)
    try:
        _take(stream, 20)  # the sample text makes ~11 examples: several epochs' worth
        assert stream.get_state()["epoch"] >= 4
    finally:
        stream.close()


def test_every_host_gets_held_out_examples_from_few_small_files(gutenberg, tokenizer):
    # 5 books on 4 hosts, 1% held out: a handful of documents. Split by files (as train is),
    # hosts whose books hold none of them failed at the first evaluation while the others
    # waited for them in its collectives. Every host now makes the whole held-out set's
    # examples and keeps every 4th: together the hosts hold what one process would.
    config = pipeline.PipelineConfig(gutenberg, max_seq_length=128, eval_fraction=0.01)

    def examples(host, hosts):
        return [e.ids.tobytes() for e, _ in pipeline.iter_examples(
            config, tokenizer, seed=0, split="eval", process_index=host, process_count=hosts)]

    alone, shares = examples(0, 1), [examples(host, 4) for host in range(4)]
    assert all(len(share) >= len(alone) // 4 - 20 for share in shares)
    assert sorted(sum(shares, [])) == sorted(alone)
    stream = pipeline.make_pretraining_iterator(config, tokenizer, batch_size=4, seed=0,
                                                split="eval", process_index=3, process_count=4)
    try:
        assert next(stream)["input_ids"].shape == (4, 128)
    finally:
        stream.close()


def test_place_maps_batches_in_the_prefetch_thread(data_dir, tokenizer):
    """`place` (the training loop copies batches onto its mesh with it) runs off the consumer's
    thread, changes no value and leaves the iterator state exact."""
    config = pipeline.PipelineConfig(f"text:{data_dir}/bert_sample/sample_text.txt",
                                     max_seq_length=64)
    threads = []

    def place(batch):
        threads.append(threading.current_thread().name)
        return {k: jax.device_put(v) for k, v in batch.items()}

    def make(**kwargs):
        return pipeline.make_pretraining_iterator(
            config, tokenizer, batch_size=4, seed=0, process_index=0, process_count=1, **kwargs)

    plain, placed = make(), make(place=place)
    expected, got = _take(plain, 3), _take(placed, 3)
    assert placed.get_state() == plain.get_state()
    plain.close()
    placed.close()
    assert threads and threading.current_thread().name not in threads
    for g, e in zip(got, expected):
        assert all(isinstance(v, jax.Array) for v in g.values())
        for key in e:
            np.testing.assert_array_equal(np.asarray(g[key]), e[key], err_msg=key)


def test_a_failure_in_the_batch_thread_stops_the_chunk_thread_too(data_dir, tokenizer):
    def place(batch):
        raise RuntimeError("placing failed")

    config = pipeline.PipelineConfig(f"prose:{data_dir}/gutenberg/*.txt", max_seq_length=64)
    stream = pipeline.make_pretraining_iterator(config, tokenizer, batch_size=4, seed=0,
                                                place=place)
    with pytest.raises(RuntimeError, match="placing failed"):
        next(stream)
    deadline = time.monotonic() + 5
    while any(t.name == "input-chunks" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the chunk thread outlived the failed iterator"
        time.sleep(0.05)


def test_special_tokens_spelled_in_the_corpus_are_text(tmp_path, tokenizer):
    # As the original BERT's tokenizer read them: "[MASK]" -> "[", "mask", "]". Matched as
    # special tokens, they put a separator or an unlabelled mask inside a segment.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Type [MASK] to hide a word.\nA [SEP] ends a segment.\n")
    config = pipeline.PipelineConfig(f"text:{corpus}", mode="full_sentences",
                                     max_seq_length=32, eval_fraction=0.0)
    (example, _), = pipeline.iter_examples(config, tokenizer, seed=0)
    ids = example.ids.tolist()
    assert tokenizer.mask_id not in ids
    assert ids.count(tokenizer.sep_id) == 1 and ids[-1] == tokenizer.sep_id
    spelled = tokenizer.encode("Type [ MASK ] to hide a word.")
    assert ids[1:1 + len(spelled)] == spelled
    assert [tokenizer.id_to_token(i) for i in spelled[1:4]] == ["[", "mask", "]"]


def test_eval_split_holds_out_other_documents(gutenberg, tokenizer):
    config = pipeline.PipelineConfig(gutenberg, max_seq_length=128, eval_fraction=0.05)
    train_docs, eval_docs = set(), set()
    for split, docs in (("train", train_docs), ("eval", eval_docs)):
        for example, positions in pipeline.iter_examples(config, tokenizer, seed=0, split=split):
            docs.add(positions[example.origin.a_doc])
    # Eval positions refer to the eval (fixed) unit order; compare documents by their text.
    by_order = {"train": _documents_by_position(gutenberg, _epoch0_unit_order(gutenberg)),
                "eval": _documents_by_position(gutenberg)}
    texts = {split: {tuple(by_order[split][p]) for p in docs}
             for split, docs in (("train", train_docs), ("eval", eval_docs))}
    assert texts["eval"] and not texts["eval"] & texts["train"]
    assert 0.02 < len(texts["eval"]) / (len(texts["eval"]) + len(texts["train"])) < 0.1


def test_bad_input_is_counted_and_skipped(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_bytes(b"")
    long_sentence = " ".join(["word"] * 400)
    (tmp_path / "mixed.txt").write_bytes(
        b"Only one sentence here.\n\n"
        + b"Broken \xc3\x28 bytes here.\nA second sentence.\n" + long_sentence.encode()
        + b"\nAnd a last one.\n\nAnother document starts.\nIt goes on.\nIt ends.\n"
    )
    config = pipeline.PipelineConfig(f"text:{tmp_path}/*.txt", max_seq_length=64)
    it = pipeline.make_pretraining_iterator(
        config, tokenizer, batch_size=4, seed=0, process_index=0, process_count=1
    )
    batch = next(it)
    it.close()
    assert batch["attention_mask"].sum(1).max() <= 64
    # Each is counted once per pass over the input (the prefetch thread may be epochs ahead).
    skipped = it.skipped
    assert sorted(skipped) == [
        "input file without text skipped",
        "invalid UTF-8 byte sequence dropped",
        "one-sentence document skipped (nsp needs two)",
        "sentence longer than max_seq_length truncated",
    ]
    assert len(set(skipped.values())) <= 2 and min(skipped.values()) >= 1


def test_bad_sources_fail_clearly_and_never_hang(tmp_path, tokenizer, data_dir):
    with pytest.raises(FileNotFoundError, match="no-such-"):
        pipeline.make_pretraining_iterator(
            pipeline.PipelineConfig(f"text:{tmp_path}/no-such-*.txt"), tokenizer,
            batch_size=2, seed=0, process_index=0, process_count=1,
        )
    (tmp_path / "blank.txt").write_text("\n\n\n")
    it = pipeline.make_pretraining_iterator(
        pipeline.PipelineConfig(f"text:{tmp_path}/blank.txt"), tokenizer,
        batch_size=2, seed=0, process_index=0, process_count=1,
    )
    with pytest.raises(ValueError, match="blank.txt.*yields no train examples"):
        next(it)
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        pipeline.make_pretraining_iterator(
            pipeline.PipelineConfig("tfds:no_such_dataset_xyz"), tokenizer,
            batch_size=2, seed=0, process_index=0, process_count=1,
        )
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("hello\nworld\n##s\n")
    with pytest.raises(ValueError, match="special tokens"):
        load_tokenizer(f"wordpiece:{vocab}")


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from bert_jax.data import pipeline
    from bert_jax.data.tokenization import load_tokenizer
    tokenizer = load_tokenizer(sys.argv[2])
    config = pipeline.PipelineConfig(sys.argv[1], max_seq_length=128)
    it = pipeline.make_pretraining_iterator(
        config, tokenizer, batch_size=64, seed=0, process_index=0, process_count=1)
    for _ in range(int(sys.argv[3])):
        next(it)
    it.close()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


def test_memory_does_not_grow_with_the_corpus(tmp_path, data_dir):
    books = sorted((data_dir / "gutenberg").glob("*.txt"))
    for copy in range(10):
        for book in books:
            (tmp_path / f"{copy}-{book.name}").symlink_to(book)
    vocab = f"wordpiece:{data_dir}/bert_vocab/vocab.txt"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")

    def peak_mb(glob):
        # ~1.3 epochs of the single corpus: both runs read past one full copy of the books.
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, f"prose:{glob}", vocab, "160"],
            capture_output=True, text=True, timeout=300, env=env, check=True,
        )
        return int(out.stdout.split()[-1])

    once = peak_mb(f"{data_dir}/gutenberg/*.txt")
    ten_times = peak_mb(f"{tmp_path}/*.txt")
    assert ten_times - once < 100, (once, ten_times)
