"""The predict CLI's classify command, on a tiny checkpoint fine-tuned here on an MRPC slice;
how inputs are read and paired."""

import json
import subprocess
import sys

import pytest
from absl import app

from bert_jax import inference, predict
from bert_jax.model.config import ModelConfig
from bert_jax.tasks import finetune, glue
from tests.test_finetune import (HIDDEN, _encoder_checkpoint, _finetune_config,  # noqa: F401
                                 mrpc_dir, vocab_tokenizer)

PAIR_TASK = {"name": "mrpc", "labels": ["0", "1"], "pair": True}


@pytest.fixture(scope="module")
def classifier(vocab_tokenizer, mrpc_dir, tmp_path_factory):  # noqa: F811 (fixtures)
    """The best checkpoint of one epoch of MRPC fine-tuning, one seed, from a tiny random
    encoder (no pre-training: its quality is not what these tests check)."""
    model_config = ModelConfig.from_size(
        "tiny", vocab_size=vocab_tokenizer.vocab_size, hidden_size=HIDDEN, num_layers=1,
        num_heads=2, intermediate_size=64, max_position_embeddings=64)
    encoder = _encoder_checkpoint(tmp_path_factory.mktemp("encoder"), model_config,
                                  model_config, vocab_tokenizer)
    config = _finetune_config(encoder, mrpc_dir, **{"train.num_epochs": 1})
    results = finetune.finetune_and_evaluate(config, str(tmp_path_factory.mktemp("finetune")))
    return results["seeds"]["0"]["checkpoint"]


def test_cli_classify_writes_the_predictors_labels_for_pairs(classifier, mrpc_dir,  # noqa: F811
                                                              tmp_path):
    examples = glue.load_examples(glue.get_task("mrpc"), "dev", directory=mrpc_dir)[:3]
    pairs = [(e.text_a, e.text_b) for e in examples]
    input_file = tmp_path / "pairs.tsv"
    input_file.write_text("".join(f"{a}\t{b}\n" for a, b in pairs[1:]) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.predict", "classify", f"--checkpoint={classifier}",
         f"--text={pairs[0][0]}", f"--text_b={pairs[0][1]}", f"--input_file={input_file}"],
        check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["text"], r["text_b"]) for r in records] == pairs
    expected = inference.load(classifier).classify(pairs)
    for record, want in zip(records, expected):
        assert record["label"] == want["label"] and record["label"] in ("0", "1")
        assert record["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert record["score"] == pytest.approx(max(record["probabilities"].values()))
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_classify_checks_pairs_against_the_task(classifier):
    predictor = inference.load(classifier)
    assert predictor.task["pair"] is True
    with pytest.raises(app.UsageError, match="fine-tuned on mrpc, which takes sentence pairs, "
                                             "but input 1 .* is a single text"):
        predict.classify(predictor, [("a", "b"), ("A man sings.", None)], None)
    with pytest.raises(app.UsageError, match="takes single sentences, but input 0"):
        predict.check_pairs(dict(PAIR_TASK, name="sst2", pair=False), [("a", "b")])
    predict.check_pairs({"name": "old", "labels": ["0", "1"]}, [("a", None), ("a", "b")])


def test_input_lines_split_at_the_first_tab_only_for_pair_commands(tmp_path):
    path = tmp_path / "inputs.txt"
    path.write_text("one\ttwo\tthree\n\n  \nsingle\n", encoding="utf-8")
    assert predict.read_inputs(["x"], ["y"], str(path), pairs=True) == [
        ("x", "y"), ("one", "two\tthree"), ("single", None)]
    assert predict.read_inputs([], [], str(path), pairs=False) == [
        ("one\ttwo\tthree", None), ("single", None)]


def test_text_b_misuse_is_a_usage_error():
    with pytest.raises(app.UsageError, match="one --text_b per --text"):
        predict.read_inputs(["a", "b"], ["c"], None, pairs=True)
    with pytest.raises(app.UsageError, match="--text_b applies to commands that take pairs"):
        predict.read_inputs(["a"], ["c"], None, pairs=False)
