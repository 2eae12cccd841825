"""The device mesh (data x fsdp x tensor) and the shardings derived from logical names.

Within a slice (TPU ICI, or the NVLink domain of a GPU node) the devices form data x fsdp x
tensor. Across slices (DCN: the data-centre network) only data parallelism is used, since it
sends one gradient reduction per step rather than per-layer collectives: `dcn_data` > 1 makes a
hybrid mesh whose `data` axis is dcn_data slices x data devices per slice.
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax.parallel.rules import MESH_AXES


def mesh_shape(config, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 ("the remaining devices") and checks the product against the device count."""
    sizes = [config.data, config.fsdp, config.tensor]
    for axis, size in zip(MESH_AXES, sizes):
        if not isinstance(size, int) or not (size == -1 or size >= 1):
            raise ValueError(f"mesh.{axis}={size!r}: expected a number of devices >= 1, or -1 "
                             f"for the remaining devices")
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


def dcn_data_size(config) -> int:
    """Slices that data parallelism spans over DCN (config.dcn_data, default 1)."""
    size = config.get("dcn_data", 1) if hasattr(config, "get") else getattr(config, "dcn_data", 1)
    if size < 1:
        raise ValueError(f"mesh.dcn_data must be a positive number of slices, got {size}")
    return int(size)


def _granules(devices) -> tuple[dict, bool]:
    """Devices grouped by slice (TPU multislice) or, where they all sit in one slice (a GPU
    cluster, CPU processes: slice_index 0 or absent), by process."""
    slices = {getattr(d, "slice_index", None) for d in devices}
    by_slice = None not in slices and len(slices) > 1
    groups: dict = {}
    for d in devices:
        groups.setdefault(d.slice_index if by_slice else d.process_index, []).append(d)
    return groups, not by_slice


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(device_grid(config, devices), MESH_AXES)


def device_grid(config, devices) -> np.ndarray:
    """The devices arranged as [data, fsdp, tensor]; with dcn_data > 1 the data axis runs over
    slices (outer) then the data devices within a slice, so only `data` crosses DCN."""
    dcn = dcn_data_size(config)
    if dcn == 1:
        return np.asarray(devices).reshape(mesh_shape(config, len(devices)))
    groups, by_process = _granules(devices)
    if len(groups) != dcn or len({len(g) for g in groups.values()}) != 1:
        unit, units = ("process", "processes") if by_process else ("slice", "slices")
        sizes = {k: len(g) for k, g in sorted(groups.items())}
        raise ValueError(f"mesh.dcn_data={dcn} needs {dcn} {units} of equal size, but the "
                         f"{len(devices)} devices form {len(groups)} {units} (devices per "
                         f"{unit}: {sizes})")
    per_slice = mesh_shape(config, len(devices) // dcn)
    return mesh_utils.create_hybrid_device_mesh(per_slice, (dcn, 1, 1), devices,
                                                process_is_granule=by_process)


def logical_shardings(abstract_tree, mesh, rules):
    """NamedShardings for a tree whose leaves carry logical names (nn.LogicallyPartitioned)."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_shards_divide(leaves, mesh_sizes: dict, rules: str, vocab_size: int) -> None:
    """Every sharded dimension divides over its mesh axes. `leaves`: (name, shape, spec) of
    each array. jax would refuse the layout only when placing it, with no config key named;
    BERT's own vocabulary (30,522 = 2 x 15,261) divides over no tensor axis of 4 or 8."""
    for name, shape, spec in leaves:
        name = name.lstrip(".")
        for dim, (size, entry) in enumerate(zip(shape, tuple(spec))):
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            devices = math.prod(mesh_sizes[a] for a in axes)
            if size % devices == 0:
                continue
            sizes = ", ".join(f"mesh.{a}={mesh_sizes[a]}" for a in axes)
            hint = (f", or set model.vocab_size to a multiple of {devices} (e.g. "
                    f"{-(-size // devices) * devices}; rows past the tokenizer's stay unused)"
                    if size == vocab_size else "")
            raise ValueError(f"{name} has shape {tuple(shape)}: its dimension {dim} ({size}) "
                             f"does not divide over {devices} devices ({sizes}, "
                             f"mesh.rules={rules!r}): choose mesh sizes that divide it{hint}")


def batch_sharding(mesh) -> NamedSharding:
    """The leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_processes_hold_their_own_rows(mesh, batch_size: int) -> None:
    """Each process reads its own examples (batch_size / processes of them) and places them on
    its devices, so no two processes' devices may hold the same batch rows: a mesh axis outside
    the batch axes (tensor, say) that spans processes would make their different rows
    replicas of one another, silently. One process is always fine."""
    if len({d.process_index for d in mesh.devices.flat}) == 1:
        return
    holders: dict = {}
    for device, index in batch_sharding(mesh).devices_indices_map((batch_size,)).items():
        holders.setdefault(index[0].indices(batch_size)[:2], set()).add(device.process_index)
    shared = sorted((rows, sorted(p)) for rows, p in holders.items() if len(p) > 1)
    if shared:
        (start, stop), processes = shared[0]
        sizes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
        raise ValueError(
            f"mesh {sizes}: processes {processes} would hold the same batch rows {start}..{stop} "
            f"on their devices, but each process reads its own examples. Only the batch axes "
            f"(data, fsdp) may span processes: keep the tensor axis within one process (e.g. "
            f"one process per node driving all its GPUs: launch/slurm.py --mode=per_node)")


def global_batch(local_batch: dict, mesh) -> dict:
    """This host's numpy batch -> global jax.Arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
