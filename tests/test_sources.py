"""Text sources: sentence splitting, file formats, TFDS, the built-in corpus, sharding, resume."""

import os

import pytest

from bert_jax.data import pipeline, sentences, sources
from bert_jax.data.sources import HostShard


def test_split_sentences_in_other_scripts():
    # Sentences that open with an upper-case letter beyond Latin-1, or a caseless script's.
    assert sentences.split_sentences("Он пришёл. Она ушла! Ωραία. Łódź leży. Ş bitti.") == [
        "Он пришёл.", "Она ушла!", "Ωραία.", "Łódź leży.", "Ş bitti."]
    assert sentences.split_sentences("هل أتيت؟ نعم. यह वाक्य है। दूसरा वाक्य।") == [
        "هل أتيت؟", "نعم.", "यह वाक्य है।", "दूसरा वाक्य।"]
    # Chinese and Japanese full stops, with or without a space after them.
    assert sentences.split_sentences("我来了。你呢？好！ 「行。」他说。") == [
        "我来了。", "你呢？", "好！", "「行。」", "他说。"]
    # Lower-case openings in any script stay continuations.
    assert sentences.split_sentences("«Да?» спросил он. Ça va. é bien.") == [
        "«Да?» спросил он.", "Ça va. é bien."]


def test_split_sentences_keeps_abbreviations_initials_and_dialogue():
    text = (
        "Mr. Darcy arrived at 4 A. M. with Dr. Watson. He was late! \u201cWhy?\u201d said she. "
        "\u201cBecause I was.\u201d Was it e.g. this? J. R. R. Tolkien wrote. _The End._ Next one."
    )
    assert sentences.split_sentences(text) == [
        "Mr. Darcy arrived at 4 A. M. with Dr. Watson.",
        "He was late!",
        "\u201cWhy?\u201d said she.",
        "\u201cBecause I was.\u201d",
        "Was it e.g. this?",
        "J. R. R. Tolkien wrote.",
        "_The End._",
        "Next one.",
    ]


def test_sentences_that_open_with_a_digit_are_split():
    """Years and counts open sentences in prose; a digit after a full stop is a boundary."""
    assert sentences.split_sentences("The war ended in 1918. 1919 brought peace. 3 men came.") == [
        "The war ended in 1918.", "1919 brought peace.", "3 men came."]


def test_text_source_reads_bert_format(data_dir):
    spec = f"text:{data_dir}/bert_sample/sample_text.txt"
    docs = list(sources.iter_documents(spec))
    assert [len(d) for d in docs] == [3, 13, 15]  # MANIFEST: 33 lines, 2 blank -> 3 documents
    assert docs[1][0].startswith("The rain had only ceased")


@pytest.fixture(scope="module")
def gutenberg_docs(data_dir):
    spec = f"prose:{data_dir}/gutenberg/*.txt"
    return spec, list(HostShard(sources.open_source(spec)).iter_documents())


def test_prose_documents_cover_every_word(gutenberg_docs, data_dir):
    spec, docs = gutenberg_docs
    source = sources.open_source(spec)
    assert len(source.files) == 5
    first_file = [d for p, d in docs if p.unit == 0]
    words = " ".join(" ".join(d) for d in first_file).split()
    with open(source.files[0], encoding="utf-8") as f:
        assert words == f.read().split()  # splitting loses and reorders nothing
    # Documents are runs of paragraphs of >= PROSE_DOCUMENT_CHARS (except each file's last).
    sizes = [sum(map(len, d)) for _, d in docs]
    assert sum(s >= sources.PROSE_DOCUMENT_CHARS * 0.95 for s in sizes) >= len(docs) - 5
    assert 300 < len(docs) < 450


@pytest.mark.parametrize("num_shards", [2, 7])  # 2: whole files per host; 7 > 5 files: by index
def test_hosts_get_disjoint_documents_covering_the_corpus(gutenberg_docs, num_shards):
    spec, docs = gutenberg_docs
    source = sources.open_source(spec)
    seen = []
    for host in range(num_shards):
        shard = HostShard(source, host, num_shards)
        seen.append([(shard.units[p.unit], p.doc) for p, _ in shard.iter_documents()])
    flat = [key for host_keys in seen for key in host_keys]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat) == sorted((p.unit, p.doc) for p, _ in docs)  # together: everything
    assert all(len(h) > 0 for h in seen)


def test_balanced_assignment_deals_the_heaviest_unit_to_the_lightest_shard():
    assert sources.balanced_assignment([5, 4, 3, 3, 3], 2) == [[0, 3], [1, 2, 4]]
    assert sources.balanced_assignment([1] * 5, 2) == [[0, 2, 4], [1, 3]]  # round-robin
    # Empty files weigh nothing, yet every shard gets a unit while there are enough.
    assert sources.balanced_assignment([0, 0, 0, 7], 3) == [[3], [0, 2], [1]]


def test_hosts_share_out_the_books_by_size(gutenberg_docs):
    """The five books (151 kB to 1.2 MB) on two hosts: dealt by size, the shares differ by
    13%; dealt round-robin they differed by 72% (the smaller share read 1.7 times as often)."""
    spec, _ = gutenberg_docs
    source = sources.open_source(spec)
    sizes = source.unit_sizes
    assert sizes == [os.path.getsize(path) for path in source.files]
    shards = [HostShard(source, host, 2) for host in range(2)]
    assert shards[0].shares == shards[1].shares == [
        sum(sizes[u] for u in shard.units) for shard in shards]
    assert max(shards[0].shares) / min(shards[0].shares) < 1.15
    round_robin = [sum(sizes[host::2]) for host in range(2)]
    assert max(round_robin) / min(round_robin) > 1.7
    # The source's own sizes unless told otherwise: weights (e.g. under source_repeats).
    assert HostShard(source, 0, 2, unit_weights=[1, 1, 1, 1, 100]).units == [4]


def test_uneven_host_shares_are_warned(gutenberg_docs, caplog):
    """Five books over four hosts cannot be evened out: process 0 says so, with the figures."""
    spec, _ = gutenberg_docs
    config = pipeline.PipelineConfig(spec)
    with caplog.at_level("WARNING"):
        pipeline._host_shard(config, sources.SkipCounter(), "train", 0, 2)
    assert "uneven" not in caplog.text
    with caplog.at_level("WARNING"):
        pipeline._host_shard(config, sources.SkipCounter(), "train", 0, 4)
    assert ("shares of its train text are uneven: 1.23 MB on process 0, 0.573 MB on process 3 "
            "(5 units over 4 processes)") in caplog.text
    assert "read 2.2 times as often" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # every process computes the shares; one reports them
        pipeline._host_shard(config, sources.SkipCounter(), "train", 1, 4)
    assert "uneven" not in caplog.text


@pytest.mark.parametrize("kind", ["text", "prose"])
def test_a_large_file_is_read_in_parts_that_hold_each_line_once(data_dir, monkeypatch, kind):
    # Parts of 100 kB of Moby-Dick (1.2 MB, typographic quotes: parts start inside UTF-8
    # characters): many units from one file, as 64 MB parts give from one wiki.txt.
    path = data_dir / "gutenberg" / "2701-0.txt"
    whole = sources.open_source(f"{kind}:{path}")
    assert whole.num_units == 1
    monkeypatch.setattr(sources, "FILE_PART_BYTES", 100_000)
    parts = sources.open_source(f"{kind}:{path}")
    assert parts.num_units == -(-os.path.getsize(path) // 100_000) == 13

    def text(source):
        return [s for unit in range(source.num_units) for doc in source.read_unit(unit)
                for s in doc]

    if kind == "text":  # a line is a sentence: the same lines, in the same order
        assert text(parts) == text(whole)
    else:  # paragraphs that a part boundary cuts are split there: the same words
        assert " ".join(text(parts)).split() == " ".join(text(whole)).split()
    assert not parts.skips.counts  # no part began inside a character
    docs = list(parts.read_unit(5))
    assert list(parts.read_unit(5, start_doc=2)) == docs[2:]  # resuming re-reads one part
    # Hosts share the parts out: one file no longer means every host reads all of it.
    shards = [HostShard(parts, host, 4) for host in range(4)]
    assert [len(shard.units) for shard in shards] == [4, 3, 3, 3]
    assert sorted(s for shard in shards for _, doc in shard.iter_documents() for s in doc) == (
        sorted(text(parts)))


def test_reading_resumes_at_a_recorded_position(gutenberg_docs):
    spec, docs = gutenberg_docs
    shard = HostShard(sources.open_source(spec), 1, 7)
    order = [4, 2, 0, 3, 1]
    full = list(shard.iter_documents(order=order))
    k = len(full) // 3
    resumed = list(shard.iter_documents(full[k][0], order=order))
    assert resumed == full[k:]


def test_bad_files_are_counted_not_fatal(tmp_path):
    (tmp_path / "a_empty.txt").write_bytes(b"")
    (tmp_path / "b_bad.txt").write_bytes(b"Good line.\nBad \xff\xfe bytes here.\n\nNext doc.\n")
    skips = sources.SkipCounter()
    source = sources.open_source(f"text:{tmp_path}/*.txt", skips)
    docs = [d for u in range(source.num_units) for d in source.read_unit(u)]
    assert docs == [["Good line.", "Bad  bytes here."], ["Next doc."]]
    assert skips.counts["input file without text skipped"] == 1
    assert skips.counts["invalid UTF-8 byte sequence dropped"] == 2


def test_bad_specs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no files"):
        sources.open_source(f"text:{tmp_path}/nothing-*.txt")
    with pytest.raises(ValueError, match="unknown data source"):
        sources.open_source("csv:foo")


def test_builtin_corpus_reads_python_docs_without_importing():
    source = sources.open_source("builtin")
    topics = list(source.read_unit(0))
    assert len(topics) > 50 and all(len(d) >= 1 for d in topics)
    assert source.num_units > 500  # 1 topics unit + the stdlib modules
    names = source._modules
    assert names == sorted(names) and not any(n.startswith("test" + os.sep) for n in names)
    module = names.index(os.path.join("json", "__init__.py")) + 1
    doc = next(source.read_unit(module))
    assert any("JSON" in s for s in doc)
    assert list(source.read_unit(module, start_doc=1)) == []


def test_tfds_source_reads_a_locally_built_dataset(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyBertCorpus(tfds.core.GeneratorBasedBuilder):
        """Three short articles, built here (no download)."""

        VERSION = tfds.core.Version("1.0.0")
        # A one-part module name keeps TFDS from probing package resources (which needs the
        # `importlib_resources` package, missing here) to find checksums it does not need.
        __module__ = "tiny_bert_corpus"

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(3), "validation": self._generate_examples(1)}

        def _generate_examples(self, n):
            for i in range(n):
                text = f"Article {i} begins here. It has two sentences.\n\nA second paragraph."
                yield i, {"text": text}

    TinyBertCorpus(data_dir=str(tmp_path)).download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    docs = list(sources.iter_documents("tfds:tiny_bert_corpus"))
    assert docs == [
        [f"Article {i} begins here.", "It has two sentences.", "A second paragraph."]
        for i in range(3)
    ]
    assert len(list(sources.iter_documents("tfds:tiny_bert_corpus:validation"))) == 1
    # A pinned version, with or without a split.
    assert list(sources.iter_documents("tfds:tiny_bert_corpus:1.0.0")) == docs
    assert len(list(sources.iter_documents("tfds:tiny_bert_corpus:1.0.0:validation"))) == 1
    assert list(sources.iter_documents("tfds:tiny_bert_corpus", shard_index=1, num_shards=2)) == [
        docs[1]
    ]
    # One unit of 3 records, sized from the split's bytes: dealt out by size among files.
    [size] = sources.open_source("tfds:tiny_bert_corpus").unit_sizes
    assert 3 * 60 < size < 3 * 200
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        sources.open_source("tfds:no_such_dataset_xyz")
    with pytest.raises(ValueError, match="no split"):
        sources.open_source("tfds:tiny_bert_corpus:test")


def test_sources_joined_by_plus_read_as_one_corpus(data_dir, gutenberg_docs):
    """Units of each source one after the other: every document of both, once, in order; hosts
    split the joined units; reading resumes at a position inside the second source."""
    books, book_docs = gutenberg_docs
    sample = f"text:{data_dir}/bert_sample/sample_text.txt"
    joined = sources.open_source(f"{sample} + {books}")
    assert isinstance(joined, sources.ConcatSource) and joined.num_units == 1 + 5
    docs = list(HostShard(joined).iter_documents())
    assert [d for _, d in docs] == list(sources.iter_documents(sample)) + [d for _, d in book_docs]
    assert [p.unit for p, _ in docs][:4] == [0, 0, 0, 1]

    seen = [d for host in range(4) for _, d in HostShard(joined, host, 4).iter_documents()]
    assert sorted(map(tuple, seen)) == sorted(tuple(d) for _, d in docs)

    shard = HostShard(joined, 1, 2)
    assert shard.units == [0, 1, 2, 3]  # the sample and three books (host 0: the two largest)
    order = [0, 2, 1, 3]
    full = list(shard.iter_documents(order=order))
    k = len(full) // 2
    assert full[k][0].unit > 0 and list(shard.iter_documents(full[k][0], order=order)) == full[k:]


def test_a_bad_part_of_joined_sources_is_named(data_dir, tmp_path):
    sample = f"text:{data_dir}/bert_sample/sample_text.txt"
    with pytest.raises(FileNotFoundError,
                       match=f"'text:{tmp_path}/none-[*].txt': the glob matches no files"):
        sources.open_source(f"{sample}+text:{tmp_path}/none-*.txt")
    with pytest.raises(ValueError, match="an empty source between"):
        sources.open_source(f"{sample}+")
    with pytest.raises(ValueError, match="unknown data source 'csv:x'"):
        sources.open_source(f"{sample}+csv:x")


def test_a_plus_inside_a_path_is_explained_and_a_wildcard_reads_it(data_dir, tmp_path):
    folder = tmp_path / "c++"
    folder.mkdir()
    (folder / "notes.txt").write_text("A first sentence.\nA second one.\n")
    with pytest.raises(ValueError, match=r"an empty source between '\+' signs \('\+' joins "
                                         r"sources; for a '\+' inside a path, write the glob "
                                         r"wildcard '\?' in its place\)"):
        sources.open_source(f"text:{folder}/notes.txt")
    with pytest.raises(ValueError, match=r"unknown data source 'b.txt' between '\+' signs"):
        sources.open_source(f"text:{tmp_path}/a+b.txt")
    assert list(sources.iter_documents(f"text:{tmp_path}/c??/notes.txt")) == [
        ["A first sentence.", "A second one."]]
