"""Token classification (CoNLL-2003 NER) for the shared fine-tuning loop.

The head scores every token; a word's label sits on its first piece and the loss ignores the
other positions (label id -1). Dev scores are conlleval's entity-level precision / recall / F1
(fractions) on the words; the best epoch is picked on the dev split (CoNLL's testa), and the
test split (testb) is scored alongside it, as `f1_test` etc.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from bert_jax.data import shared_data
from bert_jax.model.heads import BertForTokenClassification
from bert_jax.tasks import base, batching, classification, conll, conlleval
from bert_jax.train import losses

# split -> file name in the CoNLL-2003 distribution (valid = testa, test = testb).
SPLIT_FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}


def token_sums(logits, batch: dict) -> dict:
    """Cross-entropy and correct counts over the labelled positions (label id >= 0)."""
    labels = batch["label_ids"]  # [B, L]
    weights = (labels >= 0).astype(jnp.float32)
    safe_labels = jnp.maximum(labels, 0)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)  # [B, L]
    correct = (jnp.argmax(logits, axis=-1) == safe_labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(per_token * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def _token_totals(batch: dict) -> dict:
    return {"count": jnp.sum((batch["label_ids"] >= 0).astype(jnp.float32))}


OBJECTIVE = losses.Objective(totals=_token_totals, loss=classification.mean_loss,
                             summarize=classification.summarize)


@dataclasses.dataclass
class NerSplit:
    """A split's sentences (gold tags) and the token rows made from them."""

    sentences: list[conll.Sentence]
    features: conll.TokenFeatures


class NerFinetuneTask(base.FinetuneTask):
    """CoNLL-2003 NER from the column files (any IOB1/IOB2 tagging of the same format)."""

    name = "conll2003"
    main_metric = "f1"
    objective = OBJECTIVE
    labels_from_train = True

    def __init__(self, data_config):
        self.data = data_config
        self.labels: list[str] = []
        self._pad_id = 0

    @property
    def dev_splits(self) -> list[str]:
        return ["dev", "test"] if self.data.score_test else ["dev"]

    def _path(self, split: str) -> str:
        directory = self.data.dir or str(shared_data.shared_data_path("conll2003"))
        return os.path.join(directory, SPLIT_FILES[split])

    def load(self, tokenizer, *, with_train: bool = True) -> dict:
        if not with_train and not self.labels:
            raise ValueError("loading conll2003 without its train split needs the label set "
                             "first (a fine-tuned checkpoint's)")
        sentences = {split: conll.read_conll(self._path(split), scheme=self.data.scheme)
                     for split in (["train"] if with_train else []) + self.dev_splits}
        if with_train:
            if self.data.max_train_examples > 0:
                rng = np.random.default_rng(self.data.subset_seed)
                keep = np.sort(rng.permutation(len(sentences["train"]))[
                    :self.data.max_train_examples])
                sentences["train"] = [sentences["train"][i] for i in keep]
            # The label set comes from the train split; a dev/test tag outside it is an error
            # (make_features names the sentence) rather than a silently unlearnable label.
            self.labels = conll.label_list(sentences["train"])
        self._pad_id = tokenizer.pad_id
        splits = {}
        for split, items in sentences.items():
            features = conll.make_features(items, tokenizer, self.labels,
                                           max_seq_length=self.data.max_seq_length)
            splits[split] = NerSplit(items, features)
            logging.info("conll2003 %s: %d sentences, %d rows", split, len(items), len(features))
        return splits

    def num_examples(self, split: NerSplit) -> int:
        return len(split.features)

    def make_model(self, model_config):
        return BertForTokenClassification(model_config, len(self.labels))

    def batches(self, split: NerSplit, batch_size: int, *, rng=None):
        features = split.features
        for rows in batching.index_groups(features.lengths, batch_size, rng=rng):
            length = batching.length_bucket(int(features.lengths[rows].max()),
                                            self.data.max_seq_length, self.data.length_buckets)
            ids = features.input_ids[rows]
            batch = batching.pad_rows({
                "input_ids": ids,
                "token_type_ids": np.zeros_like(ids),
                "attention_mask": (np.arange(ids.shape[1])[None, :]
                                   < features.lengths[rows, None]).astype(np.int32),
                "label_ids": features.label_ids[rows],
            }, batch_size, length)
            yield rows, batch

    def sums(self, outputs, batch: dict) -> dict:
        return token_sums(outputs, batch)

    def outputs(self, outputs) -> dict:
        return {"label_ids": jnp.argmax(outputs, axis=-1).astype(jnp.int32)}  # [B, L]

    def _predicted_tags(self, split: NerSplit, outputs: list[dict]) -> list[list[str]]:
        ids = np.zeros(split.features.input_ids.shape, np.int32)
        for row, output in enumerate(outputs):
            width = output["label_ids"].shape[0]
            ids[row, :width] = output["label_ids"]
        return conll.word_predictions(split.features, ids, self.labels, len(split.sentences))

    def evaluate(self, split: str, data: NerSplit, outputs: list[dict]) -> dict:
        scores = conlleval.evaluate([s.tags for s in data.sentences],
                                    self._predicted_tags(data, outputs))
        suffix = "" if split == "dev" else f"_{split}"
        metrics = {f"{name}{suffix}": float(scores[name])
                   for name in ("f1", "precision", "recall", "accuracy")}
        for entity, values in sorted(scores["per_type"].items()):
            metrics[f"f1_{entity}{suffix}"] = float(values["f1"])
        return metrics

    def write_predictions(self, directory: str, split: str, data: NerSplit,
                          outputs: list[dict]) -> str:
        path = os.path.join(directory, f"conll2003_{split}.txt")
        if jax.process_index() == 0:
            conll.write_predictions(path, data.sentences, self._predicted_tags(data, outputs))
        return path

    def meta(self) -> dict:
        return {"name": self.name, "kind": base.TOKENS, "labels": list(self.labels),
                "max_seq_length": self.data.max_seq_length}
