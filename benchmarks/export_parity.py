"""A fine-tuned GLUE checkpoint exported to transformers scores the dev set as we do.

    python benchmarks/export_parity.py --checkpoint=OUT/seed_0 [--output=/tmp/exported]

Exports the checkpoint (python -m bert_jax.convert --to=hf does the same), then classifies the
task's dev split twice: with bert_jax's Predictor on the checkpoint, and with transformers'
text-classification pipeline on the exported folder alone (its tokenizer, model and label
names). Prints both accuracies, how many predictions agree, and the largest difference of the
predicted label's probability. Dev data from the GLUE folder of the staged data
(BERT_JAX_TEST_DATA). A classification task only (not STS-B's regression).
"""

import json
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from bert_jax import inference
from bert_jax.data.shared_data import shared_data_dir
from bert_jax.interop import convert
from bert_jax.tasks import glue

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A checkpoint fine-tuned on a GLUE task.", required=True)
flags.DEFINE_string("output", None, "Folder for the export (default: a temporary one).")
flags.DEFINE_integer("batch_size", 64, "Texts per batch, both sides.")


def main(argv):
    del argv
    import transformers

    output = FLAGS.output or tempfile.mkdtemp(prefix="bert_jax_export_")
    convert.export_hf(FLAGS.checkpoint, output)
    predictor = inference.load(FLAGS.checkpoint, batch_size=FLAGS.batch_size)
    task = glue.get_task(predictor.task["name"])
    if task.is_regression:
        raise app.UsageError(f"{task.name} is a regression; this compares class predictions")
    examples = glue.load_examples(task, "dev", directory=str(shared_data_dir() / "glue"))
    inputs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
    truth = [task.labels[e.label] for e in examples]

    start = time.perf_counter()
    ours = predictor.classify(inputs)
    ours_seconds = time.perf_counter() - start
    pipeline = transformers.pipeline("text-classification", model=output)
    start = time.perf_counter()
    theirs = pipeline([x if isinstance(x, str) else {"text": x[0], "text_pair": x[1]}
                       for x in inputs], batch_size=FLAGS.batch_size)
    theirs_seconds = time.perf_counter() - start

    def accuracy(predictions):
        return float(np.mean([p["label"] == t for p, t in zip(predictions, truth)]))

    agree = sum(o["label"] == t["label"] for o, t in zip(ours, theirs))
    gap = max(abs(o["score"] - t["score"])
              for o, t in zip(ours, theirs) if o["label"] == t["label"])
    print(json.dumps({
        "task": task.name, "examples": len(examples), "export": os.path.abspath(output),
        "accuracy_bert_jax": accuracy(ours), "accuracy_transformers": accuracy(theirs),
        "same_label": agree, "max_probability_difference": gap,
        "seconds_bert_jax": round(ours_seconds, 1),
        "seconds_transformers": round(theirs_seconds, 1),
    }, indent=1))


if __name__ == "__main__":
    app.run(main)
