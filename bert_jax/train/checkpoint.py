"""The on-disk checkpoint layout (Orbax), shared by pre-training, fine-tuning, conversion and inference.

A checkpoint root (`WORKDIR/checkpoints`, or a converter's output folder) holds one folder per
step; each step holds the Orbax items:
  params     the model parameters (StandardSave)
  opt_state  optimizer state (training only)
  data       the per-host data iterator states (training only)
  meta       JSON: step, model config, run config, and the tokenizer's files (base64), so the
             checkpoint describes itself: inference and fine-tuning need only its path.
Orbax writes each step to a temporary folder and renames it when complete, so a killed save
never spoils an earlier checkpoint.
"""

import base64
import dataclasses
import os
import tempfile

import orbax.checkpoint as ocp
import tensorflow as tf

from bert_jax.data import tokenization
from bert_jax.model.config import ModelConfig

PARAMS, OPT_STATE, DATA, META = "params", "opt_state", "data", "meta"


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
    directory = tempfile.mkdtemp(prefix="bert_jax_tokenizer_")
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
    if not tf.io.gfile.isdir(root):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(root)
                  if name.rstrip("/").isdigit())


def resolve(path: str) -> tuple[str, int]:
    """A workdir, a checkpoint root or a step folder -> (checkpoint root, step)."""
    path = path.rstrip("/")
    if tf.io.gfile.isdir(os.path.join(path, META)):
        root, name = os.path.split(path)
        if name.isdigit():
            return root, int(name)
    for root in (path, os.path.join(path, "checkpoints")):
        steps = _step_dirs(root)
        if steps:
            return root, steps[-1]
    raise FileNotFoundError(
        f"no checkpoint found at {path}: expected a step folder holding '{META}/', a checkpoint "
        f"root with numbered step folders, or a workdir with 'checkpoints/'"
    )


def save_model(root: str, step: int, params, meta: dict) -> str:
    """Writes params + metadata as one step of a checkpoint root (what the converter makes)."""
    with ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False)) as manager:
        manager.save(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave(params), META: ocp.args.JsonSave(meta)}))
    return os.path.join(root, str(step))


def load_model(path: str) -> LoadedModel:
    """Params (as host arrays), model config and tokenizer of the checkpoint at `path`."""
    root, step = resolve(path)
    with ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_names=(PARAMS, META)) as manager:
        meta = manager.restore(step, args=ocp.args.Composite(**{
            META: ocp.args.JsonRestore()}))[META]
        params = manager.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore()}))[PARAMS]
    if "tokenizer" not in meta:
        raise ValueError(f"checkpoint {root}/{step} has no tokenizer in its metadata")
    return LoadedModel(
        model_config=ModelConfig.from_dict(meta["model_config"]),
        params=params,
        tokenizer=tokenizer_from_json(meta["tokenizer"]),
        meta=meta,
        step=step,
    )
