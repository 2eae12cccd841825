"""Convert checkpoints between other BERT formats and this package's.

    python -m bert_jax.convert --from=hf --input=HF_FOLDER --output=DIR
    python -m bert_jax.convert --to=hf --input=CHECKPOINT --output=HF_FOLDER
"""

from absl import app, flags

from bert_jax.interop import convert

FLAGS = flags.FLAGS
flags.DEFINE_enum("from", None, ["hf"], "Import from this format into a bert_jax checkpoint.")
flags.DEFINE_enum("to", None, ["hf"], "Export a bert_jax checkpoint to this format.")
flags.DEFINE_string("input", None, "Folder to read.", required=True)
flags.DEFINE_string("output", None, "Folder to write.", required=True)


def main(argv):
    del argv
    source, target = FLAGS["from"].value, FLAGS.to
    if (source is None) == (target is None):
        raise app.UsageError("give exactly one of --from or --to")
    if source == "hf":
        print(convert.import_hf(FLAGS.input, FLAGS.output))
    else:
        print(convert.export_hf(FLAGS.input, FLAGS.output))


if __name__ == "__main__":
    app.run(main)
