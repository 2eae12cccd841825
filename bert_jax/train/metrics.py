"""Throughput accounting: model FLOPs per token, TFLOP/s and MFU."""

import time

import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig

# Dense peak FLOP/s per device from datasheets, by compute dtype.
DATASHEET_PEAK = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    # No fast bfloat16 before the A100: these train in float16 (with a loss scale).
    "V100": {"float16": 125e12, "float32": 15.7e12},
    "Tesla T4": {"float16": 65e12, "float32": 8.1e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
}


def non_embedding_params(config: ModelConfig) -> int:
    """Parameters that take part in the per-token matmuls (encoder layers + MLM transform)."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h
    return config.num_layers * per_layer + h * h + h


def flops_per_token(config: ModelConfig, seq_len: int, predictions_per_seq: int) -> float:
    """Training FLOPs per token: 6N for the matmuls, attention scores, and the MLM decoder,
    which runs only at the P masked positions of each sequence."""
    h = config.hidden_size
    return (6 * non_embedding_params(config)
            + 12 * config.num_layers * h * seq_len
            + 6 * h * config.vocab_size * predictions_per_seq / seq_len)


def datasheet_peak(dtype: str, device=None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    for name, peaks in DATASHEET_PEAK.items():
        if name.lower() in kind.lower():
            return peaks.get(dtype)
    return None


def measure_matmul_peak(dtype: str = "float32", size: int = 2048, trials: int = 5,
                        repeats: int = 1) -> float:
    """FLOP/s of a large square matmul on the default device, in the given dtype.

    The best of several timed trials: a peak, so a busy moment on a shared machine or the first
    call's warm-up does not lower it (a low peak would inflate MFU). Each trial times `repeats`
    products dispatched back to back, so an accelerator's launch and sync costs are amortised.
    Random operands: zeros or ones can run faster than real data on some chips.
    """
    x = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            out = matmul(x)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best
