"""Sequence classification / regression on the pooled output (GLUE): sums, objective, the task.

The shared fine-tuning loop trains on `classification_sums` with `OBJECTIVE`; batches carry
`label` ([B] int32, or float32 for regression) and `example_weight` ([B] float32, 0 on the
filler rows that pad a batch to its fixed size).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from bert_jax.data import shared_data
from bert_jax.model.heads import BertForSequenceClassification
from bert_jax.tasks import base, glue
from bert_jax.train import losses


def classification_sums(logits, batch: dict) -> dict:
    """Weighted loss (cross-entropy, or squared error when num_labels = 1, or with multi-hot
    [B, C] labels the mean binary cross-entropy over the labels, as transformers' multi-label
    loss) and correct counts (multi-label: every label right)."""
    weights = batch["example_weight"]  # [B]
    logits = logits.astype(jnp.float32)  # [B, C]
    if batch["label"].ndim == 2:  # several labels per example: one sigmoid each
        targets = batch["label"].astype(jnp.float32)
        per_example = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
        correct = jnp.all((logits > 0) == (targets > 0.5), axis=-1).astype(jnp.float32)
        return {"loss_sum": jnp.sum(per_example * weights),
                "correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}
    if logits.shape[-1] == 1:
        errors = jnp.square(logits[:, 0] - batch["label"].astype(jnp.float32))  # [B]
        return {"loss_sum": jnp.sum(errors * weights), "count": jnp.sum(weights)}
    labels = batch["label"].astype(jnp.int32)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(per_example * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def _totals(batch: dict) -> dict:
    return {"count": jnp.sum(batch["example_weight"])}


def mean_loss(sums: dict, totals: dict):
    """Mean over the real examples of the whole (accumulated) batch."""
    return sums["loss_sum"] / jnp.maximum(totals["count"], 1.0)


def summarize(sums: dict) -> dict:
    count = jnp.maximum(sums["count"], 1.0)
    metrics = {"task_loss": sums["loss_sum"] / count}
    if "correct" in sums:
        metrics["accuracy"] = sums["correct"] / count
    return metrics


OBJECTIVE = losses.Objective(totals=_totals, loss=mean_loss, summarize=summarize)


def readable_outputs(logits: np.ndarray, labels: list[str] | None,
                     multi_label: bool = False) -> list[dict]:
    """[N, C] logits -> per input what `predict classify` prints: {"label", "score",
    "probabilities"} (softmax), {"labels": those above 1/2, "probabilities"} (a sigmoid per
    label), or {"score"} for a regression (labels None)."""
    logits = np.asarray(logits, np.float64)
    if labels is None:
        return [{"score": float(x)} for x in logits[:, 0]]
    if multi_label:
        probs = 1 / (1 + np.exp(-logits))
        return [{"labels": [name for name, q in zip(labels, p) if q > 0.5],
                 "probabilities": {name: float(q) for name, q in zip(labels, p)}}
                for p in probs]
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return [{"label": labels[int(np.argmax(p))], "score": float(np.max(p)),
             "probabilities": {name: float(q) for name, q in zip(labels, p)}} for p in probs]


# ----------------------------------------------------------------------------------------------
# Tasks for the shared fine-tuning loop.


class SentenceClassificationTask(base.FinetuneTask):
    """A head on the pooled [CLS] output of `[CLS] A [SEP] (B [SEP])` rows (glue.encode): what
    GLUE and classification of one's own files (text_classification.py) share. Subclasses read
    the data and set `labels` (label names in index order; None for a regression), `metrics`
    (the first picks the best epoch) and `pair` (whether inputs are pairs)."""

    objective = OBJECTIVE
    labels: list[str] | None
    metrics: tuple[str, ...]
    pair: bool | None
    multi_label: bool = False  # any number of labels per example, one sigmoid each

    def __init__(self, data_config):
        self.data = data_config
        self._filler: list[int] = []

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    def num_examples(self, features: glue.Features) -> int:
        return len(features)

    def make_model(self, model_config):
        return BertForSequenceClassification(model_config,
                                             1 if self.labels is None else len(self.labels))

    def encode(self, examples: list[glue.Example], tokenizer) -> glue.Features:
        self._filler = [tokenizer.cls_id, tokenizer.sep_id]
        return glue.encode(examples, tokenizer, self.data.max_seq_length, self.is_regression)

    def batches(self, features: glue.Features, batch_size: int, *, rng=None):
        return glue.batches(features, batch_size, self.data.max_seq_length, self._filler,
                            rng=rng, ladder=self.data.length_buckets)

    def sums(self, outputs, batch: dict) -> dict:
        return classification_sums(outputs, batch)

    def predictions(self, outputs: list[dict]) -> np.ndarray:
        """Label indices, or a regression's scores, from the per-example outputs."""
        logits = np.stack([o["logits"] for o in outputs])  # [N, num_labels]
        if self.is_regression:
            return logits[:, 0].astype(np.float32)
        if self.multi_label:  # [N, C] multi-hot: every label whose probability exceeds 1/2
            return (logits > 0).astype(np.int32)
        return np.argmax(logits, axis=-1).astype(np.int32)

    def meta(self) -> dict:
        meta = {"name": self.name, "labels": None if self.labels is None else list(self.labels),
                "is_regression": self.is_regression, "pair": self.pair,
                "metrics": list(self.metrics)}
        return {**meta, "multi_label": True} if self.multi_label else meta


class GlueFinetuneTask(SentenceClassificationTask):
    """A GLUE task: TSV (GLUE distribution) or TFDS data, scikit-learn/scipy metrics, GLUE
    submission files for the test splits."""

    writes_dev_predictions = False

    def __init__(self, task: glue.GlueTask, data_config):
        super().__init__(data_config)
        self.task = task
        self.name = task.name
        self.labels = None if task.labels is None else list(task.labels)
        self.metrics = task.metrics
        self.pair = len(task.text_columns) == 2

    @property
    def dev_splits(self) -> list[str]:
        return self.task.dev_splits

    @property
    def prediction_splits(self) -> list[str]:
        return self.task.test_splits

    def _directory(self) -> str:
        if self.data.source != "tsv" or self.data.dir:
            return self.data.dir
        return str(shared_data.shared_data_path("glue"))

    def load(self, tokenizer, *, with_train: bool = True) -> dict:
        data, task = self.data, self.task
        directory = self._directory()
        load = functools.partial(glue.load_examples, task, source=data.source,
                                 directory=directory, tfds_data_dir=data.tfds_data_dir,
                                 skip_empty=data.skip_empty)
        splits = (["train"] if with_train else []) + task.dev_splits
        if data.predict_test:
            present = [s for s in task.test_splits
                       if glue.has_split(task, s, source=data.source, directory=directory,
                                         tfds_data_dir=data.tfds_data_dir)]
            if not present:
                logging.info("no test split of %s found: no submission file", task.name)
            splits += present
        features = {}
        for split in splits:
            examples = load(split)
            if split == "train":
                examples = glue.subsample(examples, data.max_train_examples, data.subset_seed)
            if not examples:
                raise ValueError(f"the {split} split of {task.name} has no examples")
            features[split] = self.encode(examples, tokenizer)
            logging.info("%s %s: %d examples", task.name, split, len(examples))
        return features

    def evaluate(self, split: str, features: glue.Features, outputs: list[dict]) -> dict:
        values = glue.compute_metrics(self.task, self.predictions(outputs), features.labels)
        suffix = split[len("dev"):]  # MNLI's second dev split: accuracy_mismatched
        return {f"{name}{suffix}": value for name, value in values.items()}

    def write_predictions(self, directory: str, split: str, features: glue.Features,
                          outputs: list[dict]) -> str:
        path = os.path.join(directory, self.task.submissions[split])
        if jax.process_index() == 0:
            glue.write_submission(path, self.task, features.guids, self.predictions(outputs))
        return path
