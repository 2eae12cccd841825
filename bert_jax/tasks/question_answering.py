"""Extractive question answering (SQuAD v1.1 / v2.0) for the shared fine-tuning loop.

Start and end logits over every token of a window; the loss is the mean of the start and end
cross-entropies (padding excluded), the target [CLS] when the window holds no answer. Dev scores
are the official EM / F1 (percent) from `squad.postprocess` (n-best spans mapped back to the
context's characters); v2 adds the HasAns / NoAns breakdown and the tuned null threshold
(best_f1_thresh).

Data: the official JSON files (data.train_file / data.dev_file, plain or zipped, local or
gs://), TFDS (`squad/v1.1`, `squad/v2.0`), or, with no train file, a seeded split of one file's
articles (by default the staged SQuAD v1.1 dev set: train on most articles, score the rest).
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
from bert_jax.model.heads import BertForQuestionAnswering
from bert_jax.tasks import base, batching, classification, squad, squad_metrics

_NOT_A_POSITION = -1e9  # logit of padding: never a start or end


def span_sums(outputs: dict, batch: dict) -> dict:
    """Weighted mean of the start and end cross-entropies; exact (start and end) hits."""
    weights = batch["example_weight"]  # [B]
    real = batch["attention_mask"] > 0  # [B, L]
    per_side, hits = [], []
    for side in ("start", "end"):
        logits = jnp.where(real, outputs[f"{side}_logits"], _NOT_A_POSITION)  # [B, L]
        targets = batch[f"{side}_positions"]  # [B]
        per_side.append(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
        hits.append(jnp.argmax(logits, axis=-1) == targets)
    per_example = (per_side[0] + per_side[1]) / 2  # [B]
    correct = (hits[0] & hits[1]).astype(jnp.float32)
    return {"loss_sum": jnp.sum(per_example * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


@dataclasses.dataclass
class SquadSplit:
    """A split's questions and the windows made from them."""

    examples: list[squad.SquadExample]
    features: squad.SquadFeatures


class SquadFinetuneTask(base.FinetuneTask):
    """SQuAD v1.1 (`squad`) or v2.0 with unanswerable questions (`squad_v2`)."""

    main_metric = "f1"
    objective = classification.OBJECTIVE  # per-window example weights, as classification

    def __init__(self, data_config, version_2: bool = False):
        for key in ("n_best_size", "max_answer_length"):  # 0 answers every question with ""
            if data_config[key] < 1:
                raise ValueError(f"data.{key}={data_config[key]}: expected >= 1")
        self.data = data_config
        self.version_2 = version_2
        self.name = "squad_v2" if version_2 else "squad"

    @property
    def dev_splits(self) -> list[str]:
        return ["dev"]

    def _examples(self, with_train: bool) -> dict[str, list[squad.SquadExample]]:
        data = self.data
        if data.source == "tfds":
            import tensorflow_datasets as tfds

            name = "squad/v2.0" if self.version_2 else "squad/v1.1"
            load = lambda split: squad.examples_from_tfds(tfds.as_numpy(  # noqa: E731
                tfds.load(name, split=split, data_dir=data.tfds_data_dir or None)))
            return {"train": load("train"), "dev": load("validation")} if with_train else {
                "dev": load("validation")}
        if data.source != "json":
            raise ValueError(f"data.source must be json or tfds, got {data.source!r}")
        if data.train_file:
            if not data.dev_file:
                raise ValueError("data.train_file is set but data.dev_file is not: give both, or "
                                 "neither to split one file's articles")
            dev = {"dev": squad.read_squad(data.dev_file)[0]}
            return {"train": squad.read_squad(data.train_file)[0], **dev} if with_train else dev
        path = data.dev_file or str(shared_data.shared_data_path("squad", "dev-v1.1.json.zip"))
        if not with_train:  # scoring only: nothing to hold out from, the whole file is scored
            logging.info("%s: scoring all of its questions (fine-tuning without "
                         "data.train_file trains on %g of its articles)", path,
                         1 - data.heldout_fraction)
            return {"dev": squad.read_squad(path)[0]}
        train, heldout = squad.split_articles(squad.read_squad(path)[0], data.heldout_fraction,
                                              data.split_seed)
        logging.info("%s: %d questions to train on, %d held out (articles split, seed %d)",
                     path, len(train), len(heldout), data.split_seed)
        return {"train": train, "dev": heldout}

    def load(self, tokenizer, *, with_train: bool = True) -> dict:
        data = self.data
        examples = self._examples(with_train)
        if with_train and data.max_train_examples > 0:
            rng = np.random.default_rng(data.subset_seed)
            keep = np.sort(rng.permutation(len(examples["train"]))[:data.max_train_examples])
            examples["train"] = [examples["train"][i] for i in keep]
        splits = {}
        for split, items in examples.items():
            features = squad.make_features(
                items, tokenizer, max_seq_length=data.max_seq_length,
                doc_stride=data.doc_stride, max_query_length=data.max_query_length,
                training=split == "train")
            splits[split] = SquadSplit(items, features)
            logging.info("%s %s: %d questions, %d windows", self.name, split, len(items),
                         len(features))
        return splits

    def num_examples(self, split: SquadSplit) -> int:
        return len(split.features)

    def make_model(self, model_config):
        return BertForQuestionAnswering(model_config)

    def batches(self, split: SquadSplit, batch_size: int, *, rng=None):
        features = split.features
        for rows in batching.index_groups(features.lengths, batch_size, rng=rng):
            length = batching.length_bucket(int(features.lengths[rows].max()),
                                            self.data.max_seq_length, self.data.length_buckets)
            yield rows, batching.pad_rows(features.batch(rows), batch_size, length)

    def sums(self, outputs, batch: dict) -> dict:
        return span_sums(outputs, batch)

    def outputs(self, outputs) -> dict:
        return outputs  # {'start_logits', 'end_logits'}, each [B, L]

    def _predictions(self, split: SquadSplit, outputs: list[dict]):
        shape = split.features.input_ids.shape  # [F, L]
        logits = {side: np.full(shape, _NOT_A_POSITION, np.float32) for side in ("start", "end")}
        for row, output in enumerate(outputs):
            for side, array in logits.items():
                values = output[f"{side}_logits"]
                array[row, :len(values)] = values
        return squad.postprocess(
            split.examples, split.features, logits["start"], logits["end"],
            n_best_size=self.data.n_best_size, max_answer_length=self.data.max_answer_length,
            version_2_with_negative=self.version_2,
            null_score_diff_threshold=self.data.null_score_diff_threshold)

    def evaluate(self, split: str, data: SquadSplit, outputs: list[dict]) -> dict:
        predictions, null_score_diff, _ = self._predictions(data, outputs)
        if not self.version_2:
            return squad_metrics.squad_v1_scores(data.examples, predictions)
        # The predictions already apply the configured threshold: score them as they are
        # (threshold inf), and let the search report the threshold worth configuring.
        return squad_metrics.squad_v2_scores(data.examples, predictions, null_score_diff,
                                             threshold=float("inf"))

    def write_predictions(self, directory: str, split: str, data: SquadSplit,
                          outputs: list[dict]) -> str:
        predictions, null_score_diff, _ = self._predictions(data, outputs)
        path = os.path.join(directory, f"{self.name}_{split}_predictions.json")
        if jax.process_index() == 0:
            squad.write_predictions(path, predictions)
            if self.version_2:  # the na-prob file of the official v2 evaluation
                null_odds = os.path.join(directory, f"{self.name}_{split}_null_odds.json")
                squad.write_predictions(null_odds, null_score_diff)
        return path

    def meta(self) -> dict:
        data = self.data
        return {"name": self.name, "kind": base.SPANS, "version_2": self.version_2,
                "max_seq_length": data.max_seq_length, "doc_stride": data.doc_stride,
                "max_query_length": data.max_query_length, "n_best_size": data.n_best_size,
                "max_answer_length": data.max_answer_length,
                "null_score_diff_threshold": data.null_score_diff_threshold}
