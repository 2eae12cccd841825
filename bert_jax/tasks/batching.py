"""Batching for fine-tuning: length buckets and length-sorted groups of feature indices.

Every task pads a batch to a bucket (`coarse`, the default: 16, 32, 64, ...; `fine`: 8, 16, 24,
32, 48, 64, 96, ...; capped at max_seq_length), so short inputs don't pay for max_seq_length
tokens and each step compiles once per bucket. Training groups come from length-sorted chunks of
a shuffled epoch, so a batch holds similar lengths without the epoch being ordered by length.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MIN_LENGTH_BUCKET = 16
# coarse: powers of two from 16, few shapes to compile. fine: 8, then each power of two from 16
# and one and a half times it, all multiples of 8: about twice the shapes and half the padding
# of a length just past a bucket. On the GLUE training sets with batch 32, positions computed
# per real token fall from 1.70 to 1.32 (SST-2, length 64), 1.44 to 1.22 (MRPC, 128) and 1.48 to
# 1.24 (STS-B, 128): worth it when a run's steps outweigh its extra compilations (large tasks,
# several epochs), not for a few hundred steps.
LENGTH_BUCKETS = ("coarse", "fine")


def length_bucket(length: int, max_length: int, ladder: str = "coarse") -> int:
    """The padded length for a batch whose longest row is `length`: the smallest bucket of the
    ladder that holds it, capped at max_length."""
    if ladder == "coarse":
        bucket = MIN_LENGTH_BUCKET
        while bucket < length:
            bucket *= 2
    elif ladder == "fine":
        bucket = MIN_LENGTH_BUCKET // 2
        if length > bucket:
            bucket = MIN_LENGTH_BUCKET
            while bucket < length:  # 16 -> 24 -> 32 -> 48 -> 64 -> ...
                is_power_of_two = bucket & (bucket - 1) == 0
                bucket = bucket * 3 // 2 if is_power_of_two else bucket * 4 // 3
    else:
        raise ValueError(f"data.length_buckets={ladder!r}; expected one of {LENGTH_BUCKETS}")
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
