"""Training-step throughput: tokens/s, model TFLOP/s and MFU of one BERT optimizer step.

    python benchmarks/train_step.py --size=base --seq_len=128 --batch=8 --dtype=float32

Measures, in one process, the device's peak matmul rate in the same dtype (the reference for
MFU) and the full step: forward, backward and AdamW update on a synthetic batch with the
batch contract's shapes (15% of positions predicted). FLOPs are those of the training logs
(bert_jax.train.metrics.flops_per_token). The last line is `tokens_per_sec=<N> mfu=<F>`.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_dict

from bert_jax.data import masking
from bert_jax.model import BertForPreTraining, ModelConfig
from bert_jax.train import loss_scale, metrics, optim, steps
from bert_jax.train.state import TrainState

_SIZE = flags.DEFINE_string("size", "base", "Model size: tiny, mini, small, medium, base, large.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Sequence length.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16", "float16"],
    "Compute dtype (parameters stay float32; float16 trains with a dynamic loss scale).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
_REMAT = flags.DEFINE_string("remat", "none", "Remat policy: none, full, dots, dots_no_batch.")
_SCAN = flags.DEFINE_bool("scan", False, "nn.scan over layers.")
_ATTENTION = flags.DEFINE_string("attention", None, "Attention implementation: xla or cudnn.")
_DROPOUT = flags.DEFINE_float("dropout", 0.1, "Hidden dropout.")
_FUSED_QKV = flags.DEFINE_bool(
    "fused_qkv", True, "Project query, key and value with one matmul (model.fused_qkv); "
    "--nofused_qkv for three.")
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown", False, "Also time the forward pass and forward+backward alone, so the step's "
    "time splits into forward, backward and optimizer update.")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Write a jax.profiler trace of 3 steps here (benchmarks/profile_summary.py reads it).")
_PRNG_IMPL = flags.DEFINE_enum(
    "prng_impl", "threefry2x32", list(steps.PRNG_IMPLS), "Dropout's random bits (train.prng_impl).")
_HLO_FILE = flags.DEFINE_string(
    "hlo_file", None, "Write the compiled step's optimized HLO here (names the profile's fusions).")
_GRAD_ACCUM = flags.DEFINE_integer(
    "grad_accum_steps", 1, "Split --batch into this many micro-batches, their gradients summed "
    "before one update (train.grad_accum_steps): the update's cost spread over more tokens.")
_ATTENTION_DROPOUT = flags.DEFINE_float(
    "attention_dropout", None, "Dropout on the attention probabilities (default: --dropout). "
    "Above 0 attention runs unfused: jax.nn.dot_product_attention has no dropout.")


def synthetic_batch(rng: np.random.Generator, config: ModelConfig, batch: int, length: int,
                    predictions: int) -> dict:
    positions = np.sort(np.stack([rng.choice(np.arange(1, length), predictions, replace=False)
                                  for _ in range(batch)]), axis=1)
    return {
        "input_ids": rng.integers(5, config.vocab_size, (batch, length)).astype(np.int32),
        "token_type_ids": (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(batch, 0),
        "attention_mask": np.ones((batch, length), np.int32),
        "masked_positions": positions.astype(np.int32),
        "masked_ids": rng.integers(5, config.vocab_size, (batch, predictions)).astype(np.int32),
        "masked_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_label": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def make_step(model_config: ModelConfig, num_steps: int, grad_accum_steps: int = 1):
    model = BertForPreTraining(model_config)
    optimizer_config = config_dict.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, warmup_steps=10, weight_decay=0.01, b1=0.9, b2=0.999,
        eps=1e-6, grad_clip_norm=1.0))
    optimizer, schedule = optim.make_optimizer(optimizer_config, num_steps)
    step = jax.jit(functools.partial(
        steps.train_step, sums_fn=steps.pretraining_sums_fn(model, use_nsp=True),
        optimizer=optimizer, schedule=schedule, grad_accum_steps=grad_accum_steps),
        donate_argnums=0)
    return model, optimizer, step


def time_call(fn, *args, repeats: int) -> float:
    """Seconds per call of a jitted fn, after one compiling call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def print_breakdown(model, params, data, rng, step_seconds: float) -> None:
    """Step time split into forward, backward and the update (optimizer, clipping, checks)."""
    sums_fn = steps.pretraining_sums_fn(model, use_nsp=True)
    forward = jax.jit(lambda p, b, r: sums_fn(p, b, r, False))
    forward_backward = jax.jit(lambda p, b, r: steps.accumulate_gradients(
        p, b, r, sums_fn, _GRAD_ACCUM.value))
    forward_s = time_call(forward, params, data, rng, repeats=_STEPS.value)
    gradient_s = time_call(forward_backward, params, data, rng, repeats=_STEPS.value)
    print(f"breakdown_ms forward={1000 * forward_s:.1f} "
          f"backward={1000 * (gradient_s - forward_s):.1f} "
          f"update={1000 * (step_seconds - gradient_s):.1f} step={1000 * step_seconds:.1f}")


def main(argv):
    del argv
    length, batch = _SEQ_LEN.value, _BATCH.value
    predictions = masking.default_max_predictions(length, 0.15)
    model_config = ModelConfig.from_size(
        _SIZE.value, dtype=_DTYPE.value, remat_policy=_REMAT.value, scan_layers=_SCAN.value,
        attention_implementation=_ATTENTION.value, hidden_dropout=_DROPOUT.value,
        attention_dropout=(_DROPOUT.value if _ATTENTION_DROPOUT.value is None
                           else _ATTENTION_DROPOUT.value),
        max_position_embeddings=max(512, length), fused_qkv=_FUSED_QKV.value)
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    peak = metrics.measure_matmul_peak(_DTYPE.value, size=4096 if on_cpu else 8192,
                                       repeats=1 if on_cpu else 20)
    datasheet = metrics.datasheet_peak(_DTYPE.value, device)
    print(f"device={device.device_kind} measured_matmul_peak_tflops={peak / 1e12:.3f}"
          + (f" datasheet_peak_tflops={datasheet / 1e12:.1f}" if datasheet else ""))

    model, optimizer, step = make_step(model_config, _STEPS.value + 2, _GRAD_ACCUM.value)
    data = synthetic_batch(np.random.default_rng(0), model_config, batch, length, predictions)
    data = jax.device_put(data)
    params = jax.jit(model.init)(jax.random.key(0), data["input_ids"],
                                 masked_positions=data["masked_positions"])["params"]
    import flax.linen as nn

    params = nn.unbox(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizer.init(params),
                       loss_scale=loss_scale.for_training(model_config, config_dict.ConfigDict(
                           dict(loss_scale_initial=2.0 ** 15, loss_scale_growth_interval=2000))))
    rng = steps.root_rng(1, _PRNG_IMPL.value)
    if _HLO_FILE.value:
        with open(_HLO_FILE.value, "w") as file:
            file.write(step.lower(state, data, rng).compile().as_text())
    start = time.perf_counter()
    state, out = step(state, data, rng)  # compiles
    jax.block_until_ready(out)
    print(f"first_step_s={time.perf_counter() - start:.1f} (compile + one step)")
    state, out = step(state, data, rng)  # warm-up
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, out = step(state, data, rng)
    jax.block_until_ready(out)
    elapsed = time.perf_counter() - start
    tokens_per_sec = batch * length * _STEPS.value / elapsed
    flops = metrics.flops_per_token(model_config, length, predictions) * tokens_per_sec
    mfu = flops / peak
    print(f"size={_SIZE.value} seq_len={length} batch={batch} dtype={_DTYPE.value} "
          f"grad_accum_steps={_GRAD_ACCUM.value} "
          f"step_ms={1000 * elapsed / _STEPS.value:.1f} model_tflops={flops / 1e12:.3f} "
          f"mfu_vs_measured={mfu:.3f}"
          + (f" mfu_vs_datasheet={flops / datasheet:.3f}" if datasheet else ""))
    # The step's figures are printed before the extras, which compile more and may be cut short.
    if _BREAKDOWN.value:
        print_breakdown(model, state.params, data, rng, elapsed / _STEPS.value)
    if _PROFILE_DIR.value:
        with jax.profiler.trace(_PROFILE_DIR.value):
            for _ in range(3):
                state, out = step(state, data, rng)
            jax.block_until_ready(out)
    print(f"tokens_per_sec={tokens_per_sec:.1f} mfu={mfu:.3f}")


if __name__ == "__main__":
    app.run(main)
