"""Losses and their metrics, in float32 whatever the compute dtype.

A task's loss comes from metric sums, never from means, so gradient accumulation over
micro-batches gives exactly the loss of one large batch. An `Objective` bundles what the shared
train step needs to know about a task: the batch totals that normalise the sums, the loss from
(sums, totals), and the logged means. Pre-training is `PRETRAINING`; fine-tuning tasks make their own.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax


def mlm_sums(mlm_logits, masked_ids, masked_weights):
    """Weighted MLM cross-entropy and accuracy as sums over the [B, P] prediction slots."""
    logits = mlm_logits.astype(jnp.float32)  # [B, P, V]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, masked_ids)  # [B, P]
    correct = (jnp.argmax(logits, axis=-1) == masked_ids).astype(jnp.float32)
    return {
        "mlm_loss_sum": jnp.sum(losses * masked_weights),
        "mlm_correct": jnp.sum(correct * masked_weights),
        "mlm_weight": jnp.sum(masked_weights),
    }


def nsp_sums(nsp_logits, labels):
    logits = nsp_logits.astype(jnp.float32)  # [B, 2]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "nsp_loss_sum": jnp.sum(losses),
        "nsp_correct": jnp.sum((jnp.argmax(logits, -1) == labels).astype(jnp.float32)),
        "nsp_count": jnp.asarray(labels.shape[0], jnp.float32),
    }


def pretraining_sums(outputs, batch, use_nsp: bool) -> dict:
    sums = mlm_sums(outputs["mlm_logits"], batch["masked_ids"], batch["masked_weights"])
    if use_nsp:
        sums.update(nsp_sums(outputs["nsp_logits"], batch["next_sentence_label"]))
    return sums


def loss_from_sums(sums: dict, mlm_weight_total, nsp_count_total):
    """Mean MLM loss over all real predictions of the batch (+ mean NSP loss).

    The totals are those of the whole (accumulated) batch, so micro-batch losses add up to
    exactly the loss of one large batch.
    """
    loss = sums["mlm_loss_sum"] / jnp.maximum(mlm_weight_total, 1.0)
    if "nsp_loss_sum" in sums:
        loss = loss + sums["nsp_loss_sum"] / jnp.maximum(nsp_count_total, 1.0)
    return loss


def summarize(sums: dict) -> dict:
    """Sums -> the logged means (loss, accuracy) per head."""
    metrics = {
        "mlm_loss": sums["mlm_loss_sum"] / jnp.maximum(sums["mlm_weight"], 1.0),
        "mlm_accuracy": sums["mlm_correct"] / jnp.maximum(sums["mlm_weight"], 1.0),
    }
    if "nsp_loss_sum" in sums:
        metrics["nsp_loss"] = sums["nsp_loss_sum"] / jnp.maximum(sums["nsp_count"], 1.0)
        metrics["nsp_accuracy"] = sums["nsp_correct"] / jnp.maximum(sums["nsp_count"], 1.0)
    return metrics


def pretraining_totals(batch: dict) -> dict:
    """Normalisers of the whole batch: real MLM predictions and examples."""
    return {"mlm_weight": jnp.sum(batch["masked_weights"]),
            "nsp_count": jnp.asarray(batch["input_ids"].shape[0], jnp.float32)}


def pretraining_loss(sums: dict, totals: dict):
    return loss_from_sums(sums, totals["mlm_weight"], totals["nsp_count"])


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the shared train step needs from a task besides its forward pass (`sums_fn`)."""

    totals: Callable[[dict], dict]  # batch -> normalisers of the whole (accumulated) batch
    loss: Callable[[dict, dict], jax.Array]  # (sums, totals) -> scalar loss
    summarize: Callable[[dict], dict]  # sums -> logged means


PRETRAINING = Objective(totals=pretraining_totals, loss=pretraining_loss, summarize=summarize)


def tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)
