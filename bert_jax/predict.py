r"""Run a checkpoint on texts; one JSON line per input on stdout (logs go to stderr).

    python -m bert_jax.predict fill_mask --checkpoint=PATH --text="Paris is the [MASK] of France."
    python -m bert_jax.predict embed --checkpoint=PATH --input_file=texts.txt --pooling=mean
    python -m bert_jax.predict features --checkpoint=PATH --text="A sentence." \
        --layers=-1,-2,-3,-4            # every token's hidden states, as extract_features.py
    python -m bert_jax.predict classify --checkpoint=FINETUNED --text="A gripping film."
    python -m bert_jax.predict classify --checkpoint=FINETUNED --text="A man sings." \
        --text_b="Someone sings."       # or --input_file with `text<TAB>text_b` lines
    python -m bert_jax.predict qa --checkpoint=SQUAD_FINETUNED --question="Who sings?" \
        --context="A man sings."        # or --input_file with {"question", "context"} lines
    python -m bert_jax.predict ner --checkpoint=CONLL_FINETUNED --text="Peter lives in Berlin ."
    python -m bert_jax.predict choose --checkpoint=SWAG_FINETUNED --context="A man sings." \
        --choice="He bows." --choice="He flies."   # or --input_file with {"context", "choices"}

Inputs come from --text (repeatable) and/or --input_file (one per line; blank lines skipped).
Commands that take pairs (classify) pair the i-th --text with the i-th --text_b, and split an
input line at its first tab. qa pairs the i-th --question with the i-th --context, and reads
JSON objects {"question": ..., "context": ...} from --input_file lines. choose takes one
--context with its --choice values (2 or more), and JSON objects {"context": ..., "choices":
[...]} from --input_file lines.

Python logs only warnings and errors to stderr; --verbosity=0 adds the info logs (checkpoint
reads).
"""

import dataclasses
import json
import sys
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging

from bert_jax import inference

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint step folder, root or workdir.", required=True)
flags.DEFINE_multi_string("text", [], "A text to run on (repeatable).")
flags.DEFINE_multi_string("text_b", [], "classify: the second text of a pair, one per --text.")
flags.DEFINE_multi_string("question", [], "qa: a question (repeatable), one per --context.")
flags.DEFINE_multi_string("context", [], "qa: the passage that answers the --question; "
                          "choose: the context the --choice values continue (once).")
flags.DEFINE_multi_string("choice", [], "choose: one choice for the --context (2 or more).")
flags.DEFINE_string("input_file", None, "A file with one input per line (local or gs://); "
                    "classify: a tab between the two texts of a pair; qa: a JSON object with "
                    "'question' and 'context'; choose: one with 'context' and 'choices'.")
flags.DEFINE_integer("top_k", None, "fill_mask: predictions per [MASK] (default 5); qa: "
                     "answers per question, listed as 'nbest' when above 1 (default 1).")
flags.DEFINE_enum("pooling", "cls", list(inference.POOLINGS), "embed: how to pool the tokens.")
flags.DEFINE_list("layers", ["-1"], "features: the hidden states to write per token (0: the "
                  "embeddings' output, i: layer i's, -1: the last layer's).")
flags.DEFINE_integer("batch_size", 32, "Texts (qa: windows, ner: rows, choose: contexts) per "
                     "device batch.")

# (text, text_b or None); qa: (question, context); choose: (context, [choice, ...])
Input = tuple[str, str | list[str] | None]


@dataclasses.dataclass(frozen=True)
class Command:
    """read(options) -> the inputs; run(predictor, inputs, options) -> one JSON-ready dict per
    input. `options` are the parsed flags (text, top_k, pooling, ...) or an object like them."""

    run: Callable[[inference.Predictor, list[Input], object], list[dict]]
    read: Callable[[object], list[Input]]


def fill_mask(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    texts = [text for text, _ in inputs]
    outputs = predictor.fill_mask(texts, top_k=_top_k(options, 5))
    return [{"text": t, "predictions": p} for t, p in zip(texts, outputs)]


def embed(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    texts = [text for text, _ in inputs]
    vectors = predictor.embed(texts, pooling=options.pooling)  # [N, H]
    return [{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)]


def features(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    texts = [text for text, _ in inputs]
    try:
        layers = [int(i) for i in options.layers]
    except ValueError:
        raise app.UsageError(f"--layers={','.join(options.layers)}: expected integers, e.g. "
                             "-1,-2,-3,-4") from None
    outputs = predictor.token_features(texts, layers=layers)
    # Six decimals, as the original extract_features.py writes them.
    return [{"text": t, "layers": layers, "tokens": o["tokens"],
             "features": np.round(o["features"].astype(np.float64), 6).tolist()}
            for t, o in zip(texts, outputs)]


def classify(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    """Labels (or regression scores) of a fine-tuned classifier; see Predictor.classify."""
    del options
    outputs = predictor.classify([text if b is None else (text, b) for text, b in inputs])
    return [{"text": a, **({} if b is None else {"text_b": b}), **out}
            for (a, b), out in zip(inputs, outputs)]


def answer(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    """Answers of a SQuAD-fine-tuned checkpoint; see Predictor.answer."""
    outputs = predictor.answer(inputs, top_k=_top_k(options, 1))
    return [{"question": question, **out} for (question, _), out in zip(inputs, outputs)]


def tag(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    """Words with their tags, and entities, of a NER-fine-tuned checkpoint; see Predictor.tag."""
    del options
    texts = [text for text, _ in inputs]
    return [{"text": t, **out} for t, out in zip(texts, predictor.tag(texts))]


def choose(predictor: inference.Predictor, inputs: list[Input], options) -> list[dict]:
    outputs = predictor.choose(inputs)
    return [{"context": c, "choices": list(choices), **o}
            for (c, choices), o in zip(inputs, outputs)]


def _top_k(options, default: int) -> int:
    return default if options.top_k is None else options.top_k


def _input_lines(input_file: str | None) -> list[tuple[int, str]]:
    """(line number, line) of the non-blank lines of --input_file."""
    if not input_file:
        return []
    import tensorflow as tf  # gfile reads gs:// as well as local paths

    # gfile's NotFoundError would name neither the flag nor, for a folder, the problem.
    if not tf.io.gfile.exists(input_file):
        raise app.UsageError(f"--input_file={input_file}: no such file")
    if tf.io.gfile.isdir(input_file):
        raise app.UsageError(f"--input_file={input_file} is a folder; it takes a file with one "
                             "input per line")
    with tf.io.gfile.GFile(input_file, "r") as f:
        lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1)]
    if lines:  # a UTF-8 byte-order mark (Notepad, PowerShell) is not part of the first line
        lines[0] = (1, lines[0][1].removeprefix("\ufeff"))
    return [(n, line) for n, line in lines if line.strip()]


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
    for _, line in _input_lines(input_file):
        text, tab, text_b = line.partition("\t") if pairs else (line, "", "")
        inputs.append((text, text_b if tab else None))
    return inputs


def read_questions(questions: list[str], contexts: list[str],
                   input_file: str | None) -> list[Input]:
    """(question, context) of each --question and --context, then of each --input_file line."""
    if len(questions) != len(contexts):
        raise app.UsageError(f"--question given {len(questions)} times but --context "
                             f"{len(contexts)} times: give one --context per --question")
    inputs: list[Input] = list(zip(questions, contexts))
    records = _json_records(input_file, lambda r: isinstance(r.get("question"), str)
                            and isinstance(r.get("context"), str),
                            "string fields 'question' and 'context'")
    return inputs + [(r["question"], r["context"]) for r in records]


def _json_records(input_file: str | None, is_valid, expected: str) -> list[dict]:
    """The JSON object on each non-blank line of --input_file; one that is not, or that
    is_valid refuses, is a usage error naming its line and what was `expected`."""
    records = []
    for number, line in _input_lines(input_file):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not (isinstance(record, dict) and is_valid(record)):
            raise app.UsageError(f"{input_file}:{number}: expected a JSON object with "
                                 f"{expected}")
        records.append(record)
    return records


def read_choices(contexts: list[str], choices: list[str],
                 input_file: str | None) -> list[Input]:
    """(context, choices) of --context with its --choice values, then of each --input_file
    line."""
    if len(contexts) > 1:
        raise app.UsageError(f"--context given {len(contexts)} times: choose takes one "
                             "--context with its --choice values; put more in --input_file")
    if contexts and len(choices) < 2:
        raise app.UsageError(f"--choice given {len(choices)} times: give 2 or more choices "
                             "for the --context")
    if choices and not contexts:
        raise app.UsageError("--choice without --context: give the context they continue")
    inputs: list[Input] = [(contexts[0], list(choices))] if contexts else []
    records = _json_records(input_file, lambda r: isinstance(r.get("context"), str)
                            and isinstance(r.get("choices"), list)
                            and all(isinstance(c, str) for c in r["choices"]),
                            "a string 'context' and a list of strings 'choices'")
    return inputs + [(r["context"], r["choices"]) for r in records]


def _refuse(options, names: tuple[str, ...], why: str) -> None:
    given = [f"--{name}" for name in names if getattr(options, name)]
    if given:
        raise app.UsageError(f"{' and '.join(given)}: {why}")


def _texts(options, pairs: bool = False) -> list[Input]:
    _refuse(options, ("question", "context"), "for the qa (and choose) commands only")
    _refuse(options, ("choice",), "for the choose command only")
    return read_inputs(options.text, options.text_b, options.input_file, pairs=pairs)


def _pairs(options) -> list[Input]:
    return _texts(options, pairs=True)


def _questions(options) -> list[Input]:
    _refuse(options, ("text", "text_b"), "not for qa, which takes --question and --context")
    _refuse(options, ("choice",), "for the choose command only")
    return read_questions(options.question, options.context, options.input_file)


def _choices(options) -> list[Input]:
    _refuse(options, ("text", "text_b", "question"),
            "not for choose, which takes --context and --choice")
    return read_choices(options.context, options.choice, options.input_file)


COMMANDS = {
    "fill_mask": Command(fill_mask, _texts),
    "embed": Command(embed, _texts),
    "features": Command(features, _texts),
    "classify": Command(classify, _pairs),
    "qa": Command(answer, _questions),
    "ner": Command(tag, _texts),
    "choose": Command(choose, _choices),
}


def records(name: str, options) -> list[dict]:
    """The output records of command `name` on the inputs `options` name (the parsed flags)."""
    command = COMMANDS[name]
    inputs = command.read(options)
    if not inputs:
        raise app.UsageError("no input: give --text (qa: --question and --context; choose: "
                             "--context and --choice; repeatable) or --input_file")
    predictor = inference.load(options.checkpoint, batch_size=options.batch_size)
    return command.run(predictor, inputs, options)


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"expected one command, one of {' | '.join(COMMANDS)}; got {argv[1:] or 'none'}"
        )
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    for record in records(argv[1], FLAGS):
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
