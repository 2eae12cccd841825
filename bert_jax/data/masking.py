"""Dynamic masked-LM masking of a whole batch at once (vectorised numpy, no per-token Python)."""

from __future__ import annotations

import dataclasses

import numpy as np

MASK_PROB, RANDOM_PROB = 0.8, 0.1  # of the selected tokens; the remaining 10% stay unchanged


def default_max_predictions(max_seq_length: int, masked_lm_prob: float = 0.15) -> int:
    """BERT's defaults at its masking rate: 20 at 128 and 80 at 512; otherwise (other lengths,
    other rates) ~masked_lm_prob * length, rounded up."""
    if masked_lm_prob == 0.15 and max_seq_length in (128, 512):
        return {128: 20, 512: 80}[max_seq_length]
    return max(1, int(np.ceil(max_seq_length * masked_lm_prob)) + 1)


@dataclasses.dataclass(frozen=True)
class MaskingTables:
    """Per-vocabulary lookups the masker needs, built once from the tokenizer."""

    maskable: np.ndarray  # [V] bool: False for special ids
    word_start: np.ndarray  # [V] bool: True where an id begins a word
    random_ids: np.ndarray  # [R] int32: ids a "random token" replacement draws from
    mask_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> MaskingTables:
        special = np.array(sorted(tokenizer.special_ids), np.int64)
        maskable = np.ones(tokenizer.vocab_size, bool)
        maskable[special] = False
        word_start = np.asarray(tokenizer.word_start_table(), bool) | ~maskable
        return cls(maskable, word_start, np.flatnonzero(maskable).astype(np.int32),
                   int(tokenizer.mask_id))


def mask_batch(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    tables: MaskingTables,
    *,
    max_predictions: int,
    masked_lm_prob: float,
    whole_word: bool,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Selects and corrupts tokens of a [B, L] batch; returns the new input_ids and MLM targets.

    Per row: n = min(max_predictions, max(1, round(maskable * masked_lm_prob))) tokens among the
    maskable ones (real, non-special), uniformly (or whole words, never split, with
    `whole_word`); of those 80% become [MASK], 10% a random non-special id, 10% stay.
    """
    batch, length = input_ids.shape
    maskable = tables.maskable[input_ids] & (attention_mask > 0)  # [B, L]
    count = maskable.sum(axis=1)  # [B]
    n = np.minimum(max_predictions, np.maximum(1, np.round(count * masked_lm_prob))).astype(int)
    n = np.minimum(n, count)  # [B]
    if whole_word:
        selected = _select_whole_words(input_ids, maskable, n, tables, rng)
    else:
        keys = np.where(maskable, rng.random((batch, length)), 2.0)  # [B, L]; 2: never chosen
        order = _smallest(keys, max_predictions)  # [B, P]
        selected = np.zeros((batch, length), bool)
        chosen = np.arange(order.shape[1])[None, :] < n[:, None]  # [B, P]
        np.put_along_axis(selected, order, chosen, axis=1)
    return _apply(input_ids, selected, tables, max_predictions, rng)


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """[B, k] column indices of each row's k smallest keys, smallest first (argsort's first k
    for distinct keys; a partition then a small sort instead of sorting whole rows)."""
    if k >= keys.shape[1]:
        return np.argsort(keys, axis=1, kind="stable")
    part = np.argpartition(keys, k - 1, axis=1)[:, :k]  # [B, k] in no order
    return np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1,
                                               kind="stable"), axis=1)


def _select_whole_words(
    input_ids: np.ndarray, maskable: np.ndarray, n: np.ndarray, tables: MaskingTables,
    rng: np.random.Generator,
) -> np.ndarray:
    """[B, L] bool: whole words in a random order, each taken if its tokens still fit in n (never
    split) and skipped if not, as the original's create_masked_lm_predictions does."""
    batch, length = input_ids.shape
    starts = tables.word_start[input_ids] | ~maskable  # [B, L]; specials/padding: own "words"
    # A piece right after a special token starts a word too: truncation can cut a word's head.
    starts[:, 1:] |= ~maskable[:, :-1]
    starts[:, 0] = True
    word = np.cumsum(starts, axis=1) - 1  # [B, L] word index of every token
    keys = np.where(maskable, np.take_along_axis(rng.random((batch, length)), word, axis=1), 2.0)
    # A stable sort by word key keeps each word's tokens adjacent and in order; the words of a
    # row then come in a random order, its specials and padding (key 2) last.
    order = np.argsort(keys, axis=1, kind="stable")  # [B, L]
    sorted_word = np.take_along_axis(word, order, axis=1)  # [B, L]
    first = np.ones((batch, length), bool)
    first[:, 1:] = sorted_word[:, 1:] != sorted_word[:, :-1]
    slot = np.cumsum(first, axis=1) - 1  # [B, L] rank of each token's word in that order
    rows = np.broadcast_to(np.arange(batch)[:, None], (batch, length))
    size = np.bincount((rows * length + slot).ravel(),  # [B, slots] tokens of the slot's word
                       minlength=batch * length).reshape(batch, length)
    slot_word = np.zeros((batch, length), np.int64)  # [B, slots] that word's index
    slot_word[rows[first], slot[first]] = sorted_word[first]
    eligible = np.zeros((batch, length), bool)  # [B, slots] a word of maskable tokens
    eligible[rows[first], slot[first]] = np.take_along_axis(keys, order, axis=1)[first] < 2.0
    size = np.where(eligible, size, 0)

    # Words are taken in order while they fit; most rows fill with that prefix (vectorised).
    fits = np.cumsum(size, axis=1) <= n[:, None]
    prefix = np.argmin(fits, axis=1) + np.all(fits, axis=1) * length  # [B] first word not taken
    take = eligible & (np.arange(length)[None, :] < prefix[:, None])
    left = n - np.sum(np.where(take, size, 0), axis=1)  # [B]
    # Then later words that still fit, a slot at a time, only while some row has room for one
    # (the smallest eligible word at or after each slot: its suffix minimum).
    smallest_after = np.minimum.accumulate(np.where(eligible, size, length + 1)[:, ::-1],
                                           axis=1)[:, ::-1]
    for k in range(int(prefix.min()), length):
        # No room at k means none later: the suffix minimum only grows, `left` stays.
        room = (left > 0) & (smallest_after[:, k] <= left)
        if not room.any():
            break
        taken = room & (k >= prefix) & eligible[:, k] & (size[:, k] <= left)
        take[:, k] |= taken
        left -= np.where(taken, size[:, k], 0)
    word_taken = np.zeros((batch, length), bool)  # [B, words]
    word_taken[rows[take], slot_word[take]] = True
    return np.take_along_axis(word_taken, word, axis=1) & maskable


def _apply(
    input_ids: np.ndarray, selected: np.ndarray, tables: MaskingTables, max_predictions: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Corrupts the selected tokens and lays out the [B, P] targets in position order."""
    batch, length = input_ids.shape
    # Selected positions in position order, at most P per row (never more are selected).
    rows, cols = np.nonzero(selected)  # row-major: by row, then position
    counts = np.bincount(rows, minlength=batch)  # [B]
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < max_predictions
    positions = np.zeros((batch, max_predictions), np.int32)  # [B, P]
    weights = np.zeros((batch, max_predictions), bool)
    positions[rows[keep], rank[keep]] = cols[keep]
    weights[rows[keep], rank[keep]] = True
    targets = np.where(weights, np.take_along_axis(input_ids, positions, axis=1), 0)
    u = rng.random((batch, max_predictions))  # [B, P]
    draws = rng.integers(0, len(tables.random_ids), (batch, max_predictions))  # [B, P]
    random_ids = tables.random_ids[draws]
    replacement = np.where(u < MASK_PROB, tables.mask_id,
                           np.where(u < MASK_PROB + RANDOM_PROB, random_ids, targets))
    corrupted = input_ids.copy()
    rows = np.broadcast_to(np.arange(batch)[:, None], positions.shape)
    corrupted[rows[weights], positions[weights]] = replacement[weights]
    return {
        "input_ids": corrupted.astype(np.int32),
        "masked_positions": positions,
        "masked_ids": targets.astype(np.int32),
        "masked_weights": weights.astype(np.float32),
    }
