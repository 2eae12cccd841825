"""Pre-training end to end: learning, exact resume after SIGKILL/SIGTERM, non-finite steps and
bad input. Runs go through `loop.train_and_evaluate` in-process, or the CLI as a subprocess
where the process itself must die or be signalled."""

import dataclasses
import functools
import importlib.util
import json
import logging
import math
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import flax
import jax
import numpy as np
import optax
import pytest

from bert_jax import inference
from bert_jax.data import pipeline, tokenization
from bert_jax.model import BertForPreTraining
from bert_jax.model.config import ModelConfig, model_config_from_section
from bert_jax.train import checkpoint, loop, optim, steps
from bert_jax.train import setup as setup_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "configs" / "pretrain.py"


def _get_config(arg: str):
    spec = importlib.util.spec_from_file_location("pretrain_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _small_overrides(data_dir) -> dict:
    """A tiny and cheap run (a few ms a step): hidden 32, one layer, 32 tokens, batch 8."""
    return {
        "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
        "model.intermediate_size": 64, "model.max_position_embeddings": 32,
        "data.source": f"prose:{data_dir}/gutenberg/*.txt",
        "data.tokenizer": f"wordpiece:{data_dir}/bert_vocab/vocab.txt",
        "data.max_seq_length": 32, "data.max_predictions_per_seq": 5,
        "train.batch_size": 8, "train.num_steps": 20, "train.log_every_steps": 10,
        "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 10,
        "checkpoint.every_steps": 10, "checkpoint.keep": 2,
        "eval.every_steps": 1000, "eval.num_batches": 1,
    }


def _config(overrides: dict):
    config = _get_config("tiny")
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


def _cli(workdir, overrides: dict) -> list[str]:
    return [sys.executable, "-m", "bert_jax.pretrain", f"--config={CONFIG_FILE}:tiny",
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def _metrics(workdir, split="train") -> dict[int, dict]:
    """metrics.jsonl entries by step; a step logged twice (before and after a restart) keeps
    its last occurrence."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line being written while a live run is polled
            continue
        if entry["split"] == split:
            entries[entry["step"]] = entry
    return entries


def _checkpoint_steps(workdir) -> list[int]:
    """Committed checkpoint steps (Orbax writes to a temporary name, then renames)."""
    root = pathlib.Path(workdir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def _params(workdir) -> dict:
    loaded = checkpoint.load_model(str(workdir))
    flat = jax.tree_util.tree_flatten_with_path(loaded.params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}, loaded.step


def _assert_params_equal(workdir, reference) -> None:
    params, step = _params(workdir)
    ref_params, ref_step = reference
    assert step == ref_step
    assert params.keys() == ref_params.keys()
    for name, value in params.items():
        np.testing.assert_array_equal(value, ref_params[name], err_msg=name, strict=True)


# --- 1. Learning ------------------------------------------------------------------------------

# MLM, unlike a causal LM, gets nothing from a masked position's own input: the tiny model
# predicts from bag-of-context statistics until it learns to attend to neighbouring positions,
# which takes BERT (ours and transformers' alike) a thousand steps or more here.
STEPS_PAST_PLATEAU = 2000


def _learning_run(data_dir, tmp_path, num_steps: int, learning_rate: float, warmup_steps: int,
                  vocab_size: int, batch_size: int, seq_len: int = 64,
                  eval_batches: int = 4) -> tuple[dict, dict, dict]:
    """The tiny model on the books (full sentences, no dropout): the first and last logged
    train windows (10 steps each) and the final held-out evaluation."""
    # A SentencePiece vocabulary trained here, in seconds (a small one: a cheap output layer,
    # and words split into pieces that context predicts).
    texts = [line.strip() for name in ("11-0.txt", "84-0.txt")
             for line in (data_dir / "gutenberg" / name).read_text().splitlines() if line.strip()]
    tokenization.train_sentencepiece(texts, vocab_size, str(tmp_path / "sp")).save(
        str(tmp_path / "tok"))
    config = _config({
        "data.source": f"prose:{data_dir}/gutenberg/*.txt", "data.tokenizer": str(tmp_path / "tok"),
        "data.mode": "full_sentences", "data.max_seq_length": seq_len,
        "data.max_predictions_per_seq": max(2, round(0.15 * seq_len)),
        "model.max_position_embeddings": seq_len,
        "model.hidden_dropout": 0.0, "model.attention_dropout": 0.0,
        "train.batch_size": batch_size, "train.num_steps": num_steps,
        "train.log_every_steps": 10,
        "optimizer.learning_rate": learning_rate, "optimizer.warmup_steps": warmup_steps,
        "checkpoint.every_steps": num_steps, "eval.every_steps": num_steps,
        "eval.num_batches": eval_batches,
    })
    workdir = tmp_path / "run"
    loop.train_and_evaluate(config, str(workdir))
    train, evals = _metrics(workdir), _metrics(workdir, "eval")
    first, last, final_eval = train[10], train[num_steps], evals[num_steps]
    print(f"{num_steps} steps: mlm_accuracy {first['mlm_accuracy']:.3f} -> "
          f"{last['mlm_accuracy']:.3f}, mlm_loss {first['mlm_loss']:.3f} -> "
          f"{last['mlm_loss']:.3f}, eval {final_eval}")
    assert first["mlm_accuracy"] < 0.06  # steps 1-10, still warming up
    assert first["mlm_loss"] == pytest.approx(math.log(vocab_size), rel=0.1)  # chance
    return first, last, final_eval


@pytest.mark.slow
def test_tiny_model_learns_on_gutenberg(data_dir, tmp_path):
    """The issue's 300 steps: MLM accuracy from ~0 to >= 0.15 and MLM loss down >= 30%, in the
    last train window and on held-out documents."""
    # Sequences of 16 tokens, 512 a step (8,192 tokens, as 128 of 64): with few positions to
    # attend to, the tiny model learns to use its neighbours within 300 steps. With 64 it
    # stays near the unigram plateau (-20 to -28%) until step ~1,000 whatever the batch, as
    # transformers' BERT does (benchmarks/reference_learning_curve.py; README rows).
    first, last, final_eval = _learning_run(data_dir, tmp_path, 300, 3e-3, 30, vocab_size=1000,
                                            batch_size=512, seq_len=16, eval_batches=1)
    assert last["mlm_accuracy"] >= 0.15
    assert final_eval["mlm_accuracy"] >= 0.15  # held-out documents, not memorised ones
    assert last["mlm_loss"] <= 0.7 * first["mlm_loss"]
    assert final_eval["mlm_loss"] <= 0.7 * first["mlm_loss"]


@pytest.mark.slow
def test_tiny_model_leaves_the_unigram_plateau(data_dir, tmp_path):
    """The same thresholds at sequences of 64, once the model has left the unigram plateau:
    STEPS_PAST_PLATEAU steps of the demo's recipe (SentencePiece 4k, batch 64, lr 2e-3,
    warmup 200) on the books. Then fill_mask on text from other books completes it from
    context (the issue's "plausible tokens" from the demo checkpoint)."""
    first, last, final_eval = _learning_run(data_dir, tmp_path, STEPS_PAST_PLATEAU, 2e-3, 200,
                                            vocab_size=4000, batch_size=64)
    assert last["mlm_loss"] <= 0.7 * first["mlm_loss"]
    assert final_eval["mlm_loss"] <= 0.7 * first["mlm_loss"]
    assert last["mlm_accuracy"] >= 0.15
    assert final_eval["mlm_accuracy"] >= 0.15
    _assert_fill_mask_completes_from_context(inference.load(str(tmp_path / "run")), data_dir)


def _assert_fill_mask_completes_from_context(predictor, data_dir):
    """Every whole-word piece of BERT's sample text (other books than the training ones) masked
    in turn: the top completion is the masked word more often than the most frequent of those
    words is, and far more often than with the sentence's words shuffled (no context)."""
    texts, answers, shuffled = _masked_words(
        predictor.tokenizer, (data_dir / "bert_sample" / "sample_text.txt").read_text(),
        keep=predictor.max_length - 4)
    assert len(texts) > 300

    def top(texts_, k):
        predictions = predictor.fill_mask(texts_, top_k=k)
        return np.mean([answer in [p["token_id"] for p in masks[0]]
                        for masks, answer in zip(predictions, answers)])

    in_context, without_context, top_5 = top(texts, 1), top(shuffled, 1), top(texts, 5)
    most_frequent = max(answers.count(a) for a in set(answers)) / len(answers)
    print(f"fill_mask top-1 {in_context:.3f} (shuffled {without_context:.3f}, most frequent "
          f"answer {most_frequent:.3f}), top-5 {top_5:.3f} over {len(texts)} masks")
    assert in_context > max(most_frequent, 2.5 * without_context)
    assert top_5 >= 0.25


def _masked_words(tokenizer, text: str, keep: int):
    """(texts with one whole-word SentencePiece piece masked, that piece's id, the same texts
    with their words shuffled) for each such piece among each line's first `keep` pieces."""
    rng = random.Random(0)
    texts, answers, shuffled = [], [], []
    for line in filter(None, map(str.strip, text.splitlines())):
        ids = tokenizer.encode(line)[:keep]
        pieces = [tokenizer.id_to_token(i) for i in ids] + ["."]
        for j in range(len(ids)):
            after = pieces[j + 1]
            if len(pieces[j]) < 2 or not pieces[j].startswith("▁") or after[0].isalnum():
                continue  # not a whole word: a piece of one, or one followed by more pieces
            masked = "".join(pieces[:j] + ["▁[MASK]"] + pieces[j + 1:-1]).replace("▁", " ")
            if tokenizer.encode(masked.strip()) != ids[:j] + [tokenizer.mask_id] + ids[j + 1:]:
                continue
            words = masked.split()
            rng.shuffle(words)
            texts.append(masked.strip())
            answers.append(ids[j])
            shuffled.append(" ".join(words))
    return texts, answers, shuffled


# --- 2. Exact resume ---------------------------------------------------------------------------

RESUME_STEPS = 1000


def _resume_overrides(data_dir) -> dict:
    return {**_small_overrides(data_dir), "train.num_steps": RESUME_STEPS,
            "checkpoint.every_steps": 100}


@pytest.fixture(scope="module")
def uninterrupted_run(data_dir, tmp_path_factory):
    """The reference: the whole run in one go (in-process), its final params and metrics."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    loop.train_and_evaluate(_config(_resume_overrides(data_dir)), str(workdir))
    return _params(workdir), _metrics(workdir), _metrics(workdir, "eval")


def _start(workdir, overrides, log) -> subprocess.Popen:
    # stderr to a file: absl logs there, and an undrained pipe would block the run.
    return subprocess.Popen(_cli(workdir, overrides), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=log)


def _wait_for_step(process, workdir, step: int, timeout: float = 300) -> int:
    """Polls metrics.jsonl until a logged train step >= `step` (after a checkpoint exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        logged = max(_metrics(workdir), default=0)
        if logged >= step and _checkpoint_steps(workdir):
            return logged
        time.sleep(0.05)
    pytest.fail(f"no step {step} within {timeout}s")


def _run_to_end(workdir, overrides) -> None:
    result = subprocess.run(_cli(workdir, overrides), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_same_after(workdir, reference, restart_step: int, log_every: int) -> None:
    """Final params bitwise equal; every logged window that lies after the restart equal."""
    ref_params, ref_train, ref_eval = reference
    _assert_params_equal(workdir, ref_params)
    train = _metrics(workdir)
    after = [s for s in ref_train if s - log_every >= restart_step]
    assert after and all(s in train for s in after)
    for step in after:
        for key in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "grad_norm",
                    "learning_rate"):
            assert train[step][key] == ref_train[step][key], (step, key)
    assert _without_timing(_metrics(workdir, "eval")) == _without_timing(ref_eval)


def _without_timing(entries: dict[int, dict]) -> dict[int, dict]:
    return {step: {k: v for k, v in entry.items() if k != "seconds"}
            for step, entry in entries.items()}


@pytest.mark.slow
def test_sigkill_then_restart_resumes_exactly(data_dir, tmp_path, uninterrupted_run):
    overrides = _resume_overrides(data_dir)
    workdir = tmp_path / "run"
    kill_at = random.Random().randrange(150, 850)
    print(f"SIGKILL at step >= {kill_at}")
    with open(tmp_path / "killed.log", "w") as log:
        process = _start(workdir, overrides, log)
        try:
            _wait_for_step(process, workdir, kill_at)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            process.kill()
    restart_step = _checkpoint_steps(workdir)[-1]
    assert 100 <= restart_step < RESUME_STEPS
    assert max(_metrics(workdir)) < RESUME_STEPS

    _run_to_end(workdir, overrides)
    _assert_same_after(workdir, uninterrupted_run, restart_step, overrides["train.log_every_steps"])


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_restart_finishes(data_dir, tmp_path,
                                                              uninterrupted_run):
    overrides = _resume_overrides(data_dir)
    workdir = tmp_path / "run"
    stop_at = random.Random().randrange(150, 850)
    print(f"SIGTERM at step >= {stop_at}")
    with open(tmp_path / "stopped.log", "w") as log:
        process = _start(workdir, overrides, log)
        try:
            _wait_for_step(process, workdir, stop_at)
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=120)
        finally:
            process.kill()
    assert returncode == 0, (tmp_path / "stopped.log").read_text()[-3000:]
    reached = max(_metrics(workdir))  # the stop is logged at the step reached ...
    assert stop_at <= reached < RESUME_STEPS
    assert _checkpoint_steps(workdir)[-1] == reached  # ... and a checkpoint saved there

    _run_to_end(workdir, overrides)
    _assert_same_after(workdir, uninterrupted_run, reached, overrides["train.log_every_steps"])


# --- 3. Gradient accumulation -------------------------------------------------------------------


def test_gradient_accumulation_equals_one_large_batch(data_dir):
    """4 micro-batches of 4 by lax.scan == one batch of 16: gradients, update and metrics."""
    config = _config({**_small_overrides(data_dir), "train.batch_size": 16,
                      "model.hidden_dropout": 0.0, "model.attention_dropout": 0.0,
                      "optimizer.warmup_steps": 0})  # a non-zero learning rate at step 0
    tokenizer = tokenization.load_tokenizer(config.data.tokenizer)
    s = setup_lib.build(config, tokenizer)
    data = pipeline.make_pretraining_iterator(s.pipeline_config, tokenizer, batch_size=16, seed=0)
    batch = next(data)
    data.close()
    # Micro-batches with unequal numbers of predictions: the loss must still be the big batch's.
    batch["masked_weights"][12:, 2:] = 0.0
    state = s.init_state(jax.random.key(0))
    sums_fn = steps.pretraining_sums_fn(s.model, s.use_nsp)

    def run(accum):
        step = functools.partial(steps.train_step, sums_fn=sums_fn, optimizer=s.optimizer,
                                 schedule=s.schedule, grad_accum_steps=accum)
        grads = functools.partial(steps.accumulate_gradients, sums_fn=sums_fn,
                                  grad_accum_steps=accum)
        jitted = setup_lib.with_mesh_and_rules(s, jax.jit(lambda st, b, r: (
            step(st, b, r), grads(st.params, b, r)[0])))
        return jax.device_get(jitted(state, batch, jax.random.key(1)))

    (one_state, one_metrics), one_grads = run(1)
    (acc_state, acc_metrics), acc_grads = run(4)
    close = dict(rtol=1e-5, atol=1e-7)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **close),
                           acc_grads, one_grads)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           acc_state.params, one_state.params)
    for key, value in one_metrics.items():
        np.testing.assert_allclose(acc_metrics[key], value, **close, err_msg=key)
    assert int(acc_state.step) == 1 and one_metrics["nonfinite"] == 0
    moved = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda new, old: np.abs(new - old).max(), one_state.params, jax.device_get(state.params)))
    assert max(moved) > 1e-4  # the update did happen


# --- 4. Non-finite steps ------------------------------------------------------------------------


def _step_setup(data_dir, overrides: dict | None = None):
    """A run setup, one real batch and a fresh state; the step is jitted per optimizer."""
    config = _config({**_small_overrides(data_dir), **(overrides or {})})
    tokenizer = tokenization.load_tokenizer(config.data.tokenizer)
    s = setup_lib.build(config, tokenizer)
    data = pipeline.make_pretraining_iterator(s.pipeline_config, tokenizer, batch_size=8, seed=0)
    batch = next(data)
    data.close()

    def jit_step(optimizer):
        return setup_lib.with_mesh_and_rules(s, jax.jit(functools.partial(
            steps.train_step, sums_fn=steps.pretraining_sums_fn(s.model, s.use_nsp),
            optimizer=optimizer, schedule=s.schedule)))

    return s, batch, s.init_state(jax.random.key(0)), jit_step


def _assert_trees_equal(a, b):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(x, y, strict=True),
                           jax.device_get(a), jax.device_get(b))


def test_nonfinite_loss_or_update_leaves_the_state_untouched(data_dir):
    s, batch, state, jit_step = _step_setup(data_dir)
    # A NaN in the embedding of a token in the batch: loss and gradient are NaN.
    params = jax.tree_util.tree_map(np.array, jax.device_get(state.params))  # writable
    params["bert"]["embeddings"]["token_embed"]["embedding"][batch["input_ids"][0, 1]] = np.nan
    poisoned = state.replace(params=params)
    new_state, metrics = jit_step(s.optimizer)(poisoned, batch, jax.random.key(1))
    assert float(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
    _assert_trees_equal(new_state.params, params)
    _assert_trees_equal(new_state.opt_state, poisoned.opt_state)
    assert int(new_state.step) == 1  # the data moves on

    # The next update applies the schedule where optax left it (step 0 of the warmup: rate 0,
    # so nothing moves), and the log says so rather than the rate of step 1.
    clean = new_state.replace(params=jax.device_get(state.params))
    next_state, metrics = jit_step(s.optimizer)(clean, batch, jax.random.key(2))
    assert float(metrics["nonfinite"]) == 0 and float(s.schedule(1)) > 0
    assert float(metrics["learning_rate"]) == float(s.schedule(0)) == 0.0
    _assert_trees_equal(next_state.params, clean.params)

    # A finite loss and gradient, but an update that overflows: caught on the new params.
    sgd = optax.sgd(float("inf"))
    params = jax.device_get(state.params)
    state = setup_lib.TrainState(step=np.int32(0), params=params, opt_state=sgd.init(params))
    new_state, metrics = jit_step(sgd)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["nonfinite"]) == 1
    _assert_trees_equal(new_state.params, params)


def test_finiteness_check_sees_every_leaf_and_never_overflows():
    tree = {"big": np.full(3, 3e38, np.float32), "ids": np.arange(4), "moments": np.ones((2, 2))}
    check = jax.jit(steps._all_finite)
    assert bool(check(tree))  # huge but finite values are not flagged
    for bad in (np.inf, -np.inf, np.nan):
        poisoned = {**tree, "moments": np.array([[1.0, 1.0], [1.0, bad]])}
        assert not bool(check(poisoned)), bad


def _exploding_overrides(data_dir) -> dict:
    """A learning rate so large that the first update sends the parameters to ~1e30 and the
    next forward pass overflows."""
    return {**_small_overrides(data_dir), "optimizer.learning_rate": 1e30,
            "optimizer.warmup_steps": 0, "train.num_steps": 6, "train.log_every_steps": 1,
            "checkpoint.every_steps": 1, "checkpoint.keep": 10}


def test_rbg_dropout_bits_are_reproducible_and_differ_from_threefry(data_dir):
    s, batch, state, jit_step = _step_setup(data_dir)
    assert s.model.config.hidden_dropout > 0
    step = jit_step(s.optimizer)

    def loss(prng_impl):
        return float(step(state, batch, steps.root_rng(3, prng_impl))[1]["loss"])

    assert loss("rbg") == loss("rbg")
    assert loss("rbg") != loss("threefry2x32")  # other masks
    with pytest.raises(ValueError, match="train.prng_impl='philox': expected one of"):
        steps.root_rng(0, "philox")


def test_nonfinite_loss_stops_the_run_naming_the_step(data_dir, tmp_path):
    with pytest.raises(loop.NonFiniteLossError, match=r"at step (\d+)") as error:
        loop.train_and_evaluate(_config(_exploding_overrides(data_dir)), str(tmp_path))
    bad_step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    assert bad_step == 2
    assert max(_metrics(tmp_path)) == bad_step - 1  # every step before it was logged
    saved = _checkpoint_steps(tmp_path)
    assert saved and max(saved) < bad_step  # nothing saved from the bad step on
    for step in saved:
        params, _ = _params(tmp_path / "checkpoints" / str(step))
        assert all(np.isfinite(p).all() for p in params.values())


def test_skip_nonfinite_updates_keeps_params_finite(data_dir, tmp_path):
    overrides = {**_exploding_overrides(data_dir), "train.skip_nonfinite_updates": True}
    loop.train_and_evaluate(_config(overrides), str(tmp_path))
    train = _metrics(tmp_path)
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    assert np.isfinite(train[1]["loss"]) and not any(np.isfinite(train[s]["loss"])
                                                     for s in range(2, 7))
    after_first, _ = _params(tmp_path / "checkpoints" / "1")
    final, step = _params(tmp_path)
    assert step == 6
    assert all(np.isfinite(p).all() for p in final.values())
    for name, value in final.items():  # every later update was skipped
        np.testing.assert_array_equal(value, after_first[name], err_msg=name)


# --- 5. Bad input ---------------------------------------------------------------------------


def test_checkpoint_of_another_model_shape_is_named(data_dir, tmp_path):
    overrides = {**_small_overrides(data_dir), "train.num_steps": 2, "checkpoint.every_steps": 2}
    loop.train_and_evaluate(_config(overrides), str(tmp_path))
    wider = {**overrides, "train.num_steps": 4, "model.hidden_size": 64,
             "model.intermediate_size": 128}
    with pytest.raises(ValueError, match=r"parameter bert/embeddings/\S+ is \(32,\) in the "
                                         r"checkpoint but \(64,\)"):
        loop.train_and_evaluate(_config(wider), str(tmp_path))
    assert _checkpoint_steps(tmp_path) == [2]  # nothing overwritten
    # ... and the workdir still describes the run that wrote it.
    described = json.loads((tmp_path / "config.json").read_text())
    assert described["model_config"]["hidden_size"] == 32
    assert described["config"]["train"]["num_steps"] == 2


def test_a_resumed_run_logs_the_steps_after_its_checkpoint_once(data_dir, tmp_path):
    """Killed after logging steps its last checkpoint does not hold (and mid-line): the rerun
    resumes at the checkpoint, and metrics.jsonl holds every step once, every line whole."""
    overrides = {**_small_overrides(data_dir), "checkpoint.every_steps": 10,
                 "eval.every_steps": 10}
    loop.train_and_evaluate(_config(overrides), str(tmp_path))
    shutil.rmtree(tmp_path / "checkpoints" / "20")  # as if killed while saving step 20
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2')  # and while writing a line
    loop.train_and_evaluate(_config(overrides), str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in records] == [
        ("train", 10), ("eval", 10), ("train", 20), ("eval", 20)]


def test_every_model_config_field_is_a_run_config_key():
    section = _get_config("tiny").model
    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    assert fields <= set(section.keys()), fields - set(section.keys())
    section.initializer_range, section.layer_norm_eps = 0.1, 1e-6
    model_config = model_config_from_section(section)
    assert (model_config.initializer_range, model_config.layer_norm_eps) == (0.1, 1e-6)
    assert model_config.hidden_size == 128  # the rest still from the named size


def test_float16_parameters_are_refused_for_training_and_a_dtype_that_is_no_float(data_dir,
                                                                                  tmp_path):
    # float16 compute trains, with a loss scale (tests/test_loss_scale.py); parameters do not.
    with pytest.raises(ValueError, match="model.param_dtype=float16: training keeps its "
                                         "parameters in float32"):
        loop.train_and_evaluate(_config({**_small_overrides(data_dir), "model.dtype": "float16",
                                         "model.param_dtype": "float16"}), str(tmp_path))
    # float64 would run as float32 without jax_enable_x64; bf16 is no dtype name.
    for dtype in ("int8", "float64", "bf16"):
        with pytest.raises(ValueError, match=rf"model.dtype='{dtype}': expected one of "
                                             r"float32, bfloat16, float16"):
            ModelConfig(dtype=dtype)


@pytest.mark.parametrize("name, value", [("hidden_dropout", 1.0), ("hidden_dropout", 1.5),
                                         ("attention_dropout", -0.1)])
def test_a_dropout_rate_outside_0_to_1_is_refused(name, value):
    # 1.0 zeroed every hidden state (gradient norms of 1e9); a negative rate meant none.
    with pytest.raises(ValueError, match=rf"model.{name}={value}: expected a rate in \[0, 1\)"):
        ModelConfig(**{name: value})


@pytest.mark.parametrize("key, value, expected", [
    ("b1", 1.0, r"\[0, 1\)"),  # Adam's bias correction would divide by zero
    ("b2", 1.5, r"\[0, 1\)"), ("eps", -1.0, "> 0"), ("weight_decay", -1.0, ">= 0"),
    ("grad_clip_norm", -1.0, "a norm > 0, or 0"), ("warmup_steps", -5, ">= 0")])
def test_optimizer_settings_out_of_range_are_named(key, value, expected):
    section = _get_config("tiny").optimizer
    section[key] = value
    with pytest.raises(ValueError, match=rf"optimizer.{key}={value}: expected {expected}"):
        optim.make_optimizer(section, 100)


def test_warmup_longer_than_the_run_is_warned(caplog):
    section = _get_config("tiny").optimizer  # warmup_steps=10,000, a run of 1,000 steps
    with caplog.at_level("WARNING"):
        optim.make_optimizer(section, 1000)
    assert ("optimizer.warmup_steps=10000 is not below the run's 1000 steps: the whole run "
            "warms up") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        optim.make_optimizer(section, 100_000)
    assert "warmup" not in caplog.text


def test_next_sentence_pairs_need_two_token_types(data_dir, tmp_path):
    # Segment B's id 1 past a one-row table would read zeros inside jit, silently.
    with pytest.raises(ValueError, match=r"data.mode='nsp' pairs two segments, but "
                                         r"model.type_vocab_size=1"):
        loop.train_and_evaluate(_config({**_small_overrides(data_dir), "data.mode": "nsp",
                                         "model.type_vocab_size": 1}), str(tmp_path))


@pytest.mark.parametrize("key", ["eval.every_steps", "checkpoint.every_steps",
                                 "train.log_every_steps", "train.num_steps"])
def test_an_interval_of_zero_steps_is_refused_before_training(data_dir, tmp_path, key):
    with pytest.raises(ValueError, match=f"{key}=0: expected a number of steps >= 1"):
        loop.train_and_evaluate(_config({**_small_overrides(data_dir), key: 0}), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_a_negative_seed_is_refused_by_name(data_dir, tmp_path):
    # numpy's generators (data order, masks) would refuse it only at the first batch, unnamed.
    with pytest.raises(ValueError, match=r"train.seed: seed -1 is not an integer >= 0"):
        loop.train_and_evaluate(_config({**_small_overrides(data_dir), "train.seed": -1}),
                                str(tmp_path))


@pytest.mark.parametrize("key, value", [
    ("checkpoint.keep", 0),  # Orbax would delete every checkpoint as it is written
    ("train.grad_accum_steps", 0), ("train.grad_accum_steps", -2), ("eval.num_batches", 0),
    ("train.batch_size", 0), ("optimizer.learning_rate", -1e-3)])
def test_a_count_or_rate_out_of_range_is_refused_before_training(data_dir, tmp_path, key,
                                                                 value):
    expected = "expected a peak learning rate > 0" if "rate" in key else (
        "expected a whole number >= 1")
    with pytest.raises(ValueError, match=rf"{key}={value}: {expected}"):
        loop.train_and_evaluate(_config({**_small_overrides(data_dir), key: value}),
                                str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_held_out_text_is_read_before_the_first_step(data_dir, tmp_path):
    # No held-out documents: the run fails before training, not at its first evaluation.
    with pytest.raises(ValueError, match=r"yields no eval examples on host 0: "
                                         r"data.eval_fraction=0.0 holds out none of its \d+ "
                                         r"documents"):
        loop.train_and_evaluate(_config({**_small_overrides(data_dir),
                                         "data.eval_fraction": 0.0}), str(tmp_path))
    assert not _metrics(tmp_path)


def test_a_failing_evaluation_keeps_the_checkpoint_of_its_step(data_dir, tmp_path,
                                                               monkeypatch):
    def evaluate(self, params):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(loop.Trainer, "evaluate", evaluate)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        loop.train_and_evaluate(_config({**_small_overrides(data_dir), "eval.every_steps": 10}),
                                str(tmp_path))
    assert _checkpoint_steps(tmp_path) == [10]


def test_resuming_under_another_optimizer_names_it(data_dir, tmp_path):
    # Orbax would say only that the trees differ, and suggest a partial restore.
    small = {**_small_overrides(data_dir), "train.num_steps": 10}
    loop.train_and_evaluate(_config(small), str(tmp_path))
    with pytest.raises(ValueError, match=r"checkpoints/10 holds the state of another optimizer "
                                         r"than this run's \(written with optimizer=.*'name': "
                                         r"'adamw'"):
        loop.train_and_evaluate(_config({**small, "train.num_steps": 12,
                                         "optimizer.name": "lamb"}), str(tmp_path))


def test_predictions_per_row_follow_the_sequence_length_unless_set():
    # A second phase at 512 that kept a fixed 20 would mask ~4% of its tokens, not 15%.
    config = _get_config("base")
    assert pipeline.PipelineConfig.from_config(config.data).num_predictions == 20
    config.data.max_seq_length = 512
    assert pipeline.PipelineConfig.from_config(config.data).num_predictions == 80
    config.data.max_predictions_per_seq = 76
    assert pipeline.PipelineConfig.from_config(config.data).num_predictions == 76


def test_unknown_config_key_is_rejected(data_dir, tmp_path):
    with pytest.raises(AttributeError, match="num_step"):
        _get_config("tiny").train.num_step = 5
    result = subprocess.run(
        _cli(tmp_path / "run", {**_small_overrides(data_dir), "train.num_step": 5}), cwd=REPO,
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "num_step" in result.stderr
    assert not (tmp_path / "run").exists()  # rejected before anything was written


def test_unwritable_workdir_fails_before_training(data_dir, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(loop.setup_lib, "load_or_train_tokenizer", no_training)
    monkeypatch.setattr(loop.setup_lib, "build", no_training)
    (tmp_path / "a_file").write_text("not a folder")
    workdir = tmp_path / "a_file" / "run"  # chmod would not stop root; a file as parent does
    with pytest.raises(PermissionError, match="not writable"):
        loop.train_and_evaluate(_config(_small_overrides(data_dir)), str(workdir))


def test_a_step_folder_without_its_commit_marker_is_no_checkpoint(tmp_path, monkeypatch):
    # On gs:// Orbax writes a step in place and adds commit_success.txt last: a numbered
    # folder alone may be a save cut short, which resolve/load_model must not take as latest.
    from orbax.checkpoint._src.path import atomicity, atomicity_defaults

    root = tmp_path / "checkpoints"
    (root / "10").mkdir(parents=True)
    (root / "10" / "commit_success.txt").write_text("")
    (root / "20" / "params").mkdir(parents=True)
    monkeypatch.setattr(atomicity_defaults, "get_default_temporary_path_class",
                        lambda path, **kwargs: atomicity.CommitFileTemporaryPath)  # as gs://
    assert checkpoint.resolve(str(root))[1] == 10


def test_relative_workdir_checkpoints_and_loads(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # users type --workdir=runs/x; Orbax wants absolute paths
    overrides = {**_small_overrides(data_dir), "train.num_steps": 2, "checkpoint.every_steps": 2}
    loop.train_and_evaluate(_config(overrides), "runs/relative")
    loaded = checkpoint.load_model("runs/relative")
    assert loaded.step == 2 and (tmp_path / "runs" / "relative" / "checkpoints" / "2").is_dir()


@pytest.mark.parametrize("lowercase", [False, True], ids=["cased", "uncased"])
def test_trained_tokenizer_follows_tokenizer_lowercase(tmp_path, lowercase):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"The river ran past the mill {i}. Then THE rain came.\n"
                              for i in range(200)))
    data = _get_config("tiny").data
    data.update({"source": f"text:{corpus}", "tokenizer": "train", "tokenizer_vocab_size": 40,
                 "tokenizer_lowercase": lowercase})
    tokenizer = setup_lib.load_or_train_tokenizer(data, str(tmp_path / "run"))
    upper, lower = tokenizer.encode_batch(["The River", "the river"])
    assert (upper == lower) == lowercase
    # The choice is the saved tokenizer's, so a resumed run tokenizes as the first did.
    reloaded = setup_lib.load_or_train_tokenizer(data, str(tmp_path / "run"))
    assert reloaded.encode_batch(["The River"]) == [upper]


def test_a_trained_tokenizer_is_kept_only_for_the_settings_it_was_trained_with(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"The river ran past the mill {i}. Then THE rain came.\n"
                              for i in range(200)))
    data = _get_config("tiny").data
    data.update({"source": f"text:{corpus}", "tokenizer": "train", "tokenizer_vocab_size": 40})
    workdir = tmp_path / "run"
    assert setup_lib.load_or_train_tokenizer(data, str(workdir)).vocab_size == 40
    # An attempt that failed before saving a checkpoint: the corrected rerun's settings win.
    data.update({"tokenizer_vocab_size": 50, "tokenizer_lowercase": True})
    retrained = setup_lib.load_or_train_tokenizer(data, str(workdir))
    assert retrained.vocab_size == 50
    assert retrained.encode_batch(["The River"]) == retrained.encode_batch(["the river"])
    # Once the workdir holds a checkpoint, its vocabulary stays, and other settings are refused.
    (workdir / "checkpoints" / "10" / "meta").mkdir(parents=True)
    data.tokenizer_vocab_size = 60
    with pytest.raises(ValueError, match=r"tokenizer holds the vocabulary this workdir's "
                       r"checkpoints were trained with \(data.tokenizer_vocab_size: 50 then, "
                       r"60 now\)"):
        setup_lib.load_or_train_tokenizer(data, str(workdir))
    data.update({"tokenizer_vocab_size": 50, "source": f"prose:{corpus}"})  # other text: fine
    assert setup_lib.load_or_train_tokenizer(data, str(workdir)).vocab_size == 50


def test_a_tokenizer_that_does_not_load_names_the_key(data_dir, tmp_path):
    data = _get_config("tiny").data
    data.tokenizer = f"wordpiece:{data_dir}/bert_vocab"  # the folder, not its vocab.txt
    with pytest.raises(IsADirectoryError, match=r"data.tokenizer='wordpiece:.*bert_vocab': "
                                                r"tokenizer spec .* is a folder"):
        setup_lib.load_or_train_tokenizer(data, str(tmp_path / "run"))


def test_tokenizer_lowercase_is_rejected_with_a_given_tokenizer(data_dir, tmp_path):
    data = _get_config("tiny").data
    data.update({"tokenizer": f"wordpiece:{data_dir}/bert_vocab/vocab.txt:cased",
                 "tokenizer_lowercase": True})
    with pytest.raises(ValueError, match="tokenizer_lowercase applies only to "
                                         "data.tokenizer=train.*wordpiece:"):
        setup_lib.load_or_train_tokenizer(data, str(tmp_path / "run"))
    data.tokenizer_lowercase = False  # the default: the spec's own casing, no error
    assert setup_lib.load_or_train_tokenizer(data, str(tmp_path / "run")).vocab_size == 30522


def _in_thread(fn, timeout: float):
    """fn()'s exception (None if it returned); fails the test if fn is still running."""
    outcome = {}

    def target():
        try:
            fn()
        except BaseException as e:  # handed back to the test
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout}s: a hang"
    return outcome.get("error")


@pytest.mark.parametrize("tokenizer", ["wordpiece", "train"])
def test_empty_data_source_fails_clearly(data_dir, tmp_path, tokenizer):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a.txt", "b.txt"):
        (corpus / name).write_text("")
    overrides = {**_small_overrides(data_dir), "data.source": f"prose:{corpus}/*.txt"}
    if tokenizer == "train":
        overrides.update({"data.tokenizer": "train", "data.tokenizer_vocab_size": 100})
    error = _in_thread(
        lambda: loop.train_and_evaluate(_config(overrides), str(tmp_path / "run")), timeout=120)
    assert isinstance(error, ValueError), error
    assert str(corpus) in str(error) and ("no train examples" in str(error)
                                          or "no text" in str(error))
    assert not _checkpoint_steps(tmp_path / "run")


# --- 6. Optimizer -------------------------------------------------------------------------------


def _tiny_params():
    """Real parameter names and shapes (abstract init, nothing compiled), random values."""
    model = BertForPreTraining(ModelConfig.from_size("tiny", vocab_size=100, num_layers=1))
    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids,
                                               masked_positions=ids[:, :2])["params"])
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                                  flax.linen.unbox(shapes))


def test_weight_decay_skips_layer_norm_and_biases():
    params = _tiny_params()
    mask = flax.traverse_util.flatten_dict(optim.weight_decay_mask(params))
    decayed = sorted("/".join(k) for k, v in mask.items() if v)
    assert all(k.endswith(("/kernel", "/embedding")) for k in decayed)
    assert all(("layer_norm" in "/".join(k) or k[-1] in ("bias", "output_bias")) != v
               for k, v in mask.items())
    assert len(decayed) == 12  # 3 embeddings, q k v out, 2 mlp, pooler, transform, nsp

    # With zero gradients, AdamW moves only the decayed parameters: p -> p (1 - lr * wd).
    config = _get_config("tiny").optimizer
    config.update({"learning_rate": 0.1, "warmup_steps": 0, "weight_decay": 0.01})
    optimizer, _ = optim.make_optimizer(config, total_steps=10)
    zeros = jax.tree_util.tree_map(np.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
    new = flax.traverse_util.flatten_dict(optax.apply_updates(params, updates))
    old = flax.traverse_util.flatten_dict(params)
    for key, decay in mask.items():
        expected = old[key] * (1 - 0.1 * 0.01) if decay else old[key]
        np.testing.assert_allclose(new[key], expected, rtol=1e-6, err_msg="/".join(key))


def test_schedule_warms_up_then_decays_to_zero():
    schedule = optim.learning_rate_schedule(1e-3, warmup_steps=100, total_steps=1000)
    values = {s: float(schedule(s)) for s in (0, 50, 100, 550, 1000, 1200)}
    assert values[0] == 0.0
    assert values[50] == pytest.approx(5e-4)
    assert values[100] == pytest.approx(1e-3)
    assert values[550] == pytest.approx(5e-4)
    assert values[1000] == 0.0 and values[1200] == 0.0
    no_warmup = optim.learning_rate_schedule(1e-3, warmup_steps=0, total_steps=10)
    assert float(no_warmup(0)) == pytest.approx(1e-3)


def test_lamb_steps_by_the_trust_ratio():
    """LAMB: each decayed tensor moves by lr * ||p|| whatever its gradient's scale."""
    config = _get_config("large").optimizer
    assert config.name == "lamb"
    config.update({"learning_rate": 1e-2, "warmup_steps": 0})
    optimizer, _ = optim.make_optimizer(config, total_steps=10)
    params = _tiny_params()
    rng = np.random.default_rng(0)
    grads = jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32) * 1e-3,
                                   params)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    flat_p = flax.traverse_util.flatten_dict(params)
    flat_u = flax.traverse_util.flatten_dict(updates)
    for key in [("mlm_head", "transform", "kernel"), ("bert", "pooler", "dense", "kernel")]:
        ratio = np.linalg.norm(flat_u[key]) / np.linalg.norm(flat_p[key])
        assert ratio == pytest.approx(1e-2, rel=1e-3), key
    # Biases and LayerNorm scales (no weight decay) take Adam's first step, -lr g / (|g| + eps),
    # without the trust ratio, as in BERT's reference LAMB (under it a scale of ones would
    # move by lr ||p|| / ||step|| times that, a zero bias not at all).
    flat_g = flax.traverse_util.flatten_dict(grads)
    for key in [("bert", "pooler", "dense", "bias"),
                ("bert", "embeddings", "layer_norm", "scale")]:
        adam = flat_g[key] / (np.abs(flat_g[key]) + config.eps)
        np.testing.assert_allclose(flat_u[key], -1e-2 * adam, rtol=1e-4, err_msg="/".join(key))
    with pytest.raises(ValueError, match="sgd"):
        config.name = "sgd"
        optim.make_optimizer(config, total_steps=10)


# --- 7. Logged throughput -----------------------------------------------------------------------


def test_throughput_counts_training_time_only(monkeypatch):
    """Rates and input wait of a window leave out time spent `excluded()` (an evaluation)."""
    peak = loop._peak_flops("float32")  # measured once, before the clock below stands still
    clock = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    throughput = loop.Throughput(num_steps=104, dtype="float32")
    work = loop.StepWork(sequences=8, tokens=8 * 64, flops=8 * 64 * 3e6)
    for _ in range(4):  # 2 s of training, 0.1 s of it waiting for input
        clock[0] += 0.5
        throughput.step_done(work)
    throughput.add_input_wait(0.1)
    with throughput.excluded():
        clock[0] += 30.0
    report = throughput.report(step=4)
    assert report["sequences_per_sec"] == pytest.approx(4 * 8 / 2.0)
    assert report["tokens_per_sec"] == pytest.approx(4 * 8 * 64 / 2.0)
    assert report["tflops_per_device"] == pytest.approx(
        4 * 8 * 64 * 3e6 / 2.0 / jax.device_count() / 1e12)
    assert report["mfu"] == pytest.approx(report["tflops_per_device"] * 1e12 / peak)
    assert report["input_wait_fraction"] == pytest.approx(0.05)
    assert report["eta_minutes"] == pytest.approx(100 * 0.5 / 60)
    assert "padding_fraction" not in report  # every position counted, none padding
    # Pre-training's steps report every position; the real share comes with their metrics.
    real = throughput.report(step=4, real_fraction=0.75)
    assert real["tokens_per_sec"] == pytest.approx(0.75 * report["tokens_per_sec"])
    assert real["mfu"] == pytest.approx(0.75 * report["mfu"])
    assert real["padding_fraction"] == pytest.approx(0.25)
    assert real["sequences_per_sec"] == report["sequences_per_sec"]
    throughput.reset()
    clock[0] += 1.0
    assert throughput.report(step=4) == {}  # no timed step in the window: no rates


@pytest.mark.parametrize("done, num_steps, every, expected", [
    (0, 2000, 500, 4), (500, 2000, 500, 3), (1999, 2000, 500, 1), (2000, 2000, 500, 0),
    (0, 30, 10, 3), (0, 25, 10, 3), (20, 25, 10, 1), (25, 25, 10, 0), (0, 20, 1000, 1)])
def test_evaluations_and_saves_still_to_come(done, num_steps, every, expected):
    """What the ETA adds: evaluations (or saves) at multiples of `every` and at the end."""
    assert loop.events_after(done, num_steps, every) == expected


def test_throughput_of_steps_of_different_sizes(monkeypatch):
    """Fine-tuning's steps differ (length buckets, a last short batch): the window adds up
    each step's own work, and reports the share of padded positions."""
    loop._peak_flops("float32")
    clock = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    throughput = loop.Throughput(num_steps=10, dtype="float32")
    for sequences, tokens, padded in ((32, 400, 512), (32, 900, 1024), (5, 60, 512)):
        clock[0] += 1.0
        throughput.step_done(loop.StepWork(sequences, tokens, tokens * 1e6, padded))
    report = throughput.report(step=3)
    assert report["sequences_per_sec"] == pytest.approx(69 / 3)
    assert report["tokens_per_sec"] == pytest.approx(1360 / 3)
    assert report["padding_fraction"] == pytest.approx(1 - 1360 / 2048)


def test_first_step_and_evaluations_stay_out_of_the_logged_rates(data_dir, tmp_path):
    """Every logged window reports rates and an input wait of training steps alone; the
    evaluation's own duration is logged with its metrics."""
    overrides = {**_small_overrides(data_dir), "train.num_steps": 30,
                 "eval.every_steps": 10, "checkpoint.every_steps": 10}
    loop.train_and_evaluate(_config(overrides), str(tmp_path))
    train, evals = _metrics(tmp_path), _metrics(tmp_path, "eval")
    assert sorted(train) == sorted(evals) == [10, 20, 30]
    for entry in train.values():
        assert entry["tokens_per_sec"] > 0 and 0 <= entry["input_wait_fraction"] < 1
    assert all(entry["seconds"] > 0 for entry in evals.values())
    # The first window would otherwise hold the compilation (seconds) in its 10 steps (ms).
    assert train[10]["sequences_per_sec"] > 0.3 * train[30]["sequences_per_sec"]
    # Tokens are the real ones: the first window's 10 batches, read again.
    config = _config(overrides)
    data = pipeline.make_pretraining_iterator(
        pipeline.PipelineConfig.from_config(config.data),
        tokenization.load_tokenizer(config.data.tokenizer), batch_size=8, seed=config.train.seed)
    real = sum(int(next(data)["attention_mask"].sum()) for _ in range(10)) / (10 * 8 * 32)
    data.close()
    assert 0.5 < real < 1
    assert train[10]["padding_fraction"] == pytest.approx(1 - real, abs=1e-9)
    assert train[10]["tokens_per_sec"] == pytest.approx(
        real * 32 * train[10]["sequences_per_sec"], rel=1e-9)


def test_evaluation_that_rereads_its_documents_says_so(data_dir, tmp_path, caplog):
    """10% of one book's ~20 documents is one, ~7 batches of 8 sequences of 32: 40 batches
    read it several times."""
    book = f"prose:{data_dir}/gutenberg/11-0.txt"
    overrides = {**_small_overrides(data_dir), "data.source": book, "data.eval_fraction": 0.1,
                 "train.num_steps": 1, "eval.every_steps": 1, "eval.num_batches": 40,
                 "checkpoint.every_steps": 1}
    with caplog.at_level(logging.WARNING):
        loop.train_and_evaluate(_config(overrides), str(tmp_path))
    assert "reads the held-out documents" in caplog.text
    assert "data.eval_fraction (now 0.1)" in caplog.text
