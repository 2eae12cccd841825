"""Inference from a checkpoint path alone: fill-mask, embeddings, and fine-tuned classifiers.

    predictor = inference.load("gs://bucket/run/checkpoints")    # or a local folder / step
    predictor.fill_mask(["The capital of France is [MASK]."], top_k=5)
    predictor.embed(["A sentence.", "Another one."], pooling="mean")   # np.ndarray [2, H]
    inference.load(finetuned_checkpoint).classify([("A man sings.", "Someone sings.")])

Every text becomes `[CLS] text [SEP]` with token type 0. Texts are sorted by length and cut into
batches of at most `batch_size`; each batch is padded to a length bucket (16, 32, 64, ... capped
at the model's max_position_embeddings) and to a power-of-two number of rows, so the jitted
functions compile once per (rows, length) bucket rather than once per input.

A text longer than the model allows is truncated to its first max_position_embeddings - 2 tokens,
with a logged warning; in fill_mask a [MASK] beyond the cut is an error.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bert_jax.data import tokenization
from bert_jax.model import BertEncoder, BertForPreTraining, ModelConfig
from bert_jax.model.heads import BertForSequenceClassification
from bert_jax.tasks import glue
from bert_jax.tasks.batching import length_bucket
from bert_jax.train import checkpoint

POOLINGS = ("cls", "pooled", "mean")


# ----------------------------------------------------------------------------------------------
# Jitted model functions. Module-level so jax.jit's cache is shared by every Predictor of the
# same config; each compiles once per input shape, i.e. per (rows, length[, predictions]) bucket.


def _mlm(module: BertForPreTraining, input_ids, attention_mask, masked_positions):
    """MLM logits at masked_positions without the NSP head (MLM-only checkpoints lack it)."""
    sequence_output, _ = module.bert(input_ids, None, attention_mask)
    return module.mlm_head(sequence_output, masked_positions, module.bert.embeddings)


@functools.partial(jax.jit, static_argnames=("config", "top_k"))
def _fill_mask_step(params, input_ids, attention_mask, masked_positions, *, config, top_k):
    """[B, L] inputs and [B, P] mask positions -> top_k (probabilities, ids), each [B, P, k]."""
    logits = BertForPreTraining(config).apply(
        {"params": params}, input_ids, attention_mask, masked_positions, method=_mlm
    )  # [B, P, V]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    # Only the top k leave the device: [B, P, V] would be ~120 KB per mask for a 30k vocab.
    return jax.lax.top_k(probs, top_k)


@functools.partial(jax.jit, static_argnames=("config", "pooling"))
def _embed_step(params, input_ids, attention_mask, *, config, pooling):
    """[B, L] inputs -> [B, H] float32 embeddings."""
    sequence_output, pooled = BertEncoder(config).apply(
        {"params": params}, input_ids, None, attention_mask
    )  # [B, L, H], [B, H]
    sequence_output = sequence_output.astype(jnp.float32)
    if pooling == "cls":
        return sequence_output[:, 0]
    if pooling == "pooled":
        return pooled.astype(jnp.float32)
    weights = attention_mask.astype(jnp.float32)[:, :, None]  # [B, L, 1]
    return (sequence_output * weights).sum(axis=1) / weights.sum(axis=1)


@functools.partial(jax.jit, static_argnames=("config", "num_labels"))
def _classify_step(params, input_ids, token_type_ids, attention_mask, *, config, num_labels):
    """[B, L] inputs -> [B, num_labels] float32 logits of a fine-tuned classifier."""
    return BertForSequenceClassification(config, num_labels).apply(
        {"params": params}, input_ids, token_type_ids, attention_mask)


# ----------------------------------------------------------------------------------------------
# Batching: tokenization, truncation, length buckets.


def _row_bucket(rows: int, batch_size: int) -> int:
    """Rows padded to a power of two (at most batch_size): few shapes for ragged last batches."""
    return min(1 << max(rows - 1, 0).bit_length(), batch_size)


@dataclasses.dataclass
class _Batch:
    """One padded batch; `indices` are the positions of its real rows in the caller's list."""

    indices: list[int]
    input_ids: np.ndarray  # [B, L] int32
    attention_mask: np.ndarray  # [B, L] int32


def _batches(rows: list[list[int]], batch_size: int, max_length: int, pad_row: list[int]):
    """Groups full token rows ([CLS] ... [SEP]) of similar length into padded batches."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        chunk = [rows[i] for i in indices]
        num_rows = _row_bucket(len(chunk), batch_size)
        # Filler rows are "[CLS] [SEP]" rather than all padding: a row that attends to nothing
        # is wasted work at best and NaNs at worst.
        chunk += [pad_row] * (num_rows - len(chunk))
        length = length_bucket(max(len(row) for row in chunk), max_length)
        input_ids = np.zeros((num_rows, length), np.int32)
        attention_mask = np.zeros((num_rows, length), np.int32)
        for r, row in enumerate(chunk):
            input_ids[r, :len(row)] = row
            attention_mask[r, :len(row)] = 1
        yield _Batch(indices, input_ids, attention_mask)


def _show(text: str, limit: int = 100) -> str:
    """A text as quoted in an error message, shortened: over-long texts are one cause of errors."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (wrap it: [text])")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return texts


# ----------------------------------------------------------------------------------------------
# The predictor.


class Predictor:
    """A checkpoint's model, params and tokenizer, ready for fill_mask and embed."""

    def __init__(self, model_config: ModelConfig, params: dict,
                 tokenizer: tokenization.Tokenizer, batch_size: int = 32,
                 task: dict | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # Boxed (logically partitioned) leaves would make jit see metadata instead of arrays.
        self.params = jax.device_put(nn.unbox(params))
        self.max_length = model_config.max_position_embeddings
        self.task = task  # a fine-tuned checkpoint's task: name, labels, is_regression

    @property
    def has_mlm_head(self) -> bool:
        return "mlm_head" in self.params

    @property
    def hidden_size(self) -> int:
        return self.model_config.hidden_size

    def _encoder_params(self) -> dict:
        """Pre-training (and fine-tuned) checkpoints keep the encoder under 'bert'."""
        if "bert" in self.params:
            return self.params["bert"]
        if "embeddings" in self.params:
            return self.params
        raise ValueError(f"checkpoint params hold no BERT encoder (keys: {sorted(self.params)})")

    def _rows(self, texts: list[str], token_ids: list[list[int]]) -> list[list[int]]:
        """[CLS] ids [SEP] per text, truncated (with a warning) to fit the position table."""
        keep = self.max_length - 2
        rows = []
        for i, ids in enumerate(token_ids):
            if len(ids) > keep:
                logging.warning(
                    "text %d has %d tokens; truncated to the first %d (max_position_embeddings "
                    "%d): %.60r", i, len(ids), keep, self.max_length, texts[i],
                )
            rows.append([self.tokenizer.cls_id, *ids[:keep], self.tokenizer.sep_id])
        return rows

    def _mask_positions(self, texts: list[str], token_ids: list[list[int]]) -> list[list[int]]:
        """Positions of [MASK] in each text's row ([CLS] first); errors name the text."""
        keep = self.max_length - 2
        positions = []
        for text, ids in zip(texts, token_ids):
            where = [p for p, token in enumerate(ids) if token == self.tokenizer.mask_id]
            if not where:
                raise ValueError(f"text has no [MASK] token: {_show(text)}")
            if where[-1] >= keep:
                raise ValueError(
                    f"a [MASK] at token {where[-1]} lies beyond the {keep} tokens the model takes "
                    f"(max_position_embeddings {self.max_length}); shorten the text: {_show(text)}"
                )
            positions.append([p + 1 for p in where])  # +1: row position 0 is [CLS]
        return positions

    def _batch_size(self, batch_size: int | None) -> int:
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return batch_size

    def fill_mask(self, texts: Sequence[str], top_k: int = 5,
                  batch_size: int | None = None) -> list[list[list[dict]]]:
        """The top_k predictions for every [MASK] of every text.

        Returns, per text, per [MASK] (in text order), `top_k` dicts {"token", "token_id",
        "score"} with score the softmax probability, highest first. A text longer than
        max_position_embeddings - 2 tokens is truncated to that many, with a logged warning.
        Raises ValueError for a text without [MASK], or with a [MASK] beyond the truncation point.
        """
        if not self.has_mlm_head:
            raise ValueError(
                "checkpoint has no MLM head: fill_mask needs a pre-training checkpoint "
                "(this one holds the encoder only)"
            )
        texts = _check_texts(texts)
        if not 0 < top_k <= self.model_config.vocab_size:
            raise ValueError(f"top_k must be in [1, {self.model_config.vocab_size}], got {top_k}")
        token_ids = self.tokenizer.encode_batch(texts)
        positions = self._mask_positions(texts, token_ids)
        rows = self._rows(texts, token_ids)
        results: list = [None] * len(texts)
        for batch in self._make_batches(rows, batch_size):
            masked = _pad_positions([positions[i] for i in batch.indices], len(batch.input_ids))
            probs, ids = _fill_mask_step(
                self.params, batch.input_ids, batch.attention_mask, masked,
                config=self.model_config, top_k=top_k,
            )  # [B, P, k] each
            probs, ids = np.asarray(probs), np.asarray(ids)
            for r, i in enumerate(batch.indices):
                results[i] = [self._predictions(probs[r, p], ids[r, p])
                              for p in range(len(positions[i]))]
        return results

    def _predictions(self, probs: np.ndarray, ids: np.ndarray) -> list[dict]:
        return [{"token": self.tokenizer.id_to_token(int(i)), "token_id": int(i),
                 "score": float(s)} for s, i in zip(probs, ids)]

    def embed(self, texts: Sequence[str], pooling: str = "cls",
              batch_size: int | None = None) -> np.ndarray:
        """Fixed-size features of each text: float32 [N, H].

        pooling: "cls" the final hidden state of [CLS] (as the original extract_features);
        "pooled" the tanh pooler output on it (what the NSP head was trained on);
        "mean" the attention-mask-weighted mean of the final hidden states (sentence-transformers).
        A text longer than max_position_embeddings - 2 tokens is truncated to that many, with a
        logged warning.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.hidden_size), np.float32)
        params = self._encoder_params()
        rows = self._rows(texts, self.tokenizer.encode_batch(texts))
        for batch in self._make_batches(rows, batch_size):
            vectors = _embed_step(params, batch.input_ids, batch.attention_mask,
                                  config=self.model_config, pooling=pooling)  # [B, H]
            out[batch.indices] = np.asarray(vectors)[:len(batch.indices)]
        return out

    def classify(self, texts: Sequence, batch_size: int | None = None) -> list[dict]:
        """Predictions of a fine-tuned (GLUE) checkpoint for texts or (text_a, text_b) pairs.

        Returns per input {"label", "score", "probabilities": {label: p}} for a classifier
        (score = the predicted label's probability), or {"score"} for a regression (STS-B).
        Inputs longer than max_position_embeddings tokens are truncated (pairs longest-first).
        """
        if "classifier" not in self.params or self.task is None:
            raise ValueError("checkpoint has no classification head: classify needs a checkpoint "
                             "written by fine-tuning (python -m bert_jax.finetune)")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings or pairs, not one string")
        examples = []
        for i, item in enumerate(texts):
            a, b = (item, None) if isinstance(item, str) else tuple(item)
            examples.append(glue.Example(str(i), a, b, None))
        labels = self.task["labels"]
        num_labels = 1 if labels is None else len(labels)
        features = glue.encode(examples, self.tokenizer, self.max_length, labels is None)
        logits = np.zeros((len(examples), num_labels), np.float32)
        for indices, batch in glue.batches(features, self._batch_size(batch_size),
                                           self.max_length,
                                           [self.tokenizer.cls_id, self.tokenizer.sep_id]):
            out = _classify_step(self.params, batch["input_ids"], batch["token_type_ids"],
                                 batch["attention_mask"], config=self.model_config,
                                 num_labels=num_labels)
            logits[indices] = np.asarray(out)[:len(indices)]
        if labels is None:
            return [{"score": float(x)} for x in logits[:, 0]]
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        return [{"label": labels[int(np.argmax(p))], "score": float(np.max(p)),
                 "probabilities": {name: float(q) for name, q in zip(labels, p)}} for p in probs]

    def _make_batches(self, rows, batch_size):
        pad_row = [self.tokenizer.cls_id, self.tokenizer.sep_id]
        return _batches(rows, self._batch_size(batch_size), self.max_length, pad_row)


def _pad_positions(positions: list[list[int]], num_rows: int) -> np.ndarray:
    """Ragged mask positions -> int32 [num_rows, P], P a power of two; padding points at [CLS]."""
    slots = 1 << (max(len(p) for p in positions) - 1).bit_length()
    out = np.zeros((num_rows, slots), np.int32)
    for r, row in enumerate(positions):
        out[r, :len(row)] = row
    return out


def load(path: str, batch_size: int = 32) -> Predictor:
    """A Predictor for the checkpoint at `path` (step folder, checkpoint root or workdir)."""
    loaded = checkpoint.load_model(path)
    return Predictor(loaded.model_config, loaded.params, loaded.tokenizer, batch_size=batch_size,
                     task=loaded.meta.get("task"))
