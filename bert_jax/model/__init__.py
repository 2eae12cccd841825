"""The BERT model: config, encoder and heads (flax.linen)."""

from bert_jax.model.config import NAMED_SIZES, ModelConfig
from bert_jax.model.encoder import BertEncoder
from bert_jax.model.heads import BertForPreTraining

__all__ = ["NAMED_SIZES", "ModelConfig", "BertEncoder", "BertForPreTraining"]
