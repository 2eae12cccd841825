"""The encoder and pre-training heads: sizes, shapes, dtypes, masking semantics, bad input."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.model import NAMED_SIZES, BertEncoder, BertForPreTraining, ModelConfig, layers
from bert_jax.model import inputs


def _count(tree) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def _abstract_params(model, config, with_heads):
    ids = jnp.zeros((1, 8), jnp.int32)
    kwargs = {"masked_positions": jnp.zeros((1, 2), jnp.int32)} if with_heads else {}
    return jax.eval_shape(lambda: model(config).init(jax.random.key(0), ids, **kwargs))["params"]


@pytest.mark.parametrize("size,encoder_count,pretraining_count", [
    ("base", 109_482_240, 110_106_428),
    ("large", 335_141_888, 336_226_108),
])
def test_parameter_counts_equal_the_reference(size, encoder_count, pretraining_count):
    config = ModelConfig.from_size(size)
    assert _count(_abstract_params(BertEncoder, config, False)) == encoder_count
    assert _count(_abstract_params(BertForPreTraining, config, True)) == pretraining_count


@pytest.mark.parametrize("size", sorted(NAMED_SIZES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_output_shapes_and_dtypes_at_every_size(size, dtype):
    config = ModelConfig.from_size(size, dtype=dtype)
    batch, length, predictions = 2, 16, 3
    ids = jnp.ones((batch, length), jnp.int32)
    positions = jnp.zeros((batch, predictions), jnp.int32)
    model = BertForPreTraining(config)

    def forward():
        variables = model.init(jax.random.key(0), ids, masked_positions=positions)
        return variables, model.apply(variables, ids, masked_positions=positions)

    variables, out = jax.eval_shape(forward)
    assert out["mlm_logits"].shape == (batch, predictions, config.vocab_size)
    assert out["nsp_logits"].shape == (batch, 2)
    assert out["mlm_logits"].dtype == jnp.float32  # losses are computed in float32
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    enc = jax.eval_shape(lambda p: BertEncoder(config).apply({"params": p}, ids),
                         nn.unbox(variables["params"]["bert"]))
    assert enc[0].shape == (batch, length, config.hidden_size)
    assert enc[0].dtype == jnp.dtype(dtype)
    assert enc[1].shape == (batch, config.hidden_size)


def _tiny(**overrides):
    return ModelConfig.from_size("tiny", vocab_size=300, max_position_embeddings=64, **overrides)


@pytest.fixture(scope="module")
def tiny_params():
    config = _tiny()
    ids = jnp.ones((1, 8), jnp.int32)
    return nn.unbox(jax.jit(BertEncoder(config).init)(jax.random.key(0), ids)["params"])


def _jitted_apply(config):
    """Jitted forward: eager flax on CPU spends its time dispatching small ops."""
    return jax.jit(BertEncoder(config).apply, static_argnames="deterministic")


def _random_ids(rng, shape):
    return jnp.asarray(rng.integers(5, 300, shape), jnp.int32)


def test_padding_does_not_change_outputs_at_real_positions(tiny_params):
    rng = np.random.default_rng(0)
    ids = _random_ids(rng, (1, 10))
    types = jnp.asarray([[0] * 5 + [1] * 5], jnp.int32)
    model = _jitted_apply(_tiny())
    seq, pooled = model({"params": tiny_params}, ids, types)
    padded_ids = jnp.concatenate([ids, _random_ids(rng, (1, 6))], axis=1)
    padded_types = jnp.concatenate([types, jnp.zeros((1, 6), jnp.int32)], axis=1)
    mask = jnp.asarray([[1] * 10 + [0] * 6], jnp.int32)
    padded_seq, padded_pooled = model({"params": tiny_params}, padded_ids, padded_types, mask)
    np.testing.assert_allclose(padded_seq[:, :10], seq, atol=1e-5)
    np.testing.assert_allclose(padded_pooled, pooled, atol=1e-5)
    # A boolean mask (as jax code often holds one) means the same.
    bool_seq, _ = model({"params": tiny_params}, padded_ids, padded_types, mask.astype(bool))
    np.testing.assert_array_equal(bool_seq, padded_seq)


def test_packed_row_equals_its_examples_run_separately(tiny_params):
    rng = np.random.default_rng(1)
    lengths = [7, 5, 9]
    examples = [_random_ids(rng, (1, n)) for n in lengths]
    model = _jitted_apply(_tiny())
    separate = [model({"params": tiny_params}, ids)[0] for ids in examples]

    total, pad = sum(lengths), 3
    packed_ids = jnp.concatenate(examples + [jnp.zeros((1, pad), jnp.int32)], axis=1)
    sequence_ids = jnp.asarray([sum(([i + 1] * n for i, n in enumerate(lengths)), []) + [0] * pad])
    position_ids = jnp.asarray([sum((list(range(n)) for n in lengths), []) + [0] * pad])
    mask = jnp.asarray([[1] * total + [0] * pad], jnp.int32)
    packed, _ = model({"params": tiny_params}, packed_ids, None, mask,
                            sequence_ids=sequence_ids, position_ids=position_ids)
    start = 0
    for n, expected in zip(lengths, separate):
        np.testing.assert_allclose(packed[:, start:start + n], expected, atol=1e-5)
        start += n
    # Without position_ids, each sequence's positions restart at 0 all the same.
    derived, _ = model({"params": tiny_params}, packed_ids, None, mask, sequence_ids=sequence_ids)
    np.testing.assert_array_equal(derived[:, :total], packed[:, :total])


def test_bfloat16_forward_is_close_to_float32(tiny_params):
    ids = _random_ids(np.random.default_rng(2), (2, 32))
    f32, _ = _jitted_apply(_tiny())({"params": tiny_params}, ids)
    bf16, _ = _jitted_apply(_tiny(dtype="bfloat16"))({"params": tiny_params}, ids)
    assert bf16.dtype == jnp.bfloat16
    error = np.abs(np.asarray(bf16, np.float32) - np.asarray(f32))
    assert error.max() < 0.1 and error.mean() < 0.02, (error.max(), error.mean())


def test_bfloat16_embedding_gradients_accumulate_in_float32(tiny_params):
    """Every token adds its gradient to its embedding row; a bf16 accumulation (a lookup in the
    compute dtype) loses most of it for rows hit by thousands of tokens, like the segment rows."""
    rng = np.random.default_rng(4)
    ids = _random_ids(rng, (64, 64))
    types = jnp.asarray(rng.integers(0, 2, (64, 64)), jnp.int32)
    projection = jnp.asarray(rng.normal(size=(64, 64, 128)), jnp.float32)

    def embedding_grads(config):
        def loss(params):
            seq, _ = BertEncoder(config).apply({"params": params}, ids, types)
            return jnp.sum(seq.astype(jnp.float32) * projection)
        grads = jax.jit(jax.grad(loss))(tiny_params)["embeddings"]
        return {name: np.asarray(grads[name]["embedding"], np.float32)
                for name in ("type_embed", "position_embed", "token_embed")}

    exact, bf16 = embedding_grads(_tiny()), embedding_grads(_tiny(dtype="bfloat16"))
    for name in exact:
        relative = np.linalg.norm(bf16[name] - exact[name]) / np.linalg.norm(exact[name])
        assert relative < 0.02, (name, relative)  # ~0.003 here; 0.057 for a bf16 accumulation


def test_remat_does_not_change_outputs_or_gradients(tiny_params):
    ids = _random_ids(np.random.default_rng(3), (2, 12))

    def loss_and_grads(config):
        def loss(params):
            return jnp.sum(BertEncoder(config).apply({"params": params}, ids)[0] ** 2)
        return jax.jit(jax.value_and_grad(loss))(tiny_params)

    expected_loss, expected_grads = loss_and_grads(_tiny())
    remat_loss, remat_grads = loss_and_grads(_tiny(remat_policy="full"))
    np.testing.assert_allclose(remat_loss, expected_loss, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                           remat_grads, expected_grads)


def test_fused_qkv_keeps_the_parameters_outputs_and_gradients(tiny_params):
    """The fused projection reads the query/key/value layers' own parameters: same tree (so
    checkpoints and conversion are unaffected), same outputs and gradients, with and without
    attention dropout, padding included."""
    rng = np.random.default_rng(5)
    ids = _random_ids(rng, (2, 12))
    mask = jnp.asarray([[1] * 12, [1] * 7 + [0] * 5], jnp.int32)
    separate, fused = _tiny(fused_qkv=False), _tiny(fused_qkv=True)
    separate_init = BertEncoder(separate).init(jax.random.key(0), ids)["params"]
    fused_init = BertEncoder(fused).init(jax.random.key(0), ids)["params"]
    assert jax.tree_util.tree_structure(nn.unbox(fused_init)) == \
        jax.tree_util.tree_structure(nn.unbox(separate_init))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b),
                           nn.unbox(fused_init), nn.unbox(separate_init))

    def loss_and_grads(config, deterministic):
        def loss(params):
            seq, pooled = BertEncoder(config).apply(
                {"params": params}, ids, None, mask, deterministic=deterministic,
                rngs={"dropout": jax.random.key(1)})
            return jnp.sum(seq ** 2) + jnp.sum(pooled)
        return jax.jit(jax.value_and_grad(loss))(tiny_params)

    for deterministic in (True, False):
        expected_loss, expected_grads = loss_and_grads(separate, deterministic)
        fused_loss, fused_grads = loss_and_grads(fused, deterministic)
        np.testing.assert_allclose(fused_loss, expected_loss, rtol=1e-6)
        assert jax.tree_util.tree_structure(fused_grads) == \
            jax.tree_util.tree_structure(expected_grads)
        for (path, grad), expected in zip(jax.tree_util.tree_leaves_with_path(fused_grads),
                                          jax.tree_util.tree_leaves(expected_grads)):
            # The key bias's gradient is zero up to rounding (softmax ignores a per-query
            # constant), so errors are relative to at least 1.
            relative = np.linalg.norm(grad - expected) / max(np.linalg.norm(expected), 1.0)
            assert relative < 1e-5, (jax.tree_util.keystr(path), relative)  # float32 rounding


def test_gelu_is_the_exact_erf_gelu_and_saves_one_tensor_for_backward():
    from scipy import special

    x = np.linspace(-8.0, 8.0, 4001)
    exact = 0.5 * x * special.erfc(-x / np.sqrt(2.0))
    slope = 0.5 * special.erfc(-x / np.sqrt(2.0)) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    x32 = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(layers.gelu(x32), exact, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(jax.grad(layers.gelu))(x32), slope, atol=1e-6, rtol=1e-5)
    # The check above tells the exact GELU from tanh's approximation (~1e-4 off near |x| = 2).
    assert np.max(np.abs(nn.gelu(x32, approximate=True) - exact)) > 5e-5

    # Reverse mode keeps one bf16 tensor the size of x (the slope), not nn.gelu's three.
    activations = jax.random.normal(jax.random.key(0), (16, 64), jnp.bfloat16)
    output, backward = jax.vjp(layers.gelu, activations)
    assert output.dtype == jnp.bfloat16
    saved = [leaf for leaf in jax.tree_util.tree_leaves(backward)
             if getattr(leaf, "shape", ()) == activations.shape]
    assert len(saved) == 1 and saved[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_is_flax_layer_norm_and_keeps_only_its_input_for_backward(dtype):
    config = ModelConfig.from_size("tiny", dtype=dtype)
    ours = layers.LayerNorm(config)
    flax_norm = nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.compute_dtype,
                             param_dtype=config.params_dtype)
    keys = jax.random.split(jax.random.key(0), 4)
    x = (jax.random.normal(keys[0], (4, 24, config.hidden_size)) * 3.0 + 1.0).astype(dtype)
    params = nn.unbox(ours.init(keys[1], x))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, flax_norm.init(keys[1], x))  # same tree: checkpoints and converters unchanged
    params = {"params": {"scale": 1.0 + 0.3 * jax.random.normal(keys[2], (config.hidden_size,)),
                         "bias": 0.3 * jax.random.normal(keys[3], (config.hidden_size,))}}
    # Forward: flax's float32 operations in flax's order, so the same values bit for bit.
    out = jax.jit(ours.apply)(params, x)
    assert out.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(out, np.float32),
                                  np.asarray(jax.jit(flax_norm.apply)(params, x), np.float32))

    # Backward: the gradients of every input against autodiff through flax's, in float32 math.
    weights = jax.random.normal(keys[0], x.shape)

    def gradients(module, inputs):
        loss = lambda p, v: jnp.sum(module.apply(p, v).astype(jnp.float32) * weights)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, inputs)

    ours_grads = gradients(ours, x)
    flax_grads = gradients(nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32),
                           x.astype(jnp.float32))
    tolerance = 1e-5 if dtype == "float32" else 1e-2  # bf16: dx rounded to bf16
    for got, want in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(flax_grads)):
        np.testing.assert_allclose(np.asarray(got, np.float32), want,
                                   rtol=tolerance, atol=tolerance * np.abs(want).max())
    assert ours_grads[1].dtype == x.dtype

    # Reverse mode keeps x (in its dtype) and two float32 numbers a row: no float32 tensor the
    # size of x (flax's keeps three: x^2, x - mean and the normalised x).
    _, backward = jax.vjp(lambda v: ours.apply(params, v), x)
    saved = [leaf for leaf in jax.tree_util.tree_leaves(backward) if hasattr(leaf, "shape")]
    assert [leaf.dtype for leaf in saved if leaf.shape == x.shape] == [x.dtype]
    assert all(leaf.size <= x.size // config.hidden_size for leaf in saved
               if leaf.shape != x.shape and leaf.ndim == x.ndim)
    _, flax_backward = jax.vjp(lambda v: flax_norm.apply(params, v), x)
    assert sum(leaf.shape == x.shape and leaf.dtype == jnp.float32
               for leaf in jax.tree_util.tree_leaves(flax_backward)) >= 2


def test_layer_norm_uses_the_configured_epsilon():
    """LayerNorm takes its epsilon from layer_norm_eps, not BERT's 1e-12: imported checkpoints
    may carry another (RoBERTa-style models 1e-5). On an input whose variance (1e-4) is below
    a 1e-3 epsilon, the epsilon sets the output's size."""
    config = ModelConfig.from_size("tiny", layer_norm_eps=1e-3)
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, 10, config.hidden_size)) * 0.01 + 0.5
    params = {"params": {"scale": 1.0 + 0.3 * jax.random.normal(keys[1], (config.hidden_size,)),
                         "bias": 0.3 * jax.random.normal(keys[2], (config.hidden_size,))}}
    out = jax.jit(layers.LayerNorm(config).apply)(params, x)
    expected = jax.jit(nn.LayerNorm(epsilon=1e-3).apply)(params, x)
    np.testing.assert_array_equal(out, expected)
    # The input does tell epsilons apart: BERT's default gives outputs ~3x as far from the bias.
    default = jax.jit(nn.LayerNorm(epsilon=1e-12).apply)(params, x)
    assert np.abs(np.asarray(default) - np.asarray(expected)).max() > 0.5


def test_attention_dropout_path_scales_scores_like_the_fused_path(tiny_params):
    """The explicit attention taken only while training with attention dropout must compute
    softmax(q k^T / sqrt(head_dim)), as jax.nn.dot_product_attention does at evaluation. With a
    rate too small to drop anything (1 - 1e-9 rounds to a keep probability of 1 in float32) and
    no hidden dropout, training and evaluation outputs agree. Query and key kernels are 4x
    BERT's initial size so the scores are O(1): without the 1/8 scale they would be 8x as large."""
    ids = _random_ids(np.random.default_rng(6), (2, 12))
    mask = jnp.asarray([[1] * 12, [1] * 7 + [0] * 5], jnp.int32)
    params = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf * 4.0 if any(getattr(k, "key", None) in ("query", "key")
                                             for k in path) else leaf, tiny_params)
    for fused_qkv in (True, False):
        model = _jitted_apply(_tiny(hidden_dropout=0.0, attention_dropout=1e-9,
                                    fused_qkv=fused_qkv))
        evaluated = model({"params": params}, ids, None, mask)[0]
        trained = model({"params": params}, ids, None, mask, deterministic=False,
                        rngs={"dropout": jax.random.key(1)})[0]
        np.testing.assert_allclose(trained, evaluated, atol=2e-6, rtol=0)


def test_dropout_is_active_only_when_not_deterministic(tiny_params):
    ids = _random_ids(np.random.default_rng(4), (2, 12))
    model = _jitted_apply(_tiny())
    eval_a = model({"params": tiny_params}, ids)[0]
    eval_b = model({"params": tiny_params}, ids)[0]
    train = model({"params": tiny_params}, ids, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})[0]
    np.testing.assert_array_equal(eval_a, eval_b)
    assert np.abs(np.asarray(train) - np.asarray(eval_a)).max() > 1e-3


def test_initialisation_is_truncated_normal_with_bert_std():
    init = jax.jit(BertEncoder(ModelConfig.from_size("mini")).init)
    params = nn.unbox(init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    kernel = np.asarray(params["encoder"]["layer_0"]["intermediate"]["kernel"])
    assert abs(kernel.std() - 0.02 * 0.8796) < 1e-3  # std of a normal truncated at 2 sigma
    assert np.abs(kernel).max() <= 0.04 + 1e-7
    np.testing.assert_array_equal(params["encoder"]["layer_0"]["intermediate"]["bias"], 0.0)


def test_parameters_and_activations_carry_logical_axis_names():
    config = ModelConfig.from_size("tiny", scan_layers=True)
    boxed = jax.eval_shape(lambda: BertForPreTraining(config).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32),
        masked_positions=jnp.zeros((1, 1), jnp.int32)))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    bert = boxed["bert"]
    assert bert["embeddings"]["token_embed"]["embedding"].names == ("vocab", "embed")
    assert bert["encoder"]["layers"]["attention"]["query"]["kernel"].names == (
        "layers", "embed", "heads", "kv")
    assert bert["encoder"]["layers"]["intermediate"]["kernel"].names == ("layers", "embed", "mlp")


# --- bad input -------------------------------------------------------------------------------

def test_hidden_size_not_divisible_by_heads_is_rejected():
    with pytest.raises(ValueError, match="hidden_size 100 is not divisible by num_heads 3"):
        ModelConfig(hidden_size=100, num_heads=3)


def test_unknown_size_and_dtype_are_rejected():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        ModelConfig.from_size("huge")
    with pytest.raises(ValueError, match="model.dtype='float13': expected one of float32, "
                                         "bfloat16, float16"):
        ModelConfig.from_size("tiny", dtype="float13")


def test_sequence_longer_than_max_positions_is_rejected(tiny_params):
    with pytest.raises(ValueError, match="sequence length 65 exceeds max_position_embeddings 64"):
        BertEncoder(_tiny()).apply({"params": tiny_params}, jnp.ones((1, 65), jnp.int32))


def test_token_id_outside_vocab_is_rejected(tiny_params):
    ids = np.ones((1, 8), np.int32)
    ids[0, 3] = 300
    with pytest.raises(ValueError, match=r"'input_ids' holds 300, outside \[0, 300\)"):
        BertEncoder(_tiny()).apply({"params": tiny_params}, ids)


@pytest.mark.parametrize("field,value,message", [
    ("input_ids", np.ones((8,), np.int32), "'input_ids' must have rank 2"),
    ("input_ids", np.ones((1, 8), np.float32), "'input_ids' must be an integer array"),
    ("attention_mask", np.ones((1, 7), np.int32), r"'attention_mask' has shape \(1, 7\)"),
    ("token_type_ids", np.ones((1, 8, 1), np.int32), "'token_type_ids' must have rank 2"),
])
def test_batch_field_of_wrong_rank_or_dtype_is_named(tiny_params, field, value, message):
    kwargs = {"input_ids": np.ones((1, 8), np.int32), field: value}
    with pytest.raises((ValueError, TypeError), match=message):
        BertEncoder(_tiny()).apply({"params": tiny_params}, **kwargs)


def test_pretraining_input_ids_of_wrong_rank_are_named():
    model = BertForPreTraining(_tiny())
    variables = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                           masked_positions=jnp.zeros((1, 2), jnp.int32))
    for ids in (np.ones((8,), np.int32), np.ones((1, 8, 1), np.int32)):
        with pytest.raises(ValueError, match="'input_ids' must have rank 2"):
            model.apply(variables, ids, masked_positions=np.zeros((1, 2), np.int32))


def test_cudnn_attention_needs_a_half_dtype_and_padding_at_the_end():
    with pytest.raises(ValueError, match="attention_implementation='cudnn' needs dtype bfloat16 "
                                         "or float16"):
        dataclasses.replace(_tiny(), attention_implementation="cudnn")
    config = dataclasses.replace(_tiny(), dtype="bfloat16", attention_implementation="cudnn")
    ids = np.ones((2, 6), np.int32)
    right = np.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int32)
    inputs.complete_and_check(config, ids, None, right, None, None)  # padding at the end: fine
    for mask in ([[0, 0, 1, 1, 1, 1], [1] * 6], [[1] * 6, [1, 1, 0, 1, 1, 0]]):  # left, a hole
        with pytest.raises(ValueError, match=r"attention_mask row \d has padding before some "
                                             "of its tokens"):
            inputs.complete_and_check(config, ids, None, np.asarray(mask, np.int32), None, None)
    # Packed rows keep their mask (not lengths), so they may hold padding anywhere.
    inputs.complete_and_check(config, ids, None, np.asarray(mask, np.int32), ids, ids * 0)


def test_masked_position_beyond_the_sequence_is_rejected():
    config = _tiny()
    ids = jnp.ones((1, 8), jnp.int32)
    model = BertForPreTraining(config)
    variables = model.init(jax.random.key(0), ids, masked_positions=jnp.zeros((1, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"'masked_positions' holds 8, outside \[0, 8\)"):
        model.apply(variables, ids, masked_positions=np.asarray([[1, 8]], np.int32))


def test_model_config_round_trips_and_rejects_unknown_keys():
    config = ModelConfig.from_size("small", dtype="bfloat16")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown model config keys \['num_layer'\]"):
        ModelConfig.from_dict(dict(config.to_dict(), num_layer=3))
    assert dataclasses.replace(config, num_layers=2).num_layers == 2
