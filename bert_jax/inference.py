"""Inference from a checkpoint path alone: fill-mask, embeddings, and fine-tuned models.

    predictor = inference.load("gs://bucket/run/checkpoints")    # or a local folder / step
    predictor.fill_mask(["The capital of France is [MASK]."], top_k=5)
    predictor.embed(["A sentence.", "Another one."], pooling="mean")   # np.ndarray [2, H]
    predictor.token_features(["A sentence."], layers=(-1, -2, -3, -4))  # per token, per layer
    inference.load(glue_checkpoint).classify([("A man sings.", "Someone sings.")])
    inference.load(squad_checkpoint).answer([("Who sings?", "A man sings.")])
    inference.load(conll_checkpoint).tag(["Peter lives in Berlin ."])
    inference.load(swag_checkpoint).choose([("A man sings.", ["He bows.", "He flies."])])

A fine-tuned checkpoint stores its task (meta["task"]); answer, tag and choose read their
windows, label list, lengths and post-processing settings from it, and each method refuses a
checkpoint of another task.

For fill_mask, embed, token_features and classify every text becomes `[CLS] text [SEP]` with
token type 0. Texts are sorted by length and cut into batches of at most `batch_size`; each
batch is padded to a length bucket (16, 32, 64, ... capped at the model's
max_position_embeddings) and to a power-of-two number of rows, so the jitted functions compile
once per (rows, length) bucket rather than once per input. answer and tag batch their windows
or rows the same way, choose its items.

A text longer than the model allows is truncated to its first max_position_embeddings - 2 tokens,
with a logged warning; in fill_mask a [MASK] beyond the cut is an error. As in fine-tuning,
answer slides windows over a long context (the question is cut to max_query_length pieces) and
tag splits a long text into rows at word boundaries.
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
from bert_jax.interop import hf
from bert_jax.model import BertEncoder, BertForPreTraining, ModelConfig
from bert_jax.model.heads import (BertForMultipleChoice, BertForQuestionAnswering,
                                  BertForSequenceClassification, BertForTokenClassification)
from bert_jax.tasks import batching, classification, conll, conlleval, glue, multiple_choice
from bert_jax.tasks import squad
from bert_jax.tasks.base import CHOICES, SPANS, TOKENS, task_kind
from bert_jax.tasks.batching import length_bucket
from bert_jax.train import checkpoint

POOLINGS = ("cls", "pooled", "mean")

# What each kind of fine-tuned task (tasks.base.task_kind) is, for error messages.
_KIND_NAMES = {
    None: "sentence (pair) classification, as GLUE",
    SPANS: "extractive question answering, as SQuAD",
    TOKENS: "token classification, as CoNLL-2003 NER",
    CHOICES: "multiple choice, as SWAG",
}


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


def _is_hidden_state(module: nn.Module, method_name: str) -> bool:
    """The modules whose outputs are the hidden states: the embeddings and each layer."""
    return method_name == "__call__" and (module.name == "embeddings"
                                          or (module.name or "").startswith("layer_"))


@functools.partial(jax.jit, static_argnames=("config", "layers"))
def _hidden_states_step(params, input_ids, attention_mask, *, config, layers):
    """[B, L] inputs -> [B, len(layers), L, H] float32: hidden state 0 is the embeddings'
    output, hidden state i the output of layer i (transformers' hidden_states). The config
    must be unrolled (scan_layers=False): each layer is then a module of its own."""
    _, captured = BertEncoder(config).apply(
        {"params": params}, input_ids, None, attention_mask,
        capture_intermediates=_is_hidden_state, mutable=["intermediates"])
    found = captured["intermediates"]
    states = [found["embeddings"]["__call__"][0]] + [
        found["encoder"][f"layer_{i}"]["__call__"][0] for i in range(config.num_layers)]
    return jnp.stack([states[i].astype(jnp.float32) for i in layers], axis=1)


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


@functools.partial(jax.jit, static_argnames=("config",))
def _choice_step(params, input_ids, token_type_ids, attention_mask, *, config):
    """[B, C, L] inputs -> [B, C] float32 scores of a fine-tuned multiple-choice model."""
    return BertForMultipleChoice(config).apply(
        {"params": params}, input_ids, token_type_ids, attention_mask)


@functools.partial(jax.jit, static_argnames=("config",))
def _span_step(params, input_ids, token_type_ids, attention_mask, *, config):
    """[B, L] inputs -> start and end logits, each [B, L] float32, of a fine-tuned QA model."""
    out = BertForQuestionAnswering(config).apply(
        {"params": params}, input_ids, token_type_ids, attention_mask)
    return out["start_logits"], out["end_logits"]


@functools.partial(jax.jit, static_argnames=("config", "num_labels"))
def _tag_step(params, input_ids, attention_mask, *, config, num_labels):
    """[B, L] inputs -> [B, L] int32 label ids of a fine-tuned token classifier."""
    logits = BertForTokenClassification(config, num_labels).apply(
        {"params": params}, input_ids, None, attention_mask)  # [B, L, num_labels]
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


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


def _squad_examples(items) -> list[squad.SquadExample]:
    """(question, context) pairs as SQuAD examples without answers; errors name the input."""
    if isinstance(items, str) or (isinstance(items, tuple) and len(items) == 2
                                  and all(isinstance(x, str) for x in items)):
        raise TypeError("answer takes a list of (question, context) pairs, not one pair or "
                        "string (wrap it: [(question, context)])")
    examples = []
    for i, item in enumerate(items):
        try:
            question, context = item
        except (TypeError, ValueError):
            question = context = None
        if isinstance(item, str) or not (isinstance(question, str) and isinstance(context, str)):
            raise TypeError(f"input {i} is not a (question, context) pair of strings: "
                            f"{item!r:.100}")
        for name, text in (("question", question), ("context", context)):
            if not text.strip():
                raise ValueError(f"input {i}: the {name} is empty")
        examples.append(squad.SquadExample(str(i), "", question, context, (), False))
    return examples


def _word_lists(texts) -> list[list[str]]:
    """Each text's words: a string split on whitespace, or a list of words as given."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of texts or word lists, not one string "
                        "(wrap it: [text])")
    out = []
    for i, text in enumerate(texts):
        words = text.split() if isinstance(text, str) else list(text)
        bad = [w for w in words if not isinstance(w, str) or not w.strip()]
        if bad:
            raise ValueError(f"texts[{i}]: words must be non-blank strings, got {bad[0]!r}")
        if not words:
            raise ValueError(f"texts[{i}] has no words: nothing to tag")
        out.append(words)
    return out


def _token_rows(features: conll.TokenFeatures, rows: list[int]) -> dict:
    """The model inputs of some NER rows (token type 0 throughout)."""
    ids = features.input_ids[rows]  # [n, L]
    mask = np.arange(ids.shape[1])[None, :] < features.lengths[rows, None]
    return {"input_ids": ids, "attention_mask": mask.astype(np.int32)}


def _check_pairs(task: dict, examples: list[glue.Example]) -> None:
    """Pairs for a pair task (MRPC, MNLI, ...), single texts otherwise, when the task says."""
    pair = task.get("pair")
    if pair is None:  # checkpoints written before the field
        return
    for i, example in enumerate(examples):
        if (example.text_b is not None) != pair:
            raise ValueError(
                f"the checkpoint is fine-tuned on {task['name']}, which takes "
                f"{'sentence pairs' if pair else 'single sentences'}, but input {i} "
                f"({example.text_a[:60]!r}) is {'a single text' if pair else 'a pair'}; give "
                f"{'(text, text_b) pairs' if pair else 'single texts'}")


# ----------------------------------------------------------------------------------------------
# Outputs of the fine-tuned heads.


def _char_start(context: str, spans: np.ndarray, start: np.ndarray, end: np.ndarray,
                entry: dict) -> int | None:
    """Where an n-best entry's answer starts in the context (None for the empty answer).

    spans [R, L, 2], start / end [R, L]: the example's windows. The entry's span is the one whose
    start and end logits and text are the entry's: postprocess reports no positions.
    """
    text = entry["text"]
    if not text:
        return None
    for r in range(len(spans)):
        in_context = spans[r, :, 0] >= 0  # [L]
        firsts = np.flatnonzero(in_context & (start[r] == entry["start_logit"]))
        lasts = np.flatnonzero(in_context & (end[r] == entry["end_logit"]))
        for i in firsts.tolist():
            for j in lasts[lasts >= i].tolist():
                if squad.span_text(context, spans[r, i, 0], spans[r, j, 1]) == text:
                    return int(spans[r, i, 0])
    return context.find(text)  # an entry without logits (see Predictor.answer)


def _span_record(context: str, spans, start, end, entry: dict) -> dict:
    """An n-best entry of squad.postprocess as `answer` reports it."""
    score = None if entry["start_logit"] is None else entry["start_logit"] + entry["end_logit"]
    return {"answer": entry["text"], "start": _char_start(context, spans, start, end, entry),
            "score": score, "probability": entry["probability"]}


def _tagged(words: list[str], tags: list[str]) -> dict:
    """A text's words with their tags, and the entities (conlleval's chunks) they form."""
    return {"words": [{"word": w, "tag": t} for w, t in zip(words, tags)],
            "entities": [{"type": kind, "text": " ".join(words[a:b]), "start_word": a,
                          "end_word": b} for kind, a, b in conlleval.chunks(tags)]}


# ----------------------------------------------------------------------------------------------
# The predictor.


class Predictor:
    """A checkpoint's model, params and tokenizer: fill_mask and embed for any checkpoint (with
    an MLM head for fill_mask); classify, choose, answer or tag for one fine-tuned on that
    task."""

    def __init__(self, model_config: ModelConfig, params: dict,
                 tokenizer: tokenization.Tokenizer, batch_size: int = 32,
                 task: dict | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_config = model_config.runnable_here()  # e.g. a GPU run's checkpoint on CPU
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # Boxed (logically partitioned) leaves would make jit see metadata instead of arrays.
        self.params = jax.device_put(nn.unbox(params))
        self.max_length = model_config.max_position_embeddings
        self.task = task  # a fine-tuned checkpoint's meta["task"] (see tasks/*.meta())
        self._unrolled_params = None  # token_features' copy of a scanned encoder

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
        if pooling == "pooled" and hf.is_zero_pooler(params):
            raise ValueError("the checkpoint's pooler is all zeros: it was imported from a "
                             "transformers model without one (BertForMaskedLM, "
                             "BertForQuestionAnswering, BertForTokenClassification); pool "
                             "with 'cls' or 'mean'")
        rows = self._rows(texts, self.tokenizer.encode_batch(texts))
        for batch in self._make_batches(rows, batch_size):
            vectors = _embed_step(params, batch.input_ids, batch.attention_mask,
                                  config=self.model_config, pooling=pooling)  # [B, H]
            out[batch.indices] = np.asarray(vectors)[:len(batch.indices)]
        return out

    def token_features(self, texts: Sequence[str], layers: Sequence[int] = (-1,),
                       batch_size: int | None = None) -> list[dict]:
        """Every token's hidden states at `layers`, as the original BERT's extract_features.py
        gives them (the paper's feature-based approach concatenates the last four: layers
        (-1, -2, -3, -4)).

        Layers index the num_layers + 1 hidden states as transformers' hidden_states does: 0
        is the embeddings' output, i the output of layer i, -1 the last layer's. Returns per
        text {"tokens": its pieces with [CLS] and [SEP], "features": float32 [tokens,
        len(layers), H]}. A text longer than max_position_embeddings - 2 tokens is truncated
        to that many, with a logged warning.
        """
        texts = _check_texts(texts)
        count = self.model_config.num_layers + 1
        layers = tuple(int(i) for i in layers)
        if not layers or any(not -count <= i < count for i in layers):
            raise ValueError(f"layers={layers}: expected one or more hidden states in "
                             f"[{-count}, {count - 1}]: 0 is the embeddings' output, 1 to "
                             f"{count - 1} the layers', -1 the last layer's")
        layers = tuple(i % count for i in layers)
        config, params = self._unrolled_encoder()
        rows = self._rows(texts, self.tokenizer.encode_batch(texts))
        out: list = [None] * len(texts)
        for batch in self._make_batches(rows, batch_size):
            states = np.asarray(_hidden_states_step(params, batch.input_ids,
                                                    batch.attention_mask, config=config,
                                                    layers=layers))  # [B, layers, L, H]
            for r, i in enumerate(batch.indices):
                out[i] = {"tokens": [self.tokenizer.id_to_token(t) for t in rows[i]],
                          "features": states[r, :, :len(rows[i])].transpose(1, 0, 2)}
        return out

    def _unrolled_encoder(self) -> tuple[ModelConfig, dict]:
        """(config, encoder params) with one module per layer, so that each layer's output can
        be read; a scanned checkpoint's stacked layers are split (once)."""
        config = dataclasses.replace(self.model_config, scan_layers=False, remat_policy="none")
        params = self._encoder_params()
        if not self.model_config.scan_layers:
            return config, params
        if self._unrolled_params is None:
            encoder = hf.unstack_layers(params["encoder"], config.num_layers)
            self._unrolled_params = jax.device_put({**params, "encoder": encoder})
        return config, self._unrolled_params

    def classify(self, texts: Sequence, batch_size: int | None = None) -> list[dict]:
        """Predictions of a fine-tuned (GLUE) checkpoint for texts or (text_a, text_b) pairs.

        Returns per input {"label", "score", "probabilities": {label: p}} for a classifier
        (score = the predicted label's probability), {"labels": [those with p > 1/2],
        "probabilities"} for a multi-label one (a sigmoid per label), or {"score"} for a
        regression (STS-B).
        Inputs longer than max_position_embeddings tokens are truncated (pairs longest-first).
        Raises ValueError for a single text where the task takes pairs (MRPC, MNLI, ...) or a
        pair where it takes single sentences.
        """
        task = self._fine_tuned(None, "classifier", "classify")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings or pairs, not one string")
        examples = []
        for i, item in enumerate(texts):
            a, b = (item, None) if isinstance(item, str) else tuple(item)
            examples.append(glue.Example(str(i), a, b, None))
        _check_pairs(task, examples)
        labels = task["labels"]
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
        return classification.readable_outputs(logits, labels, bool(task.get("multi_label")))

    def choose(self, contexts_and_choices: Sequence, batch_size: int | None = None
               ) -> list[dict]:
        """The choice a checkpoint fine-tuned for multiple choice (SWAG) picks for each
        (context, [choice, ...]) item, as fine-tuning scored them: one `[CLS] context [SEP]
        choice [SEP]` row per choice, truncated at the run's max_seq_length (pairs
        longest-first), a softmax over the item's choices. Items may have different numbers
        of choices (2 or more).

        Returns per item {"choice": the picked index, "text": its text, "score": its
        probability, "probabilities": one per choice}. batch_size counts items. Raises
        ValueError for an empty context or choice, fewer than 2 choices, and a checkpoint of
        another task.
        """
        task = self._fine_tuned(CHOICES, "classifier", "choose")
        if isinstance(contexts_and_choices, (str, dict)):
            raise TypeError("expected a list of (context, [choice, ...]) items")
        examples = []
        for i, item in enumerate(contexts_and_choices):
            if isinstance(item, str) or len(item) != 2:
                raise ValueError(f"item {i}: expected a (context, [choice, ...]) pair, got "
                                 f"{item!r}")
            context, choices = item
            if not isinstance(context, str) or not context.strip():
                raise ValueError(f"item {i}: the context is empty or not a string")
            if isinstance(choices, str) or len(choices) < 2:
                raise ValueError(f"item {i}: expected a list of 2 or more choices, got "
                                 f"{choices!r}")
            if not all(isinstance(c, str) and c.strip() for c in choices):
                raise ValueError(f"item {i}: a choice is empty or not a string: {choices!r}")
            examples.append(multiple_choice.ChoiceExample(str(i), context, list(choices), None))
        if not examples:
            return []
        length = min(task.get("max_seq_length") or self.max_length, self.max_length)
        features = multiple_choice.encode(examples, self.tokenizer, length)
        batch_size = self._batch_size(batch_size)
        scores: list = [None] * len(examples)
        for indices in batching.index_groups(features.lengths, batch_size):
            batch = multiple_choice.pad_batch(
                features, indices, _row_bucket(len(indices), batch_size), length,
                [self.tokenizer.cls_id, self.tokenizer.sep_id])
            out = np.asarray(_choice_step(self.params, batch["input_ids"],
                                          batch["token_type_ids"], batch["attention_mask"],
                                          config=self.model_config))  # [B, C]
            for r, i in enumerate(indices):
                scores[i] = out[r, :features.num_choices(i)]
        return multiple_choice.readable_choices(scores, features.choices)

    def answer(self, questions_and_contexts: Sequence, *, top_k: int = 1,
               batch_size: int | None = None) -> list[dict]:
        """Answers of a checkpoint fine-tuned on SQuAD to (question, context) pairs, made as the
        fine-tuning run made its dev predictions: the windows (max_seq_length, doc_stride,
        max_query_length) and post-processing (n_best_size, max_answer_length, v2 threshold)
        stored in the checkpoint, `squad.postprocess`.

        Returns per pair {"answer": text of the context, "start": its character offset in the
        context (None for the empty answer), "score": start + end logit, "probability": softmax
        over the n-best answers}; for SQuAD v2 also "null_score_diff" (null score minus the
        best span's; the answer is "" when it exceeds the stored threshold); with top_k > 1,
        "nbest": the top_k best distinct answers (at most n_best_size, "" among them for v2) in
        the same form. batch_size counts windows. Raises ValueError for an empty question or
        context and for a checkpoint of another task.
        """
        task = self._fine_tuned(SPANS, "qa_outputs", "answer")
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        examples = _squad_examples(questions_and_contexts)
        if not examples:
            return []
        length = task["max_seq_length"]
        features = squad.make_features(
            examples, self.tokenizer, max_seq_length=length, doc_stride=task["doc_stride"],
            max_query_length=task["max_query_length"], training=False)
        # [F, L] each; past a row's length bucket there is only padding, never a candidate.
        start, end = np.zeros((2, *features.input_ids.shape), np.float32)
        for rows, batch in self._feature_batches(features.lengths, features.batch, length,
                                                 batch_size):
            logits = _span_step(self.params, batch["input_ids"], batch["token_type_ids"],
                                batch["attention_mask"], config=self.model_config)
            for array, side in zip((start, end), logits):  # side: [B, bucket]
                array[rows, :side.shape[1]] = np.asarray(side)[:len(rows)]
        predictions, null_score_diff, nbest = squad.postprocess(
            examples, features, start, end, n_best_size=task["n_best_size"],
            max_answer_length=task["max_answer_length"], version_2_with_negative=task["version_2"],
            null_score_diff_threshold=task["null_score_diff_threshold"])
        rows_of = [[] for _ in examples]
        for row, index in enumerate(features.example_index.tolist()):
            rows_of[index].append(row)
        results = []
        for example, rows in zip(examples, rows_of):
            found = (example.context, features.token_char_spans[rows], start[rows], end[rows])
            entries, prediction = nbest[example.qid], predictions[example.qid]
            # Not listed only with an n-best of one that the null answer took (v2).
            best = next((e for e in entries if e["text"] == prediction),
                        {"text": prediction, "start_logit": None, "end_logit": None,
                         "probability": None})
            result = _span_record(*found, best)
            if task["version_2"]:
                result["null_score_diff"] = null_score_diff[example.qid]
            if top_k > 1:
                result["nbest"] = [_span_record(*found, e) for e in entries[:top_k]]
            results.append(result)
        return results

    def tag(self, texts: Sequence, *, batch_size: int | None = None) -> list[dict]:
        """Entity tags of a checkpoint fine-tuned on CoNLL-2003 (NER) for every word of texts.

        texts: strings, split into words on whitespace, or lists of words. Returns per text
        {"words": [{"word", "tag"}, ...] (IOB2 tags of the stored label list), "entities":
        [{"type", "text", "start_word", "end_word"}, ...]}: the chunks conlleval scores, in
        order, each words[start_word:end_word] ("text" joins them with single spaces). A text
        of more pieces than the stored max_seq_length holds is split at word boundaries, as in
        fine-tuning, so every word gets a tag. batch_size counts rows. Raises ValueError for a
        text without words and for a checkpoint of another task.
        """
        task = self._fine_tuned(TOKENS, "classifier", "tag")
        labels, length = task["labels"], task["max_seq_length"]
        words = _word_lists(texts)
        if not words:
            return []
        # make_features takes gold tags: any label of the list will do, none is read.
        sentences = [conll.Sentence(tuple(w), (labels[0],) * len(w), f"texts[{i}]")
                     for i, w in enumerate(words)]
        features = conll.make_features(sentences, self.tokenizer, labels, max_seq_length=length)
        ids = np.zeros(features.input_ids.shape, np.int32)  # [F, L]
        for rows, batch in self._feature_batches(
                features.lengths, functools.partial(_token_rows, features), length, batch_size):
            out = _tag_step(self.params, batch["input_ids"], batch["attention_mask"],
                            config=self.model_config, num_labels=len(labels))  # [B, bucket]
            ids[rows, :out.shape[1]] = np.asarray(out)[:len(rows)]
        tags = conll.word_predictions(features, ids, labels, len(sentences))
        return [_tagged(w, t) for w, t in zip(words, tags)]

    def _fine_tuned(self, kind: str | None, head: str, use: str) -> dict:
        """The checkpoint's task, which must be of `kind` with its head's params under `head`."""
        task = self.task or {}
        found = task_kind(task)
        if task and found == kind and head in self.params:
            return task
        if not task:
            what = f"is not fine-tuned (its params hold {sorted(self.params)})"
        elif found != kind:
            what = f"is fine-tuned on {task.get('name')} ({_KIND_NAMES[found]})"
        else:
            what = f"has no {head!r} params (it holds {sorted(self.params)})"
        raise ValueError(f"{use} needs a checkpoint fine-tuned for {_KIND_NAMES[kind]} "
                         f"(python -m bert_jax.finetune); this one {what}")

    def _feature_batches(self, lengths: np.ndarray, make_rows, max_length: int,
                         batch_size: int | None):
        """(feature rows, padded batch) of similar lengths, as fine-tuning evaluates them, but
        with the rows padded to a power of two only (`_row_bucket`)."""
        batch_size = self._batch_size(batch_size)
        for rows in batching.index_groups(lengths, batch_size):
            length = length_bucket(int(lengths[rows].max()), max_length)
            yield rows, batching.pad_rows(make_rows(rows), _row_bucket(len(rows), batch_size),
                                          length)

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
