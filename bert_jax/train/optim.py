"""Optimizers (optax) and the learning-rate schedule of BERT pre-training and fine-tuning."""

import flax
import jax
import optax
from absl import logging

# Parameters BERT does not decay: LayerNorm scales and every bias.
_NO_DECAY_NAMES = frozenset({"bias", "scale", "output_bias"})


def learning_rate_schedule(learning_rate: float, warmup_steps: int, total_steps: int):
    """Linear warmup from 0 to the peak, then linear decay to 0 at total_steps."""
    warmup_steps = max(0, min(warmup_steps, total_steps))
    warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
    return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params):
    """True for parameters that get weight decay (kernels and embeddings)."""
    flat = flax.traverse_util.flatten_dict(params)
    mask = {path: path[-1] not in _NO_DECAY_NAMES for path in flat}
    return flax.traverse_util.unflatten_dict(mask)


def make_optimizer(config, total_steps: int):
    """(optax transformation, schedule) from the run config's `optimizer` section.

    Global-norm clipping comes first, as in the original BERT. AdamW here keeps Adam's bias
    correction, which the original TF optimizer omits; with 10k warmup steps the two agree
    after the first few hundred steps.
    """
    if not config.learning_rate > 0:
        raise ValueError(f"optimizer.learning_rate={config.learning_rate!r}: expected a peak "
                         "learning rate > 0")
    _check_settings(config)
    if 0 < total_steps <= config.warmup_steps:
        logging.warning("optimizer.warmup_steps=%d is not below the run's %d steps: the whole "
                        "run warms up, reaching the peak rate only at its end, and never decays",
                        config.warmup_steps, total_steps)
    schedule = learning_rate_schedule(config.learning_rate, config.warmup_steps, total_steps)
    if config.name == "adamw":
        core = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=weight_decay_mask)
    elif config.name == "lamb":
        core = _lamb(schedule, config)
    else:
        raise ValueError(f"optimizer.name {config.name!r} is not one of 'adamw', 'lamb'")
    if config.grad_clip_norm and config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), core), schedule
    return core, schedule


def _check_settings(config) -> None:
    """Adam's and LAMB's numbers in their ranges, named: b1 = 1 leaves Adam's bias correction
    dividing by zero (a non-finite first step), a negative clip norm turned clipping off."""
    ranges = {"b1": (0.0, 1.0, "[0, 1)"), "b2": (0.0, 1.0, "[0, 1)"),
              "eps": (0.0, None, "> 0"), "weight_decay": (0.0, None, ">= 0")}
    for name, (low, high, expected) in ranges.items():
        value = getattr(config, name)
        inside = (value > low if name == "eps" else value >= low) and (
            high is None or value < high)
        if not inside:
            raise ValueError(f"optimizer.{name}={value!r}: expected {expected}")
    if config.grad_clip_norm is not None and config.grad_clip_norm < 0:
        raise ValueError(f"optimizer.grad_clip_norm={config.grad_clip_norm!r}: expected a norm "
                         "> 0, or 0 (or None) for no clipping")
    if not 0 <= config.warmup_steps:
        raise ValueError(f"optimizer.warmup_steps={config.warmup_steps!r}: expected >= 0")


def _lamb(schedule, config):
    """LAMB as BERT's reference implementations apply it: the layer-wise trust ratio only on
    the parameters that take weight decay, so biases and LayerNorm scales get Adam's step
    (optax.lamb would rescale theirs too, by their own norms)."""
    return optax.chain(
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
        optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
        optax.masked(optax.scale_by_trust_ratio(), weight_decay_mask),
        optax.scale_by_learning_rate(schedule),
    )


def schedule_count(opt_state, default: jax.Array) -> jax.Array:
    """The step the optimizer's learning-rate schedule stands at: optax's own count, which a
    skipped (non-finite) update leaves where it was while the training step moves on. `default`
    when the optimizer has no schedule state (a constant learning rate)."""
    is_schedule_state = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    counts = [leaf.count for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=is_schedule_state)
              if is_schedule_state(leaf)]
    if len(counts) > 1:
        raise ValueError(f"{len(counts)} learning-rate schedules in the optimizer state; "
                         "expected one")
    return counts[0] if counts else default


def global_norm(tree) -> jax.Array:
    return optax.global_norm(tree)
