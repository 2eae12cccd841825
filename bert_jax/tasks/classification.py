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
    """Weighted loss (cross-entropy, or squared error when num_labels = 1) and correct counts."""
    weights = batch["example_weight"]  # [B]
    logits = logits.astype(jnp.float32)  # [B, C]
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


# ----------------------------------------------------------------------------------------------
# The GLUE task for the shared fine-tuning loop.


class GlueFinetuneTask(base.FinetuneTask):
    """A GLUE task: TSV (GLUE distribution) or TFDS data, a head on the pooled [CLS] output,
    scikit-learn/scipy metrics, GLUE submission files for the test splits."""

    objective = OBJECTIVE
    writes_dev_predictions = False

    def __init__(self, task: glue.GlueTask, data_config):
        self.task = task
        self.name = task.name
        self.main_metric = task.main_metric
        self.data = data_config
        self._filler: list[int] = []

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
        self._filler = [tokenizer.cls_id, tokenizer.sep_id]
        directory = self._directory()
        load = functools.partial(glue.load_examples, task, source=data.source,
                                 directory=directory, tfds_data_dir=data.tfds_data_dir,
                                 skip_empty=data.skip_empty)
        splits = (["train"] if with_train else []) + task.dev_splits
        if data.predict_test:
            present = [s for s in task.test_splits
                       if glue.has_split(task, s, source=data.source, directory=directory)]
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
            features[split] = glue.encode(examples, tokenizer, data.max_seq_length,
                                          task.is_regression)
            logging.info("%s %s: %d examples", task.name, split, len(examples))
        return features

    def num_examples(self, features: glue.Features) -> int:
        return len(features)

    def make_model(self, model_config):
        return BertForSequenceClassification(model_config, self.task.num_labels)

    def batches(self, features: glue.Features, batch_size: int, *, rng=None):
        return glue.batches(features, batch_size, self.data.max_seq_length, self._filler,
                            rng=rng, ladder=self.data.length_buckets)

    def sums(self, outputs, batch: dict) -> dict:
        return classification_sums(outputs, batch)

    def _predictions(self, outputs: list[dict]) -> np.ndarray:
        logits = np.stack([o["logits"] for o in outputs])  # [N, num_labels]
        return glue.predictions_from_logits(self.task, logits)

    def evaluate(self, split: str, features: glue.Features, outputs: list[dict]) -> dict:
        values = glue.compute_metrics(self.task, self._predictions(outputs), features.labels)
        suffix = split[len("dev"):]  # MNLI's second dev split: accuracy_mismatched
        return {f"{name}{suffix}": value for name, value in values.items()}

    def write_predictions(self, directory: str, split: str, features: glue.Features,
                          outputs: list[dict]) -> str:
        path = os.path.join(directory, self.task.submissions[split])
        if jax.process_index() == 0:
            glue.write_submission(path, self.task, features.guids, self._predictions(outputs))
        return path

    def meta(self) -> dict:
        task = self.task
        return {"name": task.name, "labels": None if task.labels is None else list(task.labels),
                "is_regression": task.is_regression, "pair": len(task.text_columns) == 2,
                "metrics": list(task.metrics)}
