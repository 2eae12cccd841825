"""The BERT encoder: embeddings, a stack of encoder layers, and the [CLS] pooler."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.model import inputs
from bert_jax.model.config import ModelConfig
from bert_jax.model.layers import EncoderLayer, Embeddings, constrain, dense

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def attention_mask_4d(attention_mask, sequence_ids):
    """Which keys each query may attend to: bool [B, 1, L, L], or [B, 1, 1, L] when not packed."""
    key_is_real = attention_mask.astype(bool)  # [B, L]
    if sequence_ids is None:
        return key_is_real[:, None, None, :]
    same_example = sequence_ids[:, :, None] == sequence_ids[:, None, :]  # [B, L, L]
    return (same_example & key_is_real[:, None, :])[:, None, :, :]


def _layer_class(config: ModelConfig, scanned: bool):
    if config.remat_policy == "none":
        return EncoderLayer
    return nn.remat(EncoderLayer, policy=_REMAT_POLICIES[config.remat_policy],
                    prevent_cse=not scanned)


class LayerStack(nn.Module):
    """num_layers encoder layers, unrolled (layer_0, layer_1, ...) or scanned (one stacked set)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        cfg = self.config
        if cfg.scan_layers:
            stack = nn.scan(
                _layer_class(cfg, scanned=True),
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(cfg, deterministic, scanned=True, name="layers")(x, mask)
            return x
        layer_class = _layer_class(cfg, scanned=False)
        for i in range(cfg.num_layers):
            x = layer_class(cfg, deterministic, name=f"layer_{i}")(x, mask)
        return constrain(x, ("batch", "length", "act_embed"))


class Pooler(nn.Module):
    """dense + tanh on the first ([CLS]) token."""

    config: ModelConfig

    @nn.compact
    def __call__(self, sequence_output):
        cls = sequence_output[:, 0]  # [B, H]
        pooled = dense(self.config, self.config.hidden_size, ("embed", None), name="dense")(cls)
        return jnp.tanh(pooled)


class BertEncoder(nn.Module):
    """BERT without task heads: returns (sequence_output [B, L, H], pooled_output [B, H])."""

    config: ModelConfig

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.encoder = LayerStack(self.config)
        self.pooler = Pooler(self.config)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 sequence_ids=None, position_ids=None, deterministic: bool = True):
        cfg = self.config
        input_ids, token_type_ids, attention_mask, position_ids = inputs.complete_and_check(
            cfg, input_ids, token_type_ids, attention_mask, sequence_ids, position_ids
        )
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        mask = attention_mask_4d(attention_mask, sequence_ids)
        x = self.encoder(x, mask, deterministic)
        return x, self.pooler(x)
