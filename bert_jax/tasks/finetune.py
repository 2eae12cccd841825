"""GLUE fine-tuning: epochs over a finite dataset with the shared train step, dev after each epoch.

    results = finetune.finetune_and_evaluate(config, workdir)   # what the entrypoint calls

WORKDIR/
  results.json           dev metrics per epoch of every seed, `best` (best epoch of the best
                         seed, by the task's main metric), `median` over seeds
  config.json            the run config and the model config
  predictions/<T>.tsv    GLUE submission files of the best seed's best epoch (when a test split
                         is present)
  seed_<s>/tensorboard, seed_<s>/metrics.jsonl, seed_<s>/checkpoints/<step>  (the best epoch)

The encoder and pooler come from `init_checkpoint` (a pre-training checkpoint keeps them under
`bert`; a converted one at the top level), with the checkpoint's tokenizer; the head is new.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging

from bert_jax.data import shared_data, tokenization
from bert_jax.model.config import ModelConfig
from bert_jax.model.heads import BertForSequenceClassification
from bert_jax.parallel import mesh as mesh_lib
from bert_jax.parallel import rules as rules_lib
from bert_jax.tasks import classification, glue
from bert_jax.train import checkpoint, optim, steps
from bert_jax.train import setup as setup_lib
from bert_jax.train.loop import MetricWriter, NonFiniteLossError
from bert_jax.train.state import TrainState

_ENCODER_KEYS = ("embeddings", "encoder", "pooler")


# ----------------------------------------------------------------------------------------------
# Initialisation from a checkpoint.


def encoder_params(params: dict, where: str) -> dict:
    """The encoder (+ pooler) subtree: under 'bert' (pre-training, fine-tuned) or at the top
    level (converted encoder-only checkpoints)."""
    params = nn.unbox(params)
    if "bert" in params:
        return params["bert"]
    if "embeddings" in params:
        return {k: params[k] for k in _ENCODER_KEYS if k in params}
    raise ValueError(f"checkpoint {where} holds no BERT encoder (top-level keys {sorted(params)})")


def finetune_model_config(base: ModelConfig, model_section, where: str) -> ModelConfig:
    """The checkpoint's architecture with the run's dropout and compute dtype."""
    if model_section.hidden_size is not None and model_section.hidden_size != base.hidden_size:
        raise ValueError(
            f"checkpoint {where} has hidden_size {base.hidden_size} but the config expects "
            f"model.hidden_size={model_section.hidden_size}")
    return dataclasses.replace(base, hidden_dropout=model_section.hidden_dropout,
                               attention_dropout=model_section.attention_dropout,
                               dtype=model_section.dtype)


def check_tokenizer(tokenizer: tokenization.Tokenizer, model_config: ModelConfig,
                    token_rows: int, where: str) -> None:
    """The tokenizer's ids must index the checkpoint's token embedding table."""
    if token_rows != model_config.vocab_size:
        raise ValueError(f"checkpoint {where}: the token embedding has {token_rows} rows but its "
                         f"model config says vocab_size={model_config.vocab_size}")
    if tokenizer.vocab_size > token_rows:
        raise ValueError(
            f"checkpoint {where}: its tokenizer has {tokenizer.vocab_size} tokens but the token "
            f"embedding has {token_rows} rows: the tokenizer does not belong to these weights")
    if tokenizer.vocab_size < token_rows:
        logging.info("tokenizer has %d tokens, embedding %d rows (padded vocabulary)",
                     tokenizer.vocab_size, token_rows)


@dataclasses.dataclass
class Run:
    """Everything the seeds share: task, data, model, mesh, optimizer and the jitted steps."""

    config: object
    workdir: str
    task: glue.GlueTask
    model_config: ModelConfig
    tokenizer: tokenization.Tokenizer
    init_encoder: dict | None  # host arrays; None for random_init
    features: dict  # split -> glue.Features
    model: nn.Module
    mesh: jax.sharding.Mesh
    optimizer: object
    schedule: object
    boxed_init: object
    state_shardings: TrainState
    train_step: object
    logits_step: object
    total_steps: int

    @property
    def filler(self) -> list[int]:
        return [self.tokenizer.cls_id, self.tokenizer.sep_id]


def _data_dir(data_config) -> str:
    if data_config.source != "tsv" or data_config.dir:
        return data_config.dir
    return str(shared_data.shared_data_path("glue"))


def load_features(config, task: glue.GlueTask, tokenizer) -> dict:
    """Encoded train, dev (all dev splits) and, when present and asked for, test splits."""
    data = config.data
    directory = _data_dir(data)
    load = functools.partial(glue.load_examples, task, source=data.source, directory=directory,
                             tfds_data_dir=data.tfds_data_dir, skip_empty=data.skip_empty)
    splits = ["train"] + task.dev_splits
    if data.predict_test:
        present = [s for s in task.test_splits
                   if glue.has_split(task, s, source=data.source, directory=directory)]
        if not present:
            logging.info("no test split of %s found: no submission file", task.name)
        splits += present
    features = {}
    for split in splits:
        examples = load(split)
        if split == "train":
            examples = glue.subsample(examples, data.max_train_examples, data.subset_seed)
        if not examples:
            raise ValueError(f"the {split} split of {task.name} has no examples")
        features[split] = glue.encode(examples, tokenizer, data.max_seq_length, task.is_regression)
        logging.info("%s %s: %d examples", task.name, split, len(examples))
    return features


def _optimizer_section(config, total_steps: int):
    section = dict(config.optimizer)
    proportion = section.pop("warmup_proportion")
    return types.SimpleNamespace(**section, warmup_steps=int(round(proportion * total_steps)))


def build(config, workdir: str) -> Run:
    """Loads the checkpoint and data, checks them against each other, compiles the steps."""
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required: the checkpoint to fine-tune "
                         "(its architecture and tokenizer are used even with random_init)")
    task = glue.get_task(config.task)
    loaded = checkpoint.load_model(config.init_checkpoint)
    where = config.init_checkpoint
    model_config = finetune_model_config(loaded.model_config, config.model, where)
    # Host copies: every seed device_puts fresh buffers, which its train steps then donate.
    encoder = jax.device_get(encoder_params(loaded.params, where))
    token_rows = encoder["embeddings"]["token_embed"]["embedding"].shape[0]
    check_tokenizer(loaded.tokenizer, model_config, token_rows, where)
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ValueError(f"data.max_seq_length={config.data.max_seq_length} exceeds the "
                         f"checkpoint's max_position_embeddings "
                         f"{model_config.max_position_embeddings}")
    features = load_features(config, task, loaded.tokenizer)

    mesh = mesh_lib.make_mesh(config.mesh)
    cfg = config.train
    setup_lib.check_batch_divides(cfg.batch_size, cfg.grad_accum_steps, mesh)
    setup_lib.check_batch_divides(cfg.eval_batch_size, 1, mesh)
    rules = rules_lib.logical_axis_rules(config.mesh.rules)
    total_steps = cfg.num_epochs * glue.num_batches(len(features["train"]), cfg.batch_size)
    optimizer, schedule = optim.make_optimizer(_optimizer_section(config, total_steps),
                                               total_steps)
    model = BertForSequenceClassification(model_config, task.num_labels)

    def init_boxed(rng):
        ids = jnp.zeros((1, config.data.max_seq_length), jnp.int32)
        params = model.init(rng, ids)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))

    boxed = jax.eval_shape(init_boxed, jax.random.key(0))
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
    if not config.random_init:
        expected = nn.unbox(boxed).params["bert"]
        if "pooler" not in encoder:
            logging.warning("checkpoint %s has no pooler: it starts freshly initialised", where)
            expected = {k: v for k, v in expected.items() if k != "pooler"}
        checkpoint.check_same_shapes(encoder, expected, where=where)
    run_setup = types.SimpleNamespace(mesh=mesh, rules=rules)
    batch_sharding, replicated = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)
    train = functools.partial(
        steps.train_step, sums_fn=classification.sums_fn(model), optimizer=optimizer,
        schedule=schedule, grad_accum_steps=cfg.grad_accum_steps,
        objective=classification.OBJECTIVE)
    train_step = setup_lib.with_mesh_and_rules(run_setup, jax.jit(
        train, in_shardings=(shardings, batch_sharding, replicated),
        out_shardings=(shardings, replicated), donate_argnums=0))
    logits_step = setup_lib.with_mesh_and_rules(run_setup, jax.jit(
        classification.logits_fn(model), in_shardings=(shardings.params, batch_sharding),
        out_shardings=replicated))
    return Run(config, workdir, task, model_config, loaded.tokenizer,
               None if config.random_init else encoder, features, model, mesh, optimizer,
               schedule, init_boxed, shardings, train_step, logits_step, total_steps)


def initial_state(run: Run, seed: int) -> TrainState:
    """A fresh head (and, with random_init, encoder) from `seed`; the checkpoint's encoder."""
    # Outside the rules context: placement comes from out_shardings (as in pre-training).
    state = jax.jit(lambda rng: nn.unbox(run.boxed_init(rng)),
                    out_shardings=run.state_shardings)(jax.random.key(seed))
    if run.init_encoder is None:
        return state
    params = dict(state.params)
    bert = dict(params["bert"])
    for key, value in run.init_encoder.items():
        bert[key] = jax.device_put(value, run.state_shardings.params["bert"][key])
    params["bert"] = bert
    opt_state = jax.jit(run.optimizer.init, out_shardings=run.state_shardings.opt_state)(params)
    return TrainState(step=state.step, params=params, opt_state=opt_state)


# ----------------------------------------------------------------------------------------------
# Training and evaluation.


def _global(batch: dict, mesh) -> dict:
    """This process's rows of a global batch (every process builds the same one) on the mesh."""
    count, index = jax.process_count(), jax.process_index()
    rows = next(iter(batch.values())).shape[0] // count
    local = {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}
    return mesh_lib.global_batch(local, mesh)


def predict_logits(run: Run, params, features: glue.Features) -> np.ndarray:
    """[N, num_labels] float32 logits in the features' order."""
    out = np.zeros((len(features), run.task.num_labels), np.float32)
    for indices, batch in glue.batches(features, run.config.train.eval_batch_size,
                                       run.config.data.max_seq_length, run.filler):
        logits = np.asarray(jax.device_get(run.logits_step(params, _global(batch, run.mesh))))
        out[indices] = logits[:len(indices)]
    return out


def evaluate(run: Run, params) -> dict:
    """Dev metrics of every dev split; the extra MNLI split's names get its suffix."""
    metrics = {}
    for split in run.task.dev_splits:
        features = run.features[split]
        logits = predict_logits(run, params, features)
        predictions = glue.predictions_from_logits(run.task, logits)
        values = glue.compute_metrics(run.task, predictions, features.labels)
        suffix = split[len("dev"):]
        metrics.update({f"{name}{suffix}": value for name, value in values.items()})
    return metrics


def _host_metrics(step: int, pending, skip_nonfinite: bool) -> dict:
    values = {k: float(v) for k, v in jax.device_get(pending).items()}
    if values.pop("nonfinite") > 0:
        if not skip_nonfinite:
            raise NonFiniteLossError(f"non-finite loss or gradient at step {step} "
                                     f"(loss={values['loss']}); the update was not applied")
        logging.warning("step %d: non-finite loss or gradient, update skipped", step)
    return values


def train_epoch(run: Run, state: TrainState, epoch: int, seed: int, rng, writer,
                first_step: int) -> tuple:
    """One pass over the train split; returns (state, mean train metrics)."""
    cfg = run.config.train
    order_rng = np.random.default_rng([seed, epoch])
    history, pending, step = [], None, first_step
    for _, batch in glue.batches(run.features["train"], cfg.batch_size,
                                 run.config.data.max_seq_length, run.filler, rng=order_rng):
        state, step_metrics = run.train_step(state, _global(batch, run.mesh), rng)
        step += 1
        # Step N-1's metrics are read only once step N is queued: no host sync per step.
        if pending is not None:
            history.append(_host_metrics(*pending, cfg.skip_nonfinite_updates))
            if pending[0] % cfg.log_every_steps == 0:
                writer.write(pending[0], history[-1])
        pending = (step, step_metrics)
    history.append(_host_metrics(*pending, cfg.skip_nonfinite_updates))
    means = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
    return state, means


def run_seed(run: Run, seed: int) -> dict:
    """Trains one restart; returns {'seed', 'epochs': [...], 'best': {...}, ...}."""
    seed_dir = os.path.join(run.workdir, f"seed_{seed}")
    writer = MetricWriter(seed_dir)
    state = initial_state(run, seed)
    rng = jax.random.key(seed)
    main = run.task.main_metric
    epochs, best, best_params, step = [], None, None, 0
    for epoch in range(1, run.config.train.num_epochs + 1):
        start = time.perf_counter()
        state, train_means = train_epoch(run, state, epoch, seed, rng, writer, step)
        step = int(jax.device_get(state.step))
        writer.write(step, train_means, prefix="train")
        dev = evaluate(run, state.params)
        writer.write(step, dev, prefix="dev")
        record = {"epoch": epoch, "step": step, "train_loss": train_means["loss"], **dev,
                  "seconds": time.perf_counter() - start}
        epochs.append(record)
        logging.info("%s seed %d epoch %d: %s", run.task.name, seed, epoch, record)
        if best is None or dev[main] > best[main]:
            best = record
            # A copy: the next step donates (and so invalidates) state.params.
            best_params = jax.tree_util.tree_map(jnp.copy, state.params)
            if run.config.train.save_best_checkpoint:
                _save_best(run, seed_dir, step, best_params, record)
    writer.close()
    result = {"seed": seed, "epochs": epochs, "best": best}
    result["submissions"] = _write_submissions(run, best_params, seed_dir)
    if run.config.train.save_best_checkpoint:
        result["checkpoint"] = os.path.join(seed_dir, "checkpoints", str(best["step"]))
    return result


def task_meta(task: glue.GlueTask) -> dict:
    """What `inference.Predictor.classify` needs to name a fine-tuned checkpoint's outputs."""
    return {"name": task.name, "labels": None if task.labels is None else list(task.labels),
            "is_regression": task.is_regression,
            "pair": len(task.text_columns) == 2, "metrics": list(task.metrics)}


def _save_best(run: Run, seed_dir: str, step: int, params, record: dict) -> None:
    root = os.path.join(seed_dir, "checkpoints")
    if jax.process_index() == 0 and tf.io.gfile.isdir(root):
        tf.io.gfile.rmtree(root)  # only the best epoch is kept
    meta = checkpoint.make_meta(step, run.model_config, run.tokenizer,
                                run_config=run.config.to_dict(), task=task_meta(run.task),
                                dev_metrics=record, init_checkpoint=run.config.init_checkpoint)
    checkpoint.save_model(root, step, params, meta)


def _write_submissions(run: Run, params, seed_dir: str) -> dict:
    written = {}
    for split in run.task.test_splits:
        if split not in run.features:
            continue
        features = run.features[split]
        predictions = glue.predictions_from_logits(
            run.task, predict_logits(run, params, features))
        path = os.path.join(seed_dir, "predictions", run.task.submissions[split])
        if jax.process_index() == 0:
            glue.write_submission(path, run.task, features.guids, predictions)
        written[split] = path
    return written


def summarize_seeds(task: glue.GlueTask, runs: list[dict]) -> dict:
    """results.json: every seed, the best seed's epochs and best epoch, medians over seeds."""
    main = task.main_metric
    best_run = max(runs, key=lambda r: r["best"][main])
    metric_names = [k for k in best_run["best"] if k not in ("epoch", "step", "seconds")]
    return {
        "task": task.name,
        "main_metric": main,
        "epochs": best_run["epochs"],
        "best": {**best_run["best"], "seed": best_run["seed"]},
        "median": {k: float(np.median([r["best"][k] for r in runs])) for k in metric_names},
        "seeds": {str(r["seed"]): r for r in runs},
    }


def finetune_and_evaluate(config, workdir: str) -> dict:
    """Fine-tunes config.init_checkpoint on config.task once per seed; writes results.json."""
    setup_lib.check_workdir_writable(workdir)
    if not config.seeds:
        raise ValueError("config.seeds is empty: give at least one seed")
    run = build(config, workdir)
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(workdir, "config.json"), "w") as f:
            json.dump({"config": config.to_dict(), "model_config": run.model_config.to_dict(),
                       "train_examples": len(run.features["train"]),
                       "total_steps_per_seed": run.total_steps}, f, indent=2, default=str)
    start = time.perf_counter()
    runs = [run_seed(run, int(seed)) for seed in config.seeds]
    results = summarize_seeds(run.task, runs)
    results["seconds"] = time.perf_counter() - start
    if jax.process_index() == 0:
        best_seed = results["seeds"][str(results["best"]["seed"])]
        for split, path in best_seed["submissions"].items():
            target = os.path.join(workdir, "predictions", os.path.basename(path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)
            results.setdefault("submissions", {})[split] = target
        with tf.io.gfile.GFile(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    logging.info("%s best: %s", run.task.name, results["best"])
    return results
