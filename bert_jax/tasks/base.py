"""What the shared fine-tuning loop (`tasks/finetune.py`) needs from a task, and the task lookup.

A task owns everything that differs between GLUE, SQuAD, NER, ...: reading and encoding its data,
the model (encoder + head), the loss sums of a batch, batching, and turning the model's outputs
on a split back into metrics and prediction files. The loop owns everything they share: the
checkpoint and tokenizer, the mesh, the optimizer, the jitted steps, epochs, best-epoch selection,
seeds and results.json.

Outputs travel between the two as per-example host values: the loop runs the task's model on
each batch, splits the outputs (a dict of arrays with a leading batch axis) into one dict per
example (filler rows dropped) and hands the list, in feature order, to `evaluate` and
`write_predictions`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

import flax.linen as nn
import jax.numpy as jnp

from bert_jax.data import tokenization
from bert_jax.model.config import ModelConfig
from bert_jax.train import losses


# meta()["kind"] of the span (SQuAD), token (NER) and multiple-choice (SWAG) tasks; a sentence
# classifier's entry (GLUE, classify) has none.
SPANS, TOKENS, CHOICES = "question_answering", "token_classification", "multiple_choice"


def task_kind(task: dict) -> str | None:
    """SPANS, TOKENS, CHOICES, or None for a sentence classifier: the kind of a task's meta
    entry (a fine-tuned checkpoint's meta["task"])."""
    kind = task.get("kind")
    return kind if kind in (SPANS, TOKENS, CHOICES) else None


class FinetuneTask(abc.ABC):
    """One fine-tuning task. Subclasses are built from the run config (`make_task`)."""

    name: str
    main_metric: str  # picks the best epoch; higher is better
    objective: losses.Objective
    # Whether the best epoch's dev predictions are written too (SQuAD's predictions JSON, NER's
    # CoNLL columns); GLUE writes only its test-split submissions.
    writes_dev_predictions: bool = True

    @property
    @abc.abstractmethod
    def dev_splits(self) -> list[str]:
        """Splits scored after every epoch (their metric names get the split's suffix)."""

    @property
    def prediction_splits(self) -> list[str]:
        """Unlabelled splits whose predictions are written for the best epoch."""
        return []

    # Whether the label set comes from the train split (NER); scoring a checkpoint without
    # training (train.num_epochs=0) takes the checkpoint's labels instead.
    labels_from_train: bool = False

    @abc.abstractmethod
    def load(self, tokenizer: tokenization.Tokenizer, *, with_train: bool = True) -> dict:
        """split -> features, for 'train' (unless not with_train: scoring a checkpoint), the
        dev splits and any prediction splits present."""

    @abc.abstractmethod
    def num_examples(self, features) -> int:
        """Rows (features) of a split; every batch covers batch_size of them."""

    @abc.abstractmethod
    def make_model(self, model_config: ModelConfig) -> nn.Module:
        """Encoder under `bert` + the task's head; called as
        `model(input_ids, token_type_ids, attention_mask, deterministic=...)`."""

    @abc.abstractmethod
    def batches(self, features, batch_size: int, *, rng=None) -> Iterator[tuple[list[int], dict]]:
        """(feature indices, padded numpy batch of batch_size rows); shuffled when `rng` is given
        (training), a fixed order otherwise. Filler rows carry zero weight."""

    @abc.abstractmethod
    def sums(self, outputs, batch: dict) -> dict:
        """Loss sums of a batch (jax), the inputs of `objective`."""

    def outputs(self, outputs) -> dict:
        """What evaluation keeps of the model's outputs (jax, inside the jitted step): a dict of
        arrays with a leading batch axis. Default: {'logits': outputs}."""
        return {"logits": outputs}

    @abc.abstractmethod
    def evaluate(self, split: str, features, outputs: list[dict]) -> dict:
        """Metrics (name -> float) of a split from the per-example outputs in feature order."""

    def write_predictions(self, directory: str, split: str, features,
                          outputs: list[dict]) -> str | None:
        """Writes the split's predictions under `directory`; returns the file written."""
        return None

    def meta(self) -> dict:
        """What inference needs to read a fine-tuned checkpoint's outputs (stored in it)."""
        return {"name": self.name}

    def init_batch(self, max_seq_length: int) -> dict:
        """A dummy batch with the model's inputs for parameter initialisation ([1, L]; multiple
        choice: [1, C, L])."""
        ids = jnp.zeros((1, max_seq_length), jnp.int32)
        return {"input_ids": ids, "token_type_ids": ids, "attention_mask": ids + 1}


def make_task(config) -> FinetuneTask:
    """The task named by config.task, built from config.data (and its other sections)."""
    # Imported here: each task module pulls in its own readers and metrics.
    from bert_jax.tasks import classification, glue

    name = config.task
    if name in glue.TASKS:
        return classification.GlueFinetuneTask(glue.get_task(name), config.data)
    if name in ("squad", "squad_v2"):
        from bert_jax.tasks import question_answering

        return question_answering.SquadFinetuneTask(config.data, version_2=name == "squad_v2")
    if name == "classify":
        from bert_jax.tasks import text_classification

        return text_classification.TextClassificationTask(config.data)
    if name == "multiple_choice":
        from bert_jax.tasks import multiple_choice

        return multiple_choice.MultipleChoiceTask(config.data)
    if name == "conll2003":
        from bert_jax.tasks import token_classification

        return token_classification.NerFinetuneTask(config.data)
    raise ValueError(f"unknown fine-tuning task {name!r}; expected a GLUE task "
                     f"({', '.join(sorted(glue.TASKS))}), squad, squad_v2, conll2003, classify "
                     "or multiple_choice")
