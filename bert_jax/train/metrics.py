"""Throughput accounting: model FLOPs per token, TFLOP/s and MFU."""

import time

import jax
import jax.numpy as jnp

from bert_jax.model.config import ModelConfig

# Dense peak FLOP/s per device from datasheets, by the arithmetic the matmuls run in. "tf32":
# float32 matmuls on Ampere and newer GPUs, which JAX's default precision runs as TensorFloat-32.
DATASHEET_PEAK = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "tf32": 495e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "tf32": 495e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12},
    # No fast bfloat16 before the A100: these train in float16 (with a loss scale).
    "V100": {"float16": 125e12, "float32": 15.7e12},
    "Tesla T4": {"float16": 65e12, "float32": 8.1e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
}

# jax_default_matmul_precision values under which float32 matmuls run as the hardware's fast
# default (TF32 on GPUs that have it, one bfloat16 pass on TPUs), and those that ask for true
# float32. Other values (multi-pass bfloat16, named algorithms) have no datasheet figure.
_FAST_FLOAT32 = (None, "default", "fastest")
_TRUE_FLOAT32 = ("highest", "float32", "F32_F32_F32")


def encoder_matmul_params(config: ModelConfig) -> int:
    """The encoder layers' parameters (matmul weights and biases, LayerNorms), all of which
    every token goes through."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h
    return config.num_layers * per_layer


def flops_per_token(config: ModelConfig, seq_len: int, predictions_per_seq: int) -> float:
    """Training FLOPs per token: 6N for the encoder's matmuls, the attention scores and values,
    and the MLM head (its transform and the tied decoder), which runs only at the P masked
    positions of each sequence. The pooler and the small heads (NSP, a task's) run once a
    sequence or with a few outputs a token: under 0.1% of the total, left out."""
    h = config.hidden_size
    mlm_head = h * h + h + h * config.vocab_size  # transform; decoder
    return (6 * encoder_matmul_params(config)
            + 12 * config.num_layers * h * seq_len
            + 6 * mlm_head * predictions_per_seq / seq_len)


def datasheet_peak(dtype: str, device=None) -> float | None:
    """The device's datasheet peak for matmuls of `dtype` inputs, as they run at the current
    jax_default_matmul_precision; None where the datasheet or the arithmetic is unknown."""
    device = device or jax.devices()[0]
    for name, peaks in DATASHEET_PEAK.items():
        if name.lower() in device.device_kind.lower():
            return peaks.get(_matmul_arithmetic(dtype, peaks))
    return None


def _matmul_arithmetic(dtype: str, peaks: dict) -> str | None:
    """The DATASHEET_PEAK key that `dtype` matmuls run at: float32 ones are by default faster
    than float32 (a float32 peak would let MFU exceed 1 on an H100)."""
    if dtype != "float32":
        return dtype
    precision = jax.config.jax_default_matmul_precision
    if precision in _TRUE_FLOAT32:
        return "float32"
    if precision in _FAST_FLOAT32:
        if "tf32" in peaks:
            return "tf32"
        return "float32" if "float32" in peaks else "bfloat16"  # a TPU: one bfloat16 pass
    return {"tensorfloat32": "tf32", "high": "tf32", "bfloat16": "bfloat16"}.get(precision)


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
