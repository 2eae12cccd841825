"""Numerics of the fused (cuDNN) attention and of bf16 compute, on a GPU.

    python benchmarks/attention_checks.py

Compares, on fresh random inputs, the model's attention with implementation="cudnn" against
XLA's in float32 (padding as key lengths, and a packed block-diagonal mask), forward and
gradients; then a BERT-Base forward in bf16 (XLA and cuDNN attention) against float32. Prints
one line per check with ||got - want|| / ||want|| and its bound; the last line is
`checks_passed=<bool>`. Relative errors of bf16 operands land between 1e-3 and 1e-2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from absl import app, flags

from bert_jax.model import BertForPreTraining, ModelConfig, encoder
from bert_jax.model.layers import fused_attention

BF16_BOUND = 2e-2
_FUSED = flags.DEFINE_string("fused", "cudnn", "the implementation checked against XLA "
                             "(xla checks the script itself on a CPU)")


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def report(name: str, error: float, bound: float) -> bool:
    passed = error <= bound
    print(f"{name:<58} rel_err={error:.2e} bound={bound:.0e} {'ok' if passed else 'FAIL'}")
    return passed


def attention_checks(rng: np.random.Generator) -> list[bool]:
    batch, length, heads, head_dim = 4, 128, 12, 64
    lengths = rng.integers(length // 4, length + 1, batch)
    lengths[0] = length  # one row without padding
    attention_mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    # Packed rows: two or three examples per row, each position labelled with its example.
    sequence_ids = np.minimum(np.arange(length)[None] // rng.integers(30, 70, (batch, 1)), 2)
    masks = {
        "padding (key lengths)": encoder.attention_mask_4d(jnp.asarray(attention_mask), None),
        "packed (block-diagonal mask)": encoder.attention_mask_4d(
            jnp.asarray(attention_mask), jnp.asarray(sequence_ids)),
    }
    q, k, v, cotangent = (rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
                          for _ in range(4))
    valid_rows = attention_mask.astype(bool)  # padded query rows are never read by the model
    results = []
    for mask_name, mask in masks.items():
        def loss(q, k, v, implementation, dtype, mask=mask):
            out = fused_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask,
                                  implementation)
            out = out.astype(jnp.float32) * valid_rows[:, :, None, None]
            return jnp.sum(out * cotangent), out

        def run(implementation, dtype):
            grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True),
                              static_argnums=(3, 4))
            (_, out), grads = grad_fn(q, k, v, implementation, dtype)
            return out, grads

        want_out, want_grads = run("xla", jnp.float32)
        for dtype in (jnp.bfloat16,):
            got_out, got_grads = run(_FUSED.value, dtype)
            results.append(report(f"{_FUSED.value} {jnp.dtype(dtype).name} {mask_name}: output",
                                  relative_error(got_out, want_out), BF16_BOUND))
            for name, got, want in zip("qkv", got_grads, want_grads):
                results.append(report(f"{_FUSED.value} {jnp.dtype(dtype).name} {mask_name}: d{name}",
                                      relative_error(got, want), BF16_BOUND))
    return results


def model_checks(rng: np.random.Generator) -> list[bool]:
    batch, length, predictions = 8, 128, 20
    lengths = rng.integers(length // 2, length + 1, batch)
    inputs = dict(
        input_ids=rng.integers(5, 30522, (batch, length)).astype(np.int32),
        token_type_ids=(np.arange(length)[None] >= lengths[:, None] // 2).astype(np.int32),
        attention_mask=(np.arange(length)[None] < lengths[:, None]).astype(np.int32),
        masked_positions=np.sort(rng.integers(1, length // 2, (batch, predictions)), axis=1)
        .astype(np.int32),
    )
    reference_config = ModelConfig.from_size("base", attention_implementation="xla")
    model = BertForPreTraining(reference_config)
    params = jax.jit(model.init)(jax.random.key(0), inputs["input_ids"],
                                 masked_positions=inputs["masked_positions"])["params"]
    params = nn.unbox(params)

    def forward(config):
        apply = jax.jit(lambda p, x: BertForPreTraining(config).apply(
            {"params": p}, x["input_ids"], x["token_type_ids"], x["attention_mask"],
            masked_positions=x["masked_positions"], deterministic=True))
        return apply(params, inputs)

    want = forward(reference_config)
    results = []
    for implementation in ("xla", _FUSED.value):
        got = forward(ModelConfig.from_size("base", dtype="bfloat16",
                                            attention_implementation=implementation))
        for name in ("mlm_logits", "nsp_logits"):
            results.append(report(f"BERT-Base bf16 ({implementation} attention) {name}",
                                  relative_error(got[name], want[name]), 5e-2))
    return results


def main(argv):
    del argv
    print(f"device={jax.devices()[0].device_kind} jax={jax.__version__}")
    rng = np.random.default_rng(0)
    results = attention_checks(rng) + model_checks(rng)
    print(f"checks_passed={all(results)}")


if __name__ == "__main__":
    app.run(main)
