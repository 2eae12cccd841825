"""The issue's reference point, measured here: transformers' own Flax BERT on the same step.

    python -m venv /tmp/hf4 && /tmp/hf4/bin/pip install "transformers>=4.40,<5" jax flax optax
    /tmp/hf4/bin/python benchmarks/reference_hf_flax.py --seq_len=128 --batch=8

transformers 5 dropped its Flax models, so this runs in a separate environment with a 4.x
release, and imports nothing from bert_jax. It times the same optimizer step as
benchmarks/train_step.py (BERT-Base, synthetic batch, MLM loss on 15% of positions plus NSP,
dropout 0.1, AdamW with global-norm clipping, state donated) on `FlaxBertForPreTraining`,
which computes MLM logits at every position, and measures the matmul peak in the same
process. MFU uses the training logs' FLOP count (masked positions only), so the two
scripts' tokens/s and MFU compare directly. Run both alternately: CPU figures drift between
runs. The last line is `tokens_per_sec=<N> mfu=<F>`.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from transformers import BertConfig, FlaxBertForPreTraining

_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Sequence length.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")


def matmul_peak_flops(size: int = 4096, trials: int = 5) -> float:
    """Best of several timed products of random operands, as train_step.py measures it."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def flops_per_token(config: BertConfig, seq_len: int, predictions: int) -> float:
    """6 x the encoder's matmul params + attention scores/values + the MLM head (masked only):
    bert_jax.train.metrics.flops_per_token, restated so this script runs without bert_jax."""
    hidden, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * inner + inner + 5 * hidden
    mlm_head = hidden * hidden + hidden + hidden * config.vocab_size  # transform; decoder
    return (6 * layers * per_layer + 12 * layers * hidden * seq_len
            + 6 * mlm_head * predictions / seq_len)


def main(argv):
    del argv
    length, batch = _SEQ_LEN.value, _BATCH.value
    # BERT's predictions per sequence: 20 at 128, 80 at 512, else ~15% (as bert_jax counts).
    predictions = {128: 20, 512: 80}.get(length, int(np.ceil(0.15 * length)) + 1)
    config = BertConfig()  # BERT-Base, uncased vocabulary
    model = FlaxBertForPreTraining(config, seed=0)
    rng = np.random.default_rng(0)
    input_ids = jnp.asarray(rng.integers(5, config.vocab_size, (batch, length)), jnp.int32)
    token_type_ids = jnp.asarray((np.arange(length) >= length // 2)[None].repeat(batch, 0),
                                 jnp.int32)
    positions = jnp.asarray(np.sort(np.stack([
        rng.choice(np.arange(1, length), predictions, replace=False) for _ in range(batch)]), 1))
    masked_ids = jnp.asarray(rng.integers(5, config.vocab_size, (batch, predictions)))
    nsp_labels = jnp.asarray(rng.integers(0, 2, (batch,)))

    def loss_fn(params, dropout_rng):
        out = model(input_ids, attention_mask=jnp.ones_like(input_ids),
                    token_type_ids=token_type_ids, params=params, dropout_rng=dropout_rng,
                    train=True)
        logits = jnp.take_along_axis(out.prediction_logits, positions[..., None], axis=1)
        mlm = optax.softmax_cross_entropy_with_integer_labels(logits, masked_ids).mean()
        nsp = optax.softmax_cross_entropy_with_integer_labels(
            out.seq_relationship_logits, nsp_labels).mean()
        return mlm + nsp

    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01))

    def step(state, dropout_rng):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, dropout_rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    step = jax.jit(step, donate_argnums=0)
    peak = matmul_peak_flops()
    print(f"device={jax.devices()[0].device_kind} measured_matmul_peak_tflops={peak / 1e12:.3f}")
    state = (model.params, optimizer.init(model.params))
    key = jax.random.key(1)
    start = time.perf_counter()
    state, loss = step(state, key)  # compiles
    jax.block_until_ready(loss)
    print(f"first_step_s={time.perf_counter() - start:.1f} (compile + one step)")
    state, loss = step(state, key)  # warm-up
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, loss = step(state, key)
    jax.block_until_ready(loss)
    elapsed = time.perf_counter() - start
    tokens_per_sec = batch * length * _STEPS.value / elapsed
    mfu = flops_per_token(config, length, predictions) * tokens_per_sec / peak
    print(f"reference=transformers_flax seq_len={length} batch={batch} "
          f"step_ms={1000 * elapsed / _STEPS.value:.1f} loss={float(loss):.3f}")
    print(f"tokens_per_sec={tokens_per_sec:.1f} mfu={mfu:.3f}")


if __name__ == "__main__":
    app.run(main)
