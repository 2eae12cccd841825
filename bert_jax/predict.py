"""Run a checkpoint on texts; one JSON line per text on stdout (logs go to stderr).

    python -m bert_jax.predict fill_mask --checkpoint=PATH --text="Paris is the [MASK] of France."
    python -m bert_jax.predict embed --checkpoint=PATH --input_file=texts.txt --pooling=mean

Texts come from --text (repeatable) and/or --input_file (one text per line; blank lines skipped).
"""

import json
import sys

from absl import app, flags

from bert_jax import inference

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint step folder, root or workdir.", required=True)
flags.DEFINE_multi_string("text", [], "A text to run on (repeatable).")
flags.DEFINE_string("input_file", None, "A file with one text per line (local or gs://).")
flags.DEFINE_integer("top_k", 5, "fill_mask: predictions per [MASK].")
flags.DEFINE_enum("pooling", "cls", list(inference.POOLINGS), "embed: how to pool the tokens.")
flags.DEFINE_integer("batch_size", 32, "Texts per device batch.")

COMMANDS = ("fill_mask", "embed")


def read_texts(texts: list[str], input_file: str | None) -> list[str]:
    """The --text values, then the non-blank lines of --input_file."""
    texts = list(texts)
    if input_file:
        import tensorflow as tf  # gfile reads gs:// as well as local paths

        with tf.io.gfile.GFile(input_file, "r") as f:
            texts += [line.rstrip("\r\n") for line in f if line.strip()]
    return texts


def records(command: str, predictor: inference.Predictor, texts: list[str], *, top_k: int,
            pooling: str):
    """The JSON-ready output of `command`, one dict per text."""
    if command == "fill_mask":
        outputs = predictor.fill_mask(texts, top_k=top_k)
        return [{"text": t, "predictions": p} for t, p in zip(texts, outputs)]
    vectors = predictor.embed(texts, pooling=pooling)  # [N, H]
    return [{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)]


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"expected one command, one of {' | '.join(COMMANDS)}; got {argv[1:] or 'none'}"
        )
    texts = read_texts(FLAGS.text, FLAGS.input_file)
    if not texts:
        raise app.UsageError("no input: give --text (repeatable) or --input_file")
    predictor = inference.load(FLAGS.checkpoint, batch_size=FLAGS.batch_size)
    for record in records(argv[1], predictor, texts, top_k=FLAGS.top_k, pooling=FLAGS.pooling):
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
