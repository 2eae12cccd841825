"""Hugging Face BERT checkpoints (config.json + safetensors) <-> this package's parameter tree.

Tensor names are those transformers writes for BertModel (no prefix) and BertForPreTraining
(`bert.` prefix, `cls.` heads). Linear weights are [out, in] there and [in, ..., out] here.
"""

import dataclasses
import json
import os
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from bert_jax.model.config import ModelConfig

Params = dict


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One HF tensor and where it lives here; `to_ours`/`to_hf` reshape between the layouts."""

    hf_name: str
    path: tuple[str, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x):
    return x


def _linear(out_shape_ours):
    """torch Linear weight [out, in] -> kernel [in, *out_shape] and back."""

    def to_ours(w):
        return w.T.reshape((w.shape[1],) + tuple(out_shape_ours))

    def to_hf(k):
        return k.reshape(k.shape[0], -1).T

    return to_ours, to_hf


def _linear_from_heads(in_shape_ours):
    """Attention output weight [H, N*K] -> kernel [N, K, H] and back."""

    def to_ours(w):
        return w.T.reshape(tuple(in_shape_ours) + (w.shape[0],))

    def to_hf(k):
        return k.reshape(-1, k.shape[-1]).T

    return to_ours, to_hf


def _reshape(shape):
    return (lambda b: b.reshape(shape)), (lambda b: b.reshape(-1))


def _rule(hf_name, path, pair=(_same, _same)):
    return TensorRule(hf_name, tuple(path.split("/")), *pair)


def _layer_norm_rules(hf_prefix, path):
    return [_rule(f"{hf_prefix}.weight", f"{path}/scale"), _rule(f"{hf_prefix}.bias", f"{path}/bias")]


def dense_rules(hf_prefix, path, kernel_pair=None, bias_pair=(_same, _same)):
    kernel_pair = kernel_pair or _linear(())
    if kernel_pair == "plain":
        kernel_pair = (lambda w: w.T, lambda k: k.T)
    return [_rule(f"{hf_prefix}.weight", f"{path}/kernel", kernel_pair),
            _rule(f"{hf_prefix}.bias", f"{path}/bias", bias_pair)]


def encoder_rules(config: ModelConfig, hf_prefix: str = "", ours_prefix: str = "", *,
                  with_pooler: bool = True) -> list:
    """Rules for the embeddings, the unrolled layers and (with_pooler) the pooler."""
    n, k = config.num_heads, config.head_dim
    rules = [
        _rule(f"{hf_prefix}embeddings.word_embeddings.weight",
              f"{ours_prefix}embeddings/token_embed/embedding"),
        _rule(f"{hf_prefix}embeddings.position_embeddings.weight",
              f"{ours_prefix}embeddings/position_embed/embedding"),
        _rule(f"{hf_prefix}embeddings.token_type_embeddings.weight",
              f"{ours_prefix}embeddings/type_embed/embedding"),
        *_layer_norm_rules(f"{hf_prefix}embeddings.LayerNorm", f"{ours_prefix}embeddings/layer_norm"),
    ]
    if with_pooler:
        rules += dense_rules(f"{hf_prefix}pooler.dense", f"{ours_prefix}pooler/dense", "plain")
    for i in range(config.num_layers):
        hf = f"{hf_prefix}encoder.layer.{i}"
        ours = f"{ours_prefix}encoder/layer_{i}"
        for name in ("query", "key", "value"):
            rules += dense_rules(f"{hf}.attention.self.{name}", f"{ours}/attention/{name}",
                                 _linear((n, k)), _reshape((n, k)))
        rules += dense_rules(f"{hf}.attention.output.dense", f"{ours}/attention/out",
                             _linear_from_heads((n, k)))
        rules += _layer_norm_rules(f"{hf}.attention.output.LayerNorm", f"{ours}/attention_layer_norm")
        rules += dense_rules(f"{hf}.intermediate.dense", f"{ours}/intermediate", "plain")
        rules += dense_rules(f"{hf}.output.dense", f"{ours}/output", "plain")
        rules += _layer_norm_rules(f"{hf}.output.LayerNorm", f"{ours}/output_layer_norm")
    return rules


def pretraining_rules(config: ModelConfig, *, with_nsp: bool = True,
                      with_pooler: bool = True) -> list:
    """Rules for BertForPreTraining: encoder under `bert/`, plus the MLM and NSP heads; without
    NSP (and pooler), for BertForMaskedLM."""
    return encoder_rules(config, "bert.", "bert/", with_pooler=with_pooler) + [
        *dense_rules("cls.predictions.transform.dense", "mlm_head/transform", "plain"),
        *_layer_norm_rules("cls.predictions.transform.LayerNorm", "mlm_head/layer_norm"),
        _rule("cls.predictions.bias", "mlm_head/output_bias"),
        *(dense_rules("cls.seq_relationship", "nsp_head/dense", "plain") if with_nsp else []),
    ]


NSP_PREFIX, POOLER_PREFIX = "cls.seq_relationship.", "bert.pooler."


def zero_pooler(params: Params, config: ModelConfig) -> None:
    """Puts an all-zero pooler under params['bert'] for a model saved without one (transformers'
    BertForMaskedLM, QA and token classes): the encoder module computes a pooled output, and
    inference, fine-tuning and warm starts read all zeros as no pooler."""
    hidden = config.hidden_size
    params["bert"]["pooler"] = {"dense": {"kernel": np.zeros((hidden, hidden), np.float32),
                                          "bias": np.zeros((hidden,), np.float32)}}


def is_zero_pooler(params: Params) -> bool:
    """Whether the encoder params (a tree with 'pooler') hold zero_pooler's placeholder."""
    return "pooler" in params and not np.any(np.asarray(params["pooler"]["dense"]["kernel"]))


def _canonical_names(tensors: dict) -> dict:
    """Accepts the older gamma/beta LayerNorm names some checkpoints still carry."""
    renamed = {}
    for name, value in tensors.items():
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        renamed[name] = value
    return renamed


def _has_prefix(tensors: dict, prefix: str) -> bool:
    return any(name.startswith(prefix) for name in tensors)


def params_from_hf(tensors: dict, config: ModelConfig, *, with_heads: bool) -> Params:
    """HF tensors -> nested params (BertForPreTraining tree if with_heads, else BertEncoder).

    Raises a KeyError naming every missing tensor and a ValueError naming a mis-shaped one.
    """
    tensors = _canonical_names(tensors)
    if with_heads:
        if not _has_prefix(tensors, "cls."):
            raise KeyError(
                "checkpoint has no pre-training head tensors (cls.predictions.*, "
                "cls.seq_relationship.*): it holds an encoder only; load it without heads"
            )
        # BertForMaskedLM: the MLM head alone, and no pooler.
        with_nsp = _has_prefix(tensors, NSP_PREFIX)
        with_pooler = with_nsp or _has_prefix(tensors, POOLER_PREFIX)
        rules = pretraining_rules(config, with_nsp=with_nsp, with_pooler=with_pooler)
        params = params_by_rules(tensors, rules, expected_param_shapes(config, with_heads=True),
                                 config)
        if not with_nsp:
            logging.warning("the checkpoint has no NSP head (cls.seq_relationship.*, as "
                            "transformers' BertForMaskedLM): imported with its MLM head only%s",
                            "" if with_pooler else " and a zero pooler (it has none either)")
        if not with_pooler:
            zero_pooler(params, config)
        return params
    # An encoder can come from either a BertModel or a BertForPreTraining checkpoint.
    rules = encoder_rules(config, "bert." if _has_prefix(tensors, "bert.") else "")
    return params_by_rules(tensors, rules, expected_param_shapes(config, with_heads=False),
                           config)


# Tensors transformers saves that are no parameters of their own: the position ids buffer,
# and the MLM decoder, tied to the word embeddings and the output bias.
_NOT_PARAMETERS = ("embeddings.position_ids", "cls.predictions.decoder.weight",
                   "cls.predictions.decoder.bias")


def params_by_rules(tensors: dict, rules: list, expected_shapes: dict,
                    config: ModelConfig) -> Params:
    """HF tensors -> nested params, one rule each; every rule's tensor must be there, in the
    shape whose inverse image is the expected parameter shape (not merely the same size)."""
    tensors = _canonical_names(tensors)
    missing = [r.hf_name for r in rules if r.hf_name not in tensors]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensor(s): {missing[:10]}")
    left_out = sorted(name for name in set(tensors) - {r.hf_name for r in rules}
                      if not name.endswith(_NOT_PARAMETERS))
    if left_out:
        logging.warning("%d tensor(s) of the checkpoint have no place in this model and are "
                        "not imported: %s", len(left_out), left_out[:10])
    params: Params = {}
    for rule in rules:
        tensor = np.asarray(tensors[rule.hf_name], dtype=np.float32)
        expected = expected_shapes[rule.path]
        if tensor.shape != rule.to_hf(np.zeros(expected, np.float32)).shape:
            raise ValueError(
                f"tensor {rule.hf_name} has shape {tuple(tensor.shape)}, which does not fit "
                f"{'/'.join(rule.path)} of shape {expected} (config: {config})"
            )
        _set_path(params, rule.path, rule.to_ours(tensor))
    return params


def params_to_hf(params: Params, config: ModelConfig, *, with_heads: bool) -> dict:
    """Nested params -> HF tensors (names as transformers writes them), float32 numpy arrays."""
    if with_heads:  # a checkpoint imported from BertForMaskedLM has no NSP head, nor pooler
        with_nsp = "nsp_head" in params
        rules = pretraining_rules(config, with_nsp=with_nsp,
                                  with_pooler=with_nsp or not is_zero_pooler(params["bert"]))
    out = tensors_by_rules(params, rules if with_heads else encoder_rules(config))
    if with_heads:
        # transformers ties the decoder to the word embeddings but still reads these names.
        out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


def tensors_by_rules(params: Params, rules: list) -> dict:
    """Nested params -> the rules' HF tensors, float32 numpy arrays in transformers' layout."""
    return {r.hf_name: np.ascontiguousarray(r.to_hf(np.asarray(_get_path(params, r.path))))
            for r in rules}


def expected_param_shapes(config: ModelConfig, *, with_heads: bool) -> dict:
    """Path -> shape of every parameter of the unrolled model (BertForPreTraining with_heads,
    else BertEncoder), by abstract initialisation."""
    from bert_jax.model import BertEncoder, BertForPreTraining

    unrolled = dataclasses.replace(config, scan_layers=False)
    if with_heads:
        return module_param_shapes(BertForPreTraining(unrolled), masked_positions=True)
    return module_param_shapes(BertEncoder(unrolled))


def module_param_shapes(module, *, masked_positions: bool = False,
                        input_shape: tuple[int, ...] = (1, 1)) -> dict:
    """Path -> shape of every parameter of a model module, by abstract initialisation on a
    one-token batch (`masked_positions`: the module takes them, as BertForPreTraining;
    input_shape (1, 1, 1) for multiple choice's [batch, choices, length])."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    ids = jnp.zeros(input_shape, jnp.int32)
    extra = {"masked_positions": ids} if masked_positions else {}
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, **extra))["params"]
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes))[0]
    return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def _set_path(tree: dict, path: tuple, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get_path(tree: dict, path: tuple):
    for key in path:
        if key not in tree:
            raise KeyError(f"parameter tree lacks {'/'.join(path)}")
        tree = tree[key]
    return tree


def config_from_hf(hf_config: dict, **overrides) -> ModelConfig:
    """transformers' BertConfig fields -> ModelConfig; refuses what this model cannot reproduce."""
    model_type = hf_config.get("model_type", "bert")  # the original's bert_config.json has none
    if model_type != "bert":
        raise ValueError(f"model_type {model_type!r}: only BERT checkpoints (model_type 'bert') "
                         f"convert; {model_type}'s weights are laid out and used otherwise")
    act = hf_config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"hidden_act {act!r} is not supported; BERT uses the exact erf 'gelu'")
    position_type = hf_config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"position_embedding_type {position_type!r} is not supported")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")
    missing = [key for key in required if key not in hf_config]
    if missing:
        raise ValueError(f"the BERT config lacks {missing} (transformers' BertConfig names)")
    fields = dict(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        intermediate_size=hf_config["intermediate_size"],
        max_position_embeddings=hf_config.get("max_position_embeddings", 512),
        type_vocab_size=hf_config.get("type_vocab_size", 2),
        hidden_dropout=hf_config.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf_config.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        initializer_range=hf_config.get("initializer_range", 0.02),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def config_to_hf(config: ModelConfig) -> dict:
    return {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def read_hf_folder(folder: str) -> tuple[ModelConfig, dict]:
    """config.json + weights of a HF folder -> (ModelConfig, tensors)."""
    hf_config = read_hf_config(folder)  # checked before the (large) weights are read
    tensors = read_hf_weights(folder)
    return config_from_hf(hf_config), tensors


def read_hf_config(folder: str) -> dict:
    """A HF folder's config.json as written (architectures, labels and all), checked to be a
    BERT config that config_from_hf takes; its errors name the file."""
    config_path = os.path.join(folder, "config.json")
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found (a Hugging Face BERT folder needs it)")
    return read_config_file(config_path)


def read_config_file(path: str) -> dict:
    """A JSON file of BertConfig fields (transformers' config.json, the original's
    bert_config.json), checked to be one config_from_hf takes; its errors name the file."""
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of BertConfig fields, got a "
                         f"{type(config).__name__}")
    try:
        config_from_hf(config)
    except ValueError as e:  # config_from_hf takes a dict and knows no file
        raise ValueError(f"{path}: {e}") from None
    return config


def read_hf_weights(folder: str) -> dict:
    """A HF folder's tensors by name: model.safetensors, else pytorch_model.bin read by torch's
    restricted unpickler (torch_bin), which refuses a file that would run code."""
    from safetensors.numpy import load as load_safetensors

    from bert_jax.interop import torch_bin

    weights_path = _hf_weights_path(folder)
    if weights_path.endswith(".bin"):
        return torch_bin.load_state_dict(weights_path)
    with tf.io.gfile.GFile(weights_path, "rb") as f:
        data = f.read()
    header = _safetensors_header(data, weights_path)
    if any(entry.get("dtype") == "BF16" for entry in header.values() if isinstance(entry, dict)):
        return _bfloat16_safetensors(data, header)
    return load_safetensors(data)


def _safetensors_header(data: bytes, path: str) -> dict:
    """The JSON header of a safetensors file: {name: {dtype, shape, data_offsets}}."""
    if len(data) < 8:
        raise ValueError(f"{path} is not a safetensors file: {len(data)} bytes")
    size = int.from_bytes(data[:8], "little")
    try:
        return json.loads(data[8:8 + size])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e})") from e


def _bfloat16_safetensors(data: bytes, header: dict) -> dict:
    """Tensors of a safetensors file that holds bfloat16 ones (numpy has no bfloat16, so
    safetensors.numpy cannot load it), each as float32, as the .bin path does."""
    import ml_dtypes

    dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32,
              "F64": np.float64, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    start = 8 + int.from_bytes(data[:8], "little")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[start + begin:start + end], dtype=dtypes[entry["dtype"]])
        array = array.reshape(entry["shape"])
        tensors[name] = array.astype(np.float32) if entry["dtype"] == "BF16" else array
    return tensors


def _hf_weights_path(folder: str) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if tf.io.gfile.exists(path):
            return path
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin "
                            "(a Hugging Face BERT folder needs one of them)")


def stack_layers(encoder_params: Params, num_layers: int) -> Params:
    """Unrolled {layer_0, layer_1, ...} -> the scanned layout {layers: stacked along axis 0}."""
    import jax

    layers = [encoder_params[f"layer_{i}"] for i in range(num_layers)]
    return {"layers": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)}


def unstack_layers(encoder_params: Params, num_layers: int) -> Params:
    import jax

    stacked = encoder_params["layers"]
    return {f"layer_{i}": jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), stacked)
            for i in range(num_layers)}
