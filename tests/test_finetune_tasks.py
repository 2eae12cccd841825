"""SQuAD and CoNLL-2003 NER through the shared fine-tuning loop, end to end on slices of the real
files: results.json with the published metric names, prediction files in the official formats,
a best checkpoint that reproduces its dev scores; and the span / token losses on known cases."""

import importlib.util
import json
import pathlib
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.data import tokenization
from bert_jax.model.config import ModelConfig
from bert_jax.model.encoder import BertEncoder
from bert_jax.tasks import base, conll, finetune, question_answering, token_classification
from bert_jax.train import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(name: str, arg: str | None = None):
    path = REPO / "configs" / "finetune" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_finetune_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


@pytest.fixture(scope="module")
def encoder_checkpoint(data_dir, tmp_path_factory):
    """A tiny encoder-only checkpoint with the uncased WordPiece vocabulary."""
    tokenizer = tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")
    config = ModelConfig.from_size("tiny", hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=64,
                                   vocab_size=tokenizer.vocab_size)
    params = BertEncoder(config).init(jax.random.key(0), np.zeros((1, 8), np.int32))
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(params["params"]))
    root = tmp_path_factory.mktemp("encoder")
    return checkpoint.save_model(str(root), 0, params, checkpoint.make_meta(0, config, tokenizer))


def _small_squad(data_dir, path: pathlib.Path) -> pathlib.Path:
    """Two real articles, two paragraphs each, four questions per paragraph."""
    with zipfile.ZipFile(data_dir / "squad" / "dev-v1.1.json.zip") as archive:
        dataset = json.loads(archive.read("dev-v1.1.json"))
    articles = []
    for article in dataset["data"][:2]:
        paragraphs = [{**p, "qas": p["qas"][:4]} for p in article["paragraphs"][:2]]
        articles.append({"title": article["title"], "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return path


def _run(config, workdir) -> dict:
    return finetune.finetune_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_squad_end_to_end(encoder_checkpoint, data_dir, tmp_path):
    config = _config("squad")
    config.init_checkpoint = encoder_checkpoint
    config.data.dev_file = str(_small_squad(data_dir, tmp_path / "small.json"))
    config.data.heldout_fraction = 0.5
    config.data.max_seq_length = 64
    config.data.doc_stride = 32
    config.data.max_query_length = 16
    config.train.batch_size = 8
    config.train.num_epochs = 2
    config.optimizer.learning_rate = 1e-3
    results = _run(config, tmp_path / "run")

    assert results["main_metric"] == "f1" and [e["epoch"] for e in results["epochs"]] == [1, 2]
    best = results["best"]
    assert 0.0 <= best["exact_match"] <= best["f1"] <= 100.0
    predictions = json.loads(pathlib.Path(results["predictions"]["dev"]).read_text())
    assert len(predictions) == 8 and all(isinstance(v, str) for v in predictions.values())
    # Every prediction is a span of its own context: the characters map back exactly.
    contexts = {qa["id"]: p["context"]
                for a in json.loads((tmp_path / "small.json").read_text())["data"]
                for p in a["paragraphs"] for qa in p["qas"]}
    assert all(text in contexts[qid] for qid, text in predictions.items())

    seed = results["seeds"][str(best["seed"])]
    loaded = checkpoint.load_model(seed["checkpoint"])
    assert loaded.meta["task"]["kind"] == "question_answering"
    assert set(nn.unbox(loaded.params)) == {"bert", "qa_outputs"}
    run = finetune.build(config, str(tmp_path / "again"))
    assert finetune.evaluate(run, nn.unbox(loaded.params)) == pytest.approx(
        {"exact_match": best["exact_match"], "f1": best["f1"]}, abs=1e-9)


def _conll_slice(data_dir, root: pathlib.Path) -> pathlib.Path:
    """The first sentences of the real train / valid / test files (docstart and all)."""
    root.mkdir()
    for name, count in (("train.txt", 60), ("valid.txt", 25), ("test.txt", 25)):
        blocks = (data_dir / "conll2003" / name).read_text(encoding="utf-8").split("\n\n")
        (root / name).write_text("\n\n".join(blocks[:count]) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_ner_end_to_end(encoder_checkpoint, data_dir, tmp_path):
    config = _config("ner")
    config.init_checkpoint = encoder_checkpoint
    config.data.dir = str(_conll_slice(data_dir, tmp_path / "conll"))
    config.data.max_seq_length = 32  # long sentences are split into several rows
    config.train.batch_size = 8
    config.train.num_epochs = 2
    config.optimizer.learning_rate = 1e-3
    results = _run(config, tmp_path / "run")

    best = results["best"]
    for name in ("f1", "precision", "recall", "accuracy", "f1_test", "accuracy_test"):
        assert 0.0 <= best[name] <= 1.0, name
    path = pathlib.Path(results["predictions"]["dev"])
    gold = conll.read_conll(str(pathlib.Path(config.data.dir) / "valid.txt"))
    written = [b.splitlines() for b in path.read_text().strip().split("\n\n")]
    assert [len(lines) for lines in written] == [len(s.words) for s in gold]
    assert all(line.split(" ")[1] == tag for lines, s in zip(written, gold)
               for line, tag in zip(lines, s.tags))

    seed = results["seeds"][str(best["seed"])]
    loaded = checkpoint.load_model(seed["checkpoint"])
    assert loaded.meta["task"]["labels"] == conll.label_list(
        conll.read_conll(str(pathlib.Path(config.data.dir) / "train.txt")))


def test_token_loss_ignores_unlabelled_positions():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))  # [1, 3, 2]
    batch = {"label_ids": jnp.array([[-1, 0, 0]])}
    sums = token_classification.token_sums(logits, batch)
    assert float(sums["count"]) == 2 and float(sums["correct"]) == 1
    assert float(sums["loss_sum"]) == pytest.approx(-np.log(0.9) - np.log(0.2), rel=1e-6)


def test_span_loss_excludes_padding_and_averages_start_and_end():
    start = jnp.log(jnp.array([[0.25, 0.25, 0.5, 9.0]]))  # the padded position would dominate
    end = jnp.log(jnp.array([[0.1, 0.1, 0.8, 9.0]]))
    batch = {"attention_mask": jnp.array([[1, 1, 1, 0]]), "start_positions": jnp.array([2]),
             "end_positions": jnp.array([2]), "example_weight": jnp.array([1.0])}
    sums = question_answering.span_sums({"start_logits": start, "end_logits": end}, batch)
    assert float(sums["loss_sum"]) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2, rel=1e-5)
    assert float(sums["correct"]) == 1


FINE_RUNGS = [0, 8, 16, 24, 32, 48, 64]


@pytest.mark.parametrize("name", ["glue", "squad", "ner"])
def test_every_task_pads_to_the_configured_length_buckets(name, data_dir, tmp_path):
    """data.length_buckets=fine reaches each task's batches: every batch is padded to the
    smallest of 8, 16, 24, 32, 48, 64 that holds its longest row."""
    config = _config(name, "mrpc" if name == "glue" else None)
    config.data.length_buckets = "fine"
    config.data.max_seq_length = 64
    if name == "squad":
        config.data.dev_file = str(_small_squad(data_dir, tmp_path / "small.json"))
        config.data.doc_stride, config.data.max_query_length = 32, 16
    if name == "ner":
        config.data.dir = str(_conll_slice(data_dir, tmp_path / "conll"))
    task = base.make_task(config)
    tokenizer = tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")
    train = task.load(tokenizer)["train"]
    widths = set()
    for _, batch in task.batches(train, 8, rng=np.random.default_rng(0)):
        width = batch["input_ids"].shape[1]
        longest = int(batch["attention_mask"].sum(axis=1).max())
        assert FINE_RUNGS[FINE_RUNGS.index(width) - 1] < longest <= width
        widths.add(width)
    # GLUE and NER batches land on rungs that powers of two lack; SQuAD windows fill the length.
    assert widths & {24, 48} if name != "squad" else widths == {64}, widths


def test_an_unknown_length_ladder_fails_before_loading(tmp_path):
    config = _config("glue", "sst2")
    config.init_checkpoint = str(tmp_path / "absent")
    config.data.length_buckets = "pow2"
    with pytest.raises(ValueError, match=r"data.length_buckets='pow2'; expected one of"):
        finetune.build(config, str(tmp_path / "run"))


def test_unknown_task_and_config_versions():
    config = _config("ner")
    config.unlock()
    config.task = "pos"
    with pytest.raises(ValueError, match="unknown fine-tuning task 'pos'"):
        base.make_task(config)
    with pytest.raises(ValueError, match="unknown SQuAD version 'v3'"):
        _config("squad", "v3")
    assert _config("squad", "v2").task == "squad_v2"
