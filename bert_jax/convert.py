"""Convert checkpoints between other BERT formats and this package's.

    python -m bert_jax.convert --from=hf --input=HF_FOLDER --output=DIR
    python -m bert_jax.convert --from=tf1 --input=GOOGLE_BERT_FOLDER --output=DIR [--nolowercase]
    python -m bert_jax.convert --to=hf --input=CHECKPOINT --output=HF_FOLDER
    python -m bert_jax.convert --to=tf1 --input=CHECKPOINT --output=GOOGLE_BERT_FOLDER

A Hugging Face folder holds config.json, model.safetensors (or pytorch_model.bin, read without
running pickled code) and vocab.txt, or tokenizer.json where a fast tokenizer saved only that.
An original Google BERT folder holds bert_model.ckpt.*, bert_config.json and vocab.txt;
`--from=tf` is the same as `--from=tf1`. A --to=hf export holds config.json, model.safetensors
and the tokenizer twice: as this package saves it, and as transformers' AutoTokenizer reads it (see
bert_jax.interop.hf_tokenizer). `--to=tf1` writes an original Google BERT folder (WordPiece
vocabularies only; the encoder, pooler and pre-training heads) for the original code.

--output must be a new or an empty folder: a conversion never writes over or beside earlier
files. A local output appears only once complete (it is written into OUTPUT.tmp-* beside it,
then renamed); a failed conversion leaves none. Any end may be on gs://: a --to=hf export
there is written in a local temporary folder, then uploaded file by file.

Fine-tuned checkpoints travel with their heads (bert_jax.interop.hf_tasks): a GLUE classifier
exports as a BertForSequenceClassification with its label names, a SQuAD model as a
BertForQuestionAnswering, a CoNLL tagger as a BertForTokenClassification; importing one of
those (ours or any other) gives a checkpoint that `predict classify|qa|ner` runs.
"""

from absl import app, flags

from bert_jax.interop import convert

FLAGS = flags.FLAGS
flags.DEFINE_enum("from", None, ["hf", "tf1", "tf"],
                  "Import from this format into a bert_jax checkpoint.")
flags.DEFINE_enum("to", None, ["hf", "tf1", "tf"],
                  "Export a bert_jax checkpoint to this format.")
flags.DEFINE_string("input", None, "Folder to read.", required=True)
flags.DEFINE_string("output", None, "Folder to write: new, or empty.", required=True)
flags.DEFINE_boolean(
    "lowercase", None,
    "Imports: whether the WordPiece vocab lowercases text. Unset: hf takes the casing our "
    "export stored, else tokenizer_config.json's do_lower_case, else tokenizer.json's "
    "normaliser (default true); tf1 infers it from the folder name (cased_*/multi_cased_* keep "
    "case, anything else lowercases).")

IMPORTERS = {"hf": convert.import_hf, "tf1": convert.import_tf1, "tf": convert.import_tf1}
EXPORTERS = {"hf": convert.export_hf, "tf1": convert.export_tf1, "tf": convert.export_tf1}


def main(argv):
    del argv
    source, target = FLAGS["from"].value, FLAGS.to
    if (source is None) == (target is None):
        raise app.UsageError("give exactly one of --from or --to")
    if source is not None:
        print(IMPORTERS[source](FLAGS.input, FLAGS.output, lowercase=FLAGS.lowercase))
    else:
        if FLAGS.lowercase is not None:
            raise app.UsageError("--lowercase applies to imports (--from) only")
        print(EXPORTERS[target](FLAGS.input, FLAGS.output))


if __name__ == "__main__":
    app.run(main)
