"""The on-disk checkpoint layout (Orbax), shared by pre-training, fine-tuning, conversion and inference.

A checkpoint root (`WORKDIR/checkpoints`, or a converter's output folder) holds one folder per
step; each step holds the Orbax items:
  params     the model parameters (StandardSave)
  opt_state  optimizer state (training only)
  data       the data iterator states, one JSON file per process (training only)
  loss_scale the dynamic loss scale and its counter (training with float16 compute only)
  meta       JSON: step, model config, run config, and the tokenizer's files (base64), so the
             checkpoint describes itself: inference and fine-tuning need only its path.
Orbax writes each step to a temporary folder and renames it when complete (on gs://, in place,
with a commit_success.txt written last), so a killed save never spoils an earlier checkpoint
nor passes for a finished one.
"""

import base64
import dataclasses
import json
import os
import re
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from absl import logging
from etils import epath

from bert_jax.data import tokenization
from bert_jax.model.config import ModelConfig
from bert_jax.train.state import TrainState

PARAMS, OPT_STATE, DATA, META = "params", "opt_state", "data", "meta"
LOSS_SCALE = "loss_scale"
# What a BERT encoder holds; a converted encoder-only checkpoint has these at the top level.
ENCODER_KEYS = ("embeddings", "encoder", "pooler")


class PerProcessJsonHandler(ocp.handlers.JsonCheckpointHandler):
    """Every process writes its own `process_<i>-of-<n>.json` into the item folder.

    Orbax's JsonSave writes from the primary host only, which would keep host 0's data iterator
    and drop the others'. The files land in the step's temporary folder like every other item,
    so the step's atomic rename covers them too. Restore reads all files: a run on another
    number of processes can tell that the states do not apply to it.
    """

    async def _save_fn(self, x, directory):
        (directory / own_data_file()).write_text(json.dumps(x))

    def restore(self, directory, item=None, args=None) -> dict:
        """{"process_count": n, "states": [state of process 0, ..., process n-1]}."""
        del item, args
        found = {}
        for path in directory.iterdir():
            match = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", path.name)
            if match:
                found[int(match.group(1))] = (int(match.group(2)), json.loads(path.read_text()))
        if not found and (directory / "metadata").exists():  # written by JsonSave: one host
            legacy = json.loads((directory / "metadata").read_text())
            return {"process_count": len(legacy), "states": [legacy[f"process_{i}"]
                                                              for i in range(len(legacy))]}
        counts = {count for count, _ in found.values()}
        if len(counts) != 1 or sorted(found) != list(range(next(iter(counts)))):
            raise ValueError(f"data states in {directory} are incomplete: found processes "
                             f"{sorted(found)} of {sorted(counts)}")
        return {"process_count": counts.pop(), "states": [found[i][1] for i in sorted(found)]}


def own_data_file() -> str:
    """The name of this process's file in a step's data item."""
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.checkpoint_args.register_with_handler(PerProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class PerProcessJsonSave(ocp.checkpoint_args.CheckpointArgs):
    item: dict  # this process's state


@ocp.checkpoint_args.register_with_handler(PerProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class PerProcessJsonRestore(ocp.checkpoint_args.CheckpointArgs):
    pass


@dataclasses.dataclass
class LoadedModel:
    """What a checkpoint path gives: enough to run or fine-tune the model with no other input."""

    model_config: ModelConfig
    params: dict
    tokenizer: tokenization.Tokenizer
    meta: dict
    step: int


def tokenizer_to_json(tokenizer: tokenization.Tokenizer) -> dict:
    """The tokenizer's saved files, base64-encoded, to travel inside the checkpoint's metadata."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        files = {}
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                files[name] = base64.b64encode(f.read()).decode("ascii")
    return {"files": files}


def tokenizer_from_json(entry: dict) -> tokenization.Tokenizer:
    # Tokenizers read their files into memory when built, so the folder can go right after:
    # loading checkpoints in a long-lived process (a notebook, a sweep) leaves nothing in /tmp.
    with tempfile.TemporaryDirectory(prefix="bert_jax_tokenizer_") as directory:
        for name, encoded in entry["files"].items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(base64.b64decode(encoded))
        return tokenization.load_tokenizer_dir(directory)


def make_meta(step: int, model_config: ModelConfig, tokenizer, run_config: dict | None = None,
              **extra) -> dict:
    return {
        "step": int(step),
        "model_config": model_config.to_dict(),
        "run_config": run_config or {},
        "tokenizer": tokenizer_to_json(tokenizer),
        **extra,
    }


def _step_dirs(root: str) -> list[int]:
    """The committed steps under `root`. On a local disk Orbax writes a step under a temporary
    name and renames it when done; on gs:// it writes in place and adds commit_success.txt
    last, so there a numbered folder alone may be a save cut short."""
    if not tf.io.gfile.isdir(root):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(root)]
    return sorted(int(name) for name in names if name.isdigit()
                  and ocp.step.is_path_finalized(epath.Path(root) / name))


def has_steps(root: str) -> bool:
    """Whether the checkpoint root holds a committed step (see _step_dirs)."""
    return bool(_step_dirs(absolute(root)))


def train_checkpoints_root(workdir: str) -> str:
    """Where a training run in `workdir` keeps its checkpoints."""
    return os.path.join(absolute(workdir), "checkpoints")


def absolute(path: str) -> str:
    """Local paths made absolute (Orbax's tensorstore refuses relative ones); URLs as given."""
    return path if "://" in path else os.path.abspath(path)


def resolve(path: str) -> tuple[str, int]:
    """A workdir, a checkpoint root or a step folder -> (checkpoint root, step)."""
    path = absolute(path).rstrip("/")
    if tf.io.gfile.isdir(os.path.join(path, META)):
        root, name = os.path.split(path)
        if name.isdigit():
            return root, int(name)
    for root in (path, os.path.join(path, "checkpoints")):
        steps = _step_dirs(root)
        if steps:
            return root, steps[-1]
    # A fine-tuning workdir keeps a best checkpoint per seed (and learning rate), a level down.
    seeds = sorted(name.rstrip("/") for pattern in ("seed_*", "lr_*/seed_*")
                   for name in tf.io.gfile.glob(os.path.join(path, pattern))
                   if _step_dirs(os.path.join(name.rstrip("/"), "checkpoints")))
    hint = (f"; it is a fine-tuning workdir: give one of its seeds, "
            f"{', '.join(seeds[:4])}{', ...' if len(seeds) > 4 else ''}" if seeds else "")
    raise FileNotFoundError(
        f"no checkpoint found at {path}: expected a step folder holding '{META}/', a checkpoint "
        f"root with numbered step folders, or a workdir with 'checkpoints/'{hint}"
    )


def _step_item(root: str, step: int, item: str) -> epath.Path:
    """One item's folder in a committed step (see resolve). Read through its handler, not a
    CheckpointManager: a manager warns about every item of the step it was not told of."""
    return epath.Path(root) / str(step) / item


def save_model(root: str, step: int, params, meta: dict) -> str:
    """Writes params + metadata as one step of a checkpoint root (what the converter makes)."""
    root = absolute(root)
    with ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False)) as manager:
        saved = manager.save(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params), META: ocp.args.JsonSave(meta)}))
        if not saved:  # Orbax skips, returning False, a step not after the root's latest one
            raise FileExistsError(
                f"checkpoint root {root} already holds step {manager.latest_step()}: step "
                f"{step} was not written (Orbax writes only steps after the latest); save into "
                "a new folder or remove it")
    return os.path.join(root, str(step))


def load_meta(path: str) -> tuple[str, int, dict]:
    """(checkpoint root, step, metadata) of the checkpoint at `path`, without its arrays."""
    root, step = resolve(path)
    item = _step_item(root, step, META)
    if not item.exists():
        raise ValueError(f"checkpoint {root}/{step} has no '{META}/': not written by bert_jax "
                         "(pretrain, finetune, convert)")
    meta = ocp.JsonCheckpointHandler().restore(item, args=ocp.args.JsonRestore())
    if "tokenizer" not in meta:  # checked before the params: they are useless without it
        raise ValueError(f"checkpoint {root}/{step} has no tokenizer in its metadata: "
                         "write checkpoints with bert_jax (pretrain, finetune, convert), "
                         "which store the tokenizer with the weights")
    return root, step, meta


def load_model(path: str) -> LoadedModel:
    """Params (as host numpy arrays), model config and tokenizer of the checkpoint at `path`.

    Every process reads the whole of every array into host memory. Restored without a target,
    Orbax would place each array by the sharding it was saved with, which names devices of the
    writing run: on another host (multi-process fine-tuning, a second phase) those are not
    addressable and the restore fails.
    """
    root, step, meta = load_meta(path)
    item = _step_item(root, step, PARAMS)
    handler = ocp.PyTreeCheckpointHandler()
    try:
        as_numpy = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), handler.metadata(item).tree)
        params = handler.restore(item, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    finally:
        handler.close()
    return LoadedModel(
        model_config=ModelConfig.from_dict(meta["model_config"]),
        params=params,
        tokenizer=tokenizer_from_json(meta["tokenizer"]),
        meta=meta,
        step=step,
    )


def _loss_scale_arrays(loss_scale) -> dict:
    """The loss scale's arrays (or their abstract shapes) as the item Orbax saves."""
    return {"scale": loss_scale.scale, "good_steps": loss_scale.good_steps}


class TrainCheckpointer:
    """Periodic async saves of a training run and automatic resume from the latest step."""

    def __init__(self, workdir: str, keep: int, *, async_save: bool = True,
                 root: str | None = None):
        """Checkpoints in `root`, by default WORKDIR/checkpoints."""
        self.root = absolute(root) if root else train_checkpoints_root(workdir)
        self._manager = ocp.CheckpointManager(
            self.root,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
            # Handlers named up front: a fresh process can read item metadata before any save.
            item_handlers={PARAMS: ocp.StandardCheckpointHandler(),
                           OPT_STATE: ocp.StandardCheckpointHandler(),
                           DATA: PerProcessJsonHandler(), META: ocp.JsonCheckpointHandler(),
                           LOSS_SCALE: ocp.StandardCheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict, meta: dict) -> None:
        """Starts an async save; the arrays are copied to host memory before this returns.

        `data_state` is this process's iterator state; every process saves its own.
        """
        items = {
            PARAMS: ocp.args.StandardSave(state.params),
            OPT_STATE: ocp.args.StandardSave(state.opt_state),
            DATA: PerProcessJsonSave(data_state),
            META: ocp.args.JsonSave(meta),
        }
        if state.loss_scale is not None:
            items[LOSS_SCALE] = ocp.args.StandardSave(_loss_scale_arrays(state.loss_scale))
        self._manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, step: int, abstract_state: TrainState
                ) -> tuple[TrainState, dict | None, dict]:
        """(state, data_state, meta) restored onto the shardings of abstract_state.

        data_state is this process's iterator state, or None when the checkpoint was written by
        another number of processes (each host's state belongs to that host's part of the data).
        A run with a loss scale (float16 compute) takes the checkpoint's, or starts its scale
        afresh when the checkpoint was written without one.

        Checks every parameter's stored shape first, so a workdir of another model fails with
        the parameter named instead of a deep Orbax error.
        """
        stored = self._manager.item_metadata(step)
        where = f"{self.root}/{step}"
        check_same_shapes(stored[PARAMS], abstract_state.params, where=where)
        if _shapes(stored[OPT_STATE]) != _shapes(abstract_state.opt_state):
            written_with = self._manager.restore(step, args=ocp.args.Composite(**{
                META: ocp.args.JsonRestore()}))[META].get("run_config", {}).get("optimizer")
            raise ValueError(
                f"checkpoint {where} holds the state of another optimizer than this run's "
                f"(written with optimizer={written_with}): resume with the optimizer settings "
                f"it was written with, or start a new workdir (init_checkpoint=PATH takes its "
                f"weights alone)")
        items = {
            PARAMS: ocp.args.StandardRestore(abstract_state.params),
            OPT_STATE: ocp.args.StandardRestore(abstract_state.opt_state),
            DATA: PerProcessJsonRestore(),
            META: ocp.args.JsonRestore(),
        }
        abstract_scale = abstract_state.loss_scale
        scale_saved = tf.io.gfile.isdir(os.path.join(self.root, str(step), LOSS_SCALE))
        if abstract_scale is not None and scale_saved:
            items[LOSS_SCALE] = ocp.args.StandardRestore(_loss_scale_arrays(abstract_scale))
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        data = restored[DATA]
        data_state = (data["states"][jax.process_index()]
                      if data["process_count"] == jax.process_count() else None)
        loss_scale = None
        if abstract_scale is not None:
            if scale_saved:
                loss_scale = abstract_scale.replace(**restored[LOSS_SCALE])
            else:
                logging.warning("checkpoint %s/%d holds no loss scale (written without float16 "
                                "compute): the scale starts at %g", self.root, step,
                                abstract_scale.initial)
                loss_scale = jax.device_put(abstract_scale.restart(), jax.tree_util.tree_map(
                    lambda leaf: leaf.sharding, abstract_scale))
        meta = restored[META]
        step_array = jax.device_put(np.int32(meta["step"]), abstract_state.step.sharding)
        state = TrainState(step=step_array, params=restored[PARAMS],
                           opt_state=restored[OPT_STATE], loss_scale=loss_scale)
        return state, data_state, meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def replace_data(self, step: int, data_state: dict) -> None:
        """Rewrites this process's data state in the committed `step` (after any save in
        flight has finished): written beside it, then renamed over it, so the step stays whole
        whenever the process stops."""
        self.wait()
        path = os.path.join(self.root, str(step), DATA, own_data_file())
        with tf.io.gfile.GFile(path + ".tmp", "w") as f:
            f.write(json.dumps(data_state))
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)

    def close(self) -> None:
        self._manager.close()


def flat_names(tree) -> dict:
    """{"bert/encoder/layer_0/...": leaf}: a tree's leaves by slash-joined path. Dict keys,
    NamedTuple fields and sequence indices name alike, so a live optimizer state and Orbax's
    metadata of one (which stores a NamedTuple's fields as dict keys) give the same names."""
    def name(key):
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(name, path)): leaf for path, leaf in leaves}


def _shapes(tree) -> dict:
    return {name: tuple(leaf.shape) for name, leaf in flat_names(tree).items()}


def check_same_shapes(stored, expected, where: str) -> None:
    """Raises naming the first parameter whose stored shape differs, or that is missing/extra."""
    have, want = _shapes(stored), _shapes(expected)
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            raise ValueError(
                f"checkpoint {where} does not fit this model: parameter {name} is "
                f"{have.get(name, 'missing')} in the checkpoint but {want.get(name, 'absent')} "
                f"in the model config"
            )


def check_tokenizer_fits(tokenizer: tokenization.Tokenizer, model_config: ModelConfig,
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
