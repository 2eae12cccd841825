"""Sequence classification / regression on the pooled output: sums, objective, predictions.

The shared `steps.train_step` takes `sums_fn(model, num_labels)` and `OBJECTIVE`; batches carry
`label` ([B] int32, or float32 for regression) and `example_weight` ([B] float32, 0 on the
filler rows that pad a batch to its fixed size).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from bert_jax.train import losses


def forward(model, params, batch: dict, rng, deterministic: bool):
    """[B, num_labels] float32 logits of a batch."""
    return model.apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
        deterministic=deterministic, rngs=None if deterministic else {"dropout": rng},
    )


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


def sums_fn(model):
    """(params, batch, rng, deterministic) -> sums, for steps.train_step / steps.eval_step."""

    def fn(params, batch, rng, deterministic):
        return classification_sums(forward(model, params, batch, rng, deterministic), batch)

    return fn


def _totals(batch: dict) -> dict:
    return {"count": jnp.sum(batch["example_weight"])}


def _loss(sums: dict, totals: dict):
    """Mean over the real examples of the whole (accumulated) batch."""
    return sums["loss_sum"] / jnp.maximum(totals["count"], 1.0)


def summarize(sums: dict) -> dict:
    count = jnp.maximum(sums["count"], 1.0)
    metrics = {"task_loss": sums["loss_sum"] / count}
    if "correct" in sums:
        metrics["accuracy"] = sums["correct"] / count
    return metrics


OBJECTIVE = losses.Objective(totals=_totals, loss=_loss, summarize=summarize)


def logits_fn(model):
    """(params, batch) -> [B, num_labels] logits with dropout off; jit it with shardings."""
    return functools.partial(_logits, model)


def _logits(model, params, batch):
    return forward(model, params, batch, None, True)


def probabilities(logits) -> jax.Array:
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
