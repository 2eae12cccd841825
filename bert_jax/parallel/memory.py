r"""Memory plan without allocating: per-device bytes of parameters and optimizer state.

    python -m bert_jax.parallel.memory --config=configs/pretrain.py:large --num_devices=8 \
        --config.mesh.data=1 --config.mesh.fsdp=8 --config.mesh.rules=fsdp

Everything comes from abstract evaluation (jax.eval_shape) and the logical axis rules; no device
is needed, so the plan for a pod can be printed on a laptop before launching.
"""

import dataclasses
import json
import math

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bert_jax.data import pipeline
from bert_jax.model import BertForPreTraining
from bert_jax.model.config import model_config_from_section
from bert_jax.parallel import mesh as mesh_lib
from bert_jax.parallel import rules as rules_lib
from bert_jax.parallel.rules import MESH_AXES


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    mesh: dict  # axis -> size
    total_bytes: int  # params + optimizer state, unsharded
    per_device_bytes: int  # the largest device's share
    params_bytes: int
    params_per_device_bytes: int
    opt_state_bytes: int
    opt_state_per_device_bytes: int
    largest_unsharded: list  # [(name, bytes)]: leaves every device holds whole

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def shard_shape(shape: tuple, spec, mesh_sizes: dict) -> tuple:
    """The shape one device holds of an array of `shape` under mesh PartitionSpec `spec`."""
    entries = tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))
    out = []
    for dim, entry in zip(shape, entries):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        out.append(math.ceil(dim / math.prod(mesh_sizes[a] for a in axes)))
    return tuple(out)


def abstract_train_state(config):
    """(abstract TrainState with logical boxes) for the run config, without allocating."""
    from bert_jax.train import optim, setup  # train/ builds on parallel/, not the reverse

    model_config = model_config_from_section(config.model)
    pipeline_config = pipeline.PipelineConfig.from_config(config.data)
    optimizer, _ = optim.make_optimizer(config.optimizer, config.train.num_steps)
    init = setup.boxed_init_fn(BertForPreTraining(model_config), optimizer, pipeline_config)
    return jax.eval_shape(init, jax.random.key(0))


def memory_plan(config, num_devices: int) -> MemoryPlan:
    """Bytes of params + optimizer state in total and on each device under config.mesh."""
    sizes = dict(zip(MESH_AXES, mesh_lib.mesh_shape(config.mesh, num_devices)))
    rules = rules_lib.logical_axis_rules(config.mesh.rules)
    boxed = abstract_train_state(config)
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
    abstract = nn.unbox(boxed)

    def sizes_of(tree, spec_tree):
        total = per_device = 0
        whole = []
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        spec_leaves = jax.tree_util.tree_leaves(
            spec_tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        for (path, leaf), spec in zip(leaves, spec_leaves):
            itemsize = np.dtype(leaf.dtype).itemsize
            nbytes = math.prod(leaf.shape) * itemsize
            local = math.prod(shard_shape(leaf.shape, spec, sizes)) * itemsize
            total, per_device = total + nbytes, per_device + local
            if local == nbytes and len(leaf.shape) > 0:
                whole.append((jax.tree_util.keystr(path), nbytes))
        return total, per_device, whole

    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    mesh_lib.check_shards_divide(
        [(jax.tree_util.keystr(path), leaf.shape, spec) for (path, leaf), spec in zip(
            jax.tree_util.tree_flatten_with_path(abstract)[0],
            jax.tree_util.tree_leaves(specs, is_leaf=is_spec))],
        sizes, config.mesh.rules, model_config_from_section(config.model).vocab_size)
    p_total, p_local, p_whole = sizes_of(abstract.params, specs.params)
    o_total, o_local, o_whole = sizes_of(abstract.opt_state, specs.opt_state)
    largest = sorted(p_whole + o_whole, key=lambda x: -x[1])[:5]
    return MemoryPlan(sizes, p_total + o_total, p_local + o_local, p_total, p_local, o_total,
                      o_local, largest)


_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/pretrain.py:large")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", None, "Devices of the planned run.",
                                    required=True)


def main(argv):
    del argv
    plan = memory_plan(_CONFIG.value, _NUM_DEVICES.value)
    gib = 2**30
    print(f"mesh {plan.mesh}, rules {_CONFIG.value.mesh.rules}")
    print(f"params + optimizer state: {plan.total_bytes / gib:.3f} GiB in total, "
          f"{plan.per_device_bytes / gib:.3f} GiB per device "
          f"(1/{plan.total_bytes / plan.per_device_bytes:.2f})")
    print(json.dumps(plan.to_dict(), indent=2))


if __name__ == "__main__":
    app.run(main)
