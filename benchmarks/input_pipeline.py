"""Input-pipeline throughput: raw text -> masked, fixed-shape batches, in sequences per second.

    python benchmarks/input_pipeline.py --seq_len=512 --mode=nsp
    python benchmarks/input_pipeline.py --seq_len=128 --mode=nsp
    python benchmarks/input_pipeline.py --seq_len=512 --mode=nsp --tokenizer=sentencepiece

Defaults: the staged Gutenberg books as prose and the staged uncased WordPiece vocab;
`--tokenizer=sentencepiece` first trains one on the same input (not timed). Warm-up batches are
excluded; the timed batches cover several passes over the books, so reading, sentence splitting
and tokenization are all inside the measurement (no example, id or mask outlives its pass;
the WordPiece tokenizer remembers the pieces of up to 2**17 distinct words).
The last line printed is `sequences_per_sec=<N>`.
"""

import tempfile
import time

from absl import app, flags

from bert_jax.data import pipeline
from bert_jax.data.shared_data import shared_data_path
from bert_jax.data.tokenization import load_tokenizer, train_sentencepiece_from_source

_SOURCE = flags.DEFINE_string("source", None, "data source spec (default: the Gutenberg books)")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "wordpiece",
    "wordpiece (the staged uncased vocab), sentencepiece (trained on the source first) or a spec",
)
_SPM_VOCAB = flags.DEFINE_integer("spm_vocab_size", 16000, "--tokenizer=sentencepiece's vocab")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 512, "max_seq_length")
_MODE = flags.DEFINE_enum("mode", "nsp", ["nsp", "full_sentences"], "example mode")
_BATCH = flags.DEFINE_integer("batch_size", 64, "sequences per batch")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "how long to measure")
_WARMUP = flags.DEFINE_integer("warmup_batches", 4, "batches before the clock starts")


def main(argv):
    del argv
    source = _SOURCE.value or f"prose:{shared_data_path('gutenberg')}/*.txt"
    config = pipeline.PipelineConfig(source, mode=_MODE.value, max_seq_length=_SEQ_LEN.value)
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = _tokenizer(_TOKENIZER.value, source, workdir)
    iterator = pipeline.make_pretraining_iterator(
        config, tokenizer, batch_size=_BATCH.value, seed=0, process_index=0, process_count=1,
    )
    for _ in range(_WARMUP.value):
        next(iterator)
    start, sequences, tokens = time.perf_counter(), 0, 0
    while time.perf_counter() - start < _SECONDS.value:
        batch = next(iterator)
        sequences += len(batch["input_ids"])
        tokens += int(batch["attention_mask"].sum())
    elapsed = time.perf_counter() - start
    iterator.close()
    epochs = iterator.get_state()["epoch"]
    print(f"source={source} tokenizer={_TOKENIZER.value} mode={_MODE.value} "
          f"seq_len={_SEQ_LEN.value} batch_size={_BATCH.value} seconds={elapsed:.1f} "
          f"epochs_reached={epochs}")
    print(f"real_tokens_per_sec={tokens / elapsed:.0f}")
    print(f"sequences_per_sec={sequences / elapsed:.0f}")


def _tokenizer(name: str, source: str, workdir: str):
    if name == "wordpiece":
        return load_tokenizer(f"wordpiece:{shared_data_path('bert_vocab', 'vocab.txt')}")
    if name == "sentencepiece":
        return train_sentencepiece_from_source(source, _SPM_VOCAB.value, f"{workdir}/spm")
    return load_tokenizer(name)


if __name__ == "__main__":
    app.run(main)
