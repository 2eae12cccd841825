"""Task heads on top of the encoder: masked LM, next-sentence prediction, and BertForPreTraining."""

import flax.linen as nn
import jax.numpy as jnp

from bert_jax.model import inputs
from bert_jax.model.config import ModelConfig
from bert_jax.model.encoder import BertEncoder
from bert_jax.model.layers import Embeddings, dense, gelu, layer_norm, partitioned


def gather_positions(sequence_output, positions):
    """[B, L, H] states at [B, P] positions -> [B, P, H]."""
    return jnp.take_along_axis(sequence_output, positions[:, :, None], axis=1)


class MaskedLMHead(nn.Module):
    """dense + GELU + LayerNorm, then the decoder tied to the token embeddings plus a bias.

    Computes logits only at the masked positions, as the original BERT does: with 15% masking
    this is ~7x less work than scoring every position against the whole vocabulary.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, sequence_output, masked_positions, embeddings: Embeddings):
        cfg = self.config
        x = gather_positions(sequence_output, masked_positions)  # [B, P, H]
        x = dense(cfg, cfg.hidden_size, ("embed", None), name="transform")(x)
        x = layer_norm(cfg, "layer_norm")(gelu(x))
        logits = embeddings.attend(x)  # [B, P, V]
        bias = self.param("output_bias", partitioned(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.params_dtype)
        return logits.astype(jnp.float32) + bias.astype(jnp.float32)[None, None, :]


class NextSentenceHead(nn.Module):
    """2-way IsNext / NotNext classifier on the pooled output."""

    config: ModelConfig

    @nn.compact
    def __call__(self, pooled_output):
        logits = dense(self.config, 2, ("embed", None), name="dense")(pooled_output)
        return logits.astype(jnp.float32)  # [B, 2]


class BertForPreTraining(nn.Module):
    """Encoder + MLM head (+ NSP head): returns {'mlm_logits': [B, P, V], 'nsp_logits': [B, 2]}."""

    config: ModelConfig

    def setup(self):
        self.bert = BertEncoder(self.config)
        self.mlm_head = MaskedLMHead(self.config)
        self.nsp_head = NextSentenceHead(self.config)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 masked_positions, sequence_ids=None, position_ids=None,
                 deterministic: bool = True):
        inputs.check_masked_positions(masked_positions, input_ids)
        sequence_output, pooled_output = self.bert(
            input_ids, token_type_ids, attention_mask, sequence_ids=sequence_ids,
            position_ids=position_ids, deterministic=deterministic,
        )
        return {
            "mlm_logits": self.mlm_head(sequence_output, masked_positions, self.bert.embeddings),
            "nsp_logits": self.nsp_head(pooled_output),
        }


class ClassificationHead(nn.Module):
    """Dropout + dense on the pooled [CLS] output: [B, H] -> [B, num_labels] float32 logits
    (or on every token's state, [B, L, H] -> [B, L, num_labels]).

    num_labels = 1 is a regression head (STS-B): its single output is the predicted score.
    """

    config: ModelConfig
    num_labels: int

    @nn.compact
    def __call__(self, pooled_output, deterministic: bool = True):
        x = nn.Dropout(self.config.hidden_dropout)(pooled_output, deterministic=deterministic)
        logits = dense(self.config, self.num_labels, ("embed", None), name="dense")(x)
        return logits.astype(jnp.float32)  # [B, num_labels]


class BertForSequenceClassification(nn.Module):
    """Encoder + a classification (or regression) head on the pooled output.

    Params are {'bert': {embeddings, encoder, pooler}, 'classifier': {dense}}: the encoder sits
    where pre-training keeps it, so a pre-training checkpoint's `bert` subtree drops in as is.
    """

    config: ModelConfig
    num_labels: int

    def setup(self):
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {self.num_labels}")
        self.bert = BertEncoder(self.config)
        self.classifier = ClassificationHead(self.config, self.num_labels)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 deterministic: bool = True):
        _, pooled_output = self.bert(input_ids, token_type_ids, attention_mask,
                                     deterministic=deterministic)
        return self.classifier(pooled_output, deterministic)  # [B, num_labels]


class SpanHead(nn.Module):
    """Start and end logits per token (extractive QA): [B, L, H] -> two [B, L] float32."""

    config: ModelConfig

    @nn.compact
    def __call__(self, sequence_output):
        logits = dense(self.config, 2, ("embed", None), name="dense")(sequence_output)
        logits = logits.astype(jnp.float32)  # [B, L, 2]
        return logits[..., 0], logits[..., 1]


class BertForQuestionAnswering(nn.Module):
    """Encoder + span head: {'start_logits', 'end_logits'}, each [B, L] float32.

    Params are {'bert': {...}, 'qa_outputs': {dense}}; the pooler is unused (as in the original).
    """

    config: ModelConfig

    def setup(self):
        self.bert = BertEncoder(self.config)
        self.qa_outputs = SpanHead(self.config)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 deterministic: bool = True):
        sequence_output, _ = self.bert(input_ids, token_type_ids, attention_mask,
                                       deterministic=deterministic)
        start, end = self.qa_outputs(sequence_output)
        return {"start_logits": start, "end_logits": end}


class BertForTokenClassification(BertForSequenceClassification):
    """Encoder + the classification head on every final hidden state (NER):
    [B, L, num_labels] float32 logits. Params as BertForSequenceClassification's."""

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 deterministic: bool = True):
        sequence_output, _ = self.bert(input_ids, token_type_ids, attention_mask,
                                       deterministic=deterministic)
        return self.classifier(sequence_output, deterministic)  # [B, L, num_labels]


class BertForMultipleChoice(nn.Module):
    """Encoder + one score per choice from its pooled [CLS] output (the BERT paper's SWAG head):
    [B, C, L] inputs, one `[CLS] context [SEP] choice [SEP]` row per choice -> [B, C] float32
    logits, a softmax over the choices. Params are {'bert', 'classifier': {dense}} with one
    output, as transformers' BertForMultipleChoice; any number of choices uses the same head.
    """

    config: ModelConfig

    def setup(self):
        self.bert = BertEncoder(self.config)
        self.classifier = ClassificationHead(self.config, 1)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
                 deterministic: bool = True):
        if input_ids.ndim != 3:
            raise ValueError(f"multiple choice takes [batch, choices, length] inputs, got shape "
                             f"{input_ids.shape}")
        batch, choices, length = input_ids.shape

        def rows(x):  # every choice of every example is one row of the encoder
            return None if x is None else x.reshape(batch * choices, length)

        _, pooled_output = self.bert(rows(input_ids), rows(token_type_ids), rows(attention_mask),
                                     deterministic=deterministic)
        scores = self.classifier(pooled_output, deterministic)  # [B * C, 1]
        return scores.reshape(batch, choices)
