r"""Classification (or regression) of texts and text pairs from one's own data files.

    python -m bert_jax.finetune --config=configs/finetune/classify.py --workdir=OUT \
        --config.init_checkpoint=PATH --config.data.train_file=train.csv \
        --config.data.dev_file=dev.csv --config.data.text_columns=review \
        --config.data.label_column=stars

The files are CSV, TSV or JSON lines (table_files.py), local or gs://. One text column gives
`[CLS] text [SEP]` rows, two (comma-separated) give pairs, as GLUE's. The labels are
data.labels (comma-separated, in index order) or else every label of the train file, sorted
(as numbers when they all are integers); a dev or test label outside them is an error that
names the row. With data.regression the label is a number and the head has one output.

Without data.dev_file, data.dev_fraction of the train rows (fixed by data.subset_seed) is held
out as dev. data.test_file is predicted with the best epoch; when it has the label column it
is also scored after every epoch (metrics suffixed _test; the best epoch is still picked on
dev). Prediction files are JSON lines, one per row in the file's order: {"id", "label",
"score", "probabilities"} (a regression: {"id", "score"}) and, on labelled splits, "gold".

With data.multi_label a row has any number of labels (none included): a JSON list, or a
CSV/TSV cell joined by data.label_separator ("toxic|insult"). The head has one sigmoid per
label (transformers' multi_label_classification), and a label is predicted where its
probability exceeds 1/2; prediction files then hold "labels" (a list) and "probabilities".

Metrics (data.metrics, comma-separated; the first picks the best epoch): accuracy, f1 (binary:
the second label is the positive class), f1_macro, f1_micro, matthews_corrcoef; pearson and
spearman for a regression; for multi-label, accuracy (every label right), f1_micro and
f1_macro. All through scikit-learn / scipy.
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from sklearn import metrics as sk_metrics

from bert_jax.tasks import classification, glue, own_files, table_files

NAME = "classify"
METRICS = {**glue.METRICS,
           "f1_macro": functools.partial(sk_metrics.f1_score, average="macro", zero_division=0),
           "f1_micro": functools.partial(sk_metrics.f1_score, average="micro", zero_division=0)}
# Which metrics score which kind of task, the first of each the default main metric.
KIND_METRICS = {"classification": ("accuracy", "f1_macro", "f1", "f1_micro",
                                   "matthews_corrcoef"),
                "regression": ("pearson", "spearman"),
                "multi-label classification": ("f1_micro", "f1_macro", "accuracy")}
DEFAULT_METRICS = {"classification": ("accuracy", "f1_macro"),
                   "regression": ("pearson", "spearman"),
                   "multi-label classification": ("f1_micro", "f1_macro", "accuracy")}


def metric_names(value: str, kind: str) -> tuple[str, ...]:
    """data.metrics checked against the kind of task (KIND_METRICS; '' = its default)."""
    names = tuple(n.strip() for n in value.split(",") if n.strip()) or DEFAULT_METRICS[kind]
    for name in names:
        if name not in METRICS:
            raise ValueError(f"data.metrics names {name!r}; known metrics: {sorted(METRICS)}")
        if name not in KIND_METRICS[kind]:
            raise ValueError(f"data.metrics names {name!r}, which does not score a {kind} "
                             f"(its metrics: {', '.join(KIND_METRICS[kind])})")
    return names


def sorted_labels(values) -> list[str]:
    """The distinct labels, sorted as integers when they all are, else as strings."""
    distinct = set(values)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def label_text(value) -> str:
    """A label cell as a string: CSV/TSV cells are already; JSON numbers and booleans are
    written as JSON writes them (1, true)."""
    return value.strip() if isinstance(value, str) else json.dumps(value)


class TextClassificationTask(own_files.OwnFilesSplits, classification.SentenceClassificationTask):
    """One's own labelled files, classified (or regressed) by a head on the pooled output."""

    name = NAME

    def __init__(self, data_config):
        super().__init__(data_config)
        data = data_config
        self.text_columns = own_files.column_list(data.text_columns, "text_columns", (1, 2))
        self.label_column = own_files.column_list(data.label_column, "label_column", (1,))[0]
        self.pair = len(self.text_columns) == 2
        if data.regression and data.multi_label:
            raise ValueError("data.regression and data.multi_label are both set: choose one")
        self.multi_label = data.multi_label
        kind = ("regression" if data.regression else
                "multi-label classification" if data.multi_label else "classification")
        self.metrics = metric_names(data.metrics, kind)
        given = [name.strip() for name in data.labels.split(",")] if data.labels else []
        if data.regression and given:
            raise ValueError("data.labels names classes, but data.regression=True")
        fewest = 1 if data.multi_label else 2
        if given and (len(given) < fewest or "" in given or len(set(given)) != len(given)):
            raise ValueError(f"data.labels={data.labels!r}: expected {fewest} or more distinct, "
                             "non-empty label names, comma-separated")
        self.labels = None if data.regression else list(given)
        self.check_files()

    @property
    def labels_from_train(self) -> bool:  # scoring a checkpoint takes its labels instead
        return not self.data.regression and not self.data.labels

    # -- reading

    def _rows(self, path: str, split: str, with_labels: bool | None) -> tuple[list, bool]:
        """([(where, guid, text_a, text_b, raw label or None)], labelled) of a file. with_labels
        None: labelled when the label column is there (a test file)."""
        rows = table_files.read_rows(path, self.data.format)
        columns = set(rows[0][1]) if rows else set()
        if with_labels is None:
            with_labels = self.label_column in columns
        wanted = self.text_columns + ((self.label_column,) if with_labels else ())
        id_column = self.data.id_column  # train rows' ids name held-out dev rows
        if id_column and id_column not in columns:
            if split != "train":
                logging.warning("%s has no id column %r: its rows are named by their index",
                                path, id_column)
            id_column = ""
        if id_column:
            wanted += (id_column,)
        out, skipped = [], 0
        for index, (where, row) in enumerate(rows):
            missing = [c for c in wanted if c not in row]
            if missing:
                raise ValueError(f"{where}: no column(s) {missing}; the row has "
                                 f"{sorted(row)} (set data.text_columns, data.label_column, "
                                 "data.id_column)")
            texts = [row[c] for c in self.text_columns]
            bad = [c for c, t in zip(self.text_columns, texts) if not isinstance(t, str)]
            if bad:
                raise ValueError(f"{where}: column(s) {bad} hold no text")
            empty = [c for c, t in zip(self.text_columns, texts) if not t.strip()]
            if empty:
                if not self.data.skip_empty:
                    raise ValueError(f"{where}: empty text in column(s) {empty} (set "
                                     "data.skip_empty=True to skip such rows)")
                skipped += 1
                continue
            label = row[self.label_column] if with_labels else None
            if with_labels and label is None and not self.multi_label:  # (null: no labels)
                raise ValueError(f"{where}: no label in column {self.label_column!r}")
            guid = str(row[id_column]) if id_column else str(index)
            out.append((where, guid, texts[0], texts[1] if self.pair else None, label))
        if skipped:
            logging.warning("%s: skipped %d rows with an empty text", path, skipped)
        if not out:
            raise ValueError(f"{path} has no rows for the {split} split")
        return out, with_labels

    def _label_names(self, raw, where: str) -> list[str]:
        """A multi-label cell's names: a JSON list, or a string joined by the separator."""
        if raw is None:
            return []
        if isinstance(raw, list):
            names = [label_text(item) for item in raw]
        elif isinstance(raw, str):
            names = [part.strip() for part in raw.split(self.data.label_separator)]
        else:
            raise ValueError(f"{where}: multi-label column {self.label_column!r} holds "
                             f"{raw!r}; expected a list or a string of labels joined by "
                             f"{self.data.label_separator!r}")
        names = [name for name in names if name]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: a label repeats in {names}")
        return names

    def _raw_names(self, raw, where: str) -> list[str]:
        """The label names a labelled row gives (one, unless multi-label)."""
        return self._label_names(raw, where) if self.multi_label else [label_text(raw)]

    def _label(self, raw, where: str):
        if self.multi_label:  # multi-hot over self.labels
            names = self._label_names(raw, where)
            for name in names:
                self._check_known(name, where)
            return [int(label in names) for label in self.labels]
        if self.is_regression:
            try:
                score = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: label {raw!r} is not a number "
                                 "(data.regression=True)") from None
            if not math.isfinite(score):
                raise ValueError(f"{where}: label {raw!r} is not finite")
            return score
        name = label_text(raw)
        if not name:
            raise ValueError(f"{where}: empty label in column {self.label_column!r}")
        self._check_known(name, where)
        return self.labels.index(name)

    def _check_known(self, name: str, where: str) -> None:
        if name not in self.labels:
            source = "data.labels" if self.data.labels else (
                "the train file's labels" if self.data.train_file else "the checkpoint's labels")
            raise ValueError(f"{where}: label {name!r} is not among {source} {self.labels}")

    def _examples(self, rows: list, labelled: bool) -> list[glue.Example]:
        unlabelled = [0] * len(self.labels) if self.multi_label else None  # a multi-hot row
        return [glue.Example(guid, a, b, self._label(raw, where) if labelled else unlabelled)
                for where, guid, a, b, raw in rows]

    def load(self, tokenizer, *, with_train: bool = True) -> dict:
        data = self.data
        splits, train_file_rows = self.read_splits(self._rows, with_train)
        if self.labels == [] and train_file_rows:  # held-out dev rows' labels count too
            self.labels = sorted_labels(name for where, *_, raw in train_file_rows
                                        for name in self._raw_names(raw, where)
                                        if name)  # an empty one fails below
            logging.info("labels from %s: %s", data.train_file, self.labels)
        if self.labels is not None:
            if len(self.labels) < (1 if self.multi_label else 2):
                raise ValueError(f"{len(self.labels)} label(s) {self.labels}: a classifier "
                                 "needs at least 2 (data.regression=True for scores)")
            if "f1" in self.metrics and len(self.labels) != 2:
                raise ValueError(f"data.metrics names f1 (binary), but there are "
                                 f"{len(self.labels)} labels; use f1_macro")
        features = {}
        for split, rows in splits.items():
            examples = self._examples(rows, split != "test" or self._labelled_test)
            if split == "train":
                examples = glue.subsample(examples, data.max_train_examples, data.subset_seed)
            features[split] = self.encode(examples, tokenizer)
            logging.info("%s %s: %d examples", self.name, split, len(examples))
        return features

    # -- scoring and predictions

    def evaluate(self, split: str, features: glue.Features, outputs: list[dict]) -> dict:
        predictions = self.predictions(outputs)
        suffix = "" if split == "dev" else f"_{split}"
        return {f"{name}{suffix}": float(METRICS[name](features.labels, predictions))
                for name in self.metrics}

    def write_predictions(self, directory: str, split: str, features: glue.Features,
                          outputs: list[dict]) -> str:
        path = os.path.join(directory, f"{split}.jsonl")
        if jax.process_index() != 0:
            return path
        labelled = split in self.dev_splits
        readable = classification.readable_outputs(np.stack([o["logits"] for o in outputs]),
                                                   self.labels, self.multi_label)
        with tf.io.gfile.GFile(path, "w") as f:
            for i, guid in enumerate(features.guids):
                record = {"id": guid, **readable[i]}  # as `predict classify` prints it
                if labelled:
                    gold = features.labels[i]
                    record["gold"] = (float(gold) if self.is_regression else
                                      [n for n, g in zip(self.labels, gold) if g]
                                      if self.multi_label else self.labels[int(gold)])
                f.write(json.dumps(record) + "\n")
        return path
