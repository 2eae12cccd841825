"""The training state: step, params and optimizer state, as one pytree."""

import flax.struct
import jax

from bert_jax.train.loss_scale import DynamicLossScale


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: dict
    opt_state: object
    # float16 compute only (train/loss_scale.py); None otherwise, which adds nothing to the
    # state's arrays or to its checkpoints.
    loss_scale: DynamicLossScale | None = None
