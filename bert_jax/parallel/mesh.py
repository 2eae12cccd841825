"""The device mesh (data x fsdp x tensor) and the shardings derived from logical names."""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax.parallel.rules import MESH_AXES


def mesh_shape(config, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 ("the remaining devices") and checks the product against the device count."""
    sizes = [config.data, config.fsdp, config.tensor]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={sizes[0]} "
                         f"fsdp={sizes[1]} tensor={sizes[2]}")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not divide over the fixed mesh axes "
                             f"(product {known})")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                         f"{math.prod(sizes)} devices, but {num_devices} are available")
    return tuple(sizes)


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(config, len(devices))
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_shardings(abstract_tree, mesh, rules):
    """NamedShardings for a tree whose leaves carry logical names (nn.LogicallyPartitioned)."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh) -> NamedSharding:
    """The leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch: dict, mesh) -> dict:
    """This host's numpy batch -> global jax.Arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
