"""Pure train and eval steps, shared by pre-training and fine-tuning (heads differ, not steps).

`train_step(state, batch, rng) -> (state, metrics)` once its static parts (model, optimizer,
loss) are bound with functools.partial; the loop jits it once with shardings and donation.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from bert_jax.train import losses, optim
from bert_jax.train.loss_scale import DynamicLossScale
from bert_jax.train.state import TrainState

# Model inputs that are passed only when the batch has them (packed rows).
_OPTIONAL_INPUTS = ("sequence_ids", "position_ids")


def pretraining_forward(model, params, batch, rng, deterministic: bool):
    """BertForPreTraining on a batch-contract dict -> {'mlm_logits', 'nsp_logits'}."""
    optional = {k: batch[k] for k in _OPTIONAL_INPUTS if k in batch}
    return model.apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
        masked_positions=batch["masked_positions"], deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng}, **optional,
    )


def pretraining_sums_fn(model, use_nsp: bool):
    """(params, batch, rng, deterministic) -> metric sums; the loss derives from the sums."""

    def sums_fn(params, batch, rng, deterministic):
        outputs = pretraining_forward(model, params, batch, rng, deterministic)
        return losses.pretraining_sums(outputs, batch, use_nsp)

    return sums_fn


def _split_micro_batches(batch: dict, num_micro: int) -> dict:
    """[B, ...] -> [num_micro, B / num_micro, ...], micro-batch i the rows i, i + num_micro, ...

    Strided, not in blocks: the batch is sharded by rows, and every device's block of rows
    then gives each micro-batch its share, so splitting moves no data (blocks would put the
    first micro-batch on the first devices, and all-gather every micro-batch's inputs)."""

    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num_micro} micro-batches")
        strided = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
        return jnp.swapaxes(strided, 0, 1)

    return jax.tree_util.tree_map(split, batch)


def accumulate_gradients(params, batch: dict, rng, sums_fn: Callable, grad_accum_steps: int,
                         objective: losses.Objective = losses.PRETRAINING,
                         loss_scale: DynamicLossScale | None = None):
    """Gradient and metric sums of the batch, over micro-batches by lax.scan when asked.

    With a loss scale, the gradients are those of the scaled loss (the caller unscales them
    once, after accumulation)."""
    totals = objective.totals(batch)

    def grads_and_sums(micro_batch, micro_rng):
        def loss_fn(p):
            sums = sums_fn(p, micro_batch, micro_rng, False)
            loss = objective.loss(sums, totals)
            return (loss if loss_scale is None else loss_scale.scale_loss(loss)), sums

        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, sums

    if grad_accum_steps == 1:
        return grads_and_sums(batch, rng)

    micro_batches = _split_micro_batches(batch, grad_accum_steps)
    first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(grads_and_sums, first, rng))

    def body(carry, xs):
        micro_batch, index = xs
        grads, sums = grads_and_sums(micro_batch, jax.random.fold_in(rng, index))
        return (losses.tree_add(carry[0], grads), losses.tree_add(carry[1], sums)), None

    (grads, sums), _ = jax.lax.scan(body, zeros, (micro_batches, jnp.arange(grad_accum_steps)))
    return grads, sums


def _all_finite(tree) -> jax.Array:
    """True when every floating-point leaf of the tree is free of inf and NaN.

    x - x is 0 for finite x and NaN for inf or NaN, so one norm over the zeroed tree answers for
    all leaves, with no overflow to fear (x * 0 does the same, but XLA:CPU materialises the
    broadcast zeros: a vocab x hidden buffer written every step). Why not
    `jnp.all(jnp.isfinite(x))` per leaf: XLA:CPU fuses those ~600 boolean reductions (params
    and Adam's moments) into the update and took ~250 s to compile BERT-Base's train step
    instead of ~20 s.
    """
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.isfinite(optax.tree.norm([x - x for x in leaves]))


PRNG_IMPLS = ("threefry2x32", "rbg")


def root_rng(seed: int, prng_impl: str = "threefry2x32") -> jax.Array:
    """The run's root key; each step's dropout key is fold_in(root, step).

    threefry2x32 (JAX's default) gives the same dropout masks whatever the mesh. rbg splits and
    folds with threefry but draws the bits with XLA's RngBitGenerator, which is cheaper on GPUs
    and TPUs (dropout draws 32 random bits per activation); its masks depend on the sharding.
    """
    if prng_impl not in PRNG_IMPLS:
        raise ValueError(f"train.prng_impl={prng_impl!r}: expected one of {PRNG_IMPLS}")
    return jax.random.key(seed, impl=prng_impl)


def train_step(state: TrainState, batch: dict, rng, *, sums_fn: Callable,
               optimizer: optax.GradientTransformation, schedule: Callable,
               grad_accum_steps: int = 1, objective: losses.Objective = losses.PRETRAINING):
    """One optimizer update. A non-finite loss or gradient leaves params and optimizer state
    untouched (metrics['nonfinite'] = 1) so NaNs never reach the parameters or a checkpoint.

    `objective` says how the task's sums become its loss (pre-training's MLM + NSP by default).
    With float16 compute the state carries a loss scale: gradients are taken of the scaled loss
    and unscaled before clipping; a non-finite step lowers the scale (train/loss_scale.py).
    """
    step_rng = jax.random.fold_in(rng, state.step)
    grads, sums = accumulate_gradients(state.params, batch, step_rng, sums_fn, grad_accum_steps,
                                       objective, state.loss_scale)
    if state.loss_scale is not None:
        grads = state.loss_scale.unscale(grads)
    loss = objective.loss(sums, objective.totals(batch))
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)

    # The new state is checked too: a finite gradient times a huge learning rate can overflow.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & _all_finite((new_params, new_opt_state)))
    keep_if_finite = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=jax.tree_util.tree_map(keep_if_finite, new_params, state.params),
        opt_state=jax.tree_util.tree_map(keep_if_finite, new_opt_state, state.opt_state),
        loss_scale=None if state.loss_scale is None else state.loss_scale.adjust(finite),
    )
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        # The rate this update applied: after a skipped update the schedule is one step behind.
        "learning_rate": schedule(optim.schedule_count(state.opt_state, state.step)),
        "nonfinite": 1.0 - finite.astype(jnp.float32),
        **objective.summarize(sums),
    }
    if state.loss_scale is not None:
        metrics["loss_scale"] = state.loss_scale.scale  # the scale this step's gradients had
    return new_state, metrics


def eval_step(params, batch: dict, *, sums_fn: Callable) -> dict:
    """Metric sums of one held-out batch (dropout off); the loop adds them over batches."""
    return sums_fn(params, batch, None, True)
