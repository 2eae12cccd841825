"""GLUE: metrics against known values, readers on the real TSV files, features, batches, errors."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from bert_jax.data import tokenization
from bert_jax.tasks import batching, classification, glue
from configs.finetune import glue as glue_configs

# (task, split, rows, label counts) from the staged data's MANIFEST.md.
REAL_FILES = [
    ("sst2", "train", 67349, {0: 29780, 1: 37569}),
    ("sst2", "dev", 872, {0: 428, 1: 444}),
    ("cola", "dev", 1043, {0: 322, 1: 721}),
    ("mrpc", "train", 3668, {0: 1194, 1: 2474}),
    ("mrpc", "dev", 408, {0: 129, 1: 279}),
    ("rte", "train", 2490, {0: 1249, 1: 1241}),  # entailment, not_entailment
    ("rte", "dev", 277, {0: 146, 1: 131}),
    ("stsb", "train", 5749, None),
    ("stsb", "dev", 1500, None),
]


@pytest.fixture(scope="module")
def glue_dir(data_dir):
    return str(data_dir / "glue")


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")


# ----------------------------------------------------------------------------------------------
# Metrics.


def test_metrics_match_hand_computed_values():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    preds = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    # tp=3 fp=1 fn=1 tn=3: accuracy 6/8, precision = recall = 3/4, MCC = (9 - 1) / 16.
    mrpc = glue.compute_metrics(glue.get_task("mrpc"), preds, labels)
    assert mrpc == pytest.approx({"f1": 0.75, "accuracy": 0.75})
    cola = glue.compute_metrics(glue.get_task("cola"), preds, labels)
    assert cola["matthews_corrcoef"] == pytest.approx(0.5)
    assert glue.compute_metrics(glue.get_task("cola"), 1 - labels, labels)[
        "matthews_corrcoef"] == pytest.approx(-1.0)


def test_f1_is_the_positive_class_f1_not_an_average():
    """MRPC and QQP report the F1 of class 1 (paraphrase / duplicate), scikit-learn's
    average="binary"; on unbalanced errors the macro, micro or weighted averages differ."""
    labels = np.array([1, 1, 1, 1, 0, 0])
    preds = np.array([1, 1, 0, 0, 0, 1])
    # Class 1: tp=2 fp=1 fn=2, P 2/3 R 1/2 -> F1 4/7. Class 0: P 1/3 R 1/2 -> F1 2/5, so
    # macro 17/35; micro = accuracy 1/2.
    for name in ("mrpc", "qqp"):
        scores = glue.compute_metrics(glue.get_task(name), preds, labels)
        assert scores == pytest.approx({"f1": 4 / 7, "accuracy": 0.5})
        assert scores["f1"] == pytest.approx(sk_metrics.f1_score(labels, preds,
                                                                 average="binary"))
        assert scores["f1"] != pytest.approx(sk_metrics.f1_score(labels, preds,
                                                                 average="macro"))


def test_each_task_picks_its_best_epoch_by_the_metric_bert_reports():
    """The BERT paper's GLUE table: Matthews correlation for CoLA, F1 for MRPC and QQP, Spearman
    for STS-B, accuracy for the rest (MNLI: the matched dev set's). The first metric is the one
    the fine-tuning loop ranks epochs and seeds by."""
    main = {"cola": "matthews_corrcoef", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearman",
            "qqp": "f1", "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy",
            "wnli": "accuracy"}
    assert {name: task.main_metric for name, task in glue.TASKS.items()} == main
    data = glue_configs.get_config("sst2").data
    for name, metric in main.items():
        assert classification.GlueFinetuneTask(glue.get_task(name), data).main_metric == metric


def test_mnli_matched_and_mismatched_dev_files_score_under_their_own_keys(tmp_path, tokenizer):
    """dev_matched.tsv gives `accuracy` (the main metric), dev_mismatched.tsv
    `accuracy_mismatched`: two files with different labels, one model that always says
    entailment."""
    header = "index\tsentence1\tsentence2\tgold_label\n"
    _write(tmp_path / "MNLI" / "dev_matched.tsv", header
           + "0\tA cat sat.\tA cat sat.\tentailment\n"
           + "1\tA dog ran.\tAn animal ran.\tentailment\n")
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", header
           + "0\tIt rained.\tIt was wet.\tentailment\n"
           + "1\tIt rained.\tIt was dry.\tcontradiction\n"
           + "2\tShe sang.\tShe was quiet.\tcontradiction\n"
           + "3\tHe left.\tHe stayed.\tneutral\n")
    config = glue_configs.get_config("mnli")
    config.data.dir = str(tmp_path)
    config.data.predict_test = False
    task = classification.GlueFinetuneTask(glue.get_task("mnli"), config.data)
    features = task.load(tokenizer, with_train=False)
    assert {split: len(f) for split, f in features.items()} == {"dev": 2, "dev_mismatched": 4}
    scores = {}
    for split in task.dev_splits:
        entailment = [{"logits": np.array([1.0, 0.0, 0.0])}] * len(features[split])
        scores.update(task.evaluate(split, features[split], entailment))
    assert scores == pytest.approx({"accuracy": 1.0, "accuracy_mismatched": 0.25})
    assert task.main_metric == "accuracy"


def test_correlations_of_a_monotone_but_nonlinear_relation():
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    stsb = glue.compute_metrics(glue.get_task("stsb"), scores ** 3, scores)
    assert stsb["spearman"] == pytest.approx(1.0)
    # Pearson of (x, x^3) over 0..5: computed by hand from the sums.
    x, y = scores, scores ** 3
    expected = np.sum((x - x.mean()) * (y - y.mean())) / np.sqrt(
        np.sum((x - x.mean()) ** 2) * np.sum((y - y.mean()) ** 2))
    assert stsb["pearson"] == pytest.approx(expected)
    assert 0.9 < stsb["pearson"] < 0.95


def test_every_task_has_metrics_labels_and_submission_names():
    assert sorted(glue.TASKS) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb",
                                  "wnli"]
    assert glue.get_task("mnli").dev_splits == ["dev", "dev_mismatched"]
    assert glue.get_task("mnli").submissions == {"test": "MNLI-m.tsv",
                                                 "test_mismatched": "MNLI-mm.tsv",
                                                 "test_ax": "AX.tsv"}
    assert glue.get_task("stsb").num_labels == 1 and glue.get_task("mnli").num_labels == 3
    with pytest.raises(ValueError, match="unknown GLUE task 'sst'"):
        glue.get_task("sst")


# ----------------------------------------------------------------------------------------------
# Readers on the real files.


@pytest.mark.parametrize("task_name,split,rows,label_counts", REAL_FILES)
def test_reader_row_and_label_counts(glue_dir, task_name, split, rows, label_counts):
    task = glue.get_task(task_name)
    examples = glue.load_examples(task, split, directory=glue_dir)
    assert len(examples) == rows
    labels = [e.label for e in examples]
    if label_counts is None:
        assert min(labels) == 0.0 and max(labels) == 5.0
    else:
        assert {k: labels.count(k) for k in set(labels)} == label_counts
    assert all(e.text_a.strip() for e in examples)
    assert all((e.text_b is not None) == (len(task.text_columns) == 2) for e in examples)


def test_mrpc_bom_header_and_unbalanced_quotes(glue_dir):
    examples = glue.load_examples(glue.get_task("mrpc"), "dev", directory=glue_dir)
    first = examples[0]
    # The BOM would otherwise make the first column '\ufeffQuality' and the label lookup fail.
    assert first.label == 1
    assert first.text_a.startswith("He said the foodservice pie business")
    # An opening quote that never closes stays text and does not swallow the next lines.
    assert first.text_b == "\"The foodservice pie business does not fit our long-term growth " \
                           "strategy."
    assert examples[1].text_a.startswith("Magnarelli said Racicot")
    assert sum('"' in e.text_a + e.text_b for e in examples) > 20


def test_cola_without_header(glue_dir):
    examples = glue.load_examples(glue.get_task("cola"), "dev", directory=glue_dir)
    assert examples[0].text_a == "The sailors rode the breeze clear of the rocks."
    assert examples[0].label == 1 and examples[0].text_b is None
    header, rows = glue.read_tsv(f"{glue_dir}/CoLA/dev.tsv")
    assert header is None and rows[0][1][0] == "gj04"


def test_rte_guids_are_the_index_column(glue_dir):
    examples = glue.load_examples(glue.get_task("rte"), "dev", directory=glue_dir)
    assert [e.guid for e in examples[:3]] == ["0", "1", "2"]


def test_mnli_predicts_the_diagnostic_set_for_a_full_submission(tmp_path):
    # GLUE's AX: its own folder of the distribution, scored by the server from an MNLI model's
    # predictions in AX.tsv; without the folder there is no such split to predict.
    task = glue.get_task("mnli")
    assert not glue.has_split(task, "test_ax", source="tsv", directory=str(tmp_path))
    _write(tmp_path / "diagnostic" / "diagnostic.tsv",
           "index\tsentence1\tsentence2\n0\tThe cat sat.\tA cat sat.\n"
           "1\tNo one came.\tSomeone came.\n")
    assert glue.has_split(task, "test_ax", source="tsv", directory=str(tmp_path))
    # From TFDS only once glue/ax is prepared: a run offline would fail on it, before training.
    tfds_dir = str(tmp_path / "tfds")
    assert glue.has_split(task, "test", source="tfds", directory="", tfds_data_dir=tfds_dir)
    assert not glue.has_split(task, "test_ax", source="tfds", directory="",
                              tfds_data_dir=tfds_dir)
    examples = glue.load_examples(task, "test_ax", directory=str(tmp_path))
    assert [(e.guid, e.text_b, e.label) for e in examples] == [
        ("0", "A cat sat.", None), ("1", "Someone came.", None)]
    path = tmp_path / task.submissions["test_ax"]
    glue.write_submission(str(path), task, ["0", "1"], np.array([0, 2]))
    assert path.read_text() == "index\tprediction\n0\tentailment\n1\tcontradiction\n"


def test_qqp_test_rows_keep_their_id_column_in_the_submission(tmp_path):
    # QQP's test file names its id column `id`, every other task's `index`; the GLUE server
    # matches predictions to rows by it.
    _write(tmp_path / "QQP" / "test.tsv",
           "id\tquestion1\tquestion2\n17\tIs it?\tIs it so?\n4\tWhy?\tHow?\n")
    task = glue.get_task("qqp")
    examples = glue.load_examples(task, "test", directory=str(tmp_path))
    assert [e.guid for e in examples] == ["17", "4"]
    path = tmp_path / "QQP.tsv"
    glue.write_submission(str(path), task, [e.guid for e in examples], np.array([1, 0]))
    assert path.read_text() == "index\tprediction\n17\t1\n4\t0\n"
    # A test file without an id column cannot make a submission.
    _write(tmp_path / "QQP" / "test.tsv", "question1\tquestion2\nIs it?\tIs it so?\n")
    with pytest.raises(ValueError, match=r"test.tsv: no id column \('index' or 'id'\)"):
        glue.load_examples(task, "test", directory=str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Bad input.


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_label_outside_the_label_set_is_an_error(tmp_path):
    _write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n"
           "0\tA dog runs.\tAn animal moves.\tentailment\n"
           "1\tA dog runs.\tA cat sleeps.\tcontradiction\n")
    with pytest.raises(ValueError, match=r"dev.tsv:3: label 'contradiction' is not in task rte's "
                                         r"label set \['entailment', 'not_entailment'\]"):
        glue.load_examples(glue.get_task("rte"), "dev", directory=str(tmp_path))


def test_bad_regression_label_is_an_error(tmp_path):
    _write(tmp_path / "STS-B" / "dev.tsv",
           "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
           "0\tg\tf\ty\t0\tn\tn\tA man.\tA man.\thigh\n")
    with pytest.raises(ValueError, match="label 'high' is not a number"):
        glue.load_examples(glue.get_task("stsb"), "dev", directory=str(tmp_path))


def test_empty_sentence_is_an_error_unless_skipped(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\ngood film\t1\n \t0\nbad film\t0\n")
    task = glue.get_task("sst2")
    with pytest.raises(ValueError, match=r"train.tsv:3: empty sentence in column 'sentence'"):
        glue.load_examples(task, "train", directory=str(tmp_path))
    kept = glue.load_examples(task, "train", directory=str(tmp_path), skip_empty=True)
    assert [e.text_a for e in kept] == ["good film", "bad film"]
    # Not on a test split: a submission without that row's prediction would be refused.
    _write(tmp_path / "SST-2" / "test.tsv", "index\tsentence\n0\tgood film\n1\t \n")
    with pytest.raises(ValueError, match=r"test.tsv:3: empty sentence in column 'sentence'; "
                                         r"data.skip_empty does not apply to test"):
        glue.load_examples(task, "test", directory=str(tmp_path), skip_empty=True)


def test_sentence_without_tokens_is_an_error(tokenizer):
    examples = [glue.Example("7", "\u200b", None, 0)]  # a zero-width space: text, but no token
    with pytest.raises(ValueError, match="example 7: a sentence has no tokens"):
        glue.encode(examples, tokenizer, 32)


def test_a_missing_split_names_its_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task mnli's dev split: no file .*MNLI/"
                                                r"dev_matched.tsv \(data.dir holds"):
        glue.load_examples(glue.get_task("mnli"), "dev", directory=str(tmp_path))


def test_wrong_column_count_names_the_line(tmp_path, caplog):
    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(ValueError, match=r"dev.tsv:3: 3 tab-separated fields, expected 2"):
        glue.load_examples(glue.get_task("sst2"), "dev", directory=str(tmp_path))
    # Skipped and counted with data.skip_empty (a few QQP rows lack a field, say).
    kept = glue.load_examples(glue.get_task("sst2"), "dev", directory=str(tmp_path),
                              skip_empty=True)
    assert [e.text_a for e in kept] == ["good"]
    assert "skipped 1 rows with a wrong number of fields (lines 3)" in caplog.text


# ----------------------------------------------------------------------------------------------
# TFDS records (the conversion; downloading needs a network).


def test_tfds_records_become_examples():
    task = glue.get_task("mnli")
    records = [{"premise": b"A man sleeps.", "hypothesis": b"A man is awake.", "label": 2,
                "idx": 5}]
    (example,) = glue.examples_from_tfds(task, records, "dev")
    assert example == glue.Example("5", "A man sleeps.", "A man is awake.", 2)
    assert task.labels[example.label] == "contradiction"  # TFDS's ClassLabel order
    test = glue.examples_from_tfds(task, [{**records[0], "label": -1}], "test")
    assert test[0].label is None
    with pytest.raises(ValueError, match="label 3 is outside task mnli's 3 labels"):
        glue.examples_from_tfds(task, [{**records[0], "label": 3}], "train")


# ----------------------------------------------------------------------------------------------
# Features and batches.


def test_pair_encoding_truncates_longest_first(tokenizer):
    assert glue.truncate_pair(10, 3, 8) == (5, 3)
    assert glue.truncate_pair(6, 6, 8) == (4, 4)
    example = glue.Example("0", "one two three four five six seven eight", "nine ten", 1)
    features = glue.encode([example], tokenizer, max_seq_length=9)
    ids, types = features.input_ids[0], features.type_ids[0]
    words = tokenizer.decode(ids).split()
    assert words == ["[CLS]", "one", "two", "three", "four", "[SEP]", "nine", "ten", "[SEP]"]
    assert types.tolist() == [0] * 6 + [1] * 3


def test_batches_cover_every_example_once_with_length_buckets(glue_dir, tokenizer):
    task = glue.get_task("mrpc")
    examples = glue.load_examples(task, "dev", directory=glue_dir)
    features = glue.encode(examples, tokenizer, 128)
    seen, shapes = [], set()
    filler = [tokenizer.cls_id, tokenizer.sep_id]
    for indices, batch in glue.batches(features, 32, 128, filler,
                                       rng=np.random.default_rng(0), sort_chunk=4):
        seen += indices
        shapes.add(batch["input_ids"].shape)
        weights = batch["example_weight"]
        assert weights.sum() == len(indices) and batch["input_ids"].shape[0] == 32
        assert batch["input_ids"].shape[1] in (16, 32, 64, 128)
        lengths = batch["attention_mask"].sum(axis=1)
        assert lengths.max() <= batch["input_ids"].shape[1]
        assert np.array_equal(batch["label"][:len(indices)], features.labels[indices])
        assert (batch["input_ids"][weights == 0][:, :2] == filler).all()
    assert sorted(seen) == list(range(len(examples)))
    assert len(shapes) > 1  # dynamic padding: not every batch pays for 128 tokens
    # Evaluation order is deterministic and sorted by length.
    first = [i for i, _ in glue.batches(features, 32, 128, filler)]
    assert first == [i for i, _ in glue.batches(features, 32, 128, filler)]
    assert features.lengths[first[0]].max() <= features.lengths[first[-1]].min()


def test_fine_length_buckets_pad_less_on_real_sentences(glue_dir, tokenizer):
    """The fine ladder: every batch padded to the smallest of 8, 16, 24, 32, 48, 64 that holds
    its longest row, and fewer computed positions per real token than powers of two."""
    fine = [batching.length_bucket(n, 512, "fine") for n in (1, 8, 9, 17, 25, 33, 49, 65, 97,
                                                              129, 193, 257, 385, 600)]
    assert fine == [8, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 512]
    task = glue.get_task("sst2")
    examples = glue.load_examples(task, "train", directory=glue_dir)[:4000]
    features = glue.encode(examples, tokenizer, 64)
    filler = [tokenizer.cls_id, tokenizer.sep_id]
    positions = {}
    for ladder in batching.LENGTH_BUCKETS:
        positions[ladder] = 0
        for indices, batch in glue.batches(features, 32, 64, filler, ladder=ladder,
                                           rng=np.random.default_rng(0)):
            width = batch["input_ids"].shape[1]
            longest = int(features.lengths[indices].max())
            assert width == batching.length_bucket(longest, 64, ladder)
            if ladder == "fine":
                rungs = [0, 8, 16, 24, 32, 48, 64]
                assert rungs[rungs.index(width) - 1] < longest <= width
            positions[ladder] += batch["input_ids"].size
    real = int(features.lengths.sum())
    assert positions["fine"] / real < 0.85 * positions["coarse"] / real, positions
    with pytest.raises(ValueError, match=r"data.length_buckets='pow2'; expected one of "
                                         r"\('coarse', 'fine'\)"):
        batching.length_bucket(10, 64, "pow2")


def test_subsample_is_fixed_and_ordered():
    examples = [glue.Example(str(i), "x", None, 0) for i in range(100)]
    a, b = glue.subsample(examples, 10, seed=3), glue.subsample(examples, 10, seed=3)
    assert a == b and len(a) == 10 and [int(e.guid) for e in a] == sorted(int(e.guid) for e in a)
    assert glue.subsample(examples, 0, seed=3) is examples


def test_submission_format(tmp_path):
    path = tmp_path / "RTE.tsv"
    glue.write_submission(str(path), glue.get_task("rte"), ["0", "1"], np.array([1, 0]))
    assert path.read_text() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n"
    path = tmp_path / "STS-B.tsv"
    glue.write_submission(str(path), glue.get_task("stsb"), ["4"], np.array([3.14159]))
    assert path.read_text() == "index\tprediction\n4\t3.142\n"


def test_files_on_another_filesystem_read_and_write_through_gfile(glue_dir):
    # TensorFlow's in-memory filesystem stands in for gs://: what os.path and open() cannot
    # reach, tf.io.gfile can; the BOM of MRPC's files is dropped there too.
    tf = pytest.importorskip("tensorflow")
    task = glue.get_task("mrpc")
    remote = "ram://glue_gfile_test"
    tf.io.gfile.makedirs(f"{remote}/MRPC")
    tf.io.gfile.copy(f"{glue_dir}/MRPC/dev.tsv", f"{remote}/MRPC/dev.tsv", overwrite=True)
    assert glue.has_split(task, "dev", source="tsv", directory=remote)
    assert not glue.has_split(task, "test", source="tsv", directory=remote)
    assert (glue.load_examples(task, "dev", directory=remote)
            == glue.load_examples(task, "dev", directory=glue_dir))
    glue.write_submission(f"{remote}/out/MRPC.tsv", task, ["0", "1"], np.array([1, 0]))
    with tf.io.gfile.GFile(f"{remote}/out/MRPC.tsv") as f:
        assert f.read() == "index\tprediction\n0\t1\n1\t0\n"
