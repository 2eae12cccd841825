"""Everything a run needs before its first step: workdir, tokenizer, model, mesh, shardings."""

import dataclasses
import functools
import json
import os
import uuid

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging

from bert_jax.data import pipeline, tokenization
from bert_jax.model import BertForPreTraining
from bert_jax.model.config import ModelConfig, model_config_from_section
from bert_jax.parallel import mesh as mesh_lib
from bert_jax.parallel import rules as rules_lib
from bert_jax.train import checkpoint
from bert_jax.train import loss_scale as loss_scale_lib
from bert_jax.train import optim
from bert_jax.train.state import TrainState


def check_workdir_writable(workdir: str) -> None:
    """Fails before any training if the workdir cannot be created or written."""
    probe = os.path.join(workdir, f".write_probe_{uuid.uuid4().hex}")
    try:
        tf.io.gfile.makedirs(workdir)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise PermissionError(f"workdir {workdir} is not writable: {e}") from e


def load_or_train_tokenizer(data_config, workdir: str) -> tokenization.Tokenizer:
    """data.tokenizer as a spec, or `train`: a SentencePiece vocabulary made once per workdir."""
    if data_config.tokenizer != "train":
        if data_config.tokenizer_lowercase:  # would be silently ignored: the spec fixes the case
            raise ValueError(
                "data.tokenizer_lowercase applies only to data.tokenizer=train; "
                f"{data_config.tokenizer!r} has its own casing (a wordpiece vocabulary takes "
                f"':cased' or ':uncased', a SentencePiece model keeps the rule it was trained "
                f"with)")
        try:
            return tokenization.load_tokenizer(data_config.tokenizer)
        except (OSError, ValueError) as e:  # the spec's file is named; the key too, here
            raise type(e)(f"data.tokenizer={data_config.tokenizer!r}: {e}") from e
    directory = os.path.join(workdir, "tokenizer")
    settings = {"source": data_config.source, "vocab_size": data_config.tokenizer_vocab_size,
                "lowercase": bool(data_config.tokenizer_lowercase)}
    complete = os.path.join(directory, tokenization.METADATA_FILE)
    if tf.io.gfile.exists(complete):
        if _trained_tokenizer_fits(directory, settings, workdir):
            return tokenization.load_tokenizer_dir(directory)
        tf.io.gfile.remove(complete)  # incomplete until the new one is saved
    if jax.process_count() > 1:
        raise ValueError("data.tokenizer='train' is single-host only: train one with "
                         "`python -m bert_jax.tokenizer train` and pass its path")
    logging.info("training a %d-piece %s SentencePiece vocabulary on %s",
                 data_config.tokenizer_vocab_size,
                 "uncased" if data_config.tokenizer_lowercase else "cased", data_config.source)
    prefix = os.path.join(workdir, "sentencepiece")
    try:
        tokenizer = tokenization.train_sentencepiece_from_source(
            data_config.source, data_config.tokenizer_vocab_size, prefix,
            lowercase=data_config.tokenizer_lowercase)
    except ValueError as e:  # e.g. no text at all: say which source
        raise ValueError(f"cannot train a tokenizer on data.source {data_config.source!r}: "
                         f"{e}") from e
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, TRAINED_WITH_FILE), "w") as f:
        json.dump(settings, f)  # before the tokenizer's metadata, which marks it complete
    tokenizer.save(directory)
    return tokenization.load_tokenizer_dir(directory)


# Beside a tokenizer trained for a workdir: the settings it was trained with.
TRAINED_WITH_FILE = "trained_with.json"


def _trained_tokenizer_fits(directory: str, settings: dict, workdir: str) -> bool:
    """Whether the workdir's trained tokenizer is the one `settings` ask for. One trained
    under other settings is trained again while the workdir holds no checkpoint (an earlier
    attempt failed before its first save); a run that has saved keeps its vocabulary, and a
    vocab_size or lowercase that differs from it is refused. Another data.source alone is
    fine then: training goes on, on other text, with the same vocabulary."""
    path = os.path.join(directory, TRAINED_WITH_FILE)
    if not tf.io.gfile.exists(path):  # trained before the settings were kept
        return True
    with tf.io.gfile.GFile(path) as f:
        trained = json.load(f)
    if trained == settings:
        return True
    if not checkpoint.has_steps(checkpoint.train_checkpoints_root(workdir)):
        logging.info("%s was trained with %s, not %s, by a run that saved no checkpoint: "
                     "training another", directory, trained, settings)
        return False
    changed = {key: (trained[key], settings[key]) for key in ("vocab_size", "lowercase")
               if trained[key] != settings[key]}
    if changed:
        names = {"vocab_size": "tokenizer_vocab_size", "lowercase": "tokenizer_lowercase"}
        details = "; ".join(f"data.{names[key]}: {old!r} then, {new!r} now"
                            for key, (old, new) in changed.items())
        raise ValueError(f"{directory} holds the vocabulary this workdir's checkpoints were "
                         f"trained with ({details}): resume with its settings, or start "
                         "another vocabulary in a new workdir")
    return True


def model_config_for(model_section, tokenizer) -> ModelConfig:
    """The model config; vocab_size defaults to the tokenizer's and may not be smaller."""
    config = model_config_from_section(model_section)
    if model_section.vocab_size is None:
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size} tokens")
    return config


@dataclasses.dataclass
class RunSetup:
    model_config: ModelConfig
    pipeline_config: pipeline.PipelineConfig
    model: nn.Module
    mesh: jax.sharding.Mesh
    rules: tuple
    optimizer: object
    schedule: object
    abstract_state: TrainState  # unboxed ShapeDtypeStructs
    state_shardings: TrainState
    init_state: object  # jitted rng -> TrainState, created sharded

    @property
    def use_nsp(self) -> bool:
        return self.pipeline_config.mode == "nsp"


def check_training_dtypes(model_config: ModelConfig) -> None:
    """Refuses float16 parameters for training: Adam's updates (lr x ~1e-3 relative) vanish
    below float16's precision, and its moments underflow. float16 compute (model.dtype) trains
    with float32 parameters and a dynamic loss scale (train/loss_scale.py)."""
    if jnp.dtype(model_config.param_dtype) == jnp.float16:
        raise ValueError(
            "model.param_dtype=float16: training keeps its parameters in float32 (updates "
            "smaller than float16's precision would be lost); for float16 compute set "
            "model.dtype=float16 with model.param_dtype=float32, which trains with a dynamic "
            "loss scale")


def check_step_intervals(intervals: dict) -> None:
    """Every {config key: value} interval is a whole number of steps, at least 1 (checked
    before anything compiles: a 0 would otherwise stop the run after its first step)."""
    for key, value in intervals.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r}: expected a number of steps >= 1 (at most "
                             "train.num_steps: the run also evaluates and saves at its end)")


def check_counts(counts: dict) -> None:
    """Every {config key: value} is a whole number >= 1 (batch sizes, micro-batches,
    evaluation batches, checkpoints kept): checked before anything compiles or is read."""
    for key, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r}: expected a whole number >= 1")


def check_seeds(key: str, seeds) -> None:
    """Random seeds are >= 0: numpy's generators (data order, masks) refuse negative ones."""
    for seed in seeds:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{key}: seed {seed!r} is not an integer >= 0")
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:  # one run each: a repeat would be read back as the first's result
        raise ValueError(f"{key}={tuple(seeds)} repeats seed(s) {repeated}: give each once")


def check_batch_divides(batch_size: int, grad_accum_steps: int, mesh) -> None:
    data_parallel = mesh_lib.data_parallel_size(mesh)
    if batch_size % (grad_accum_steps * data_parallel) or batch_size % jax.process_count():
        raise ValueError(
            f"train.batch_size={batch_size} must divide into grad_accum_steps={grad_accum_steps} "
            f"micro-batches over {data_parallel} data-parallel devices and "
            f"{jax.process_count()} processes"
        )
    mesh_lib.check_processes_hold_their_own_rows(mesh, batch_size // grad_accum_steps)


def boxed_init_fn(model, optimizer, pipeline_config: pipeline.PipelineConfig,
                  initial_loss_scale: loss_scale_lib.DynamicLossScale | None = None):
    """rng -> TrainState whose leaves carry logical names (nn.LogicallyPartitioned)."""
    length, predictions = pipeline_config.max_seq_length, pipeline_config.num_predictions

    def init_boxed(rng):
        ids = jax.numpy.zeros((1, length), jax.numpy.int32)
        positions = jax.numpy.zeros((1, predictions), jax.numpy.int32)
        params = model.init(rng, ids, masked_positions=positions)["params"]
        return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                          opt_state=optimizer.init(params), loss_scale=initial_loss_scale)

    return init_boxed


def abstract_state(boxed, shardings):
    """Unboxed ShapeDtypeStructs of an eval_shape'd state, each with its sharding: what Orbax
    restores onto."""
    return jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.unbox(boxed), shardings)


def build(config, tokenizer, model_config: ModelConfig | None = None) -> RunSetup:
    """Model, optimizer, mesh and the sharded initialiser (abstract init, then sharded init).

    `model_config` when another checkpoint fixes it (warm_start), else from config.model.
    """
    model_config = model_config or model_config_for(config.model, tokenizer)
    check_training_dtypes(model_config)
    pipeline_config = pipeline.PipelineConfig.from_config(config.data)
    if pipeline_config.max_seq_length > model_config.max_position_embeddings:
        raise ValueError(f"data.max_seq_length={pipeline_config.max_seq_length} exceeds "
                         f"model max_position_embeddings={model_config.max_position_embeddings}")
    if pipeline_config.mode == "nsp" and model_config.type_vocab_size < 2:
        # Inside jit, segment B's id past the table would read zeros, silently.
        raise ValueError(f"data.mode='nsp' pairs two segments, but model.type_vocab_size="
                         f"{model_config.type_vocab_size}; expected 2 (or data.mode="
                         "'full_sentences', one segment)")
    mesh = mesh_lib.make_mesh(config.mesh)
    check_batch_divides(config.train.batch_size, config.train.grad_accum_steps, mesh)
    rules = rules_lib.logical_axis_rules(config.mesh.rules)
    model = BertForPreTraining(model_config)
    optimizer, schedule = optim.make_optimizer(config.optimizer, config.train.num_steps)

    init_boxed = boxed_init_fn(model, optimizer, pipeline_config,
                               loss_scale_lib.for_training(model_config, config.train))
    boxed = jax.eval_shape(init_boxed, jax.random.key(0))
    shardings = mesh_lib.logical_shardings(boxed, mesh, rules)
    abstract = abstract_state(boxed, shardings)
    mesh_lib.check_shards_divide(
        [(jax.tree_util.keystr(path), leaf.shape, leaf.sharding.spec)
         for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]],
        dict(mesh.shape), config.mesh.rules, model_config.vocab_size)
    init_state = jax.jit(lambda rng: nn.unbox(init_boxed(rng)), out_shardings=shardings)
    return RunSetup(model_config, pipeline_config, model, mesh, rules, optimizer, schedule,
                    abstract, shardings, init_state)


def parameter_counts(abstract_params) -> dict:
    counts = {name: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(sub)))
              for name, sub in abstract_params.items()}
    counts["total"] = sum(counts.values())
    return counts


def write_run_description(workdir: str, config, setup: RunSetup) -> None:
    """config.json and parameter counts, once the run has started (process 0 only)."""
    if jax.process_index() != 0:
        return
    description = {
        "config": config.to_dict(),
        "model_config": setup.model_config.to_dict(),
        "parameter_counts": parameter_counts(setup.abstract_state.params),
        "mesh": dict(setup.mesh.shape),
    }
    path = os.path.join(workdir, "config.json")
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:  # whole, or the previous one
        json.dump(description, f, indent=2, default=str)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def with_mesh_and_rules(setup: RunSetup, fn):
    """Runs fn under the mesh and logical rules, so activation constraints resolve at trace."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
            return fn(*args, **kwargs)

    return wrapped
