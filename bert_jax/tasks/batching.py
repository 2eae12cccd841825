"""Batching for fine-tuning: length buckets and length-sorted groups of feature indices.

Every task pads a batch to a bucket (16, 32, 64, ... capped at max_seq_length), so short inputs
don't pay for max_seq_length tokens and each step compiles once per bucket. Training groups come
from length-sorted chunks of a shuffled epoch, so a batch holds similar lengths without the epoch
being ordered by length.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MIN_LENGTH_BUCKET = 16


def length_bucket(length: int, max_length: int) -> int:
    """Padded length: a power of two >= 16, capped at max_length."""
    bucket = MIN_LENGTH_BUCKET
    while bucket < length:
        bucket *= 2
    return min(bucket, max_length)


def num_batches(num_rows: int, batch_size: int) -> int:
    """Batches of batch_size that cover num_rows (the last one padded)."""
    return -(-num_rows // batch_size)


def index_groups(lengths: np.ndarray, batch_size: int, *, rng: np.random.Generator | None = None,
                 sort_chunk: int = 50) -> Iterator[list[int]]:
    """Groups of at most batch_size indices covering every row once.

    With `rng` (training): shuffle, sort chunks of sort_chunk batches by length, cut, and shuffle
    the batches. Without (evaluation): sorted by length, deterministic.
    """
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        groups = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    else:
        order = rng.permutation(len(lengths))
        groups = []
        chunk = batch_size * sort_chunk
        for s in range(0, len(order), chunk):
            part = order[s:s + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            groups += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
        groups = [groups[i] for i in rng.permutation(len(groups))]
    for group in groups:
        yield [int(i) for i in group]


def pad_rows(rows: dict, batch_size: int, length: int) -> dict:
    """A fixed-size batch from the feature rows of one group.

    rows: name -> [n, L, ...] per-token arrays (as wide as `input_ids`) or [n, ...] per-row
    arrays, n <= batch_size. Per-token arrays are
    cut to `length` (the group's bucket); every array gets batch_size - n filler rows of zeros
    (labels that are -1 for "ignore" stay -1); `example_weight` is 1 on real rows, 0 on filler.
    A filler row attends to its first token only: a row attending to nothing gives NaNs.
    """
    n = len(rows["input_ids"])
    width = rows["input_ids"].shape[1]
    batch = {}
    for name, value in rows.items():
        per_token = value.ndim >= 2 and value.shape[1] == width
        if per_token:
            value = value[:, :length]
        fill = -1 if name in IGNORED_IS_MINUS_ONE else 0
        padded = np.full((batch_size, *value.shape[1:]), fill, value.dtype)
        padded[:n] = value
        batch[name] = padded
    batch["attention_mask"][n:, 0] = 1
    batch["example_weight"] = (np.arange(batch_size) < n).astype(np.float32)
    return batch


# Per-token labels where -1 means "no label here" (the loss skips them).
IGNORED_IS_MINUS_ONE = frozenset({"label_ids"})
