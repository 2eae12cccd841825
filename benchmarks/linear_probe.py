"""What a checkpoint's frozen features know about SST-2: a logistic regression on them vs on
the features of the same architecture from random initialisation.

    python benchmarks/linear_probe.py --checkpoint=/tmp/bert_jax_value/pretrain

A diagnostic for benchmarks/pretraining_value.py: fine-tuning moves every weight, so a gain
(or its absence) there does not say whether pre-training put anything useful in the encoder.
Here nothing is trained but the probe: features of an SST-2 training subset (the same subset
fine-tuning uses) with each pooling, standardised, then scikit-learn's LogisticRegression; dev
accuracy is printed for the checkpoint and for a random initialisation (seed 0, the model's
initializer) side by side. About two minutes for the mini model on a 2-core CPU.

`token_embeddings` pooling skips the encoder: the mean of the sentence's rows of the token
embedding table (specials left out), i.e. a bag of words in the table's coordinates. It shows
whether the table alone carries sentiment; `--neighbours` prints each listed word's nearest
pieces (cosine) in both tables, which shows what the table groups together.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from sklearn.linear_model import LogisticRegression

from bert_jax import inference
from bert_jax.data.shared_data import shared_data_dir
from bert_jax.model import BertForPreTraining
from bert_jax.tasks import glue

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "checkpoint (step folder, root or workdir)",
                                  required=True)
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 5000, "SST-2 training subset")
_POOLINGS = flags.DEFINE_list("poolings", ["cls", "mean", "token_embeddings"],
                              "features: cls | pooled | mean (encoder outputs) | "
                              "token_embeddings (the embedding table alone)")
_NEIGHBOURS = flags.DEFINE_list("neighbours", ["good", "bad", "great", "terrible", "funny",
                                               "dull"], "words whose nearest pieces to print")


def token_table(predictor: inference.Predictor) -> np.ndarray:
    """The [vocab, hidden] token embedding table (pre-training checkpoints keep the encoder
    under 'bert', converted ones at the top)."""
    encoder = predictor.params.get("bert", predictor.params)
    return np.asarray(encoder["embeddings"]["token_embed"]["embedding"])


def bag_of_embeddings(predictor: inference.Predictor, texts: list[str]) -> np.ndarray:
    """Each text's mean token-embedding row, special pieces ([UNK] among them) left out."""
    table = token_table(predictor)
    special = set(predictor.tokenizer.special_ids)
    rows = []
    for ids in predictor.tokenizer.encode_batch(texts):
        ids = [i for i in ids if i not in special] or [predictor.tokenizer.unk_id]
        rows.append(table[ids].mean(axis=0))
    return np.stack(rows)


def nearest_pieces(predictor: inference.Predictor, words: list[str], count: int = 6) -> dict:
    """word -> the pieces whose table rows are closest (cosine) to the word's first piece."""
    table = token_table(predictor)
    unit = table / (np.linalg.norm(table, axis=1, keepdims=True) + 1e-12)
    tokenizer = predictor.tokenizer
    found = {}
    for word in words:
        ids = [i for i in tokenizer.encode(word) if i not in tokenizer.special_ids]
        if not ids:
            raise ValueError(f"--neighbours: {word!r} has no piece in the vocabulary but specials")
        similarity = unit @ unit[ids[0]]
        order = [int(i) for i in np.argsort(-similarity) if int(i) != ids[0]][:count]
        found[word] = ", ".join(f"{tokenizer.id_to_token(i)} {similarity[i]:.2f}" for i in order)
    return found


def random_init_params(model_config) -> dict:
    model = BertForPreTraining(model_config)
    ids = jnp.zeros((1, 8), jnp.int32)
    return model.init(jax.random.key(0), ids, masked_positions=ids[:, :1])["params"]


def probe_accuracy(train_x, train_y, dev_x, dev_y) -> float:
    # Standardised with the training features' statistics: encoders differ in scale, and the
    # regulariser should weigh every feature alike.
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    probe = LogisticRegression(max_iter=2000).fit((train_x - mean) / std, train_y)
    return float(probe.score((dev_x - mean) / std, dev_y))


def main(argv):
    del argv
    task = glue.get_task("sst2")
    glue_dir = str(shared_data_dir() / "glue")
    train = glue.subsample(glue.load_examples(task, "train", directory=glue_dir),
                           _TRAIN_EXAMPLES.value, seed=0)
    dev = glue.load_examples(task, "dev", directory=glue_dir)
    train_y = np.array([e.label for e in train])
    dev_y = np.array([e.label for e in dev])

    loaded = inference.load(_CHECKPOINT.value, batch_size=64)
    random_init = inference.Predictor(loaded.model_config,
                                      random_init_params(loaded.model_config),
                                      loaded.tokenizer, batch_size=64)
    results = {}
    for name, predictor in (("checkpoint", loaded), ("random_init", random_init)):
        for pooling in _POOLINGS.value:
            if pooling == "token_embeddings":
                train_x = bag_of_embeddings(predictor, [e.text_a for e in train])
                dev_x = bag_of_embeddings(predictor, [e.text_a for e in dev])
            else:
                train_x = predictor.embed([e.text_a for e in train], pooling=pooling)
                dev_x = predictor.embed([e.text_a for e in dev], pooling=pooling)
            results[f"{name}/{pooling}"] = round(probe_accuracy(train_x, train_y, dev_x, dev_y), 4)
    neighbours = {f"{name}/{word}": pieces
                  for name, predictor in (("checkpoint", loaded), ("random_init", random_init))
                  for word, pieces in nearest_pieces(predictor, _NEIGHBOURS.value).items()}
    print(json.dumps({"sst2_dev_probe_accuracy": results, "nearest_pieces": neighbours,
                      "train_examples": _TRAIN_EXAMPLES.value}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    app.run(main)
