"""Fine-tuning: epochs over a finite dataset with the shared train step, dev after each epoch.

    results = finetune.finetune_and_evaluate(config, workdir)   # what the entrypoint calls

The loop is the same for every task (GLUE, SQuAD, NER, multiple choice, ...); what differs
(data, head, loss sums, metrics, prediction files) comes from the task object,
`base.make_task(config)`.

WORKDIR/
  results.json           dev metrics per epoch of every seed, `best` (best epoch of the best
                         seed, by the task's main metric), `median` over seeds
  lr_<rate>/...          with learning_rates (a sweep): each rate's run as laid out here;
                         results.json is the rate whose best run is best, plus every rate's
                         best and median under `learning_rates`
  config.json            the run config and the model config
  predictions/<file>     the task's prediction files (GLUE submissions, SQuAD predictions JSON,
                         CoNLL columns) from the best seed's best epoch
  seed_<s>/tensorboard, seed_<s>/metrics.jsonl  "train": the means of every
                         train.log_every_steps steps (and of an epoch's last window),
                         "train_epoch": each epoch's means, "dev": each epoch's dev metrics
  seed_<s>/checkpoints/<step>  the best epoch's parameters
  seed_<s>/result.json   the seed's epochs and best, once it has finished
  seed_<s>/progress/<step>  while it runs: its state, to resume from (tasks/progress.py)

Running the same command again resumes a stopped run (SIGTERM, a crash, a lost host): finished
seeds are read back, the others continue from their last save, and the results are those of a
run that never stopped.

With train.num_epochs=0 nothing is trained: a checkpoint fine-tuned for the task (one of
ours, or a transformers task model imported with `convert --from=hf`) is scored on the dev
splits and writes the prediction files (tasks/checkpoint_head.py matches its labels).

The encoder and pooler come from `init_checkpoint` (a pre-training checkpoint keeps them under
`bert`; a converted one at the top level), with the checkpoint's tokenizer; the head is new.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf
from absl import logging

from bert_jax.data import tokenization
from bert_jax.interop import hf
from bert_jax.model.config import ModelConfig
from bert_jax.parallel import mesh as mesh_lib
from bert_jax.parallel import rules as rules_lib
from bert_jax.tasks import base, batching, checkpoint_head
from bert_jax.tasks import progress as progress_lib
from bert_jax.train import checkpoint, metrics, optim, steps
from bert_jax.train import loss_scale as loss_scale_lib
from bert_jax.train import setup as setup_lib
from bert_jax.train.loop import (MetricWriter, PreemptionFlag, StepWork, Throughput,
                                 host_step_metrics, mean_metrics, with_stop_vote)
from bert_jax.train.state import TrainState

# ----------------------------------------------------------------------------------------------
# Initialisation from a checkpoint.


def encoder_params(params: dict, where: str) -> dict:
    """The encoder (+ pooler) subtree: under 'bert' (pre-training, fine-tuned) or at the top
    level (converted encoder-only checkpoints)."""
    params = nn.unbox(params)
    if "bert" in params:
        return params["bert"]
    if "embeddings" in params:
        return {k: params[k] for k in checkpoint.ENCODER_KEYS if k in params}
    raise ValueError(f"checkpoint {where} holds no BERT encoder (top-level keys {sorted(params)})")


def finetune_model_config(base: ModelConfig, model_section, where: str) -> ModelConfig:
    """The checkpoint's architecture (and layer layout: scan_layers) with the run's numerics:
    dropout, compute and parameter dtypes, remat and attention kernel."""
    if model_section.hidden_size is not None and model_section.hidden_size != base.hidden_size:
        raise ValueError(
            f"checkpoint {where} has hidden_size {base.hidden_size} but the config expects "
            f"model.hidden_size={model_section.hidden_size}")
    return dataclasses.replace(base, hidden_dropout=model_section.hidden_dropout,
                               attention_dropout=model_section.attention_dropout,
                               dtype=model_section.dtype,
                               param_dtype=model_section.param_dtype,
                               remat_policy=model_section.remat_policy,
                               attention_implementation=model_section.attention_implementation)


@dataclasses.dataclass
class Run:
    """Everything the seeds share: task, data, model, mesh, optimizer and the jitted steps."""

    config: object
    workdir: str
    task: base.FinetuneTask
    model_config: ModelConfig
    tokenizer: tokenization.Tokenizer
    init_encoder: dict | None  # host arrays; None for random_init
    init_head: dict | None  # train.num_epochs=0: the checkpoint's head (checkpoint_head.py)
    features: dict  # split -> the task's features
    model: nn.Module
    mesh: jax.sharding.Mesh
    optimizer: object
    schedule: object
    boxed_init: object
    state_shardings: TrainState
    abstract_state: TrainState  # what a saved seed restores onto
    train_step: object
    outputs_step: object
    total_steps: int
    # Batch shapes train_step has compiled for (its first step at a new one is not timed).
    compiled_shapes: set = dataclasses.field(default_factory=set)


def forward(model, params, batch: dict, rng, deterministic: bool):
    """The task model's outputs on a batch (dropout on when not deterministic)."""
    return model.apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
        deterministic=deterministic, rngs=None if deterministic else {"dropout": rng},
    )


def _sums_fn(task: base.FinetuneTask, model):
    def sums_fn(params, batch, rng, deterministic):
        return task.sums(forward(model, params, batch, rng, deterministic), batch)

    return sums_fn


def _outputs_fn(task: base.FinetuneTask, model):
    def outputs_fn(params, batch):
        return task.outputs(forward(model, params, batch, None, True))

    return outputs_fn


def _check_segments_fit(task, features, model_config: ModelConfig, where: str) -> None:
    """A pair task's second segment needs a second token-type row: inside jit an id past the
    table reads zeros, silently (a full-sentence checkpoint may have type_vocab_size=1)."""
    if model_config.type_vocab_size >= 2:
        return
    _, batch = next(iter(task.batches(features, 8)))
    if batch["token_type_ids"].max() >= model_config.type_vocab_size:
        raise ValueError(f"{task.name} pairs two segments, but the checkpoint {where} has "
                         f"type_vocab_size={model_config.type_vocab_size} (one segment)")


def _optimizer_section(config, total_steps: int):
    section = dict(config.optimizer)
    proportion = section.pop("warmup_proportion")
    if not 0 <= proportion <= 1:
        raise ValueError(f"optimizer.warmup_proportion={proportion!r}: expected the share of "
                         "the training steps that warm up, in [0, 1]")
    return types.SimpleNamespace(**section, warmup_steps=int(round(proportion * total_steps)))


def build(config, workdir: str) -> Run:
    """Loads the checkpoint and data, checks them against each other, compiles the steps."""
    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required: the checkpoint to fine-tune "
                         "(its architecture and tokenizer are used even with random_init)")
    setup_lib.check_step_intervals({"train.log_every_steps": config.train.log_every_steps})
    for key, what in (("data.max_train_examples", "0 (all of them) or a number of rows"),
                      ("train.checkpoint_every_steps", "0 (after each epoch only) or steps")):
        section, name = key.split(".")
        if config[section][name] < 0:
            raise ValueError(f"{key}={config[section][name]}: expected {what} >= 1")
    if config.data.length_buckets not in batching.LENGTH_BUCKETS:  # before any loading
        raise ValueError(f"data.length_buckets={config.data.length_buckets!r}; expected one of "
                         f"{batching.LENGTH_BUCKETS}")
    task = base.make_task(config)
    loaded = checkpoint.load_model(config.init_checkpoint)
    where = config.init_checkpoint
    model_config = finetune_model_config(loaded.model_config, config.model, where)
    setup_lib.check_training_dtypes(model_config)
    # Host copies: every seed device_puts fresh buffers, which its train steps then donate.
    encoder = jax.device_get(encoder_params(loaded.params, where))
    if hf.is_zero_pooler(encoder):
        # An import of transformers' QA, token or masked-LM model, which has no pooler.
        encoder = {k: v for k, v in encoder.items() if k != "pooler"}
    token_rows = encoder["embeddings"]["token_embed"]["embedding"].shape[0]
    checkpoint.check_tokenizer_fits(loaded.tokenizer, model_config, token_rows, where)
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ValueError(f"data.max_seq_length={config.data.max_seq_length} exceeds the "
                         f"checkpoint's max_position_embeddings "
                         f"{model_config.max_position_embeddings}")
    scoring = config.train.num_epochs == 0  # the checkpoint's own head, nothing trained
    if config.train.num_epochs < 0:
        raise ValueError(f"train.num_epochs={config.train.num_epochs}; expected >= 1, or 0 to "
                         "score a fine-tuned checkpoint without training")
    if scoring:
        if config.random_init:
            raise ValueError("train.num_epochs=0 scores the checkpoint as it is; random_init "
                             "would score an untrained model")
        checkpoint_head.check_kind(loaded.meta.get("task"), task.meta(), where)
        labels = loaded.meta["task"].get("labels")
        if task.labels_from_train and labels is not None:  # NER: the checkpoint's tags, in
            task.labels = list(labels)  # its order (a regression fails in head_for_task)
    features = task.load(loaded.tokenizer, with_train=not scoring)
    for split in ([] if scoring else ["train"]) + task.dev_splits:
        if split not in features or task.num_examples(features[split]) == 0:
            raise ValueError(f"the {split} split of {task.name} has no examples")
    _check_segments_fit(task, features[task.dev_splits[0]], model_config, where)
    init_head = None
    if scoring:
        init_head = checkpoint_head.head_for_task(nn.unbox(loaded.params),
                                                  loaded.meta.get("task"), task.meta(), where)

    mesh = mesh_lib.make_mesh(config.mesh)
    cfg = config.train
    setup_lib.check_batch_divides(cfg.batch_size, cfg.grad_accum_steps, mesh)
    setup_lib.check_batch_divides(cfg.eval_batch_size, 1, mesh)
    rules = rules_lib.logical_axis_rules(config.mesh.rules)
    total_steps = 0 if scoring else cfg.num_epochs * batching.num_batches(
        task.num_examples(features["train"]), cfg.batch_size)
    optimizer, schedule = optim.make_optimizer(_optimizer_section(config, total_steps),
                                               total_steps)
    model = task.make_model(model_config)
    init_batch = task.init_batch(config.data.max_seq_length)
    initial_loss_scale = loss_scale_lib.for_training(model_config, cfg)

    def init_boxed(rng):
        params = model.init(rng, init_batch["input_ids"], init_batch["token_type_ids"],
                            init_batch["attention_mask"])["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params), loss_scale=initial_loss_scale)

    boxed = jax.eval_shape(init_boxed, jax.random.key(0))
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
    if not config.random_init:
        expected = nn.unbox(boxed).params["bert"]
        if "pooler" not in encoder:
            logging.warning("checkpoint %s has no pooler (or an all-zero one): it starts "
                            "freshly initialised", where)
            expected = {k: v for k, v in expected.items() if k != "pooler"}
        checkpoint.check_same_shapes(encoder, expected, where=where)
    if init_head is not None:
        checkpoint.check_same_shapes(init_head, {k: nn.unbox(boxed).params[k] for k in init_head},
                                     where=where)
    outputs_step = setup_lib.with_mesh_and_rules(
        types.SimpleNamespace(mesh=mesh, rules=rules),
        jax.jit(_outputs_fn(task, model), in_shardings=(shardings.params,
                                                        mesh_lib.batch_sharding(mesh)),
                out_shardings=mesh_lib.replicated(mesh)))
    return Run(config, workdir, task, model_config, loaded.tokenizer,
               None if config.random_init else encoder, init_head, features, model, mesh,
               optimizer, schedule, init_boxed, shardings,
               setup_lib.abstract_state(boxed, shardings),
               _train_step(config, task, model, optimizer, schedule, shardings, mesh, rules),
               outputs_step, total_steps)


def _train_step(config, task, model, optimizer, schedule, shardings, mesh, rules):
    """The jitted train step: the shared pure step on the task's loss sums, state donated."""
    train = functools.partial(
        steps.train_step, sums_fn=_sums_fn(task, model), optimizer=optimizer,
        schedule=schedule, grad_accum_steps=config.train.grad_accum_steps,
        objective=task.objective)
    return setup_lib.with_mesh_and_rules(
        types.SimpleNamespace(mesh=mesh, rules=rules),
        jax.jit(with_stop_vote(train), in_shardings=(shardings, mesh_lib.batch_sharding(mesh),
                                     mesh_lib.replicated(mesh)),
                out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0))


def with_learning_rate(run: Run, learning_rate: float, workdir: str) -> Run:
    """The run at another learning rate, in `workdir`: its config says that rate (so that a
    stopped seed resumes only under it), with a new optimizer and train step; data, model and
    checkpoint are shared."""
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
        config.optimizer.learning_rate = learning_rate
        config.learning_rates = ()
    optimizer, schedule = optim.make_optimizer(_optimizer_section(config, run.total_steps),
                                               run.total_steps)
    rules = rules_lib.logical_axis_rules(config.mesh.rules)
    return dataclasses.replace(
        run, config=config, workdir=workdir, optimizer=optimizer, schedule=schedule,
        train_step=_train_step(config, run.task, run.model, optimizer, schedule,
                               run.state_shardings, run.mesh, rules),
        compiled_shapes=set())


def initial_state(run: Run, seed: int) -> TrainState:
    """A fresh head (and, with random_init, encoder) from `seed`; the checkpoint's encoder (and,
    scoring a fine-tuned checkpoint, its head)."""
    # Outside the rules context: placement comes from out_shardings (as in pre-training).
    state = jax.jit(lambda rng: nn.unbox(run.boxed_init(rng)),
                    out_shardings=run.state_shardings)(jax.random.key(seed))
    if run.init_encoder is None:
        return state
    params = dict(state.params)
    bert = dict(params["bert"])
    for key, value in run.init_encoder.items():
        bert[key] = _placed_like(value, bert[key])
    params["bert"] = bert
    for key, value in (run.init_head or {}).items():
        params[key] = _placed_like(value, params[key])
    opt_state = jax.jit(run.optimizer.init, out_shardings=run.state_shardings.opt_state)(params)
    return state.replace(params=params, opt_state=opt_state)


def _placed_like(loaded, fresh):
    """A checkpoint's host arrays with the dtypes and shardings of the fresh state's (the run's
    model.param_dtype, whatever the checkpoint stored)."""
    return jax.tree_util.tree_map(
        lambda value, like: jax.device_put(np.asarray(value).astype(like.dtype), like.sharding),
        loaded, fresh)


# ----------------------------------------------------------------------------------------------
# Training and evaluation.


def _global(batch: dict, mesh) -> dict:
    """This process's rows of a global batch (every process builds the same one) on the mesh."""
    count, index = jax.process_count(), jax.process_index()
    rows = next(iter(batch.values())).shape[0] // count
    local = {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}
    return mesh_lib.global_batch(local, mesh)


def predict_outputs(run: Run, params, features) -> list[dict]:
    """The task's outputs per feature (a dict of numpy arrays each), in the features' order."""
    out: list = [None] * run.task.num_examples(features)
    for indices, batch in run.task.batches(features, run.config.train.eval_batch_size):
        outputs = jax.device_get(run.outputs_step(params, _global(batch, run.mesh)))
        for row, index in enumerate(indices):
            out[index] = {name: np.asarray(value[row]) for name, value in outputs.items()}
    return out


def evaluate(run: Run, params) -> dict:
    """Metrics of every dev split, named by the task."""
    dev_metrics = {}
    for split in run.task.dev_splits:
        features = run.features[split]
        dev_metrics.update(run.task.evaluate(split, features,
                                             predict_outputs(run, params, features)))
    return dev_metrics


def _step_work(run: Run, batch: dict) -> StepWork:
    """A fine-tuning step's work: its real rows and tokens (filler rows, padded choices and
    padding left out), model FLOPs at the batch's bucket length, and every position it
    computed. A row is one encoder sequence: [B, L] batches have B, multiple choice's
    [B, C, L] have B * C."""
    real = batch["example_weight"] > 0  # [B]
    if "choice_mask" in batch:
        real = real[:, None] & (batch["choice_mask"] > 0)  # [B, C]
    length = batch["input_ids"].shape[-1]
    tokens = int(batch["attention_mask"][real].sum())
    return StepWork(sequences=int(real.sum()), tokens=tokens,
                    flops=tokens * metrics.flops_per_token(run.model_config, length, 0),
                    padded_tokens=batch["input_ids"].size)


def train_epoch(run: Run, state: TrainState, epoch: int, seed: int, rng, writer,
                throughput: Throughput, progress: progress_lib.SeedProgress, save,
                preemption) -> tuple:
    """The rest of one pass over the train split, from progress.batches_done on; returns
    (state, the epoch's mean train metrics), or (state, None) when SIGTERM stopped it.

    `save(state)` saves the seed (progress included) every train.checkpoint_every_steps steps
    and before stopping. Logged lines carry the window's metric means and rates
    (loop.Throughput). The first step at each batch shape (bucket length) compiles: it is
    awaited and left out of the rates, as are evaluations between epochs.
    """
    cfg = run.config.train
    order_rng = np.random.default_rng([seed, epoch])
    batches = run.task.batches(run.features["train"], cfg.batch_size, rng=order_rng)
    for _ in range(progress.batches_done):  # resumed mid-epoch: the same order, these done
        next(batches)
    pending, step = None, int(jax.device_get(state.step))
    every = cfg.checkpoint_every_steps
    window = []  # the metrics of the steps since the last logged one
    throughput.reset()

    def settle(log: bool = False):
        """The pending step's metrics into the epoch's sums, and the window's means into the
        log at multiples of train.log_every_steps or when `log` (an epoch's last step, a
        stop): a run shorter than a window still logs its rates."""
        nonlocal pending, window
        if pending is None:
            return
        values = host_step_metrics(*pending, cfg.skip_nonfinite_updates, preemption)
        progress.add_step(values)
        window.append(values)
        if log or pending[0] % cfg.log_every_steps == 0:
            writer.write(pending[0], {**mean_metrics(window), **throughput.report(pending[0])})
            window = []
            throughput.reset()
        pending = None

    while True:
        wait_start = time.perf_counter()
        item = next(batches, None)
        if item is None:
            break
        _, batch = item
        placed = preemption.vote_into(_global(batch, run.mesh), run.mesh)
        throughput.add_input_wait(time.perf_counter() - wait_start)
        shape = batch["input_ids"].shape  # [B, L]; multiple choice: [B, C, L]
        if shape in run.compiled_shapes:
            state, step_metrics = run.train_step(state, placed, rng)
            throughput.step_done(_step_work(run, batch))
        else:
            jax.block_until_ready(state)  # steps queued so far are training time
            with throughput.excluded():
                state, step_metrics = run.train_step(state, placed, rng)
                jax.block_until_ready(step_metrics)
            run.compiled_shapes.add(shape)
        step += 1
        progress.batches_done += 1
        # Step N-1's metrics are read only once step N is queued: no host sync per step.
        settle()
        pending = (step, step_metrics)
        if preemption.stop or (every > 0 and step % every == 0):
            settle(log=preemption.stop)  # never save unchecked parameters
            with throughput.excluded():
                save(state)
            if preemption.stop:
                return state, None
    settle(log=True)
    return state, progress.train_means()


def run_seed(run: Run, seed: int, preemption) -> dict | None:
    """Trains one restart, or what remains of it (see tasks/progress.py); returns {'seed',
    'epochs': [...], 'best': {...}, ...}, or None when SIGTERM stopped it (saved to resume)."""
    seed_dir = os.path.join(run.workdir, f"seed_{seed}")
    finished = progress_lib.finished_result(seed_dir, run.config.to_dict())
    if finished is not None:
        logging.info("seed %d finished in an earlier run: its result comes from %s", seed,
                     seed_dir)
        # What a run stopped right after writing the result left (both steps are idempotent).
        _drop_other_bests(seed_dir, finished["best"]["step"] if "checkpoint" in finished
                          else None)
        progress_lib.drop_progress(seed_dir)
        return finished
    saver = progress_lib.ProgressCheckpointer(seed_dir, run.config.to_dict())
    restored = saver.restore(run.abstract_state)
    state, progress = restored or (initial_state(run, seed), progress_lib.SeedProgress())
    best_params = None if progress.best is None else _best_params(run, seed_dir, progress.best)
    rng = steps.root_rng(seed, run.config.train.prng_impl)
    main = run.task.main_metric
    num_epochs = run.config.train.num_epochs
    writer = MetricWriter(seed_dir)
    writer.drop_after(int(jax.device_get(state.step)))  # what it logs again from here
    throughput = Throughput(run.total_steps, run.model_config.dtype)
    try:
        for epoch in range(progress.epoch, num_epochs + 1):
            start = time.perf_counter()
            state, train_means = train_epoch(run, state, epoch, seed, rng, writer, throughput,
                                             progress, lambda s: saver.save(s, progress),
                                             preemption)
            if train_means is None:
                return None
            step = int(jax.device_get(state.step))
            # Its own split: the epoch's last step is logged under "train" at the same step.
            writer.write(step, train_means, prefix="train_epoch")
            dev = evaluate(run, state.params)
            writer.write(step, dev, prefix="dev")
            record = {"epoch": epoch, "step": step, "train_loss": train_means["loss"], **dev,
                      "seconds": time.perf_counter() - start}
            logging.info("%s seed %d epoch %d: %s", run.task.name, seed, epoch, record)
            best = progress.best
            if best is None or _rank(dev[main]) > _rank(best[main]):
                best = record
                # A copy: the next step donates (and so invalidates) state.params.
                best_params = jax.tree_util.tree_map(jnp.copy, state.params)
                # On disk even without save_best_checkpoint: a resumed seed reads it back.
                _save_best(run, seed_dir, step, best_params, record)
            progress.end_epoch(record, best)
            if epoch < num_epochs:
                saver.save(state, progress)
                saver.wait()  # committed: the progress names this best, not an earlier one
                _drop_other_bests(seed_dir, best["step"])
    finally:
        writer.close()
        saver.close()
    result = {"seed": seed, "epochs": progress.epochs, "best": progress.best}
    result["predictions"] = _write_predictions(run, best_params, seed_dir)
    keep = run.config.train.save_best_checkpoint
    if keep:
        result["checkpoint"] = os.path.join(seed_dir, "checkpoints", str(progress.best["step"]))
    progress_lib.write_result(seed_dir, result, run.config.to_dict())
    # Only now: until the result is written, a rerun resumes from progress naming older bests.
    _drop_other_bests(seed_dir, progress.best["step"] if keep else None)
    saver.remove()
    return result


def _rank(value) -> float:
    """A dev metric as a sort key: NaN (a correlation of constant predictions, say) ranks below
    every number, so it can neither stay best nor beat a real score."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _save_best(run: Run, seed_dir: str, step: int, params, record: dict) -> None:
    """The best epoch's params to SEED_DIR/checkpoints/<step>. The previous best stays beside
    it until the seed's progress names the new one (_drop_other_bests): a run stopped in
    between resumes from progress that names the previous one."""
    root = os.path.join(seed_dir, "checkpoints")
    stale = os.path.join(root, str(step))
    if jax.process_index() == 0 and tf.io.gfile.isdir(stale):
        tf.io.gfile.rmtree(stale)  # written by a run stopped before its progress named it
    # Every process waits for that removal: on several hosts, one that started its save first
    # could otherwise see the folders it was writing deleted under it.
    multihost_utils.sync_global_devices(f"bert_jax_save_best_{seed_dir}_{step}")
    meta = checkpoint.make_meta(step, run.model_config, run.tokenizer,
                                run_config=run.config.to_dict(), task=run.task.meta(),
                                dev_metrics=record, init_checkpoint=run.config.init_checkpoint)
    checkpoint.save_model(root, step, params, meta)


def _drop_other_bests(seed_dir: str, keep_step: int | None) -> None:
    """Removes every best-epoch checkpoint of the seed but keep_step's (None: all of them)."""
    root = os.path.join(seed_dir, "checkpoints")
    if jax.process_index() != 0 or not tf.io.gfile.isdir(root):
        return
    if keep_step is None:
        tf.io.gfile.rmtree(root)
        return
    for name in tf.io.gfile.listdir(root):
        if name.rstrip("/") != str(keep_step):
            tf.io.gfile.rmtree(os.path.join(root, name))


def _best_params(run: Run, seed_dir: str, best: dict):
    """The best epoch's params of a resumed seed, read back onto the run's shardings."""
    path = os.path.join(seed_dir, "checkpoints", str(best["step"]))
    return jax.device_put(nn.unbox(checkpoint.load_model(path).params),
                          run.state_shardings.params)


def _write_predictions(run: Run, params, seed_dir: str) -> dict:
    """The task's prediction files of the dev and prediction splits: split -> path."""
    written = {}
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(os.path.join(seed_dir, "predictions"))
    dev = run.task.dev_splits if run.task.writes_dev_predictions else []
    for split in [*dev, *run.task.prediction_splits]:
        if split not in run.features:
            continue
        features = run.features[split]
        path = run.task.write_predictions(os.path.join(seed_dir, "predictions"), split, features,
                                          predict_outputs(run, params, features))
        if path:
            written[split] = path
    return written


def summarize_seeds(task: base.FinetuneTask, runs: list[dict]) -> dict:
    """results.json: every seed, the best seed's epochs and best epoch, medians over seeds."""
    main = task.main_metric
    best_run = max(runs, key=lambda r: _rank(r["best"][main]))
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
    """Fine-tunes config.init_checkpoint on config.task once per seed (and learning rate);
    writes results.json."""
    setup_lib.check_workdir_writable(workdir)
    if not config.seeds:
        raise ValueError("config.seeds is empty: give at least one seed")
    setup_lib.check_seeds("seeds", config.seeds)
    rates = learning_rates(config)
    if config.train.num_epochs == 0 and config.learning_rates:
        raise ValueError("learning_rates is set but train.num_epochs=0 trains nothing")
    checked = _check_resumes_the_same_run(workdir, config)
    run = build(config, workdir)
    if checked:
        _write_run_config(run)
    start = time.perf_counter()
    if config.train.num_epochs == 0:
        return _score_checkpoint(run, start)
    with PreemptionFlag() as preemption:
        if not config.learning_rates:
            results = _train_seeds(run, preemption, start)
        else:
            results = _train_rates(run, rates, preemption, start)
    if not checked and not results.get("preempted"):
        _write_run_config(run)  # every seed has now passed its own check
    return results


def _train_rates(run: Run, rates: tuple[float, ...], preemption, start: float) -> dict:
    """A learning-rate sweep: every seed at each rate, in WORKDIR/lr_<rate>."""
    per_rate = {}
    for rate in rates:
        rate_run = with_learning_rate(run, rate, os.path.join(run.workdir, rate_dir(rate)))
        logging.info("learning rate %g: %s", rate, rate_run.workdir)
        per_rate[rate] = _train_seeds(rate_run, preemption, start)
        if per_rate[rate].get("preempted"):
            return {**per_rate[rate], "learning_rate": rate}
    return _choose_learning_rate(run, per_rate, start)


def _write_run_config(run: Run) -> None:
    """WORKDIR/config.json: the run config, the model config and the run's size (process 0);
    whole, or the previous one."""
    if jax.process_index() != 0:
        return
    path = os.path.join(run.workdir, "config.json")
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump({"config": run.config.to_dict(), "model_config": run.model_config.to_dict(),
                   "train_examples": (run.task.num_examples(run.features["train"])
                                      if "train" in run.features else 0),
                   "total_steps_per_seed": run.total_steps}, f, indent=2, default=str)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _check_resumes_the_same_run(workdir: str, config) -> bool:
    """A workdir whose seeds have saved progress or results takes only the config they began
    under (tasks/progress.py's rule), checked here against config.json before it is rewritten:
    a refused rerun would otherwise leave it describing a run that never happened. False when
    saved seeds have no config.json to check against: each seed checks its own as it starts,
    and config.json waits until they all have."""
    path = os.path.join(workdir, "config.json")
    saved_seeds = [pattern for rate in ("", "lr_*/")
                   for pattern in (f"{workdir}/{rate}seed_*/{progress_lib.RESULT_FILE}",
                                   f"{workdir}/{rate}seed_*/{progress_lib.PROGRESS_DIR}/*")
                   if tf.io.gfile.glob(pattern)]
    if not saved_seeds:
        return True
    if not tf.io.gfile.exists(path):
        return False
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f)["config"]
    progress_lib.check_same_run(saved, config.to_dict(), workdir)
    return True


def learning_rates(config) -> tuple[float, ...]:
    """config.learning_rates checked, or (optimizer.learning_rate,) when it is empty."""
    rates = tuple(float(r) for r in config.learning_rates)
    if not rates:
        return (float(config.optimizer.learning_rate),)
    if any(not r > 0 for r in rates) or len(set(rates)) != len(rates):
        raise ValueError(f"learning_rates={tuple(config.learning_rates)}: expected distinct "
                         "positive rates")
    return rates


def rate_dir(rate: float) -> str:
    """WORKDIR's folder for one rate of a sweep: lr_5e-05, lr_0.0001, ..."""
    return f"lr_{rate:g}"


def _train_seeds(run: Run, preemption, start: float) -> dict:
    """Every seed at the run's learning rate: results.json (summarize_seeds) in run.workdir,
    with the best seed's prediction files copied to run.workdir/predictions."""
    runs = []
    for seed in run.config.seeds:
        result = run_seed(run, int(seed), preemption)
        if result is None:
            logging.warning("stopped by SIGTERM during seed %d, saved: the same command "
                            "resumes it (finished seeds are kept)", seed)
            return {"preempted": True, "seed": int(seed), "finished_seeds": len(runs)}
        runs.append(result)
    results = summarize_seeds(run.task, runs)
    results["seconds"] = time.perf_counter() - start
    best_seed = results["seeds"][str(results["best"]["seed"])]
    results["predictions"] = _copy_predictions(best_seed["predictions"], run.workdir)
    _write_results(run.workdir, results)
    logging.info("%s best: %s", run.task.name, results["best"])
    return results


def _choose_learning_rate(run: Run, per_rate: dict, start: float) -> dict:
    """A sweep's results.json: the rate whose best run is best on dev (the BERT paper's choice
    among 5e-5, 4e-5, 3e-5 and 2e-5), with that rate's results at the top level as a single
    rate's run writes them, and every rate's best and median under `learning_rates`."""
    main = run.task.main_metric
    chosen = max(per_rate, key=lambda rate: _rank(per_rate[rate]["best"][main]))
    results = {**per_rate[chosen], "learning_rate": chosen,
               "best": {**per_rate[chosen]["best"], "learning_rate": chosen},
               "learning_rates": {f"{rate:g}": {"best": r["best"], "median": r["median"],
                                                "workdir": os.path.join(run.workdir,
                                                                        rate_dir(rate))}
                                  for rate, r in per_rate.items()},
               "seconds": time.perf_counter() - start}
    results["predictions"] = _copy_predictions(per_rate[chosen]["predictions"], run.workdir)
    _write_results(run.workdir, results)
    logging.info("%s: learning rate %g chosen, best: %s", run.task.name, chosen,
                 results["best"])
    return results


def _copy_predictions(files: dict, workdir: str) -> dict:
    """split -> the copy of its prediction file in WORKDIR/predictions."""
    copies = {}
    for split, path in files.items():
        target = os.path.join(workdir, "predictions", os.path.basename(path))
        if jax.process_index() == 0:
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(path, target, overwrite=True)
        copies[split] = target
    return copies


def _score_checkpoint(run: Run, start: float) -> dict:
    """train.num_epochs=0: the fine-tuned checkpoint's dev metrics and prediction files, as a
    results.json whose `best` is the checkpoint (epoch 0) and whose epochs are none."""
    params = initial_state(run, seed=0).params
    dev = evaluate(run, params)
    step = checkpoint.resolve(run.config.init_checkpoint)[1]
    results = {"task": run.task.name, "main_metric": run.task.main_metric, "epochs": [],
               "best": {"epoch": 0, "step": step, **dev},
               "checkpoint": run.config.init_checkpoint,
               "predictions": _write_predictions(run, params, run.workdir),
               "seconds": time.perf_counter() - start}
    _write_results(run.workdir, results)
    logging.info("%s scored %s: %s", run.task.name, run.config.init_checkpoint, dev)
    return results


def _write_results(workdir: str, results: dict) -> None:
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(_finite_or_null(results), f, indent=2)


def _finite_or_null(tree):
    """NaN and infinities as null: results.json is for any JSON reader, and strict ones (a
    browser's, jq) refuse Python's bare NaN."""
    if isinstance(tree, dict):
        return {k: _finite_or_null(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_finite_or_null(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree
