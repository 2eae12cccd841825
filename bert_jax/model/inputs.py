"""Checks on what the model is fed: clear errors instead of silent garbage or a cryptic trace."""

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.model.config import ModelConfig


def _check_field(name: str, value, rank: int, shape=None):
    if value is None:
        return
    if value.ndim != rank:
        raise ValueError(f"batch field {name!r} must have rank {rank}, got shape {value.shape}")
    is_mask = name == "attention_mask" and value.dtype == bool  # as jax code often holds one
    if not (jnp.issubdtype(value.dtype, jnp.integer) or is_mask):
        raise TypeError(f"batch field {name!r} must be an integer array, got {value.dtype}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"batch field {name!r} has shape {value.shape}, expected {shape}")


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _check_range(name: str, value, upper: int, what: str):
    """Value checks run only on concrete arrays: inside jit the data pipeline is the guard."""
    if value is None or not _is_concrete(value) or value.size == 0:
        return
    host_value = np.asarray(value)
    lo, hi = int(host_value.min()), int(host_value.max())
    if lo < 0 or hi >= upper:
        bad = hi if hi >= upper else lo
        raise ValueError(f"batch field {name!r} holds {bad}, outside [0, {upper}) ({what})")


def complete_and_check(config: ModelConfig, input_ids, token_type_ids, attention_mask,
                       sequence_ids, position_ids):
    """Validates the encoder inputs and fills the optional ones with BERT's defaults."""
    _check_field("input_ids", input_ids, 2)
    batch, length = input_ids.shape
    if length > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {length} exceeds max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    for name, value in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask),
                        ("sequence_ids", sequence_ids), ("position_ids", position_ids)):
        _check_field(name, value, 2, shape=(batch, length))
    _check_range("input_ids", input_ids, config.vocab_size, "vocab_size")
    _check_range("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size")
    _check_range("position_ids", position_ids, config.max_position_embeddings,
                 "max_position_embeddings")
    if config.attention_implementation == "cudnn" and sequence_ids is None:
        _check_padding_at_the_end(attention_mask)

    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(length, dtype=input_ids.dtype), (batch, length))
        if sequence_ids is not None:  # packed rows: each sequence's positions start at 0
            position_ids = position_ids - _sequence_starts(sequence_ids)
    return input_ids, token_type_ids, attention_mask, position_ids


def _sequence_starts(sequence_ids):
    """[B, L] -> the index where each position's sequence (run of equal ids) starts."""
    index = jnp.arange(sequence_ids.shape[1], dtype=sequence_ids.dtype)
    starts_here = jnp.concatenate(
        [jnp.ones_like(sequence_ids[:, :1], bool), sequence_ids[:, 1:] != sequence_ids[:, :-1]],
        axis=1)
    return jax.lax.cummax(jnp.where(starts_here, index, 0), axis=1)


def _check_padding_at_the_end(attention_mask):
    """cuDNN's attention takes a row's padding as its key length (layers.fused_attention), so
    the row's tokens must come first: left padding or a hole would silently attend to padding
    and drop tokens. Checked where the mask is concrete; the pipeline and the tokenizers always
    pad at the end."""
    if attention_mask is None or not _is_concrete(attention_mask) or attention_mask.size == 0:
        return
    mask = np.asarray(attention_mask) != 0
    lengths = mask.sum(axis=1, keepdims=True)
    prefix = np.arange(mask.shape[1])[None, :] < lengths
    bad = np.flatnonzero((mask != prefix).any(axis=1))
    if bad.size:
        raise ValueError(
            f"attention_mask row {int(bad[0])} has padding before some of its tokens (left "
            "padding or a hole): attention_implementation='cudnn' reads a row's padding as its "
            "length and needs it at the end; pad on the right, or use XLA's attention")


def check_masked_positions(masked_positions, input_ids):
    _check_field("input_ids", input_ids, 2)  # first: its shape gives batch and length
    batch, length = input_ids.shape
    _check_field("masked_positions", masked_positions, 2)
    if masked_positions.shape[0] != batch:
        raise ValueError(
            f"batch field 'masked_positions' has batch {masked_positions.shape[0]}, expected {batch}"
        )
    _check_range("masked_positions", masked_positions, length, "sequence length")
