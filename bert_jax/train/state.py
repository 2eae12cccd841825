"""The training state: step, params and optimizer state, as one pytree."""

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far
    params: dict
    opt_state: object
