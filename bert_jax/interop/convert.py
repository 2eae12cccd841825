"""Conversion between foreign BERT checkpoints and this package's self-describing checkpoints."""

import json
import os

import jax
import numpy as np
from absl import logging

from bert_jax.data import tokenization
from bert_jax.interop import hf, tf1
from bert_jax.model.config import ModelConfig
from bert_jax.train import checkpoint


def import_hf(folder: str, output: str, lowercase: bool | None = None) -> str:
    """A Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin,
    vocab.txt) -> a checkpoint.

    Pre-training heads are kept when the folder has them (BertForPreTraining), else the
    checkpoint holds the encoder and pooler only. lowercase=None takes tokenizer_config.json's
    do_lower_case (default true).
    """
    config, tensors = hf.read_hf_folder(folder)
    if lowercase is None:
        lowercase = _hf_lowercase(folder)
    return _save_imported(output, config, tensors, _wordpiece(folder, lowercase), f"hf:{folder}")


def import_tf1(folder: str, output: str, lowercase: bool | None = None) -> str:
    """An original Google BERT folder (bert_model.ckpt.*, bert_config.json, vocab.txt) -> a
    checkpoint, pre-training heads included when the checkpoint has them.

    lowercase=None infers it from the folder name: `cased_...` and `multi_cased_...` keep case;
    `uncased_...` and other names lowercase.
    """
    config, tensors = tf1.read_tf1_folder(folder)
    if lowercase is None:
        lowercase = tf1.lowercase_from_name(folder)
        logging.info("%s: %s vocab (from the folder name)", folder,
                     "uncased" if lowercase else "cased")
    return _save_imported(output, config, tensors, _wordpiece(folder, lowercase), f"tf1:{folder}")


def _save_imported(output: str, config: ModelConfig, tensors: dict,
                   tokenizer: tokenization.Tokenizer, source: str) -> str:
    """HF-named tensors + config + tokenizer -> step 0 of a checkpoint at `output`."""
    with_heads = any(name.startswith("cls.") for name in tensors)
    params = hf.params_from_hf(tensors, config, with_heads=with_heads)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{source}: vocab.txt has {tokenizer.vocab_size} tokens but the model "
                         f"config says vocab_size={config.vocab_size}")
    meta = checkpoint.make_meta(0, config, tokenizer, source=source,
                                has_pretraining_heads=with_heads)
    return checkpoint.save_model(output, 0, jax.tree_util.tree_map(np.asarray, params), meta)


def _hf_lowercase(folder: str) -> bool:
    config_path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.exists(config_path):
        return True
    with open(config_path, encoding="utf-8") as f:
        return json.load(f).get("do_lower_case", True)


def _wordpiece(folder: str, lowercase: bool) -> tokenization.Tokenizer:
    return tokenization.WordPieceTokenizer(os.path.join(folder, "vocab.txt"), lowercase=lowercase)


def export_hf(checkpoint_path: str, output: str) -> str:
    """A checkpoint of this package -> a Hugging Face folder that transformers loads.

    Writes config.json, model.safetensors and the tokenizer's files (vocab.txt for WordPiece):
    a BertForPreTraining with its MLM and NSP heads, else a BertModel (encoder and pooler). A
    fine-tuned checkpoint exports its encoder as a BertModel; its task head is left out (logged).
    """
    import flax.linen as nn
    from safetensors.numpy import save_file

    loaded = checkpoint.load_model(checkpoint_path)
    config = loaded.model_config
    params = _unrolled(nn.unbox(loaded.params), config)
    with_heads = "mlm_head" in params
    if "bert" in params and not with_heads:
        logging.warning("%s holds task heads %s (fine-tuned) but no MLM head: exporting its "
                        "encoder only, as a BertModel", checkpoint_path,
                        sorted(set(params) - {"bert"}))
        params = params["bert"]
    tensors = hf.params_to_hf(params, config, with_heads=with_heads)
    os.makedirs(output, exist_ok=True)
    hf_config = hf.config_to_hf(config)
    if not with_heads:
        hf_config["architectures"] = ["BertModel"]
    with open(os.path.join(output, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              os.path.join(output, "model.safetensors"))
    loaded.tokenizer.save(output)
    return output


def _unrolled(params: dict, config) -> dict:
    """Scanned checkpoints store layers stacked; HF names one tensor per layer."""
    if not config.scan_layers:
        return params
    encoder_parent = params["bert"] if "bert" in params else params
    encoder_parent["encoder"] = hf.unstack_layers(encoder_parent["encoder"], config.num_layers)
    return params
