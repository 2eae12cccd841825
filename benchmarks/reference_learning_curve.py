r"""Our pre-training learning curve beside transformers' BERT trained the same way.

    python benchmarks/reference_learning_curve.py        (sequences of 64: the unigram plateau)
    python benchmarks/reference_learning_curve.py --steps=1000 --learning_rate=1e-3
    python benchmarks/reference_learning_curve.py --batch=512 --seq_len=16 --predictions=2 \
        --vocab_size=1000                             (issue 4's 300-step learning test)

Both models start from the same weights (transformers' initialisation, converted) and take the
same masked batches from this package's pipeline, one update each per step: ours through the
jitted train_step and optax, the reference through torch.optim.AdamW with the same recipe
(bert_jax.interop.torch_reference). The defaults are the learning test's former setting: the
tiny model, a 200-piece SentencePiece vocabulary trained on the books, full sentences of 64
tokens, batch 32, peak rate 3e-3 after 30 warmup steps, no dropout. Prints the mean MLM loss
and accuracy of each window for both runs, then the unigram entropy of the masked tokens'
vocabulary (the loss of a model that ignores context) so a plateau can be told from learning.
A few minutes on 2 CPU cores.
"""

import functools
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_dict

from bert_jax.data import pipeline
from bert_jax.data.shared_data import shared_data_dir
from bert_jax.interop.torch_reference import TorchReference
from bert_jax.model import BertForPreTraining, ModelConfig
from bert_jax.train import optim, steps
from bert_jax.train import setup as setup_lib
from bert_jax.train.state import TrainState

_STEPS = flags.DEFINE_integer("steps", 300, "Updates of each run.")
_BATCH = flags.DEFINE_integer("batch", 32, "Sequences per update.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Tokens per sequence.")
_PREDICTIONS = flags.DEFINE_integer("predictions", 10, "Masked positions per sequence.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate.")
_WARMUP = flags.DEFINE_integer("warmup", 30, "Warmup steps.")
_SIZE = flags.DEFINE_string("size", "tiny", "Model size.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 200, "SentencePiece vocabulary trained first.")
_SOURCE = flags.DEFINE_string("source", None, "Data source spec (default: the staged books).")
_WORKDIR = flags.DEFINE_string(
    "workdir", os.path.join(tempfile.gettempdir(), "bert_jax_reference_curve"),
    "Where the trained vocabulary is kept (reused by later runs with the same settings).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 25, "Steps per printed window.")


def unigram_entropy(ids: np.ndarray) -> float:
    """Entropy (nats) of the masked tokens' own frequencies: the loss without context."""
    counts = np.unique(ids, return_counts=True)[1] / ids.size
    return float(-(counts * np.log(counts)).sum())


def main(argv):
    del argv
    source = _SOURCE.value or f"prose:{shared_data_dir() / 'gutenberg'}/*.txt"
    data_config = config_dict.ConfigDict(dict(
        source=source, tokenizer="train", tokenizer_vocab_size=_VOCAB_SIZE.value,
        tokenizer_lowercase=False))
    workdir = os.path.join(_WORKDIR.value, f"sp{_VOCAB_SIZE.value}")
    tokenizer = setup_lib.load_or_train_tokenizer(data_config, workdir)
    config = ModelConfig.from_size(
        _SIZE.value, vocab_size=tokenizer.vocab_size, max_position_embeddings=_SEQ_LEN.value,
        hidden_dropout=0.0, attention_dropout=0.0)
    optimizer_config = config_dict.ConfigDict(dict(
        name="adamw", learning_rate=_LEARNING_RATE.value, warmup_steps=_WARMUP.value,
        weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, grad_clip_norm=1.0))
    num_steps = _STEPS.value

    reference = TorchReference(config, optimizer_config, num_steps)
    optimizer, schedule = optim.make_optimizer(optimizer_config, num_steps)
    train_step = jax.jit(functools.partial(
        steps.train_step, sums_fn=steps.pretraining_sums_fn(BertForPreTraining(config), False),
        optimizer=optimizer, schedule=schedule), donate_argnums=0)
    params = reference.params()
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                       opt_state=optimizer.init(params))
    batches = pipeline.make_pretraining_iterator(
        pipeline.PipelineConfig(source=source, mode="full_sentences",
                                max_seq_length=_SEQ_LEN.value,
                                max_predictions_per_seq=_PREDICTIONS.value),
        tokenizer, batch_size=_BATCH.value, seed=0)
    rng = steps.root_rng(0)

    print(f"size={_SIZE.value} vocab={tokenizer.vocab_size} steps={num_steps} "
          f"batch={_BATCH.value} seq_len={_SEQ_LEN.value} lr={_LEARNING_RATE.value} "
          f"chance_loss={math.log(tokenizer.vocab_size):.3f}")
    print(f"{'step':>6} {'ours_loss':>10} {'torch_loss':>10} {'ours_acc':>9} {'torch_acc':>9}")
    masked_ids, window = [], []
    for step in range(1, num_steps + 1):
        batch = next(batches)
        masked_ids.append(batch["masked_ids"][batch["masked_weights"] > 0])
        state, metrics = train_step(state, batch, rng)
        expected = reference.step(batch, use_nsp=False)
        window.append((float(metrics["mlm_loss"]), expected["mlm_loss"],
                       float(metrics["mlm_accuracy"]), expected["mlm_accuracy"]))
        if step % _LOG_EVERY.value == 0 or step == num_steps:
            means = np.mean(window, axis=0)
            print(f"{step:>6} {means[0]:>10.3f} {means[1]:>10.3f} {means[2]:>9.3f} "
                  f"{means[3]:>9.3f}", flush=True)
            window = []
    batches.close()
    print(f"unigram_entropy_of_masked_tokens={unigram_entropy(np.concatenate(masked_ids)):.3f}")


if __name__ == "__main__":
    app.run(main)
