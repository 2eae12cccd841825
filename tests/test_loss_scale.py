"""float16 compute with a dynamic loss scale: the scale's rule, what it saves from underflow,
a skipped overflowing step, and runs that train, checkpoint and resume with it."""

import dataclasses
import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bert_jax.model import BertForPreTraining
from bert_jax.model.config import ModelConfig
from bert_jax.tasks import finetune
from bert_jax.train import checkpoint, loop, losses, steps
from bert_jax.train import setup as setup_lib
from bert_jax.train.loss_scale import MINIMUM, DynamicLossScale
from tests.test_finetune import _finetune_config
from tests.test_pretrain import (_assert_trees_equal, _config, _metrics, _small_overrides,
                                 _step_setup)


def test_scale_halves_on_overflow_and_doubles_after_its_interval():
    scale = DynamicLossScale.create(8.0, growth_interval=3)
    history = []
    for finite in (True, True, True, False, True, False, False, False, False, False):
        scale = scale.adjust(jnp.asarray(finite))
        history.append((float(scale.scale), int(scale.good_steps)))
    assert history == [(8, 1), (8, 2), (16, 0),  # three finite steps in a row: doubled
                       (8, 0), (8, 1), (4, 0), (2, 0), (1, 0),
                       (MINIMUM, 0), (MINIMUM, 0)]  # never below the minimum
    with pytest.raises(ValueError, match=r"train.loss_scale_initial=0.5: expected a number >= 1"):
        DynamicLossScale.create(0.5, 2000)
    with pytest.raises(ValueError, match="train.loss_scale_growth_interval=0"):
        DynamicLossScale.create(2.0 ** 15, 0)


def _random_batch(vocab: int, batch: int = 8, length: int = 64, predictions: int = 10) -> dict:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(5, vocab, (batch, length)).astype(np.int32),
        "token_type_ids": np.zeros((batch, length), np.int32),
        "attention_mask": np.ones((batch, length), np.int32),
        "masked_positions": np.sort(rng.choice(length, (batch, predictions)), -1).astype(np.int32),
        "masked_ids": rng.integers(5, vocab, (batch, predictions)).astype(np.int32),
        "masked_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_label": np.zeros((batch,), np.int32),
    }


def test_float16_gradients_underflow_without_a_loss_scale_and_match_float32_with_one():
    """The step's gradients with float16 compute against float32 compute, for a loss whose
    gradients are 1,000 times smaller than this tiny batch's (as a batch of 80,000 masked
    tokens would give): unscaled, float16 flushes many of them to zero; scaled by 2**15 they
    match float32's to float16 rounding."""
    batch = _random_batch(vocab=1000)
    small = dataclasses.replace(losses.PRETRAINING,
                                loss=lambda sums, totals: 1e-3 * losses.pretraining_loss(sums,
                                                                                         totals))

    def gradients(dtype, loss_scale):
        config = ModelConfig(vocab_size=1000, hidden_size=128, num_layers=2, num_heads=2,
                             intermediate_size=512, max_position_embeddings=64,
                             hidden_dropout=0.0, attention_dropout=0.0, dtype=dtype)
        model = BertForPreTraining(config)
        params = model.init(jax.random.key(0), batch["input_ids"],
                            masked_positions=batch["masked_positions"])["params"]
        sums_fn = steps.pretraining_sums_fn(model, use_nsp=True)
        grads, _ = jax.jit(functools.partial(
            steps.accumulate_gradients, sums_fn=sums_fn, grad_accum_steps=1, objective=small,
            loss_scale=loss_scale))(params, batch, jax.random.key(1))
        return grads if loss_scale is None else loss_scale.unscale(grads)

    reference = gradients("float32", None)

    def compare(grads):
        error = optax.tree.norm(jax.tree_util.tree_map(jnp.subtract, grads, reference))
        lost = [np.mean((np.asarray(g) == 0) & (np.asarray(r) != 0))
                for g, r in zip(jax.tree_util.tree_leaves(grads),
                                jax.tree_util.tree_leaves(reference))]
        return float(error / optax.tree.norm(reference)), float(np.mean(lost))

    unscaled_error, unscaled_lost = compare(gradients("float16", None))
    scaled_error, scaled_lost = compare(gradients("float16", DynamicLossScale.create(2.0 ** 15,
                                                                                     2000)))
    print(f"relative error, share of entries flushed to zero: unscaled {unscaled_error:.4f}, "
          f"{unscaled_lost:.3f}; scaled {scaled_error:.5f}, {scaled_lost:.4f}")
    assert unscaled_error > 0.05 and unscaled_lost > 0.1
    assert scaled_error < 0.005 and scaled_lost < 0.01


def _fp16_overrides(data_dir, **more) -> dict:
    return {**_small_overrides(data_dir), "model.dtype": "float16", **more}


def test_overflowing_step_is_skipped_and_halves_the_scale(data_dir):
    s, batch, state, jit_step = _step_setup(data_dir, {"model.dtype": "float16"})
    step = jit_step(s.optimizer)
    assert float(state.loss_scale.scale) == 2.0 ** 15  # train.loss_scale_initial

    # 2**60 times the loss: its gradients leave float16's range (65504) at once.
    huge = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.float32(2.0 ** 60)))
    after, metrics = step(huge, batch, jax.random.key(1))
    assert float(metrics["nonfinite"]) == 1 and float(metrics["loss_scale"]) == 2.0 ** 60
    assert np.isfinite(float(metrics["loss"]))  # the loss itself was fine
    _assert_trees_equal(after.params, state.params)
    _assert_trees_equal(after.opt_state, state.opt_state)
    assert float(after.loss_scale.scale) == 2.0 ** 59 and int(after.step) == 1
    values = loop.host_step_metrics(1, metrics, skip_nonfinite=False)  # routine: no error
    assert values["overflow"] == 1.0 and "nonfinite" not in values

    # At the configured scale the same batch updates, and the finite step is counted.
    after, metrics = step(state, batch, jax.random.key(1))
    assert float(metrics["nonfinite"]) == 0 and int(after.loss_scale.good_steps) == 1
    assert float(after.loss_scale.scale) == 2.0 ** 15
    assert loop.host_step_metrics(1, metrics, skip_nonfinite=False)["overflow"] == 0.0

    # A non-finite loss is divergence, not a scale too large, and so is a non-finite step at
    # the minimum scale: either stops the run (as without a loss scale).
    params = jax.tree_util.tree_map(lambda x: x, state.params)  # new dicts, same arrays
    embeddings = params["bert"]["embeddings"]["token_embed"]
    embeddings["embedding"] = embeddings["embedding"].at[batch["input_ids"][0, 1]].set(jnp.nan)
    for scale in (2.0 ** 15, MINIMUM):
        poisoned = state.replace(params=params,
                                 loss_scale=state.loss_scale.replace(scale=jnp.float32(scale)))
        _, metrics = step(poisoned, batch, jax.random.key(1))
        with pytest.raises(loop.NonFiniteLossError, match="at step 7"):
            loop.host_step_metrics(7, metrics, skip_nonfinite=False)


def test_float16_pretraining_overflows_recovers_and_resumes_exactly(data_dir, tmp_path):
    """A scale far too large at first: the first steps overflow and are skipped until it fits,
    then it grows every 5 finite steps, overflowing now and then. The checkpoints hold the
    scale; a run resumed from step 10 ends with the uninterrupted run's parameters and scale."""
    config = _config(_fp16_overrides(
        data_dir, **{"train.num_steps": 20, "train.log_every_steps": 1,
                     "train.loss_scale_initial": 2.0 ** 24,
                     "train.loss_scale_growth_interval": 5}))
    workdir = tmp_path / "run"
    loop.train_and_evaluate(config, str(workdir))
    train = _metrics(workdir)
    scales = [train[s]["loss_scale"] for s in range(1, 21)]
    overflowed = [s for s in range(1, 21) if train[s]["overflow"]]
    print("scales", scales, "overflowed at", overflowed)
    assert overflowed[0] == 1 and len(overflowed) < 10  # too large at first, then it fits
    assert scales[1] == scales[0] / 2
    assert any(later == 2 * earlier for earlier, later in zip(scales, scales[1:]))  # grown
    finite_steps = [s for s in range(1, 21) if not train[s]["overflow"]]
    assert all(np.isfinite(train[s]["grad_norm"]) for s in finite_steps)
    assert train[20]["loss"] < train[finite_steps[0]]["loss"]  # it trains

    # The checkpoint at step 10 holds the scale step 11 used.
    s = setup_lib.build(config, checkpoint.load_model(str(workdir)).tokenizer)

    def saved_state(step: int):
        checkpointer = checkpoint.TrainCheckpointer(str(workdir), keep=2)
        try:
            return checkpointer.restore(step, s.abstract_state)[0]
        finally:
            checkpointer.close()

    restored = saved_state(10)
    assert float(restored.loss_scale.scale) == train[11]["loss_scale"]
    assert restored.loss_scale.growth_interval == 5

    # Resumed from step 10 (the step-20 checkpoint removed): the same end, bit for bit.
    uninterrupted = saved_state(20)
    shutil.rmtree(workdir / "checkpoints" / "20")
    loop.train_and_evaluate(config, str(workdir))
    _assert_trees_equal(saved_state(20), uninterrupted)


def test_float32_checkpoint_continues_in_float16_with_a_fresh_scale(data_dir, tmp_path, caplog):
    overrides = {"train.num_steps": 4, "train.log_every_steps": 1, "checkpoint.every_steps": 4}
    loop.train_and_evaluate(_config({**_small_overrides(data_dir), **overrides}), str(tmp_path))
    assert "loss_scale" not in _metrics(tmp_path)[4]
    assert not (tmp_path / "checkpoints" / "4" / checkpoint.LOSS_SCALE).exists()
    loop.train_and_evaluate(_config(_fp16_overrides(data_dir, **{**overrides,
                                                                  "train.num_steps": 6})),
                            str(tmp_path))
    assert "holds no loss scale" in caplog.text
    assert _metrics(tmp_path)[5]["loss_scale"] == 2.0 ** 15
    assert (tmp_path / "checkpoints" / "6" / checkpoint.LOSS_SCALE).is_dir()


def test_float16_fine_tuning_writes_results(pretrained, mrpc_dir, tmp_path):
    config = _finetune_config(pretrained, mrpc_dir, **{"model.dtype": "float16",
                                                       "train.num_epochs": 1})
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    assert 0.0 <= results["best"]["accuracy"] <= 1.0
    epoch = results["seeds"]["0"]["epochs"][0]
    assert np.isfinite(epoch["train_loss"])
    logged = [json.loads(line) for line in
              (pathlib.Path(tmp_path) / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    assert any(entry.get("loss_scale") == 2.0 ** 15 for entry in logged)
