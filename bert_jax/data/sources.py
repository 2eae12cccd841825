"""Text sources: documents (lists of sentences) from files, TFDS or the built-in corpus.

A source spec names where the text is:
    text:GLOB          original BERT format: one sentence per line, a blank line between documents
    prose:GLOB         paragraphs separated by blank lines (books); a document is a run of
                       paragraphs of at least PROSE_DOCUMENT_CHARS characters, split into sentences
    tfds:NAME[:VERSION][:SPLIT]  a TFDS dataset (default split "train", version the latest
                       prepared); a record's "text" is a document
    builtin            Python's own documentation: pydoc topics + standard-library docstrings
    SPEC+SPEC+...      several sources as one corpus, their units together (the BERT paper's
                       BooksCorpus + English Wikipedia: prose:gs://b/books/*.txt+tfds:wikipedia/..);
                       data.source_repeats reads some more often than others (pipeline.py)
GLOBs may be local or on gs:// (read through tf.io.gfile), comma-separated for several patterns.

Every source is a list of *units* (a file, a slice of TFDS records, a stdlib module) holding
documents in a fixed order, so that a position (unit, document index) names any point of the
stream and reading can restart there cheaply. Hosts split the units between them when there are
enough (evening out their sizes), else they split each unit's documents by index.
"""

from __future__ import annotations

import abc
import ast
import bisect
import collections
import dataclasses
import glob as globlib
import itertools
import logging
import os
import re
import sysconfig
import threading
from collections.abc import Iterator, Sequence

from bert_jax.data import sentences as sentences_lib

Document = list[str]

PROSE_DOCUMENT_CHARS = 8000  # ~1,500 words: several 512-token sequences per document
TFDS_RECORDS_PER_UNIT = 10_000
READ_BLOCK_BYTES = 1 << 20
FILE_PART_BYTES = 64 << 20  # a unit of a text file: a part this long (see _FileSource)
# CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion depth mismatch"),
# and the train and eval iterators read the built-in corpus from separate threads.
_AST_PARSE_LOCK = threading.Lock()
_BUILTIN_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})

log = logging.getLogger(__name__)


class SkipCounter:
    """Counts skipped or repaired input by reason; warns on the first few of each, with counts."""

    _WARN_FIRST = 5

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, reason: str, detail: str = "", n: int = 1) -> None:
        self.counts[reason] += n
        count = self.counts[reason]
        if count <= self._WARN_FIRST or count & (count - 1) == 0:  # then at powers of two
            log.warning("%s (%d so far)%s", reason, count, f": {detail}" if detail else "")


@dataclasses.dataclass(frozen=True, order=True)
class Position:
    """A point in a host's document stream: unit (index into the epoch's unit order), doc."""

    unit: int = 0
    doc: int = 0  # raw document index inside the unit (counting other hosts' documents too)


# ----------------------------------------------------------------------------------------------
# Sources: units of documents.


class Source(abc.ABC):
    """Documents grouped in units, all in a deterministic order."""

    def __init__(self, spec: str, skips: SkipCounter | None = None):
        self.spec = spec
        self.skips = skips or SkipCounter()

    @property
    @abc.abstractmethod
    def num_units(self) -> int:
        """How many units (files, record slices, modules) the source has."""

    @abc.abstractmethod
    def read_unit(self, unit: int, start_doc: int = 0) -> Iterator[Document]:
        """The documents of one unit from index `start_doc` on.

        An empty list stands for a record without text, so that indices stay stable.
        """

    @property
    def unit_sizes(self) -> list[float] | None:
        """Each unit's size in bytes of text (approximate), or None where unknown; hosts share
        units out by it (HostShard)."""
        return None


class _FileSource(Source):
    """Files matched by comma-separated globs, local or on a tf.io.gfile file system.

    A unit is a part of a file: FILE_PART_BYTES of it, and the lines that start there. A
    corpus in a few large files (one wiki.txt) so still has many units: hosts share them out,
    epochs visit them in new orders, and a resumed run re-reads at most one part.
    """

    def __init__(self, spec: str, patterns: str, skips: SkipCounter | None = None):
        super().__init__(spec, skips)
        self.files = _expand_globs(patterns)
        if not self.files:
            raise FileNotFoundError(f"data source {spec!r}: the glob matches no files")
        self._parts = [(path, start, min(start + FILE_PART_BYTES, size), size)
                       for path, size in zip(self.files, _file_sizes(self.files))
                       for start in range(0, max(size, 1), FILE_PART_BYTES)]

    @property
    def num_units(self) -> int:
        return len(self._parts)

    @property
    def unit_sizes(self) -> list[float]:
        return [end - start for _, start, end, _ in self._parts]

    def read_unit(self, unit: int, start_doc: int = 0) -> Iterator[Document]:
        path, start, end, size = self._parts[unit]
        empty = True
        for index, doc in enumerate(self._documents(_read_blocks(path, self.skips, start, end))):
            empty = False
            if index >= start_doc:
                yield doc
        if empty and start == 0 and end == size:  # the whole file
            self.skips.add("input file without text skipped", path)

    @abc.abstractmethod
    def _documents(self, blocks: Iterator[str]) -> Iterator[Document]:
        """The non-empty documents of a file part's text (blocks of whole lines)."""


class TextSource(_FileSource):
    """Original BERT format: one sentence per line, blank lines between documents."""

    def _documents(self, blocks: Iterator[str]) -> Iterator[Document]:
        doc: Document = []
        for line in _lines(blocks):
            line = line.strip()
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
        if doc:
            yield doc


class ProseSource(_FileSource):
    """Paragraphs separated by blank lines; documents of >= PROSE_DOCUMENT_CHARS characters."""

    def _documents(self, blocks: Iterator[str]) -> Iterator[Document]:
        doc: Document = []
        chars = 0
        for paragraph in sentences_lib.iter_text_paragraphs(blocks):
            doc.extend(sentences_lib.split_sentences(paragraph))
            chars += len(paragraph)
            if chars >= PROSE_DOCUMENT_CHARS:
                yield doc
                doc, chars = [], 0
        if doc:
            yield doc


class TfdsSource(Source):
    """A TFDS dataset split, read in slices of TFDS_RECORDS_PER_UNIT records (never downloaded).

    The dataset must already be prepared in the TFDS data dir ($TFDS_DATA_DIR or data_dir).
    """

    def __init__(
        self, spec: str, name: str, split: str, data_dir: str | None = None,
        skips: SkipCounter | None = None,
    ):
        super().__init__(spec, skips)
        import tensorflow_datasets as tfds  # heavy; only TFDS sources pay for it

        self._tfds = tfds
        data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
        try:
            self._builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.DatasetNotFoundError as e:
            raise ValueError(f"data source {spec!r}: unknown TFDS dataset {name!r}") from e
        if not self._builder.is_prepared():
            raise FileNotFoundError(
                f"data source {spec!r}: TFDS dataset {name!r} is not prepared in "
                f"{self._builder.data_dir}; build it first (`tfds build {name}`)"
            )
        splits = self._builder.info.splits
        if split not in splits:
            raise ValueError(f"data source {spec!r}: no split {split!r}; has {sorted(splits)}")
        if "text" not in self._builder.info.features:
            raise ValueError(f"data source {spec!r}: the dataset has no 'text' feature")
        self._split = split
        self._num_records = splits[split].num_examples
        self._num_bytes = splits[split].num_bytes

    @property
    def num_units(self) -> int:
        return -(-self._num_records // TFDS_RECORDS_PER_UNIT)

    @property
    def unit_sizes(self) -> list[float] | None:
        if not self._num_bytes:  # a dataset whose info has no size
            return None
        per_record = self._num_bytes / self._num_records
        return [per_record * (min(first + TFDS_RECORDS_PER_UNIT, self._num_records) - first)
                for first in range(0, self._num_records, TFDS_RECORDS_PER_UNIT)]

    def read_unit(self, unit: int, start_doc: int = 0) -> Iterator[Document]:
        first = unit * TFDS_RECORDS_PER_UNIT
        end = min(first + TFDS_RECORDS_PER_UNIT, self._num_records)
        if first + start_doc >= end:
            return
        # Split slicing lets TFDS seek to the record instead of reading the unit's head.
        ds = self._builder.as_dataset(
            split=f"{self._split}[{first + start_doc}:{end}]", shuffle_files=False
        )
        for record in self._tfds.as_numpy(ds):
            doc = sentences_lib.text_to_sentences(_decode(record["text"], self.spec, self.skips))
            if doc:
                yield doc
            else:
                # Keep the raw index stable: an empty record still occupies its slot.
                self.skips.add("empty TFDS record", self.spec)
                yield []


class BuiltinSource(Source):
    """Python's own English documentation: pydoc topics, then stdlib docstrings via `ast`.

    Unit 0 holds one document per pydoc topic; every other unit is one standard-library module
    whose docstrings (module, classes, functions, in source order) form one document. The
    modules are parsed, never imported.
    """

    def __init__(self, spec: str = "builtin", skips: SkipCounter | None = None):
        super().__init__(spec, skips)
        root = sysconfig.get_paths()["stdlib"]
        self._root = root
        self._modules = sorted(_stdlib_modules(root))

    @property
    def num_units(self) -> int:
        return 1 + len(self._modules)

    def read_unit(self, unit: int, start_doc: int = 0) -> Iterator[Document]:
        if unit == 0:
            from pydoc_data import topics  # data only: a dict of help texts

            for key in sorted(topics.topics)[start_doc:]:
                yield sentences_lib.text_to_sentences(topics.topics[key]) or [key]
            return
        if start_doc == 0:
            doc = self._module_document(self._modules[unit - 1])
            if doc:
                yield doc

    def _module_document(self, relpath: str) -> Document:
        with open(os.path.join(self._root, relpath), "rb") as f:
            try:
                source = f.read()
                with _AST_PARSE_LOCK:
                    tree = ast.parse(source, filename=relpath)
            except (SyntaxError, ValueError):
                self.skips.add("unparsable stdlib module", relpath)
                return []
        doc: Document = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node, clean=True)
                if text:
                    doc.extend(sentences_lib.text_to_sentences(text))
        return doc


def _stdlib_modules(root: str) -> Iterator[str]:
    """Relative paths of the standard library's .py files, tests and third-party code excluded."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _BUILTIN_SKIP_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(dirpath, name), root)


class ConcatSource(Source):
    """Several sources read as one: the units of the first, then those of the next, ... Each
    epoch visits all units in a new order (pipeline.train_unit_order), so the sources' documents
    mix unit by unit, in proportion to their sizes, as the original BERT's concatenated corpora.
    """

    def __init__(self, spec: str, parts: Sequence[Source], skips: SkipCounter | None = None):
        super().__init__(spec, skips)
        self.parts = list(parts)
        self._first_units = list(itertools.accumulate(p.num_units for p in self.parts))
        self._first_units.insert(0, 0)  # [0, n0, n0 + n1, ...]

    @property
    def num_units(self) -> int:
        return self._first_units[-1]

    @property
    def unit_sizes(self) -> list[float] | None:
        sizes = [part.unit_sizes for part in self.parts]
        return None if None in sizes else [size for part in sizes for size in part]

    def read_unit(self, unit: int, start_doc: int = 0) -> Iterator[Document]:
        part = self.part_of(unit)
        return self.parts[part].read_unit(unit - self._first_units[part], start_doc)

    def part_of(self, unit: int) -> int:
        """Which of the joined sources (0, 1, ...) holds the unit."""
        return bisect.bisect_right(self._first_units, unit) - 1


def open_source(spec: str, skips: SkipCounter | None = None) -> Source:
    """The Source a spec names (see the module docstring); raises ValueError for bad specs."""
    expected = "expected builtin, text:GLOB, prose:GLOB or tfds:NAME[:VERSION][:SPLIT]"
    if "+" not in spec:
        opener = _single_source(spec, skips)
        if opener is None:
            raise ValueError(f"unknown data source {spec!r}; {expected}, or several joined "
                             "by '+'")
        return opener()
    skips = skips or SkipCounter()
    names = [name.strip() for name in spec.split("+")]
    # A path with '+' in it (c++/...) reads as joined sources: say so, and how to give it.
    hint = "'+' joins sources; for a '+' inside a path, write the glob wildcard '?' in its place"
    if not all(names):
        raise ValueError(f"data source {spec!r}: an empty source between '+' signs ({hint})")
    openers = [_single_source(name, skips) for name in names]  # all checked before any opens
    for name, opener in zip(names, openers):
        if opener is None:
            raise ValueError(f"data source {spec!r}: unknown data source {name!r} between '+' "
                             f"signs; {expected} ({hint})")
    return ConcatSource(spec, [opener() for opener in openers], skips)


def _single_source(spec: str, skips: SkipCounter | None):
    """A function opening the Source of a spec without '+', or None for an unknown spec."""
    kind, _, rest = spec.partition(":")
    if kind == "text" and rest:
        return lambda: TextSource(spec, rest, skips)
    if kind == "prose" and rest:
        return lambda: ProseSource(spec, rest, skips)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        # NAME:VERSION[:SPLIT], TFDS's way of pinning a version (e.g. wikipedia/20230601.en:1.0.0)
        version = re.fullmatch(r"(\d+\.\d+\.\d+)(?::(.*))?", split)
        if version:
            name, split = f"{name}:{version.group(1)}", version.group(2)
        return lambda: TfdsSource(spec, name, split or "train", skips=skips)
    if spec == "builtin":
        return lambda: BuiltinSource(spec, skips)
    return None


# ----------------------------------------------------------------------------------------------
# Host sharding and positions.


class HostShard:
    """One host's disjoint part of a source; all hosts' parts together cover it.

    By units when there are at least as many units as hosts (every host reads whole files),
    else by document index inside every unit. Units of known size (`unit_weights`, by default
    the source's unit_sizes) are dealt out to even the hosts' totals, in `shares`: each host
    fills the same rows of every batch, so a host with less text reads its text more often.
    Units of unknown size go round-robin.
    """

    def __init__(self, source: Source, shard_index: int = 0, num_shards: int = 1,
                 unit_weights: Sequence[float] | None = None):
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
        self.source = source
        self.shares: list[float] | None = None  # each host's total weight, where known
        if source.num_units >= num_shards:
            weights = source.unit_sizes if unit_weights is None else unit_weights
            if weights is None:
                self.units = list(range(shard_index, source.num_units, num_shards))
            else:
                assignment = balanced_assignment(weights, num_shards)
                self.units = assignment[shard_index]
                self.shares = [sum(weights[u] for u in units) for units in assignment]
            self._stride, self._offset = 1, 0
        else:
            self.units = list(range(source.num_units))
            self._stride, self._offset = num_shards, shard_index

    def iter_documents(
        self, start: Position = Position(), order: Sequence[int] | None = None
    ) -> Iterator[tuple[Position, Document]]:
        """(position, document) from `start` on; `order` permutes this host's units."""
        order = range(len(self.units)) if order is None else order
        for u in range(start.unit, len(order)):
            first = start.doc if u == start.unit else 0
            # Round up to this host's first document index at or after `first`.
            first += (self._offset - first) % self._stride
            docs = self.source.read_unit(self.units[order[u]], first)
            for i, doc in enumerate(docs):
                if i % self._stride == 0 and doc:
                    yield Position(u, first + i), doc


def balanced_assignment(weights: Sequence[float], num_shards: int) -> list[list[int]]:
    """Units dealt to shards, heaviest first, each to the lightest shard so far (among equals,
    the one with fewest units, then the lowest index: with at least as many units as shards,
    every shard gets one, empty files or not); every shard's units in ascending order.
    Deterministic: every host computes the same assignment."""
    totals = [0.0] * num_shards
    assignment: list[list[int]] = [[] for _ in range(num_shards)]
    for unit in sorted(range(len(weights)), key=lambda u: (-weights[u], u)):
        lightest = min(range(num_shards), key=lambda i: (totals[i], len(assignment[i]), i))
        totals[lightest] += weights[unit]
        assignment[lightest].append(unit)
    return [sorted(units) for units in assignment]


def iter_documents(
    spec: str, *, shard_index: int = 0, num_shards: int = 1, start: Position = Position()
) -> Iterator[Document]:
    """The documents (lists of sentences) of a source spec, this shard's part, in order."""
    shard = HostShard(open_source(spec), shard_index, num_shards)
    for _, doc in shard.iter_documents(start):
        yield doc


# ----------------------------------------------------------------------------------------------
# Reading files.


def _expand_globs(patterns: str) -> list[str]:
    files: set[str] = set()
    for pattern in filter(None, (p.strip() for p in patterns.split(","))):
        if "://" in pattern:
            import tensorflow as tf  # gs:// and other remote file systems

            files.update(tf.io.gfile.glob(pattern))
        else:
            files.update(p for p in globlib.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
    return sorted(files)


def _open_binary(path: str):
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def _file_sizes(paths: list[str]) -> list[int]:
    """Byte sizes; remote ones (a stat each) asked in parallel."""
    if not any("://" in path for path in paths):
        return [os.path.getsize(path) for path in paths]
    import concurrent.futures

    import tensorflow as tf

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        return list(pool.map(lambda path: tf.io.gfile.stat(path).length, paths))


def _read_blocks(path: str, skips: SkipCounter, start: int = 0,
                 end: int | None = None) -> Iterator[str]:
    """Decoded text of the lines of a file that start in bytes [start, end), in blocks of about
    READ_BLOCK_BYTES that end at a line end (one decode per block, not per line; a line end
    is never inside a UTF-8 character); invalid UTF-8 bytes are dropped and counted."""
    with _open_binary(path) as f:
        position = start
        if start > 0:
            f.seek(start - 1)
            # The rest of the line under way at `start` (or the line end just before it)
            # belongs to the part before.
            position += len(f.readline()) - 1
        while end is None or position < end:
            size = READ_BLOCK_BYTES if end is None else min(READ_BLOCK_BYTES, end - position)
            block = f.read(size)
            if not block:
                return
            block += f.readline()  # the block's last line started before `end`: it is ours
            position += len(block)
            yield _decode(block, path, skips)


def _lines(blocks: Iterator[str]) -> Iterator[str]:
    """The lines of blocks of whole lines, without their "\n"."""
    for block in blocks:
        lines = block.split("\n")
        if block.endswith("\n"):
            lines.pop()  # the "" after the block's last line end
        yield from lines


def _decode(raw: bytes, where: str, skips: SkipCounter) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        skips.add("invalid UTF-8 byte sequence dropped", where, text.count("\ufffd"))
        return text.replace("\ufffd", "")
