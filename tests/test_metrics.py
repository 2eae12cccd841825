"""Throughput accounting: the datasheet peaks MFU is measured against."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from bert_jax.model import BertForPreTraining, ModelConfig
from bert_jax.train import metrics


def _device(kind: str):
    return types.SimpleNamespace(device_kind=kind)


@pytest.mark.parametrize("kind, dtype, expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    # JAX's default precision runs float32 matmuls as TF32 on Ampere and newer GPUs: against
    # the float32 peak (67e12) an H100 would report MFU above 1.
    ("NVIDIA H100 80GB HBM3", "float32", 495e12),
    ("NVIDIA H200", "float32", 495e12),
    ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
    ("Tesla V100-SXM2-16GB", "float32", 15.7e12),  # no TF32 before the A100
    ("TPU v4", "float32", 275e12),  # one bfloat16 pass
    ("TPU v4", "float16", None),
    ("cpu", "float32", None),
])
def test_datasheet_peak_at_the_default_precision(kind, dtype, expected):
    assert metrics.datasheet_peak(dtype, _device(kind)) == expected


def test_datasheet_peak_follows_the_matmul_precision():
    h100, tpu = _device("NVIDIA H100 80GB HBM3"), _device("TPU v5p")
    with jax.default_matmul_precision("highest"):
        assert metrics.datasheet_peak("float32", h100) == 67e12
        assert metrics.datasheet_peak("float32", tpu) is None  # several passes: unknown
        assert metrics.datasheet_peak("bfloat16", h100) == 989e12  # not a float32 matmul
    with jax.default_matmul_precision("tensorfloat32"):
        assert metrics.datasheet_peak("float32", h100) == 495e12
        assert metrics.datasheet_peak("float32", tpu) is None  # three bfloat16 passes
    with jax.default_matmul_precision("bfloat16"):
        assert metrics.datasheet_peak("float32", tpu) == 459e12


@pytest.mark.parametrize("seq_len, predictions", [(512, 512), (512, 80), (128, 20), (128, 0)])
def test_flops_per_token_of_bert_base_is_the_published_accounting(seq_len, predictions):
    """Training FLOPs a token as PaLM's appendix B counts them (Chowdhery et al., 2022): 6N for
    the weight matmuls (2 forward, 4 backward; Kaplan et al., 2020), N the encoder's matmul
    parameters, plus 12·L·H·T for the two attention products (q·k and p·v, 2·H·T each a layer
    forward, over all T keys: BERT attends both ways), plus the MLM head, its transform (H·H)
    and tied decoder (H·V), at the P predicted positions of each sequence only: the head
    gathers them first (BERT's 20 of 128, 80 of 512; fine-tuning, P = 0, has no MLM head).
    The kernels are counted in an initialised model and checked against the architecture;
    biases and LayerNorm gains, which the function also counts, are the 0.1% the tolerance
    allows. Attention is ~8% of the total at 512 and the transform at every token 0.5%: either
    miscounted is outside."""
    config = ModelConfig.from_size("base")
    h, i, layers, vocab = 768, 3072, 12, 30522
    assert (config.hidden_size, config.intermediate_size, config.num_layers,
            config.vocab_size) == (h, i, layers, vocab)
    params = nn.unbox(jax.eval_shape(lambda: BertForPreTraining(config).init(
        jax.random.key(0), jnp.ones((1, 8), jnp.int32),
        masked_positions=jnp.zeros((1, 2), jnp.int32)))["params"])

    def kernels(tree) -> int:
        return sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
                   if path[-1].key == "kernel")

    encoder = kernels(params["bert"]["encoder"])
    assert encoder == layers * (4 * h * h + 2 * h * i)  # q, k, v, out; intermediate, output
    transform = kernels(params["mlm_head"]["transform"])
    assert transform == h * h
    decoder = params["bert"]["embeddings"]["token_embed"]["embedding"].size  # tied
    assert decoder == vocab * h

    expected = (6 * encoder + 12 * layers * h * seq_len
                + 6 * (transform + decoder) * predictions / seq_len)
    assert metrics.flops_per_token(config, seq_len, predictions) == pytest.approx(expected,
                                                                                  rel=2e-3)
