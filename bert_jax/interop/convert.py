"""Conversion between foreign BERT checkpoints and this package's self-describing checkpoints."""

import os

import jax
import numpy as np

from bert_jax.data import tokenization
from bert_jax.interop import hf
from bert_jax.train import checkpoint


def import_hf(folder: str, output: str) -> str:
    """A Hugging Face BERT folder (config.json, model.safetensors, vocab.txt) -> a checkpoint.

    Pre-training heads are kept when the folder has them (BertForPreTraining), else the
    checkpoint holds the encoder and pooler only.
    """
    config, tensors = hf.read_hf_folder(folder)
    with_heads = any(name.startswith("cls.") for name in tensors)
    params = hf.params_from_hf(tensors, config, with_heads=with_heads)
    tokenizer = _hf_tokenizer(folder)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{folder}: vocab.txt has {tokenizer.vocab_size} tokens but config.json "
                         f"says vocab_size={config.vocab_size}")
    meta = checkpoint.make_meta(0, config, tokenizer, source=f"hf:{folder}",
                                has_pretraining_heads=with_heads)
    return checkpoint.save_model(output, 0, jax.tree_util.tree_map(np.asarray, params), meta)


def _hf_tokenizer(folder: str) -> tokenization.Tokenizer:
    vocab = os.path.join(folder, "vocab.txt")
    lowercase = True
    config_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(config_path):
        import json

        with open(config_path, encoding="utf-8") as f:
            lowercase = json.load(f).get("do_lower_case", True)
    return tokenization.load_tokenizer(f"wordpiece:{vocab}" + ("" if lowercase else ":cased"))


def export_hf(checkpoint_path: str, output: str) -> str:
    """A checkpoint of this package -> a Hugging Face folder that transformers loads.

    Writes config.json, model.safetensors and the tokenizer's files (vocab.txt for WordPiece).
    """
    import json

    import flax.linen as nn
    from safetensors.numpy import save_file

    loaded = checkpoint.load_model(checkpoint_path)
    config = loaded.model_config
    params = _unrolled(nn.unbox(loaded.params), config)
    with_heads = "bert" in params
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
