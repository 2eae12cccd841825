r"""Multiple choice: pick the right continuation (or answer) among several, SWAG as in the paper.

    python -m bert_jax.finetune --config=configs/finetune/multiple_choice.py --workdir=OUT \
        --config.init_checkpoint=PATH --config.data.train_file=train.csv \
        --config.data.dev_file=val.csv

As the BERT paper fine-tunes on SWAG: each choice makes one `[CLS] context [SEP] choice [SEP]`
row (pairs truncated longest-first, as GLUE's), the pooled [CLS] output of each row gets one
score, and a softmax over an example's scores is trained with cross-entropy on the right one
(model.heads.BertForMultipleChoice, transformers' BertForMultipleChoice).

The files are CSV, TSV or JSON lines (table_files.py), local or gs://. The defaults read SWAG's
own CSV files (train.csv, val.csv, test.csv of the SWAG release): the context is `sent1`, each
choice is `sent2` (the start of the next sentence, data.start_column) followed by one of
`ending0`..`ending3`, and `label` is the right ending's index. Other data:
- data.choice_columns names one column per choice, or a single column that holds a JSON list
  of choices (JSON lines), so examples may have different numbers of choices (2 or more);
- data.start_column="" when the choices are whole texts;
- the label is the index of the right choice (0-based).

Batches are [B, C, L]: C is the most choices of an example in the batch; an example with fewer
has padded choices that the loss and the predictions leave out (`choice_mask`).

The splits are those of classification on one's own files (own_files.py): data.dev_fraction of
the train rows held out as dev without a data.dev_file; a data.test_file predicted with the best
epoch, and scored after every epoch too (accuracy_test) when it has the label column. Prediction
files are JSON lines in the file's order: {"id", "choice" (index), "text", "score",
"probabilities"} and, on labelled splits, "gold".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging

from bert_jax.model.heads import BertForMultipleChoice
from bert_jax.tasks import base, batching, classification, glue, own_files, table_files

NAME = "multiple_choice"
# The score of a padded choice: its softmax weight is 0 (finite, so that a filler row whose
# choices are all padding still has a finite loss, which its zero weight then drops).
PADDED_CHOICE_LOGIT = -1e9


@dataclasses.dataclass
class ChoiceExample:
    guid: str
    context: str
    choices: list[str]  # the texts paired with the context, start phrase included
    label: int | None  # the right choice's index; None when unlabelled


@dataclasses.dataclass
class ChoiceFeatures:
    """Every example's choices as rows of `rows` (glue.Features, the examples' rows in order):
    example i holds rows starts[i] .. starts[i + 1] - 1."""

    rows: glue.Features
    starts: np.ndarray  # [N + 1]
    labels: np.ndarray  # [N] int32 (0 where unlabelled)
    guids: list[str]
    choices: list[list[str]]

    def __len__(self) -> int:
        return len(self.guids)

    def num_choices(self, i: int) -> int:
        return int(self.starts[i + 1] - self.starts[i])

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """[N] the longest row of each example: what its batch is padded to (computed once:
        every batch reads it)."""
        return np.maximum.reduceat(self.rows.lengths, self.starts[:-1])


def encode(examples: list[ChoiceExample], tokenizer, max_seq_length: int) -> ChoiceFeatures:
    """One `[CLS] context [SEP] choice [SEP]` row per choice (glue.encode's pairs)."""
    pairs = [glue.Example(f"{e.guid} choice {k}", e.context, choice, None)
             for e in examples for k, choice in enumerate(e.choices)]
    rows = glue.encode(pairs, tokenizer, max_seq_length, unit="choices (context and choice)")
    starts = np.cumsum([0] + [len(e.choices) for e in examples])
    labels = np.asarray([0 if e.label is None else e.label for e in examples], np.int32)
    return ChoiceFeatures(rows, starts, labels, [e.guid for e in examples],
                          [list(e.choices) for e in examples])


def pad_batch(features: ChoiceFeatures, indices: list[int], batch_size: int,
              max_seq_length: int, filler: list[int], ladder: str = "coarse") -> dict:
    """Examples `indices` as a [batch_size, C, bucket] batch, C the most choices among them.
    Padded choices and filler rows are `[CLS] [SEP]` (a row attending to nothing gives NaNs);
    choice_mask is 0 on padded choices, example_weight 0 on filler rows."""
    counts = [features.num_choices(i) for i in indices]
    width = max(counts)
    length = batching.length_bucket(int(features.lengths[indices].max()), max_seq_length, ladder)
    shape = (batch_size, width, length)
    batch = {"input_ids": np.zeros(shape, np.int32),
             "token_type_ids": np.zeros(shape, np.int32),
             "attention_mask": np.zeros(shape, np.int32),
             "choice_mask": np.zeros((batch_size, width), np.int32),
             "label": np.zeros((batch_size,), np.int32),
             "example_weight": np.zeros((batch_size,), np.float32)}
    filler = np.asarray(filler, np.int32)
    batch["input_ids"][:, :, :len(filler)] = filler
    batch["attention_mask"][:, :, :len(filler)] = 1
    for r, i in enumerate(indices):
        for k in range(counts[r]):
            row = features.starts[i] + k
            ids = features.rows.input_ids[row]
            batch["input_ids"][r, k, :len(ids)] = ids
            batch["token_type_ids"][r, k, :len(ids)] = features.rows.type_ids[row]
            batch["attention_mask"][r, k, :len(ids)] = 1  # (longer than the filler)
        batch["choice_mask"][r, :counts[r]] = 1
        batch["label"][r] = features.labels[i]
        batch["example_weight"][r] = 1.0
    return batch


def readable_choices(logits: list[np.ndarray], choices: list[list[str]]) -> list[dict]:
    """Each example's scores ([its number of choices]) -> what `predict choose` prints:
    {"choice": index, "text", "score": its probability, "probabilities": one per choice}."""
    out = []
    for scores, texts in zip(logits, choices):
        scores = np.asarray(scores, np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        best = int(np.argmax(probs))
        out.append({"choice": best, "text": texts[best], "score": float(probs[best]),
                    "probabilities": [float(p) for p in probs]})
    return out


class MultipleChoiceTask(own_files.OwnFilesSplits, base.FinetuneTask):
    """Choices scored on the pooled output of `[CLS] context [SEP] choice [SEP]` rows."""

    name = NAME
    main_metric = "accuracy"
    objective = classification.OBJECTIVE

    def __init__(self, data_config):
        data = self.data = data_config
        column = own_files.column_list
        self.context_column = column(data.context_column, "context_column", (1,))[0]
        self.choice_columns = tuple(name.strip() for name in data.choice_columns.split(",")
                                    if name.strip())
        if not self.choice_columns:
            raise ValueError("data.choice_columns is empty: name one column per choice, or one "
                             "column that holds a list of choices")
        self.start_column = data.start_column.strip()
        self.label_column = column(data.label_column, "label_column", (1,))[0]
        self.check_files()
        self._filler: list[int] = []

    # -- reading

    def _choices(self, row: dict, where: str) -> list[str]:
        if len(self.choice_columns) == 1:
            value = row[self.choice_columns[0]]
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise ValueError(f"{where}: column {self.choice_columns[0]!r} holds {value!r}; "
                                 "with one choice column it must hold a list of texts (or name "
                                 "one column per choice in data.choice_columns)")
            choices = list(value)
        else:
            choices = [row[c] for c in self.choice_columns]
            bad = [c for c, v in zip(self.choice_columns, choices) if not isinstance(v, str)]
            if bad:
                raise ValueError(f"{where}: choice column(s) {bad} hold no text")
        if len(choices) < 2:
            raise ValueError(f"{where}: {len(choices)} choice(s); an example needs 2 or more")
        empty = [k for k, c in enumerate(choices) if not c.strip()]
        if empty:
            raise ValueError(f"{where}: choice(s) {empty} are empty")
        return choices

    def _label(self, value, where: str, num_choices: int) -> int:
        index = value.strip() if isinstance(value, str) else value
        if isinstance(index, str) and index.isdigit():
            index = int(index)
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"{where}: label {value!r} in column {self.label_column!r} is not "
                             "a choice index (0, 1, ...)")
        if not 0 <= index < num_choices:
            raise ValueError(f"{where}: label {index} is not the index of one of its "
                             f"{num_choices} choices (0..{num_choices - 1})")
        return index

    def _examples(self, path: str, split: str, with_labels: bool | None
                  ) -> tuple[list[ChoiceExample], bool]:
        """(examples, labelled) of a file; with_labels None: labelled when the label column
        is there (a test file)."""
        rows = table_files.read_rows(path, self.data.format)
        columns = set(rows[0][1]) if rows else set()
        if with_labels is None:
            with_labels = self.label_column in columns
        wanted = (self.context_column, *self.choice_columns,
                  *((self.start_column,) if self.start_column else ()),
                  *((self.label_column,) if with_labels else ()))
        id_column = self.data.id_column if self.data.id_column in columns else ""
        if self.data.id_column and not id_column and split != "train":
            logging.warning("%s has no id column %r: its rows are named by their index", path,
                            self.data.id_column)
        examples = []
        for index, (where, row) in enumerate(rows):
            missing = [c for c in wanted if c not in row]
            if missing:
                raise ValueError(f"{where}: no column(s) {missing}; the row has {sorted(row)} "
                                 "(set data.context_column, data.start_column, "
                                 "data.choice_columns, data.label_column)")
            context = row[self.context_column]
            if not isinstance(context, str) or not context.strip():
                raise ValueError(f"{where}: no context text in column {self.context_column!r}")
            choices = self._choices(row, where)
            if self.start_column:
                start = row[self.start_column]
                if not isinstance(start, str):
                    raise ValueError(f"{where}: column {self.start_column!r} holds no text")
                # SWAG's choice: the start of the next sentence and one ending of it.
                choices = [f"{start.strip()} {c.strip()}".strip() for c in choices]
            label = (self._label(row[self.label_column], where, len(choices)) if with_labels
                     else None)
            guid = str(row[id_column]) if id_column else str(index)
            examples.append(ChoiceExample(guid, context, choices, label))
        if not examples:
            raise ValueError(f"{path} has no rows for the {split} split")
        return examples, with_labels

    def load(self, tokenizer, *, with_train: bool = True) -> dict:
        data = self.data
        self._filler = [tokenizer.cls_id, tokenizer.sep_id]
        splits, _ = self.read_splits(self._examples, with_train)
        features = {}
        for split, examples in splits.items():
            if split == "train":
                examples = glue.subsample(examples, data.max_train_examples, data.subset_seed)
            features[split] = encode(examples, tokenizer, data.max_seq_length)
            logging.info("%s %s: %d examples, %d choices", self.name, split, len(examples),
                         len(features[split].rows))
        return features

    # -- the model and its batches

    def num_examples(self, features: ChoiceFeatures) -> int:
        return len(features)

    def make_model(self, model_config):
        return BertForMultipleChoice(model_config)

    def init_batch(self, max_seq_length: int) -> dict:
        ids = jnp.zeros((1, 2, max_seq_length), jnp.int32)
        return {"input_ids": ids, "token_type_ids": ids, "attention_mask": ids + 1}

    def batches(self, features: ChoiceFeatures, batch_size: int, *, rng=None):
        for indices in batching.index_groups(features.lengths, batch_size, rng=rng):
            yield indices, pad_batch(features, indices, batch_size, self.data.max_seq_length,
                                     self._filler, self.data.length_buckets)

    def sums(self, outputs, batch: dict) -> dict:
        logits = jnp.where(batch["choice_mask"] > 0, outputs, PADDED_CHOICE_LOGIT)
        return classification.classification_sums(logits, batch)

    # -- scoring and predictions

    def _scores(self, features: ChoiceFeatures, outputs: list[dict]) -> list[np.ndarray]:
        """Each example's scores of its own choices (padded ones dropped)."""
        return [o["logits"][:features.num_choices(i)] for i, o in enumerate(outputs)]

    def evaluate(self, split: str, features: ChoiceFeatures, outputs: list[dict]) -> dict:
        predicted = np.asarray([int(np.argmax(s)) for s in self._scores(features, outputs)])
        suffix = "" if split == "dev" else f"_{split}"
        accuracy = glue.METRICS["accuracy"](features.labels, predicted)
        return {f"accuracy{suffix}": float(accuracy)}

    def write_predictions(self, directory: str, split: str, features: ChoiceFeatures,
                          outputs: list[dict]) -> str:
        path = os.path.join(directory, f"{split}.jsonl")
        if jax.process_index() != 0:
            return path
        readable = readable_choices(self._scores(features, outputs), features.choices)
        labelled = split in self.dev_splits
        with tf.io.gfile.GFile(path, "w") as f:
            for i, guid in enumerate(features.guids):
                record = {"id": guid, **readable[i]}  # as `predict choose` prints it
                if labelled:
                    record["gold"] = int(features.labels[i])
                f.write(json.dumps(record) + "\n")
        return path

    def meta(self) -> dict:
        return {"name": self.name, "kind": base.CHOICES,
                "max_seq_length": self.data.max_seq_length}
