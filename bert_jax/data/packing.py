"""Lays examples out as fixed-shape [B, L] rows: one example per row, or several packed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bert_jax.data.examples import Example


def fill_rows(
    rows: Sequence[Sequence[Example]], max_seq_length: int, *, pack: bool, nsp: bool
) -> dict[str, np.ndarray]:
    """Batch arrays (before masking) for rows of examples; each row's total must fit.

    Packed rows get sequence_ids (1..n per example, 0 on padding) and position_ids that restart
    at 0 in every example, so attention and positions stay inside each example.
    """
    batch, length = len(rows), max_seq_length
    input_ids = np.zeros((batch, length), np.int32)  # [B, L]
    token_type_ids = np.zeros((batch, length), np.int32)
    attention_mask = np.zeros((batch, length), np.int32)
    if pack:
        sequence_ids = np.zeros((batch, length), np.int32)
        position_ids = np.zeros((batch, length), np.int32)
    labels = np.zeros((batch,), np.int32)
    for r, row in enumerate(rows):
        total = sum(len(example.ids) for example in row)
        if total > length:
            raise ValueError(f"row {r} holds {total} tokens > max_seq_length {length}")
        offset = 0
        for k, example in enumerate(row):
            n = len(example.ids)
            end = offset + n
            input_ids[r, offset:end] = example.ids
            token_type_ids[r, offset + example.num_a : end] = 1
            if pack:
                sequence_ids[r, offset:end] = k + 1
                position_ids[r, offset:end] = np.arange(n)
            offset = end
        attention_mask[r, :offset] = 1
        labels[r] = row[0].label
    out = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
    }
    if pack:
        out["sequence_ids"] = sequence_ids
        out["position_ids"] = position_ids
    if nsp:
        out["next_sentence_label"] = labels
    return out
