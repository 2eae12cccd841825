"""The on-the-fly pre-training input pipeline: text source -> masked, fixed-shape batches.

    documents (sources.py: train this host's part, eval all) -> chunks of ~1 MB of text
    -> batched tokenization -> examples (examples.py: nsp pairs | full sentences), shuffled
    inside the chunk -> rows (packing.py) -> batches -> dynamic masking (masking.py)
    -> prefetch thread

Why chunks and not tf.data: every chunk is a pure function of (seed, host, split, epoch, chunk
index; eval's the same on every host, which keeps its share of the examples) and the
position of its first document, and every batch's mask a pure function of
(seed, host, split, batch counter). The iterator state is therefore six integers (where the
current chunk starts, how many of its examples were consumed, how many batches were made), and
restoring it re-reads one chunk instead of replaying the stream. Tokenization runs in the
tokenizer's multi-threaded native code; masking is vectorised over the batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bert_jax.data import examples as examples_lib
from bert_jax.data import masking, packing, sources, tokenization
from bert_jax.data.examples import Example, TokenizedChunk
from bert_jax.data.sources import Position

CHUNK_DOCS = 256  # documents per chunk at most: NotNext segments come from the same chunk
CHUNK_CHARS = 1 << 20  # ... and characters at most (bounds memory whatever the documents)
PREFETCH_BATCHES = 8
CHUNKS_AHEAD = 1  # chunks made ahead of the one being batched (each ~1 MB of text)
STATE_VERSION = 1
_SPLITS = {"train": 0, "eval": 1}
# Corpus text that spells a special token ("[MASK]", "[SEP]") is text, as the original BERT's
# tokenizer read it ("[", "mask", "]"): spaced out, it no longer matches the tokenizer's special
# tokens, which would put a separator or an unlabelled mask inside a segment.
_TYPED_SPECIAL = re.compile("|".join(re.escape(t) for t in tokenization.SPECIAL_TOKENS))


def _special_tokens_as_text(sentence: str) -> str:
    if "[" not in sentence:  # nearly always: no regex
        return sentence
    return _TYPED_SPECIAL.sub(lambda m: f"[ {m.group(0)[1:-1]} ]", sentence)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What to read and how to make examples; built from the run config's `data` section."""

    source: str
    mode: str = examples_lib.NSP
    max_seq_length: int = 128
    max_predictions_per_seq: int | None = None  # None: 20 at 128, 80 at 512 (see masking)
    masked_lm_prob: float = 0.15
    whole_word_masking: bool = False
    short_seq_prob: float = 0.1
    pack: bool = False
    eval_fraction: float = 0.01  # documents held out for evaluation, chosen by a stable hash
    # For source=A+B+...: how many times a train epoch reads each source (its units, each time
    # with new examples and masks), e.g. (2, 1) upsamples A; a fraction reads that share of its
    # units, a different choice every epoch. Empty: once each (the sources mix by size).
    source_repeats: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "source_repeats", tuple(self.source_repeats))
        parts = self.source.count("+") + 1
        if self.source_repeats and len(self.source_repeats) != parts:
            raise ValueError(f"data.source_repeats={self.source_repeats} has "
                             f"{len(self.source_repeats)} values for the {parts} source(s) of "
                             f"data.source={self.source!r}: give one per source")
        if any(not repeats > 0 for repeats in self.source_repeats):
            raise ValueError(f"data.source_repeats={self.source_repeats}: every value must be "
                             "> 0 (a source read 0 times does not belong in data.source)")
        if self.mode not in (examples_lib.NSP, examples_lib.FULL_SENTENCES):
            raise ValueError(f"data.mode must be 'nsp' or 'full_sentences', not {self.mode!r}")
        if self.pack and self.mode == examples_lib.NSP:
            raise ValueError(
                "data.pack needs data.mode='full_sentences': a packed row would hold several "
                "NSP pairs, but the batch has one next_sentence_label per row"
            )
        if self.max_seq_length < 8:
            raise ValueError(f"data.max_seq_length={self.max_seq_length} is too short (< 8)")
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError(f"data.masked_lm_prob={self.masked_lm_prob} not in (0, 1)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"data.eval_fraction={self.eval_fraction} not in [0, 1)")
        if self.max_predictions_per_seq is not None and not (
                1 <= self.max_predictions_per_seq <= self.max_seq_length):
            raise ValueError(f"data.max_predictions_per_seq={self.max_predictions_per_seq}: "
                             f"expected 1 to data.max_seq_length={self.max_seq_length}, or "
                             "unset to follow the sequence length")
        asked = self.masked_lm_prob * self.max_seq_length
        if self.max_predictions_per_seq and self.max_predictions_per_seq < 0.9 * asked:
            # E.g. the second phase at 512 with the first phase's 20: ~4% of tokens masked.
            log.warning(
                "data.max_predictions_per_seq=%d caps masking at %.1f%% of a full row of %d "
                "tokens, where data.masked_lm_prob=%g asks for ~%d; raise it (BERT used 80 at "
                "512) or leave it unset for that default", self.max_predictions_per_seq,
                100 * self.max_predictions_per_seq / self.max_seq_length, self.max_seq_length,
                self.masked_lm_prob, round(asked))

    @property
    def num_predictions(self) -> int:
        """P, the masked positions per row: max_predictions_per_seq or its default."""
        if self.max_predictions_per_seq:
            return self.max_predictions_per_seq
        return masking.default_max_predictions(self.max_seq_length, self.masked_lm_prob)

    @classmethod
    def from_config(cls, data_config) -> PipelineConfig:
        """From a ConfigDict/dict with these keys; other keys (e.g. `tokenizer`) are ignored."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: data_config[k] for k in names if k in data_config})


@dataclasses.dataclass(frozen=True)
class _Cursor:
    """Where the stream stands: the chunk holding the next example, and batches made so far."""

    epoch: int = 0
    unit: int = 0  # the chunk's first document: Position(unit, doc) in the epoch's unit order
    doc: int = 0
    chunk: int = 0  # chunk index within the epoch (seeds its randomness)
    offset: int = 0  # examples of the chunk already consumed
    batch: int = 0  # batches produced (seeds their masks)


@dataclasses.dataclass
class _Chunk:
    epoch: int
    start: Position
    index: int
    examples: list[Example]
    doc_positions: list[Position]  # chunk document index -> source position (provenance)


class _ExampleStream:
    """This host's examples of one split, chunk by chunk, epoch after epoch.

    Train: the host's shard of the source, its own draws. Eval: every host reads the whole
    source and makes the same examples from it (the same draws), then keeps every
    `process_count`-th one from its own index on; the held-out documents can be too few for
    each host to own some, while every host must bring rows to every evaluation batch.
    """

    def __init__(self, config: PipelineConfig, tokenizer, shard: sources.HostShard, *,
                 seed: int, host: int, split: str, skips: sources.SkipCounter,
                 process_count: int = 1):
        self.config, self.tokenizer, self.shard = config, tokenizer, shard
        self.seed, self.host, self.split, self.skips = seed, host, split, skips
        self._keep = (slice(host, None, process_count) if split == "eval"
                      else slice(None))
        self.options = examples_lib.ExampleOptions(
            config.mode, config.max_seq_length, config.short_seq_prob,
            tokenizer.cls_id, tokenizer.sep_id,
        )
        self._eval_threshold = round(config.eval_fraction * (1 << 32))

    def chunks(self, cursor: _Cursor) -> Iterator[_Chunk]:
        """Chunks from the cursor's chunk on, forever; raises if an epoch that read units made
        no examples (under fractional source_repeats an epoch may read none: the next will)."""
        epoch, start, index = cursor.epoch, Position(cursor.unit, cursor.doc), cursor.chunk
        while True:
            made = 0
            order = self._unit_order(epoch)
            read = {"documents": 0, "kept": 0}  # this epoch's, for the error below
            for chunk in self._epoch_chunks(epoch, start, index, order, read):
                made += len(chunk.examples)
                yield chunk
            if made == 0 and start == Position() and index == 0 and order:
                raise ValueError(f"data source {self.shard.source.spec!r} yields no "
                                 f"{self.split} examples on host {self.host}: "
                                 f"{self._why_none(read)}")
            epoch, start, index = epoch + 1, Position(), 0

    def _why_none(self, counts: dict) -> str:
        read, kept = counts["documents"], counts["kept"]
        if read == 0:
            return "it holds no text (empty input)"
        if kept == 0:
            return (f"data.eval_fraction={self.config.eval_fraction} holds out none of its "
                    f"{read} documents" if self.split == "eval" else
                    f"data.eval_fraction={self.config.eval_fraction} holds out all of its "
                    f"{read} documents")
        return f"its {kept} {self.split} documents make none (too short, or no tokens)"

    def _epoch_chunks(self, epoch: int, start: Position, index: int, order: list[int],
                      read: dict) -> Iterator[_Chunk]:
        """The epoch's chunks from `start`; `read` counts the documents read and kept."""
        docs: list[list[str]] = []
        positions: list[Position] = []
        chars = 0
        for position, doc in self.shard.iter_documents(start, order):
            read["documents"] += 1
            if self._is_held_out(doc) != (self.split == "eval"):
                continue
            read["kept"] += 1
            docs.append(doc)
            positions.append(position)
            chars += sum(map(len, doc))
            if len(docs) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
                yield self._make_chunk(epoch, index, docs, positions)
                index += 1
                docs, positions, chars = [], [], 0
        if docs:
            yield self._make_chunk(epoch, index, docs, positions)

    def _unit_order(self, epoch: int) -> list[int]:
        """Train visits this host's units in a new order every epoch (some several times, or
        some not at all, under source_repeats); eval each once, in a fixed order."""
        n = len(self.shard.units)
        if self.split == "eval":
            return list(range(n))
        if not self.config.source_repeats:
            return train_unit_order(n, self.seed, self.host, epoch)
        part_of = getattr(self.shard.source, "part_of", lambda unit: 0)  # one source: 0
        parts = [part_of(unit) for unit in self.shard.units]
        return train_unit_order(n, self.seed, self.host, epoch,
                                [self.config.source_repeats[p] for p in parts], parts)

    def _is_held_out(self, doc: list[str]) -> bool:
        """Stable across runs, hosts and sharding: a hash of the document's text."""
        digest = zlib.crc32("\n".join(doc).encode("utf-8", "replace"))
        digest = (digest * 0x9E3779B1) & 0xFFFFFFFF  # spread crc32's low-entropy bits
        return digest < self._eval_threshold

    def _make_chunk(self, epoch, index, docs, positions) -> _Chunk:
        draws_of = self.host if self.split == "train" else 0  # eval: the same on every host
        rng = np.random.default_rng([self.seed, draws_of, _SPLITS[self.split], epoch, index])
        tokenized, kept = self._tokenize(docs)
        examples = examples_lib.make_examples(tokenized, self.options, rng, self.skips)
        order = rng.permutation(len(examples))
        return _Chunk(epoch, positions[0], index, [examples[i] for i in order][self._keep],
                      [positions[d] for d in kept])

    def _tokenize(self, docs: list[list[str]]) -> tuple[TokenizedChunk, np.ndarray]:
        """All sentences of the chunk in one batched tokenizer call, as one flat id array, and
        the indices of the documents it keeps: those with at least one token."""
        sentences = [_special_tokens_as_text(s) for doc in docs for s in doc]
        flat, lengths = _encode_flat(self.tokenizer, sentences)  # [T], [S]
        doc_of_sentence = np.repeat(np.arange(len(docs)), [len(d) for d in docs])  # [S]
        keep = lengths > 0  # sentences with no tokens (e.g. only control characters) vanish
        lengths, doc_of_sentence = lengths[keep], doc_of_sentence[keep]
        # A row holds max_seq_length - 3 tokens of text in nsp ([CLS] A [SEP] B [SEP]), - 2 in
        # full_sentences: a longer sentence loses its tail.
        room = self.config.max_seq_length - (3 if self.config.mode == examples_lib.NSP else 2)
        too_long = int(np.count_nonzero(lengths > room))
        if too_long:
            self.skips.add("sentence longer than max_seq_length truncated", n=too_long)
        per_doc = np.bincount(doc_of_sentence, minlength=len(docs))  # [D]
        kept = np.flatnonzero(per_doc)
        if len(kept) < len(docs):  # else an empty one could be drawn for a NotNext segment
            self.skips.add("document without tokens skipped", n=len(docs) - len(kept))
        return TokenizedChunk(
            flat,
            np.concatenate([[0], np.cumsum(lengths)]),
            np.concatenate([[0], np.cumsum(per_doc[kept])]),
        ), kept


def _encode_flat(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids of all texts back to back, and each text's count: Tokenizer.encode_flat if it has one."""
    if hasattr(tokenizer, "encode_flat"):
        return tokenizer.encode_flat(texts)
    ids = tokenizer.encode_batch(texts)
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum())), lengths


def train_unit_order(num_units: int, seed: int, host: int, epoch: int,
                     repeats: list[float] | None = None,
                     parts: list[int] | None = None) -> list[int]:
    """The order in which a host's train stream visits its units (files) in an epoch.

    `repeats[u]`: how many times unit u is visited, the whole part of it. The units of one
    source (`parts[u]`, the same for all by default) share its fractional part: that share of
    them, drawn afresh each epoch, get one visit more (the count rounded up or down at random,
    so that a source of one file read 0.5 times is read every other epoch on average).
    """
    rng = np.random.default_rng([seed, host, epoch, 0xF11E])
    if repeats is None:
        return rng.permutation(num_units).tolist()
    parts = [0] * num_units if parts is None else parts
    visits = [u for u, r in enumerate(repeats) for _ in range(int(r))]
    for part in sorted(set(parts)):
        units = [u for u in range(num_units) if parts[u] == part]
        fraction = repeats[units[0]] % 1
        count = int(fraction * len(units) + rng.random()) if fraction else 0
        visits += [units[i] for i in sorted(rng.choice(len(units), count, replace=False))]
    return [visits[i] for i in rng.permutation(len(visits))]


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Stopped(Exception):
    """The iterator was closed while a background stage waited."""


def _in_background(items: Iterator, stop: threading.Event, depth: int, name: str) -> Iterator:
    """Runs a generator in a thread `depth` items ahead; its errors re-raise in the consumer."""
    out: queue.Queue = queue.Queue(maxsize=depth)

    def produce():
        try:
            for item in items:
                while True:
                    if stop.is_set():
                        return
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # handed to the consumer, which raises it
            out.put(_Failure(e))

    threading.Thread(target=produce, name=name, daemon=True).start()
    while True:
        try:
            item = out.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped() from None
            continue
        if isinstance(item, _Failure):
            raise item.error
        yield item


class _ExampleReader:
    """Examples one at a time from a cursor, with the cursor of the next one.

    Chunks are made in a thread of their own: tokenization (native, GIL released) then
    overlaps with example layout and masking of the previous chunk.
    """

    def __init__(self, stream: _ExampleStream, cursor: _Cursor, stop: threading.Event):
        self._chunks = _in_background(stream.chunks(cursor), stop, CHUNKS_AHEAD, "input-chunks")
        self._chunk = next(self._chunks)
        self._offset = cursor.offset
        self._skip_exhausted()

    def _skip_exhausted(self):
        while self._offset >= len(self._chunk.examples):
            self._chunk, self._offset = next(self._chunks), 0

    def peek(self) -> Example:
        return self._chunk.examples[self._offset]

    def pop(self) -> Example:
        example = self.peek()
        self._offset += 1
        self._skip_exhausted()
        return example

    def cursor(self, batch: int) -> _Cursor:
        c = self._chunk
        return _Cursor(c.epoch, c.start.unit, c.start.doc, c.index, self._offset, batch)


class _BatchMaker:
    """Pure batch production: (cursor) -> stream of (batch, cursor after it)."""

    def __init__(self, stream: _ExampleStream, batch_size: int, tables: masking.MaskingTables):
        self.stream, self.batch_size, self.tables = stream, batch_size, tables
        self.config = stream.config

    def batches(
        self, cursor: _Cursor, stop: threading.Event
    ) -> Iterator[tuple[dict[str, np.ndarray], _Cursor]]:
        reader = _ExampleReader(self.stream, cursor, stop)
        batch_index = cursor.batch
        config, length = self.config, self.config.max_seq_length
        while True:
            rows = []
            for _ in range(self.batch_size):
                row, used = [reader.pop()], 0
                used = len(row[0].ids)
                while config.pack and used + len(reader.peek().ids) <= length:
                    row.append(reader.pop())
                    used += len(row[-1].ids)
                rows.append(row)
            arrays = packing.fill_rows(
                rows, length, pack=config.pack, nsp=config.mode == examples_lib.NSP
            )
            rng = np.random.default_rng(
                [self.stream.seed, self.stream.host, _SPLITS[self.stream.split], 0xA5C, batch_index]
            )
            arrays.update(masking.mask_batch(
                arrays["input_ids"], arrays["attention_mask"], self.tables,
                max_predictions=config.num_predictions, masked_lm_prob=config.masked_lm_prob,
                whole_word=config.whole_word_masking, rng=rng,
            ))
            batch_index += 1
            yield arrays, reader.cursor(batch_index)


class PretrainingIterator:
    """Masked pre-training batches (numpy dicts, this host's batch) with a restorable state.

    A background thread makes batches ahead of the consumer. `get_state()` describes the point
    after the last batch returned; `set_state()` makes the next batch the one that followed it.
    """

    def __init__(self, maker: _BatchMaker, split: str, prefetch: int = PREFETCH_BATCHES,
                 place: Callable[[dict], Any] | None = None):
        self._maker, self._split, self._prefetch, self._place = maker, split, prefetch, place
        self._cursor = _Cursor()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    @property
    def skipped(self) -> dict[str, int]:
        """Counts of skipped or repaired input, by reason."""
        return dict(self._maker.stream.skips.counts)

    def __iter__(self):
        return self

    def start(self) -> None:
        """Starts making batches ahead now (else the first `next()` does), e.g. to overlap the
        first chunk's tokenization with compilation. A no-op while already running."""
        if self._thread is None:
            self._start()

    def __next__(self) -> dict:
        """The next batch: numpy arrays, or what `place` made of them (e.g. jax.Arrays)."""
        self.start()
        item = self._queue.get()
        if isinstance(item, _Failure):
            self._stop.set()  # the batch thread has ended; this ends its chunk thread too
            self._thread = None
            raise item.error
        batch, self._cursor = item
        return batch

    def get_state(self) -> dict:
        """Small and JSON-serialisable: the split, the stream position and a format version."""
        return {"version": STATE_VERSION, "split": self._split,
                **dataclasses.asdict(self._cursor)}

    def set_state(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION or state.get("split") != self._split:
            raise ValueError(
                f"incompatible pipeline state {state!r}: expected version {STATE_VERSION}, "
                f"split {self._split!r}"
            )
        self.close()
        names = [f.name for f in dataclasses.fields(_Cursor)]
        self._cursor = _Cursor(**{k: int(state[k]) for k in names})

    def close(self) -> None:
        """Stops the prefetch thread; the iterator can continue later from where it stood."""
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None

    def __del__(self):
        self.close()

    def _start(self):
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._thread = threading.Thread(
            target=self._produce, args=(self._cursor, self._queue, self._stop),
            name="pretraining-input", daemon=True,
        )
        self._thread.start()

    def _produce(self, cursor: _Cursor, out: queue.Queue, stop: threading.Event):
        try:
            for batch, after in self._maker.batches(cursor, stop):
                item = (batch if self._place is None else self._place(batch), after)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
        except _Stopped:
            return
        except BaseException as e:  # handed to the consumer, which raises it
            out.put(_Failure(e))


def make_pretraining_iterator(
    config: PipelineConfig,
    tokenizer,
    *,
    batch_size: int,
    seed: int,
    split: str = "train",
    process_index: int | None = None,
    process_count: int | None = None,
    place: Callable[[dict], Any] | None = None,
) -> PretrainingIterator:
    """An endless iterator of this host's masked batches for `split` ("train" or "eval").

    Each process reads a disjoint part of the source (by default jax.process_index() of
    jax.process_count()); eval reads the held-out documents, every process all of them, and
    keeps its share of their examples. Epochs repeat with new shuffles,
    pairings and masks. `place`, if given, maps each numpy batch in the prefetch thread, e.g.
    onto the devices, so the copy happens ahead of the step that needs it; the iterator then
    returns what it returns.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    _check_tokenizer(tokenizer)
    skips = sources.SkipCounter()
    shard = _host_shard(config, skips, split, process_index, process_count)
    stream = _ExampleStream(config, tokenizer, shard, seed=seed, host=process_index, split=split,
                            skips=skips, process_count=process_count)
    tables = masking.MaskingTables.from_tokenizer(tokenizer)
    return PretrainingIterator(_BatchMaker(stream, batch_size, tables), split, place=place)


def _host_shard(config: PipelineConfig, skips, split: str, process_index: int,
                process_count: int) -> sources.HostShard:
    """Train: this host's part of the source. Eval: all of it (_ExampleStream shares out its
    examples instead)."""
    source = sources.open_source(config.source, skips)
    if split == "eval":
        return sources.HostShard(source)
    weights = source.unit_sizes
    if weights is not None and config.source_repeats:  # the text an epoch reads of each unit
        part_of = getattr(source, "part_of", lambda unit: 0)
        weights = [size * config.source_repeats[part_of(u)] for u, size in enumerate(weights)]
    shard = sources.HostShard(source, process_index, process_count, weights)
    if process_index == 0:
        _warn_uneven_shares(config.source, shard.shares, source.num_units)
    return shard


# Hosts' shares of the train text this far apart get a warning (with few units, no
# assignment evens them out).
UNEVEN_SHARES_RATIO = 1.25


def _warn_uneven_shares(spec: str, shares: list[float] | None, num_units: int) -> None:
    if not shares or len(shares) < 2:
        return
    small, large = min(shares), max(shares)
    if large <= UNEVEN_SHARES_RATIO * small or small == 0:  # none at all fails on its host
        return
    log.warning(
        "data source %r: the processes' shares of its train text are uneven: %.3g MB on "
        "process %d, %.3g MB on process %d (%d units over %d processes). Each process fills "
        "the same rows of every batch, so the smaller share is read %.1f times as often as "
        "the larger. More files of similar size even them out (a file is read in parts of "
        "%d MB).", spec, large / 1e6, shares.index(large), small / 1e6, shares.index(small),
        num_units, len(shares), large / small, sources.FILE_PART_BYTES >> 20)


def _check_tokenizer(tokenizer) -> None:
    for name in ("pad_id", "cls_id", "sep_id", "mask_id"):
        if getattr(tokenizer, name, None) is None:
            raise ValueError(f"the tokenizer has no {name}: the pipeline needs BERT special tokens")
    if tokenizer.pad_id != 0:
        raise ValueError(f"the batch contract pads with id 0, but the tokenizer's [PAD] is "
                         f"{tokenizer.pad_id}")


def iter_examples(
    config: PipelineConfig, tokenizer, *, seed: int, split: str = "train",
    process_index: int = 0, process_count: int = 1, epochs: int = 1,
) -> Iterator[tuple[Example, list[Position]]]:
    """Debug/provenance hook: examples before masking, in stream order, with the source
    positions of the chunk's documents (Example.origin indexes into them)."""
    skips = sources.SkipCounter()
    shard = _host_shard(config, skips, split, process_index, process_count)
    stream = _ExampleStream(config, tokenizer, shard, seed=seed, host=process_index, split=split,
                            skips=skips, process_count=process_count)
    for chunk in stream.chunks(_Cursor()):
        if chunk.epoch >= epochs:
            return
        for example in chunk.examples:
            yield example, chunk.doc_positions
