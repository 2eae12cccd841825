"""Meshes, sharding rules and the memory plan: one train step per preset on 8 simulated devices
equals the single-device step; parameters carry the shardings the rules name.

The 8-device checks run once in a subprocess (`python -m tests.test_parallel DATA_DIR`), because
the device count is fixed when jax starts; the tests assert on the JSON it prints.
"""

import functools
import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from ml_collections import config_dict

from bert_jax.parallel import memory, mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (rules, data, fsdp, tensor)
CASES = {
    "data": ("data", 8, 1, 1),
    "fsdp": ("fsdp", 2, 4, 1),
    "fsdp_tensor": ("fsdp_tensor", 1, 4, 2),
    "2x2x2": ("fsdp_tensor", 2, 2, 2),
}


def tiny_config(data_dir, rules="data", data=-1, fsdp=1, tensor=1, size="tiny"):
    from configs import pretrain

    config = pretrain.get_config(size)
    config.data.source = f"prose:{data_dir}/gutenberg/11-0.txt"
    config.data.tokenizer = f"wordpiece:{data_dir}/bert_vocab/vocab.txt"
    config.data.max_seq_length = 32
    config.data.max_predictions_per_seq = 5
    config.model.max_position_embeddings = 64
    config.train.batch_size = 8
    config.train.num_steps = 10
    config.optimizer.warmup_steps = 0  # optax counts from 0: a warmup would make step 0 a no-op
    config.optimizer.learning_rate = 1e-3
    config.mesh.update(dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules))
    if size == "tiny":
        config.model.num_layers = 1  # one layer shows every sharding; compiles in half the time
    return config


def _spec(sharding) -> list:
    return [None if e is None else (e if isinstance(e, str) else list(e)) for e in sharding.spec]


def eight_device_report(data_dir) -> dict:
    """Runs in the 8-device subprocess: every case's step against the single-device step."""
    import flax.linen as nn

    from bert_jax.data import pipeline, tokenization
    from bert_jax.train import setup as setup_lib, steps

    assert jax.device_count() == 8, jax.devices()
    tokenizer = tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")
    base = setup_lib.build(tiny_config(data_dir), tokenizer)
    data = pipeline.make_pretraining_iterator(base.pipeline_config, tokenizer, batch_size=8,
                                              seed=0, process_index=0, process_count=1)
    batch = next(data)
    data.close()
    rng = jax.random.key(3)
    device0 = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    init = jax.jit(lambda r: nn.unbox(setup_lib.boxed_init_fn(
        base.model, base.optimizer, base.pipeline_config)(r)), out_shardings=device0)
    state0 = jax.device_get(init(jax.random.key(0)))

    def train_fn(s):
        return functools.partial(
            steps.train_step, sums_fn=steps.pretraining_sums_fn(s.model, s.use_nsp),
            optimizer=s.optimizer, schedule=s.schedule)

    ref_state, ref_metrics = jax.jit(train_fn(base))(
        jax.device_put(state0, device0), jax.device_put(batch, device0), rng)
    ref_params = jax.device_get(ref_state.params)
    report = {"reference_loss": float(ref_metrics["loss"]), "cases": {}}
    for name, (rules, d, f, t) in CASES.items():
        s = setup_lib.build(tiny_config(data_dir, rules, d, f, t), tokenizer)
        batch_sharding = mesh_lib.batch_sharding(s.mesh)
        step = setup_lib.with_mesh_and_rules(s, jax.jit(
            train_fn(s), in_shardings=(s.state_shardings, batch_sharding, mesh_lib.replicated(
                s.mesh)), out_shardings=(s.state_shardings, mesh_lib.replicated(s.mesh))))
        state = jax.device_put(state0, s.state_shardings)
        new_state, metrics = step(state, mesh_lib.global_batch(batch, s.mesh), rng)
        diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))),
                                       jax.device_get(new_state.params), ref_params)
        changed = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))),
                                         ref_params, state0.params)
        token = new_state.params["bert"]["embeddings"]["token_embed"]["embedding"]
        kernel = new_state.params["bert"]["encoder"]["layer_0"]["intermediate"]["kernel"]
        mismatched = [jax.tree_util.keystr(p) for (p, a), b in zip(
            jax.tree_util.tree_flatten_with_path(new_state)[0],
            jax.tree_util.tree_leaves(s.state_shardings)) if not a.sharding.is_equivalent_to(
                b, a.ndim)]
        report["cases"][name] = {
            "mesh": dict(s.mesh.shape),
            "loss": float(metrics["loss"]),
            "max_param_diff": max(jax.tree_util.tree_leaves(diffs)),
            "max_update": max(jax.tree_util.tree_leaves(changed)),
            "token_embed_spec": _spec(token.sharding),
            "token_embed_shard": list(token.sharding.shard_shape(token.shape)),
            "intermediate_kernel_spec": _spec(kernel.sharding),
            "leaves_off_their_sharding": mismatched,
        }
    # Gradient accumulation over a data-parallel mesh: the micro-batches must come from the
    # rows each device already holds, with no collective but the gradients' reduction.
    s = setup_lib.build(tiny_config(data_dir), tokenizer)
    accumulating = jax.jit(
        functools.partial(train_fn(s), grad_accum_steps=2),
        in_shardings=(s.state_shardings, mesh_lib.batch_sharding(s.mesh),
                      mesh_lib.replicated(s.mesh)),
        out_shardings=(s.state_shardings, mesh_lib.replicated(s.mesh)))
    batch_of_16 = {k: jax.ShapeDtypeStruct((16,) + v.shape[1:], v.dtype) for k, v in batch.items()}
    hlo = setup_lib.with_mesh_and_rules(s, lambda: accumulating.lower(
        s.abstract_state, batch_of_16, rng).compile().as_text())()
    report["accumulation_collectives"] = sorted(set(re.findall(
        r"\b(all-gather|all-to-all|collective-permute|reduce-scatter|all-reduce)(?:-start)?\(",
        hlo)))
    large = setup_lib.build(tiny_config(data_dir, "fsdp", 1, 8, 1, size="large"), tokenizer)
    token = large.abstract_state.params["bert"]["embeddings"]["token_embed"]["embedding"]
    mu = large.abstract_state.opt_state
    report["large_fsdp"] = {
        "token_embed_shape": list(token.shape),
        "token_embed_spec": _spec(token.sharding),
        "token_embed_shard": list(token.sharding.shard_shape(token.shape)),
        "opt_state_specs": sorted({str(x.sharding.spec) for x in jax.tree_util.tree_leaves(mu)
                                   if len(x.shape) == 2 and x.shape[0] == 30522}),
    }
    return report


@pytest.fixture(scope="module")
def report(data_dir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tests.test_parallel", str(data_dir)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds"] = time.monotonic() - start
    return result


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_step_matches_single_device(report, case):
    got = report["cases"][case]
    rules, d, f, t = CASES[case]
    assert got["mesh"] == {"data": d, "fsdp": f, "tensor": t}
    assert abs(got["loss"] - report["reference_loss"]) <= 1e-5 * max(1, report["reference_loss"])
    assert got["max_param_diff"] <= 1e-5
    assert got["max_update"] > 1e-4  # the step moved the parameters: the comparison means something
    assert got["leaves_off_their_sharding"] == []


@pytest.mark.slow
def test_parameters_carry_rule_shardings(report):
    cases = report["cases"]
    assert cases["data"]["token_embed_spec"] == [None, None]
    assert cases["fsdp"]["token_embed_spec"] == [None, "fsdp"]
    assert cases["fsdp"]["token_embed_shard"] == [30522, 128 // 4]
    assert cases["fsdp_tensor"]["token_embed_spec"] == ["tensor", "fsdp"]
    assert cases["2x2x2"]["intermediate_kernel_spec"] == ["fsdp", "tensor"]


@pytest.mark.slow
def test_gradient_accumulation_moves_no_batch_rows_between_devices(report):
    # Micro-batches in blocks of rows all-gathered every micro-batch's inputs (18 all-gathers
    # in a one-layer model's step); strided, each device's rows give every micro-batch its share.
    assert report["accumulation_collectives"] == ["all-reduce"]


@pytest.mark.slow
def test_large_token_embedding_split_over_fsdp(report):
    large = report["large_fsdp"]
    assert large["token_embed_shape"] == [30522, 1024]
    assert large["token_embed_spec"] == [None, "fsdp"]
    assert large["token_embed_shard"] == [30522, 128]
    # LAMB's moments are split like the parameters they follow.
    assert large["opt_state_specs"] == [str(jax.sharding.PartitionSpec(None, "fsdp"))]


def _large_fsdp8():
    from configs import pretrain

    config = pretrain.get_config("large")
    config.model.vocab_size = 30522
    config.mesh.update(dict(data=1, fsdp=8, tensor=1, rules="fsdp"))
    return config


def test_memory_plan_large_fsdp8():
    plan = memory.memory_plan(_large_fsdp8(), 8)
    # BERT-Large: ~336M parameters, and LAMB keeps two moments: ~4.0 GB in f32.
    assert 3.9e9 < plan.total_bytes < 4.1e9
    assert plan.opt_state_bytes == pytest.approx(2 * plan.params_bytes, rel=1e-6)
    slack = 4 * 2**20  # biases and the MLM output bias stay whole on every device
    assert plan.per_device_bytes <= plan.total_bytes / 8 + slack
    assert plan.per_device_bytes > plan.total_bytes / 8  # and something is indeed whole


def test_large_token_embedding_rule_without_devices():
    """The same check as the 8-device one, from the rules alone: vocab x embed -> (None, fsdp)."""
    import flax.linen as nn

    from bert_jax.parallel import rules

    config = _large_fsdp8()
    boxed = memory.abstract_train_state(config)
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules.logical_axis_rules("fsdp"))
    spec = specs.params["bert"]["embeddings"]["token_embed"]["embedding"]
    assert spec == jax.sharding.PartitionSpec(None, "fsdp")
    sizes = {"data": 1, "fsdp": 8, "tensor": 1}
    assert memory.shard_shape((30522, 1024), spec, sizes) == (30522, 128)


_UNSHARDED_NAMES = ("layers", "kv", "position", "type", "length", "act_embed")
# preset -> the mesh axis of every logical name (None: replicated), as rules.py's docstring says.
_PRESET_TABLES = {
    "data": {"batch": ("data", "fsdp"), "embed": None, "heads": None, "mlp": None,
             "vocab": None, "act_heads": None, "act_mlp": None},
    "fsdp": {"batch": ("data", "fsdp"), "embed": "fsdp", "heads": None, "mlp": None,
             "vocab": None, "act_heads": None, "act_mlp": None},
    "fsdp_tensor": {"batch": ("data", "fsdp"), "embed": "fsdp", "heads": "tensor",
                    "mlp": "tensor", "vocab": "tensor", "act_heads": "tensor",
                    "act_mlp": "tensor"},
}


@pytest.mark.parametrize("preset", sorted(_PRESET_TABLES))
def test_each_preset_maps_every_logical_name_to_its_mesh_axis(preset):
    """The whole logical -> mesh table of each preset, one rule a name: a lost rule leaves its
    name replicated, which still trains correctly (only the 8-device slow run would see the
    memory), so the table itself is pinned. Every name the model's parameters carry is in it."""
    import flax.linen as nn
    import jax.numpy as jnp

    from bert_jax.model import BertForPreTraining, ModelConfig
    from bert_jax.parallel import rules

    table = rules.logical_axis_rules(preset)
    assert len({name for name, _ in table}) == len(table)  # flax takes a name's first rule
    assert dict(table) == {**_PRESET_TABLES[preset],
                           **{name: None for name in _UNSHARDED_NAMES}}

    config = ModelConfig.from_size("tiny", scan_layers=True)
    boxed = jax.eval_shape(lambda: BertForPreTraining(config).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32),
        masked_positions=jnp.zeros((1, 1), jnp.int32)))["params"]
    param_names = {name for leaf in jax.tree_util.tree_leaves(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)) for name in leaf.names}
    assert param_names - {None} <= set(dict(table))

    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), table)["bert"]["encoder"]["layers"]
    attention = specs["attention"]
    axis = _PRESET_TABLES[preset]
    # query [layers, embed, heads, kv]; out [layers, heads, kv, embed]
    assert attention["query"]["kernel"] == jax.sharding.PartitionSpec(
        None, axis["embed"], axis["heads"], None)
    assert attention["out"]["kernel"] == jax.sharding.PartitionSpec(
        None, axis["heads"], None, axis["embed"])
    if preset == "fsdp_tensor":
        assert attention["query"]["kernel"] == jax.sharding.PartitionSpec(
            None, "fsdp", "tensor", None)


def test_a_layout_whose_shards_do_not_divide_is_refused_by_name():
    # BERT's own vocabulary (30,522 rows) over a tensor axis of 4: jax would refuse it only
    # when placing the parameters, naming no config key; the planner would round it up.
    config = _large_fsdp8()
    config.mesh.update(dict(data=1, fsdp=1, tensor=4, rules="fsdp_tensor"))
    with pytest.raises(ValueError, match=(
            r"params\['bert'\]\['embeddings'\]\['token_embed'\]\['embedding'\] has shape "
            r"\(30522, 1024\): its dimension 0 \(30522\) does not divide over 4 devices "
            r"\(mesh.tensor=4, mesh.rules='fsdp_tensor'\).*set model.vocab_size to a multiple "
            r"of 4 \(e.g. 30524;")):
        memory.memory_plan(config, 4)
    config.model.vocab_size = 30524
    assert memory.memory_plan(config, 4).per_device_bytes > 0
    for axis, size in (("fsdp", 0), ("data", -2)):
        config.mesh.update({"data": 1, "fsdp": 1, axis: size})
        with pytest.raises(ValueError, match=rf"mesh.{axis}={size}: expected a number of "
                                             r"devices >= 1, or -1"):
            memory.memory_plan(config, 4)


def test_memory_plan_data_parallel_replicates():
    config = _large_fsdp8()
    config.mesh.update(dict(data=-1, fsdp=1, rules="data"))
    plan = memory.memory_plan(config, 8)
    assert plan.per_device_bytes == plan.total_bytes


def test_shard_shape_rounds_up():
    sizes = {"data": 2, "fsdp": 4, "tensor": 2}
    spec = jax.sharding.PartitionSpec(("data", "fsdp"), "tensor")
    assert memory.shard_shape((30522, 7, 3), spec, sizes) == (3816, 4, 3)


@pytest.mark.parametrize("sizes, devices, match", [
    ((3, 1, 1), 8, "3 devices, but 8 are available"),
    ((-1, 3, 1), 8, "do not divide"),
    ((-1, -1, 1), 8, "at most one mesh axis"),
    ((2, 2, 2), 4, "8 devices, but 4"),
])
def test_mesh_product_must_match_devices(sizes, devices, match):
    config = config_dict.ConfigDict(dict(zip(("data", "fsdp", "tensor"), sizes)))
    with pytest.raises(ValueError, match=match):
        mesh_lib.mesh_shape(config, devices)


def test_mesh_minus_one_takes_the_rest():
    config = config_dict.ConfigDict(dict(data=-1, fsdp=2, tensor=2))
    assert mesh_lib.mesh_shape(config, 16) == (4, 2, 2)


class _FakeDevice:
    """What the hybrid mesh reads of a device: its id, process and (on TPU) slice."""

    def __init__(self, id, process_index, slice_index=None):
        self.id, self.process_index, self.platform, self.device_kind = (
            id, process_index, "cpu", "cpu")
        if slice_index is not None:
            self.slice_index = slice_index

    def __repr__(self):
        return f"d{self.id}"


@pytest.mark.parametrize("slice_of", [lambda i: i // 4, lambda i: 0, lambda i: None],
                         ids=["two_slices", "one_slice", "no_slice_index"])
def test_dcn_data_puts_only_the_data_axis_across_slices(slice_of):
    # Two slices of 4 devices, or (GPU nodes, CPU processes) one slice and two processes of 4;
    # listed out of order; fsdp=2 within each.
    devices = [_FakeDevice(i, i // 4, slice_of(i)) for i in range(8)][::-1]
    config = config_dict.ConfigDict(dict(data=-1, fsdp=2, tensor=1, dcn_data=2))
    grid = mesh_lib.device_grid(config, devices)
    assert grid.shape == (4, 2, 1)
    group = np.vectorize(lambda d: d.id // 4)(grid)[:, :, 0]
    # data rows 0-1 are one slice, rows 2-3 the other: fsdp and tensor never cross DCN.
    assert (group[:2] == group[0, 0]).all() and (group[2:] == group[2, 0]).all()
    assert group[0, 0] != group[2, 0]
    assert sorted(d.id for d in grid.ravel()) == list(range(8))


def test_dcn_data_must_match_the_slices():
    devices = [_FakeDevice(i, i // 4) for i in range(8)]
    config = config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=3))
    with pytest.raises(ValueError, match=r"mesh.dcn_data=3 needs 3 processes of equal size, "
                                         r"but the 8 devices form 2 processes"):
        mesh_lib.device_grid(config, devices)
    config.dcn_data = 0
    with pytest.raises(ValueError, match="positive number of slices"):
        mesh_lib.device_grid(config, devices)


def test_batch_must_divide_data_axes():
    from bert_jax.train import setup as setup_lib

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
    setup_lib.check_batch_divides(8, 2, mesh)
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        setup_lib.check_batch_divides(8, 3, mesh)


@pytest.mark.slow
def test_batch_not_divisible_over_eight_devices(report):
    assert report["cases"]  # the 8-device subprocess ran; its own check is below
    assert report["bad_batch_error"].startswith("train.batch_size=12 must divide")


if __name__ == "__main__":
    from bert_jax.train import setup as setup_lib

    result = eight_device_report(sys.argv[1])
    try:
        mesh = mesh_lib.make_mesh(config_dict.ConfigDict(dict(data=8, fsdp=1, tensor=1)))
        setup_lib.check_batch_divides(12, 1, mesh)
        result["bad_batch_error"] = ""
    except ValueError as e:
        result["bad_batch_error"] = str(e)
    print(json.dumps(result))
