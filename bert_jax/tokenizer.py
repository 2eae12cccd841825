"""Trains a SentencePiece vocabulary for pre-training.

    python -m bert_jax.tokenizer train --input=SOURCE --vocab_size=30000 --output=PREFIX

SOURCE is a data source spec (`text:GLOB`, `prose:GLOB`, `tfds:NAME[:VERSION][:SPLIT]`,
`builtin`, or several joined by `+`); a plain GLOB means `text:GLOB`. Writes PREFIX.model and
PREFIX.vocab (gs:// works; neither may exist yet); use the model with
`--config.data.tokenizer=sentencepiece:PREFIX.model`.
"""

import os

from absl import app, flags, logging

from bert_jax.data import tokenization

_INPUT = flags.DEFINE_string("input", None, "Data source spec or GLOB of text files.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 30000, "Number of pieces, specials included.")
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix: writes PREFIX.model, PREFIX.vocab.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "Model kind.")
_LOWERCASE = flags.DEFINE_bool("lowercase", False, "Case-fold text (an uncased vocabulary).")
_FOLD_QUOTES = flags.DEFINE_bool(
    "fold_quotes", True, "Read typographic quotes (‘ ’ “ ”) as ASCII ' and \" (in training and "
    "whenever the model encodes), so text in either style shares the pieces.")
_COVERAGE = flags.DEFINE_float(
    "character_coverage", 0.9995, "Fraction of characters covered; the rarest become [UNK]."
)
_SAMPLE = flags.DEFINE_integer(
    "input_sentence_size", 10_000_000, "Train on a random sample of this many sentences."
)
flags.mark_flags_as_required(["input", "output"])


def main(argv: list[str]) -> None:
    if argv[1:] != ["train"]:
        raise app.UsageError(f"expected the command `train`, got {argv[1:]}")
    _check_output_prefix(_OUTPUT.value)
    tokenizer = tokenization.train_sentencepiece_from_source(
        _INPUT.value,
        _VOCAB_SIZE.value,
        _OUTPUT.value,
        model_type=_MODEL_TYPE.value,
        lowercase=_LOWERCASE.value,
        fold_quotes=_FOLD_QUOTES.value,
        character_coverage=_COVERAGE.value,
        input_sentence_size=_SAMPLE.value,
        verbose=True,
    )
    logging.info("wrote %s.model (%d pieces)", _OUTPUT.value, tokenizer.vocab_size)


def _check_output_prefix(prefix: str) -> None:
    """Refuses, before training, an --output that would replace a vocabulary (runs name it as
    sentencepiece:PREFIX.model) or write hidden `.model`/`.vocab` files into a folder."""
    # Only the CLI refuses: pre-training retrains into its workdir's prefix on purpose.
    if not os.path.basename(prefix) or tokenization._isdir(prefix):
        example = os.path.join(prefix, "spm")
        what = "names a folder" if prefix else "is empty"
        raise app.UsageError(f"--output={prefix} {what}; --output is a file prefix: e.g. "
                             f"--output={example} writes {example}.model and {example}.vocab")
    existing = [path for path in (f"{prefix}.model", f"{prefix}.vocab")
                if tokenization._exists(path)]
    if existing:
        verb, it = ("exists", "it") if len(existing) == 1 else ("exist", "them")
        raise app.UsageError(f"{' and '.join(existing)} {verb}: choose another --output or "
                             f"remove {it}")


if __name__ == "__main__":
    app.run(main)
