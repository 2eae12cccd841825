"""GLUE: the task table, readers (GLUE TSV distribution and TFDS), features, batches, metrics.

    task = glue.get_task("mrpc")
    train = glue.load_examples(task, "train", source="tsv", directory="/data/glue")
    features = glue.encode(train, tokenizer, max_seq_length=128)
    for indices, batch in glue.batches(features, batch_size=32, max_seq_length=128, ...): ...

Every example becomes `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` (segment ids 0 / 1); pairs are
truncated longest-first. Batches are padded to a length bucket (16, 32, 64, ... capped at
max_seq_length), so short sentences don't pay for max_seq_length tokens and the step compiles
once per bucket; training batches are made from length-sorted chunks of a shuffled epoch.

The TSV files are read with csv.QUOTE_NONE: GLUE sentences hold unbalanced double quotes (MRPC),
which the default dialect would swallow across lines. MRPC starts with a UTF-8 BOM; CoLA's train
and dev files have no header.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.stats
import tensorflow as tf
from absl import logging
from sklearn import metrics as sk_metrics

from bert_jax.data import tokenization
from bert_jax.tasks import batching

# CoLA's train/dev columns (the files have no header): source, label, original label, sentence.
_COLA_COLUMNS = ("source", "label", "original_label", "sentence")


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its data is, how to read it, and how it is scored."""

    name: str
    folder: str  # in the GLUE distribution (download_glue_data.py layout)
    text_columns: tuple[str, ...]  # one (single sentence) or two (pair)
    label_column: str
    labels: tuple[str, ...] | None  # label strings in index order; None = regression
    metrics: tuple[str, ...]  # the first picks the best epoch
    splits: dict  # split -> TSV file: a name in `folder`, or a path under the GLUE root
    submissions: dict  # test split -> file name in a GLUE submission
    tfds_name: str
    tfds_text_features: tuple[str, ...]
    tfds_splits: dict  # split -> TFDS split name, or DATASET:SPLIT for another glue/ dataset

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def dev_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("dev")]

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("test")]


def _task(name, folder, text_columns, label_column, labels, metrics, tfds_text_features,
          submission, mnli_style=False) -> GlueTask:
    if mnli_style:
        # test_ax: GLUE's diagnostic set (AX), which a full submission holds as an MNLI
        # model's predictions, from its own folder of the distribution.
        splits = {"train": "train.tsv", "dev": "dev_matched.tsv",
                  "dev_mismatched": "dev_mismatched.tsv", "test": "test_matched.tsv",
                  "test_mismatched": "test_mismatched.tsv",
                  "test_ax": "diagnostic/diagnostic.tsv"}
        submissions = {"test": f"{submission}-m.tsv", "test_mismatched": f"{submission}-mm.tsv",
                       "test_ax": "AX.tsv"}
        tfds_splits = {"train": "train", "dev": "validation_matched",
                       "dev_mismatched": "validation_mismatched", "test": "test_matched",
                       "test_mismatched": "test_mismatched", "test_ax": "ax:test"}
    else:
        splits = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
        submissions = {"test": f"{submission}.tsv"}
        tfds_splits = {"train": "train", "dev": "validation", "test": "test"}
    return GlueTask(name, folder, text_columns, label_column, labels, metrics, splits, submissions,
                    name, tfds_text_features, tfds_splits)


# Label orders follow TFDS's ClassLabel names, so a TFDS integer label is our index as is.
TASKS = {t.name: t for t in (
    _task("cola", "CoLA", ("sentence",), "label", ("0", "1"),
          ("matthews_corrcoef", "accuracy"), ("sentence",), "CoLA"),
    _task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), ("sentence",),
          "SST-2"),
    _task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy"),
          ("sentence1", "sentence2"), "MRPC"),
    _task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("spearman", "pearson"),
          ("sentence1", "sentence2"), "STS-B"),
    _task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"),
          ("f1", "accuracy"), ("question1", "question2"), "QQP"),
    _task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
          ("entailment", "neutral", "contradiction"), ("accuracy",), ("premise", "hypothesis"),
          "MNLI", mnli_style=True),
    _task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
          ("accuracy",), ("question", "sentence"), "QNLI"),
    _task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
          ("accuracy",), ("sentence1", "sentence2"), "RTE"),
    _task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",),
          ("sentence1", "sentence2"), "WNLI"),
)}


def get_task(name: str) -> GlueTask:
    if name not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


# ----------------------------------------------------------------------------------------------
# Examples and readers.


@dataclasses.dataclass(frozen=True)
class Example:
    guid: str  # the row's `index` (what a submission file needs), else "<split>-<row>"
    text_a: str
    text_b: str | None
    label: int | float | None  # label index, regression score, or None (test split)


def read_tsv(path: str) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None, [(line number, fields)]) of a GLUE TSV file.

    utf-8-sig drops MRPC's BOM; QUOTE_NONE keeps quotes as text. A CoLA-style file (no header)
    is recognised by its first row: a header's first field is a column name, never a label.
    """
    with tf.io.gfile.GFile(path, "rb") as f:  # local, gs://, ...
        text = f.read().decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [(reader.line_num, fields) for fields in reader if fields]
    if not rows:
        raise ValueError(f"{path} is empty")
    first = rows[0][1]
    if _is_cola_row(first):
        return None, rows
    return first, rows[1:]


def _is_cola_row(fields: list[str]) -> bool:
    return len(fields) == 4 and fields[1] in ("0", "1") and fields[0] != "index"


def _row_dicts(path: str, malformed: list | None = None) -> Iterator[tuple[int, dict]]:
    """(line, {column: field}) of a GLUE TSV file. A row with another number of fields is an
    error, or, given a `malformed` list, its line number goes there and the row is skipped."""
    header, rows = read_tsv(path)
    columns = header or list(_COLA_COLUMNS)
    for line, fields in rows:
        if len(fields) != len(columns):
            if malformed is None:
                raise ValueError(f"{path}:{line}: {len(fields)} tab-separated fields, expected "
                                 f"{len(columns)} ({columns}); data.skip_empty=true skips such "
                                 f"rows of train and dev files")
            malformed.append(line)
            continue
        yield line, dict(zip(columns, fields))


def parse_label(task: GlueTask, value, where: str) -> int | float:
    """A label string (or TFDS number) -> its index, or the float score of a regression task."""
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"{where}: label {value!r} is not a number (task {task.name} "
                             f"is a regression)") from None
        if not math.isfinite(score):
            raise ValueError(f"{where}: label {value!r} is not finite")
        return score
    if value not in task.labels:
        raise ValueError(f"{where}: label {value!r} is not in task {task.name}'s label set "
                         f"{list(task.labels)}")
    return task.labels.index(value)


def _check_text(text: str, where: str, column: str) -> str:
    if not text or not text.strip():
        raise ValueError(f"{where}: empty sentence in column {column!r}")
    return text


def read_examples(task: GlueTask, path: str, split: str, skip_empty: bool = False) -> list[Example]:
    """Examples of one GLUE TSV file; labels are required except on test splits."""
    with_labels = not split.startswith("test")
    examples, skipped = [], 0
    # Never on a test split: the GLUE server takes a submission only with every row.
    malformed = [] if skip_empty and with_labels else None
    for line, row in _row_dicts(path, malformed):
        where = f"{path}:{line}"
        missing = [c for c in task.text_columns + ((task.label_column,) if with_labels else ())
                   if c not in row]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} for task {task.name}; "
                             f"columns are {sorted(row)}")
        try:
            texts = [_check_text(row[c], where, c) for c in task.text_columns]
        except ValueError as e:
            if not skip_empty:
                raise
            if not with_labels:  # the GLUE server takes a submission only with every row
                raise ValueError(f"{e}; data.skip_empty does not apply to {split}: a "
                                 f"submission needs a prediction for every test row") from None
            skipped += 1
            continue
        label = parse_label(task, row[task.label_column], where) if with_labels else None
        # Test rows are named by their id in a submission: `index` in every task's file but
        # QQP's, whose column is `id`.
        guid = row.get("index", row.get("id"))
        if guid is None:
            if not with_labels:
                raise ValueError(f"{path}: no id column ('index' or 'id') for task "
                                 f"{task.name}; a submission names each test row by it. "
                                 f"Columns are {sorted(row)}")
            guid = f"{split}-{len(examples)}"
        examples.append(Example(guid, texts[0], texts[1] if len(texts) > 1 else None, label))
    if skipped:
        logging.warning("%s: skipped %d rows with an empty sentence", path, skipped)
    if malformed:
        logging.warning("%s: skipped %d rows with a wrong number of fields (lines %s)", path,
                        len(malformed), ", ".join(map(str, malformed[:10])))
    return examples


def examples_from_tfds(task: GlueTask, records, split: str) -> list[Example]:
    """TFDS glue/<task> records (numpy dicts: bytes texts, int/float label, idx) -> examples.

    TFDS marks test labels -1; they become None.
    """
    examples = []
    for i, record in enumerate(records):
        where = f"tfds glue/{task.tfds_name} {split} record {i}"
        texts = [_check_text(_text(record[f]), where, f) for f in task.tfds_text_features]
        raw = record["label"]
        label = None
        if not split.startswith("test") and not (not task.is_regression and int(raw) == -1):
            if task.is_regression:
                label = parse_label(task, float(raw), where)
            else:
                if not 0 <= int(raw) < task.num_labels:
                    raise ValueError(f"{where}: label {int(raw)} is outside task {task.name}'s "
                                     f"{task.num_labels} labels {list(task.labels)}")
                label = int(raw)
        guid = str(int(record["idx"])) if "idx" in record else f"{split}-{i}"
        examples.append(Example(guid, texts[0], texts[1] if len(texts) > 1 else None, label))
    return examples


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def split_path(task: GlueTask, split: str, directory: str) -> str:
    if split not in task.splits:
        raise ValueError(f"task {task.name} has no split {split!r}; it has {list(task.splits)}")
    file = task.splits[split]
    return os.path.join(directory, *([file] if "/" in file else [task.folder, file]))


def load_examples(task: GlueTask, split: str, *, source: str = "tsv", directory: str = "",
                  tfds_data_dir: str | None = None, skip_empty: bool = False) -> list[Example]:
    """A split from the GLUE TSV distribution under `directory`, or from TFDS glue/<task>."""
    if source == "tsv":
        path = split_path(task, split, directory)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"task {task.name}'s {split} split: no file {path} (data.dir "
                                    f"holds the GLUE distribution's folders, e.g. "
                                    f"{task.folder}/{task.splits[split]})")
        return read_examples(task, path, split, skip_empty)
    if source == "tfds":
        import tensorflow_datasets as tfds

        name, tfds_split = _tfds_dataset_and_split(task, split)
        dataset = tfds.load(f"glue/{name}", split=tfds_split, data_dir=tfds_data_dir or None)
        return examples_from_tfds(task, tfds.as_numpy(dataset), split)
    raise ValueError(f"data.source {source!r} is not one of 'tsv', 'tfds'")


def _tfds_dataset_and_split(task: GlueTask, split: str) -> tuple[str, str]:
    """glue/<dataset> and its split for one of the task's splits (AX: glue/ax's test)."""
    other, _, tfds_split = task.tfds_splits[split].rpartition(":")
    return other or task.tfds_name, tfds_split


def has_split(task: GlueTask, split: str, *, source: str, directory: str,
              tfds_data_dir: str | None = None) -> bool:
    """Whether the split's file is there; from TFDS, every split of the task's own dataset is
    (downloaded if need be), another dataset's (glue/ax) only once prepared."""
    if split not in task.splits:
        return False
    if source != "tfds":
        return tf.io.gfile.exists(split_path(task, split, directory))
    dataset, _ = _tfds_dataset_and_split(task, split)
    if dataset == task.tfds_name:
        return True
    import tensorflow_datasets as tfds

    prepared = tfds.builder(f"glue/{dataset}", data_dir=tfds_data_dir or None).is_prepared()
    if not prepared:
        logging.info("TFDS glue/%s is not prepared: no %s predictions (tfds build glue/%s)",
                     dataset, split, dataset)
    return prepared


def subsample(examples: list[Example], max_examples: int, seed: int) -> list[Example]:
    """A fixed random subset (the same for every run seed), in the original order."""
    if max_examples <= 0 or max_examples >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), max_examples, replace=False))
    return [examples[i] for i in keep]


# ----------------------------------------------------------------------------------------------
# Features and batches.


@dataclasses.dataclass
class Features:
    """Token rows of a split: `[CLS] A [SEP] (B [SEP])`, unpadded, with their labels."""

    input_ids: list[np.ndarray]  # each [n] int32
    type_ids: list[np.ndarray]  # each [n] int32
    labels: np.ndarray  # [N] int32 or float32 (0 where unlabelled); [N, C] multi-hot int32
    # for several labels per example (text_classification's multi_label)
    guids: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.input_ids), np.int64, len(self.input_ids))


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation of a pair to `budget` tokens: the longer side loses a token
    at a time (the first on ties), as the original BERT does."""
    while len_a + len_b > budget:
        if len_a >= len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def encode(examples: Sequence[Example], tokenizer: tokenization.Tokenizer, max_seq_length: int,
           is_regression: bool = False, unit: str = "examples") -> Features:
    """Tokenizes examples (in one batch call per side) into [CLS] A [SEP] (B [SEP]) rows; the
    truncation warning counts them as `unit`."""
    if max_seq_length < 4:
        raise ValueError(f"max_seq_length must be at least 4, got {max_seq_length}")
    ids_a = tokenizer.encode_batch([e.text_a for e in examples])
    paired = [e.text_b is not None for e in examples]
    ids_b_list = tokenizer.encode_batch([e.text_b for e in examples if e.text_b is not None])
    ids_b_iter = iter(ids_b_list)
    input_ids, type_ids = [], []
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    truncated = 0
    for example, a, has_b in zip(examples, ids_a, paired):
        b = next(ids_b_iter) if has_b else None
        if not a or (has_b and not b):
            raise ValueError(f"example {example.guid}: a sentence has no tokens "
                             f"({example.text_a!r}, {example.text_b!r})")
        truncated += len(a) + (len(b) + 1 if b else 0) + 2 > max_seq_length
        if b is None:
            a = a[:max_seq_length - 2]
            row, types = [cls, *a, sep], [0] * (len(a) + 2)
        else:
            len_a, len_b = truncate_pair(len(a), len(b), max_seq_length - 3)
            row = [cls, *a[:len_a], sep, *b[:len_b], sep]
            types = [0] * (len_a + 2) + [1] * (len_b + 1)
        input_ids.append(np.asarray(row, np.int32))
        type_ids.append(np.asarray(types, np.int32))
    if truncated:
        logging.warning("%d of %d %s are longer than max_seq_length=%d tokens and were "
                        "truncated%s", truncated, len(examples), unit, max_seq_length,
                        " (pairs longest-first)" if any(paired) else "")
    dtype = np.float32 if is_regression else np.int32
    labels = np.asarray([0 if e.label is None else e.label for e in examples], dtype)
    return Features(input_ids, type_ids, labels, [e.guid for e in examples])


def pad_batch(features: Features, indices: Sequence[int], batch_size: int,
              max_seq_length: int, filler: Sequence[int], ladder: str = "coarse") -> dict:
    """Rows `indices` padded to [batch_size, bucket] (of `ladder`, batching.LENGTH_BUCKETS);
    filler rows ([CLS] [SEP]) weigh 0."""
    rows = [features.input_ids[i] for i in indices]
    length = batching.length_bucket(max(len(r) for r in rows), max_seq_length, ladder)
    batch = {
        "input_ids": np.zeros((batch_size, length), np.int32),
        "token_type_ids": np.zeros((batch_size, length), np.int32),
        "attention_mask": np.zeros((batch_size, length), np.int32),
        "label": np.zeros((batch_size, *features.labels.shape[1:]), features.labels.dtype),
        "example_weight": np.zeros((batch_size,), np.float32),
    }
    for r in range(batch_size):
        if r < len(indices):
            i = indices[r]
            row, types = features.input_ids[i], features.type_ids[i]
            batch["token_type_ids"][r, :len(row)] = types
            batch["label"][r] = features.labels[i]
            batch["example_weight"][r] = 1.0
        else:
            # A row that attends to nothing is wasted work at best and NaNs at worst.
            row = np.asarray(filler, np.int32)
        batch["input_ids"][r, :len(row)] = row
        batch["attention_mask"][r, :len(row)] = 1
    return batch


def batches(features: Features, batch_size: int, max_seq_length: int, filler: Sequence[int], *,
            rng: np.random.Generator | None = None, sort_chunk: int = 50,
            ladder: str = "coarse") -> Iterator[tuple[list[int], dict]]:
    """(example indices, padded batch) over all examples, every batch of batch_size rows.

    With `rng` (training): shuffle, sort chunks of sort_chunk batches by length, cut, and shuffle
    the batches. Without (evaluation): sorted by length, deterministic.
    """
    for indices in batching.index_groups(features.lengths, batch_size, rng=rng,
                                         sort_chunk=sort_chunk):
        yield indices, pad_batch(features, indices, batch_size, max_seq_length, filler, ladder)


# ----------------------------------------------------------------------------------------------
# Metrics and predictions.


def compute_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict:
    """The task's metrics (scikit-learn / scipy) of predictions (label indices or scores)."""
    return {name: float(METRICS[name](labels, predictions)) for name in task.metrics}


METRICS = {
    "accuracy": sk_metrics.accuracy_score,
    "f1": sk_metrics.f1_score,  # binary, positive class 1 (paraphrase / duplicate)
    "matthews_corrcoef": sk_metrics.matthews_corrcoef,
    "pearson": lambda y, p: scipy.stats.pearsonr(y, p)[0],
    "spearman": lambda y, p: scipy.stats.spearmanr(y, p)[0],
}


def write_submission(path: str, task: GlueTask, guids: Sequence[str],
                     predictions: np.ndarray) -> None:
    """A GLUE submission file: `index<TAB>prediction`, labels as the task's label strings."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as f:  # local or gs://, as every other output
        f.write("index\tprediction\n")
        for guid, prediction in zip(guids, predictions):
            value = (f"{float(prediction):.3f}" if task.is_regression
                     else task.labels[int(prediction)])
            f.write(f"{guid}\t{value}\n")
