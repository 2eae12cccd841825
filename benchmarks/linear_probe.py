"""What a checkpoint's frozen features know about SST-2: a logistic regression on them vs on
the features of the same architecture from random initialisation.

    python benchmarks/linear_probe.py --checkpoint=/tmp/bert_jax_value/pretrain

A diagnostic for benchmarks/pretraining_value.py: fine-tuning moves every weight, so a gain
(or its absence) there does not say whether pre-training put anything useful in the encoder.
Here nothing is trained but the probe: features of an SST-2 training subset (the same subset
fine-tuning uses) with each pooling, standardised, then scikit-learn's LogisticRegression; dev
accuracy is printed for the checkpoint and for a random initialisation (seed 0, the model's
initializer) side by side. About two minutes for the mini model on a 2-core CPU.
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
_POOLINGS = flags.DEFINE_list("poolings", ["cls", "mean"], "features: cls | pooled | mean")


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
            train_x = predictor.embed([e.text_a for e in train], pooling=pooling)
            dev_x = predictor.embed([e.text_a for e in dev], pooling=pooling)
            results[f"{name}/{pooling}"] = round(probe_accuracy(train_x, train_y, dev_x, dev_y), 4)
    print(json.dumps({"sst2_dev_probe_accuracy": results,
                      "train_examples": _TRAIN_EXAMPLES.value}, indent=2))


if __name__ == "__main__":
    app.run(main)
