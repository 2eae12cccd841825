"""What pre-training is worth: SST-2 dev accuracy from our own pre-trained checkpoint vs from
random initialisation of the same architecture, with the same fine-tuning budget.

    python benchmarks/pretraining_value.py --workdir=/tmp/bert_jax_value   # target: >= 3 points

1. Pre-trains `configs/pretrain.py:mini` on the staged Gutenberg books (full sentences, or
   sentence pairs with next-sentence prediction with `--pretrain_mode=nsp`; an uncased
   SentencePiece vocabulary trained on them, as SST-2 is lowercased) with `bert_jax.pretrain`'s
   loop; resumes from WORKDIR/pretrain when run again, so an interrupted run continues.
2. Fine-tunes SST-2 (configs/finetune/glue.py:sst2, a 20k-example subset, max length 64) from
   that checkpoint, then again with `random_init=True`: the checkpoint's architecture and
   tokenizer, fresh weights, the same recipe, steps and seed.
Prints both dev accuracies (the best epoch's; with `--seeds=0,1,2`, the median over seeds of
each seed's best epoch), the wall times, and `gain=<points> target=3 pass=<bool>` last. Run
again with another `--train_examples` on the same workdir to compare at fewer labels: the
finished pre-training is reused (fine-tuning writes pretrained_N/ and random_init_N/, with
_lrX and _epochsE added for another --finetune_lr or --finetune_epochs).
`--with_sst2_text` adds the SST-2 training sentences, without labels, to the pre-training text
(task-adaptive pre-training; the vocabulary is then trained on both): a diagnostic of whether the
books' domain is what limits the gain, not the issue's setting.
About an hour of pre-training on a 2-core CPU at the defaults (2,000 steps of 64 x 64 at
~34 sequences/s), then ~11 minutes per fine-tuning run. A SIGTERM during pre-training saves
and stops there (no comparison of a partial model); run it again to continue.
"""

import json
import os
import time

from absl import app, flags, logging

from bert_jax.data import masking
from bert_jax.data.shared_data import shared_data_dir
from bert_jax.tasks import finetune, glue
from bert_jax.train import checkpoint, loop
from configs import pretrain as pretrain_configs
from configs.finetune import glue as glue_configs

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "run folder: pretrain/, then pretrained_N/ and random_init_N/ for N "
    "training examples (with _lrX and _epochsE added for another --finetune_lr or "
    "--finetune_epochs)", required=True)
_SIZE = flags.DEFINE_string("size", "mini", "model size pre-trained and compared")
_STEPS = flags.DEFINE_integer("pretrain_steps", 2000, "pre-training steps")
_BATCH = flags.DEFINE_integer("pretrain_batch", 64, "pre-training sequences per step")
_SEQ_LEN = flags.DEFINE_integer("pretrain_seq_len", 64, "pre-training sequence length")
_LR = flags.DEFINE_float("pretrain_lr", 1e-3, "pre-training peak learning rate")
_VOCAB = flags.DEFINE_integer("vocab_size", 8000, "SentencePiece pieces trained on the books")
_MODE = flags.DEFINE_enum("pretrain_mode", "full_sentences", ["full_sentences", "nsp"],
                          "pre-training examples: full sentences (MLM only) or sentence pairs "
                          "with next-sentence prediction (the paper's; it trains [CLS], which "
                          "the classifier reads, but measured no better here: see README)")
_LOWERCASE = flags.DEFINE_bool("lowercase", True, "an uncased vocabulary (SST-2 is lowercased)")
_WITH_SST2_TEXT = flags.DEFINE_bool(
    "with_sst2_text", False, "also pre-train on the SST-2 training sentences, without their "
    "labels (task-adaptive pre-training): shows whether the books' domain is what limits the "
    "gain. Not the issue's setting, which is the books alone")
_FINETUNE_LR = flags.DEFINE_float("finetune_lr", 1e-4, "fine-tuning learning rate (both runs)")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 20000, "SST-2 training subset")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 3, "fine-tuning epochs (both runs); "
                                        "more than the recipe's 3 for small subsets")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "fine-tuning seeds (both runs); with several, the "
                           "medians over seeds are compared")

TARGET_POINTS = 3.0


def sst2_training_text(folder: str) -> str:
    """The SST-2 training sentences and phrases, one paragraph each, written to
    FOLDER/sst2_train.txt (no labels; dev sentences never enter pre-training)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "sst2_train.txt")
    examples = glue.load_examples(glue.get_task("sst2"), "train",
                                  directory=str(shared_data_dir() / "glue"))
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(f"{example.text_a}\n\n" for example in examples)
    os.replace(path + ".tmp", path)
    return path


def pretrain_config(corpus_folder: str):
    config = pretrain_configs.get_config(_SIZE.value)
    config.data.source = f"prose:{shared_data_dir() / 'gutenberg'}/*.txt"
    if _WITH_SST2_TEXT.value:
        config.data.source += "," + sst2_training_text(corpus_folder)
    config.data.mode = _MODE.value
    config.data.tokenizer = "train"
    config.data.tokenizer_vocab_size = _VOCAB.value
    config.data.tokenizer_lowercase = _LOWERCASE.value
    config.data.max_seq_length = _SEQ_LEN.value
    config.data.max_predictions_per_seq = masking.default_max_predictions(
        _SEQ_LEN.value, config.data.masked_lm_prob)
    config.model.max_position_embeddings = max(128, _SEQ_LEN.value)
    config.train.num_steps = _STEPS.value
    config.train.batch_size = _BATCH.value
    config.optimizer.learning_rate = _LR.value
    config.optimizer.warmup_steps = max(1, _STEPS.value // 20)
    config.checkpoint.every_steps = 500
    config.eval.every_steps = 1000
    config.eval.num_batches = 10
    return config


def finetune_config(checkpoint: str, random_init: bool):
    config = glue_configs.get_config("sst2")
    config.init_checkpoint = checkpoint
    config.random_init = random_init
    config.data.max_train_examples = _TRAIN_EXAMPLES.value
    config.data.max_seq_length = 64
    config.optimizer.learning_rate = _FINETUNE_LR.value
    config.train.num_epochs = _FINETUNE_EPOCHS.value
    config.seeds = tuple(int(seed) for seed in _SEEDS.value)
    return config


def main(argv):
    del argv
    pretrain_dir = os.path.join(_WORKDIR.value, "pretrain")
    start = time.perf_counter()
    corpus_folder = os.path.join(_WORKDIR.value, "corpus")  # --with_sst2_text's file
    # Resumes when a checkpoint exists.
    loop.train_and_evaluate(pretrain_config(corpus_folder), pretrain_dir)
    pretrain_seconds = time.perf_counter() - start
    _, reached = checkpoint.resolve(pretrain_dir)
    if reached < _STEPS.value:  # stopped by SIGTERM: comparing now would judge a partial model
        logging.info("pre-training stopped at step %d of %d; run again to continue", reached,
                     _STEPS.value)
        return

    scores, seconds = {}, {}
    for name, random_init in (("pretrained", False), ("random_init", True)):
        start = time.perf_counter()
        # One folder per label count (and fine-tuning rate and epochs, where not the
        # defaults), so comparisons sit side by side.
        folder = f"{name}_{_TRAIN_EXAMPLES.value}"
        if _FINETUNE_LR.value != _FINETUNE_LR.default:
            folder += f"_lr{_FINETUNE_LR.value:g}"
        if _FINETUNE_EPOCHS.value != _FINETUNE_EPOCHS.default:
            folder += f"_epochs{_FINETUNE_EPOCHS.value}"
        results = finetune.finetune_and_evaluate(
            finetune_config(pretrain_dir, random_init), os.path.join(_WORKDIR.value, folder))
        seconds[name] = round(time.perf_counter() - start, 1)
        # The median, not the best seed: with several seeds, picking the luckiest of each side
        # would compare noise. With one seed the two are the same.
        scores[name] = results["median"]["accuracy"]
        logging.info("%s: %s", name, results["best"])
    gain = 100 * (scores["pretrained"] - scores["random_init"])
    print(json.dumps({"sst2_dev_accuracy": scores, "finetune_seconds": seconds,
                      "pretrain_seconds": round(pretrain_seconds, 1),
                      "pretrain_steps": _STEPS.value, "size": _SIZE.value,
                      "pretrain_mode": _MODE.value, "lowercase": _LOWERCASE.value,
                      "with_sst2_text": _WITH_SST2_TEXT.value,
                      "train_examples": _TRAIN_EXAMPLES.value, "seeds": _SEEDS.value,
                      "finetune_epochs": _FINETUNE_EPOCHS.value,
                      "load_average": os.getloadavg()}, indent=2))
    print(f"gain={gain:.2f} target={TARGET_POINTS} pass={gain >= TARGET_POINTS}")


if __name__ == "__main__":
    app.run(main)
