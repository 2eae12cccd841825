"""Original Google BERT checkpoints (TF1: bert_model.ckpt.*, bert_config.json, vocab.txt).

Every variable of the original BertForPreTraining has one Hugging Face tensor name, so reading
renames the variables to those (and transposes kernels: [in, out] in TF, [out, in] in torch), and
the Hugging Face rules in hf.py take it from there. bert_config.json has the same keys as a
transformers BertConfig. Optimizer slots (`.../adam_m`, `.../adam_v`) and `global_step` are
skipped; any other variable the model has no place for is an error, as is a missing one.
Writing (write_tf1_folder) is the inverse: the variables the original code's
`tf.train.init_from_checkpoint` reads, under their names, in one V2 checkpoint.
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


def tf1_config(config: ModelConfig) -> dict:
    """bert_config.json: the original BertConfig's keys. Its code fixes what ours may vary."""
    if config.layer_norm_eps != 1e-12:
        raise ValueError(f"layer_norm_eps={config.layer_norm_eps}: the original BERT code fixes "
                         "LayerNorm's epsilon at 1e-12; export this model with --to=hf")
    hf_config = hf.config_to_hf(config)
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
            "initializer_range")
    return {key: hf_config[key] for key in keys}


def write_tf1_folder(folder: str, config: ModelConfig, tensors: dict, vocab: list[str]) -> str:
    """Hugging Face-named tensors (hf.params_to_hf) -> FOLDER/bert_model.ckpt.{index,data-*},
    bert_config.json and vocab.txt (one token per line, id order), as Google released BERT."""
    bert_config = tf1_config(config)  # refuses before anything is written
    tf.io.gfile.makedirs(folder)
    variables = {tf_name(name): (value.T if tf_name(name).endswith("/kernel") else value)
                 for name, value in tensors.items()
                 if not name.startswith("cls.predictions.decoder")}  # tied: not variables
    # SaveV2 writes exactly these names; tf.train.Checkpoint would add object paths.
    tf.raw_ops.SaveV2(prefix=os.path.join(folder, _PREFERRED_CHECKPOINT),
                      tensor_names=list(variables), shape_and_slices=[""] * len(variables),
                      tensors=[np.ascontiguousarray(v, np.float32) for v in variables.values()])
    with tf.io.gfile.GFile(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(bert_config, f, indent=2)
    with tf.io.gfile.GFile(os.path.join(folder, VOCAB_FILE), "w") as f:
        f.write("".join(token + "\n" for token in vocab))
    return folder


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
    return hf.config_from_hf(hf.read_config_file(path))


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
