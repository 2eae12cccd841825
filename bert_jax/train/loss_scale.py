"""Dynamic loss scaling, for training with float16 compute (V100 and T4 GPUs, where bfloat16
has no fast path).

float16's smallest normal number is 6e-5 (subnormals reach 6e-8): the backward pass's
activation gradients of a large batch's mean loss fall below that and flush to zero. The loss
is multiplied by a large scale before differentiation, so the gradients flowing through float16
are scaled up by it too, and the float32 parameter gradients are divided by it afterwards. Too
large a scale overflows float16 to inf: that step's update is skipped and the scale halved. After
`growth_interval` finite steps in a row the scale doubles, so it stays near the largest that
does not overflow. Parameters and optimizer state stay float32 (model.param_dtype=float32).
"""

import math

import flax.struct
import jax
import jax.numpy as jnp

# The scale never goes below 1: a step that overflows at scale 1 has overflowed without any
# scaling, which is divergence, not a scale too large (the loop treats it as non-finite).
MINIMUM = 1.0


@flax.struct.dataclass
class DynamicLossScale:
    scale: jax.Array  # float32 scalar: the factor on the loss
    good_steps: jax.Array  # int32 scalar: finite steps since the scale last changed
    # Fixed for the run (part of the state's structure, not of its arrays); the config's
    # train.loss_scale_initial and train.loss_scale_growth_interval, through create().
    initial: float = flax.struct.field(pytree_node=False)
    growth_interval: int = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, initial: float, growth_interval: int) -> "DynamicLossScale":
        if not initial >= MINIMUM:
            raise ValueError(f"train.loss_scale_initial={initial!r}: expected a number >= "
                             f"{MINIMUM:g} (a power of two, such as 2**15)")
        if not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"train.loss_scale_growth_interval={growth_interval!r}: expected a "
                             "number of steps >= 1")
        return cls(scale=jnp.asarray(initial, jnp.float32), good_steps=jnp.zeros((), jnp.int32),
                   initial=float(initial), growth_interval=growth_interval)

    def restart(self) -> "DynamicLossScale":
        """The scale at the start of a run, for a state whose checkpoint holds none."""
        return self.create(self.initial, self.growth_interval)

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss * self.scale

    def unscale(self, grads):
        """Gradients of the scaled loss -> gradients of the loss (float32 parameters)."""
        inverse = 1.0 / self.scale
        return jax.tree_util.tree_map(lambda g: g * inverse.astype(g.dtype), grads)

    def adjust(self, finite: jax.Array) -> "DynamicLossScale":
        """The scale for the next step, after a step whose gradients were `finite` or not."""
        grown = self.good_steps + 1 >= self.growth_interval
        scale = jnp.where(finite, jnp.where(grown, self.scale * 2.0, self.scale),
                          jnp.maximum(self.scale * 0.5, MINIMUM))
        good_steps = jnp.where(finite & ~grown, self.good_steps + 1, 0)
        return self.replace(scale=scale.astype(jnp.float32), good_steps=good_steps)


def for_training(model_config, train_config) -> DynamicLossScale | None:
    """The run's initial loss scale: one when the model computes in float16, else None (bfloat16
    has float32's range and float32 needs none)."""
    if jnp.dtype(model_config.dtype) != jnp.float16:
        return None
    return DynamicLossScale.create(train_config.loss_scale_initial,
                                   train_config.loss_scale_growth_interval)


def overflowed(metrics: dict) -> bool:
    """Whether a non-finite step's host metrics are a float16 overflow of the scaled gradients,
    which lowered the scale, as opposed to divergence: the loss itself (computed unscaled) was
    finite, and only a scale above the minimum can be too large."""
    return metrics.get("loss_scale", 0.0) > MINIMUM and math.isfinite(metrics["loss"])
