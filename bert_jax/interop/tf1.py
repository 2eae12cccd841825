"""Original Google BERT checkpoints (TF1: bert_model.ckpt.*, bert_config.json, vocab.txt).

Every variable of the original BertForPreTraining has one Hugging Face tensor name, so reading
renames the variables to those (and transposes kernels: [in, out] in TF, [out, in] in torch), and
the Hugging Face rules in hf.py take it from there. bert_config.json has the same keys as a
transformers BertConfig. Optimizer slots (`.../adam_m`, `.../adam_v`) and `global_step` are
skipped; any other variable the model has no place for is an error, as is a missing one.
"""

import json
import os
import re

import numpy as np
import tensorflow as tf

from bert_jax.interop import hf
from bert_jax.model.config import ModelConfig

CONFIG_FILE = "bert_config.json"
VOCAB_FILE = "vocab.txt"
_PREFERRED_CHECKPOINT = "bert_model.ckpt"
_SKIPPED = re.compile(r"(^|/)(adam_m|adam_v|global_step)$")
# Head variables whose names do not follow the scope/dense/kernel pattern.
_HEAD_NAMES = {
    "cls.predictions.bias": "cls/predictions/output_bias",
    "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",  # [2, H], as torch's
    "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
}
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def tf_name(hf_name: str) -> str:
    """The original TF variable name of a Hugging Face BERT tensor name."""
    if hf_name in _HEAD_NAMES:
        return _HEAD_NAMES[hf_name]
    *scope, leaf = hf_name.replace(".layer.", ".layer_").split(".")  # encoder.layer.3 -> layer_3
    if scope[-1] in _EMBEDDINGS:
        return "/".join(scope)  # a bare variable, no `weight`
    if scope[-1] == "LayerNorm":
        leaf = {"weight": "gamma", "bias": "beta"}[leaf]
    elif leaf == "weight":
        leaf = "kernel"
    return "/".join([*scope, leaf])


def lowercase_from_name(folder: str) -> bool:
    """Whether the vocab is uncased, from Google's folder names: `cased_L-12_H-768_A-12` and
    `multi_cased_...` keep case; `uncased_...`, and any name that says neither, lowercase."""
    name = os.path.basename(os.path.normpath(folder)).lower()
    return "uncased" in name or "cased" not in name


def checkpoint_prefix(folder: str) -> str:
    """The checkpoint prefix in `folder`: its one `*.index` file, or bert_model.ckpt among many."""
    indexes = sorted(tf.io.gfile.glob(os.path.join(folder, "*.index")))
    prefixes = [path[: -len(".index")] for path in indexes]
    preferred = os.path.join(folder, _PREFERRED_CHECKPOINT)
    if preferred in prefixes:
        return preferred
    if len(prefixes) == 1:
        return prefixes[0]
    if not prefixes:
        raise FileNotFoundError(f"{folder} holds no TF checkpoint (expected "
                                f"{_PREFERRED_CHECKPOINT}.index and .data-* files)")
    raise ValueError(f"{folder} holds several checkpoints "
                     f"{[os.path.basename(p) for p in prefixes]}; keep one")


def read_config(folder: str) -> ModelConfig:
    path = os.path.join(folder, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found (an original BERT folder needs it)")
    with tf.io.gfile.GFile(path, "r") as f:
        return hf.config_from_hf(json.load(f))


def read_tf1_folder(folder: str) -> tuple[ModelConfig, dict]:
    """bert_config.json + the checkpoint of an original BERT folder -> (ModelConfig, tensors).

    The tensors carry Hugging Face names and layouts, ready for hf.params_from_hf; the
    pre-training heads are there when the checkpoint has `cls/` variables.
    """
    config = read_config(folder)
    prefix = checkpoint_prefix(folder)
    reader = tf.train.load_checkpoint(prefix)
    stored = {name for name in reader.get_variable_to_shape_map() if not _SKIPPED.search(name)}
    with_heads = any(name.startswith("cls/") for name in stored)
    rules = hf.pretraining_rules(config) if with_heads else hf.encoder_rules(config, "bert.")
    wanted = {tf_name(rule.hf_name): rule.hf_name for rule in rules}
    unexpected = sorted(stored - wanted.keys())
    missing = sorted(wanted.keys() - stored)
    if unexpected or missing:
        problems = [f"{len(names)} {kind} variable(s) {names[:10]}"
                    for kind, names in (("unexpected", unexpected), ("missing", missing)) if names]
        model = "BertForPreTraining" if with_heads else "a BERT encoder"
        raise ValueError(f"checkpoint {prefix} does not fit {model} with {config.num_layers} "
                         f"layers ({CONFIG_FILE}): {'; '.join(problems)}")
    tensors = {}
    for name, target in wanted.items():
        value = reader.get_tensor(name)
        tensors[target] = np.ascontiguousarray(value.T) if name.endswith("/kernel") else value
    return config, tensors
