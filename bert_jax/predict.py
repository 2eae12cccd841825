"""Run a checkpoint on texts; one JSON line per input on stdout (logs go to stderr).

    python -m bert_jax.predict fill_mask --checkpoint=PATH --text="Paris is the [MASK] of France."
    python -m bert_jax.predict embed --checkpoint=PATH --input_file=texts.txt --pooling=mean
    python -m bert_jax.predict classify --checkpoint=FINETUNED --text="A gripping film."
    python -m bert_jax.predict classify --checkpoint=FINETUNED --text="A man sings." \
        --text_b="Someone sings."       # or --input_file with `text<TAB>text_b` lines

Inputs come from --text (repeatable) and/or --input_file (one per line; blank lines skipped).
Commands that take pairs (classify) pair the i-th --text with the i-th --text_b, and split an
input line at its first tab.
"""

import dataclasses
import json
import sys
from collections.abc import Callable

from absl import app, flags

from bert_jax import inference

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint step folder, root or workdir.", required=True)
flags.DEFINE_multi_string("text", [], "A text to run on (repeatable).")
flags.DEFINE_multi_string("text_b", [], "classify: the second text of a pair, one per --text.")
flags.DEFINE_string("input_file", None, "A file with one input per line (local or gs://); "
                    "classify: a tab between the two texts of a pair.")
flags.DEFINE_integer("top_k", 5, "fill_mask: predictions per [MASK].")
flags.DEFINE_enum("pooling", "cls", list(inference.POOLINGS), "embed: how to pool the tokens.")
flags.DEFINE_integer("batch_size", 32, "Texts per device batch.")

Input = tuple[str, str | None]  # (text, text_b or None)


@dataclasses.dataclass(frozen=True)
class Command:
    """run(predictor, inputs, options) -> one JSON-ready dict per input, options being the
    parsed flags (top_k, pooling, ...); `pairs`: inputs may be (text, text_b) pairs."""

    run: Callable[[inference.Predictor, list[Input], object], list[dict]]
    pairs: bool = False


def fill_mask(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    texts = [text for text, _ in inputs]
    outputs = predictor.fill_mask(texts, top_k=options.top_k)
    return [{"text": t, "predictions": p} for t, p in zip(texts, outputs)]


def embed(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    texts = [text for text, _ in inputs]
    vectors = predictor.embed(texts, pooling=options.pooling)  # [N, H]
    return [{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)]


def classify(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    """Labels (or regression scores) of a fine-tuned classifier; see Predictor.classify."""
    del options
    check_pairs(predictor.task, inputs)
    outputs = predictor.classify([text if b is None else (text, b) for text, b in inputs])
    return [{"text": a, **({} if b is None else {"text_b": b}), **out}
            for (a, b), out in zip(inputs, outputs)]


def check_pairs(task: dict | None, inputs: list[Input]) -> None:
    """Pairs for a pair task (MRPC, MNLI, ...), single texts otherwise, when the task says."""
    pair = (task or {}).get("pair")
    if pair is None:
        return
    for i, (text, text_b) in enumerate(inputs):
        if (text_b is not None) != pair:
            raise app.UsageError(
                f"the checkpoint is fine-tuned on {task['name']}, which takes "
                f"{'sentence pairs' if pair else 'single sentences'}, but input {i} "
                f"({text[:60]!r}) is {'a single text' if pair else 'a pair'}; "
                f"{'give --text_b or tab-separated lines' if pair else 'drop the second text'}")


COMMANDS = {
    "fill_mask": Command(fill_mask),
    "embed": Command(embed),
    "classify": Command(classify, pairs=True),
}


def read_inputs(texts: list[str], texts_b: list[str], input_file: str | None, *,
                pairs: bool) -> list[Input]:
    """The --text values (paired with --text_b), then the non-blank lines of --input_file
    (split at the first tab when `pairs`)."""
    if texts_b and not pairs:
        raise app.UsageError("--text_b applies to commands that take pairs (classify) only")
    if texts_b and len(texts_b) != len(texts):
        raise app.UsageError(f"--text_b given {len(texts_b)} times but --text {len(texts)} "
                             "times: give one --text_b per --text")
    inputs: list[Input] = list(zip(texts, texts_b or [None] * len(texts)))
    if input_file:
        import tensorflow as tf  # gfile reads gs:// as well as local paths

        with tf.io.gfile.GFile(input_file, "r") as f:
            lines = [line.rstrip("\r\n") for line in f if line.strip()]
        for line in lines:
            text, tab, text_b = line.partition("\t") if pairs else (line, "", "")
            inputs.append((text, text_b if tab else None))
    return inputs


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"expected one command, one of {' | '.join(COMMANDS)}; got {argv[1:] or 'none'}"
        )
    command = COMMANDS[argv[1]]
    inputs = read_inputs(FLAGS.text, FLAGS.text_b, FLAGS.input_file, pairs=command.pairs)
    if not inputs:
        raise app.UsageError("no input: give --text (repeatable) or --input_file")
    predictor = inference.load(FLAGS.checkpoint, batch_size=FLAGS.batch_size)
    for record in command.run(predictor, inputs, FLAGS):
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
