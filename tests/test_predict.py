"""The predict CLI: classify on a tiny checkpoint fine-tuned here on an MRPC slice, qa and ner
on random fine-tuned checkpoints (in-process, through `records`); how inputs are read and paired."""

import json
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from absl import app

from bert_jax import inference, predict
from bert_jax.data import shared_data
from bert_jax.model.config import ModelConfig
from bert_jax.tasks import conll, finetune, glue, squad
from tests.test_finetune import (HIDDEN, _encoder_checkpoint, _finetune_config,  # noqa: F401
                                 vocab_tokenizer)
from tests.test_inference import ner_checkpoint, squad_checkpoints  # noqa: F401 (fixtures)

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
    # Quiet: no info logs of Python modules (the checkpoint reader's dozens), no warnings about
    # checkpoint items it does not read.
    info = [line for line in result.stderr.splitlines()
            if re.match(r"I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]", line)]
    assert not info, "\n".join(info[:10])
    assert "was found in the checkpoint" not in result.stderr
    assert "read_only" not in result.stderr
    expected = inference.load(classifier).classify(pairs)
    for record, want in zip(records, expected):
        assert record["label"] == want["label"] and record["label"] in ("0", "1")
        assert record["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert record["score"] == pytest.approx(max(record["probabilities"].values()))
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_classify_checks_pairs_against_the_task(classifier):
    predictor = inference.load(classifier)
    assert predictor.task["pair"] is True
    with pytest.raises(ValueError, match="fine-tuned on mrpc, which takes sentence pairs, "
                                         "but input 1 .* is a single text"):
        predictor.classify([("a", "b"), "A man sings."])
    with pytest.raises(ValueError, match="fine-tuned on mrpc, .* input 0"):
        predict.classify(predictor, [("A man sings.", None)], None)
    single = inference.Predictor(predictor.model_config, predictor.params, predictor.tokenizer,
                                 task=dict(PAIR_TASK, name="sst2", pair=False))
    with pytest.raises(ValueError, match="takes single sentences, but input 0 .* is a pair"):
        single.classify([("a", "b")])
    older = inference.Predictor(predictor.model_config, predictor.params, predictor.tokenizer,
                                task={"name": "old", "labels": ["0", "1"]})  # no "pair"
    assert len(older.classify(["a", ("a", "b")])) == 2


def test_features_writes_each_tokens_hidden_states(classifier):
    """predict features: the tokens and, per token, the hidden states --layers names, as
    Predictor.token_features gives them (six decimals)."""
    texts = ["A man sings.", "Someone is playing a guitar on the stage tonight."]
    records = predict.records("features", _options(checkpoint=classifier, text=texts,
                                                   layers=["-1", "0"]))
    expected = inference.load(classifier).token_features(texts, layers=(-1, 0))
    for record, text, want in zip(records, texts, expected):
        assert record["text"] == text and record["layers"] == [-1, 0]
        assert record["tokens"] == want["tokens"] and record["tokens"][0] == "[CLS]"
        assert np.asarray(record["features"]).shape == (len(want["tokens"]), 2, HIDDEN)
        np.testing.assert_allclose(record["features"], want["features"], atol=1e-6)
        json.dumps(record)  # JSON-ready
    with pytest.raises(app.UsageError, match="--layers=last: expected integers"):
        predict.records("features", _options(checkpoint=classifier, text=texts,
                                              layers=["last"]))
    with pytest.raises(ValueError, match=r"layers=\(2,\): .* in \[-2, 1\]: 0 is the "):
        predict.records("features", _options(checkpoint=classifier, text=texts, layers=["2"]))


def test_input_lines_split_at_the_first_tab_only_for_pair_commands(tmp_path):
    path = tmp_path / "inputs.txt"
    path.write_text("one\ttwo\tthree\n\n  \nsingle\n", encoding="utf-8")
    assert predict.read_inputs(["x"], ["y"], str(path), pairs=True) == [
        ("x", "y"), ("one", "two\tthree"), ("single", None)]
    assert predict.read_inputs([], [], str(path), pairs=False) == [
        ("one\ttwo\tthree", None), ("single", None)]
    path.write_text("first\nsecond\n", encoding="utf-8-sig")  # a byte-order mark
    assert predict.read_inputs([], [], str(path), pairs=False) == [("first", None),
                                                                   ("second", None)]


def test_a_missing_input_file_is_a_usage_error_naming_the_flag(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(app.UsageError, match=f"^--input_file={missing}: no such file$"):
        predict.records("ner", _options(input_file=str(missing)))  # before any checkpoint
    with pytest.raises(app.UsageError, match=f"^--input_file={tmp_path} is a folder"):
        predict.read_inputs([], [], str(tmp_path), pairs=False)


def test_text_b_misuse_is_a_usage_error():
    with pytest.raises(app.UsageError, match="one --text_b per --text"):
        predict.read_inputs(["a", "b"], ["c"], None, pairs=True)
    with pytest.raises(app.UsageError, match="--text_b applies to commands that take pairs"):
        predict.read_inputs(["a"], ["c"], None, pairs=False)


# ----------------------------------------------------------------------------------------------
# qa and ner, in-process.


def _options(**values) -> types.SimpleNamespace:
    """What the parsed flags give `predict.records`: the flags' defaults and `values`."""
    names = ("checkpoint", "text", "text_b", "question", "context", "choice", "input_file",
             "top_k", "pooling", "layers", "batch_size")
    defaults = {name: predict.FLAGS[name].default for name in names}
    return types.SimpleNamespace(**{**defaults, **values})


@pytest.fixture(scope="module")
def squad_questions():
    examples, _ = squad.read_squad(str(shared_data.shared_data_path("squad", "dev-v1.1.json.zip")))
    return [(e.question, e.context) for e in examples[:3]]


def test_qa_reads_flags_then_json_lines(squad_checkpoints, squad_questions,  # noqa: F811
                                        tmp_path):
    (question, context), *rest = squad_questions
    input_file = tmp_path / "questions.jsonl"
    # With a byte-order mark, as Notepad and PowerShell write UTF-8: not part of the first line.
    input_file.write_text("".join(json.dumps({"question": q, "context": c, "id": i}) + "\n\n"
                                  for i, (q, c) in enumerate(rest)), encoding="utf-8-sig")
    records = predict.records("qa", _options(
        checkpoint=squad_checkpoints["v2"], question=[question], context=[context],
        input_file=str(input_file), top_k=2))
    expected = inference.load(squad_checkpoints["v2"]).answer(squad_questions, top_k=2)
    # The same windows in the same batches: the very same numbers.
    assert records == [{"question": q, **e} for (q, _), e in zip(squad_questions, expected)]
    for record, (_, context) in zip(records, squad_questions):
        assert len(record["nbest"]) == 2 and "null_score_diff" in record
        if record["answer"]:
            assert context[record["start"]:].startswith(record["answer"])
        json.dumps(record)  # JSON-ready


def test_ner_reads_texts_and_lines(ner_checkpoint, tmp_path):  # noqa: F811
    sentences = conll.read_conll(str(shared_data.shared_data_path("conll2003", "test.txt")))[:3]
    texts = [" ".join(s.words) for s in sentences]
    input_file = tmp_path / "texts.txt"
    input_file.write_text("\n".join(texts[1:]) + "\n\n", encoding="utf-8")
    records = predict.records("ner", _options(checkpoint=ner_checkpoint, text=texts[:1],
                                              input_file=str(input_file)))
    expected = inference.load(ner_checkpoint).tag(texts)
    assert records == [{"text": t, **e} for t, e in zip(texts, expected)]
    assert [[w["word"] for w in r["words"]] for r in records] == [list(s.words)
                                                                   for s in sentences]


def test_qa_and_text_flags_do_not_mix(tmp_path):
    with pytest.raises(app.UsageError, match="--text: not for qa"):
        predict.records("qa", _options(text=["a"], question=["q"], context=["c"]))
    with pytest.raises(app.UsageError, match="--question and --context: for the qa \\(and "
                                             "choose\\) commands only"):
        predict.records("ner", _options(question=["q"], context=["c"]))
    with pytest.raises(app.UsageError, match="one --context per --question"):
        predict.records("qa", _options(question=["q", "r"], context=["c"]))
    with pytest.raises(app.UsageError, match="no input"):
        predict.records("ner", _options())
    path = tmp_path / "questions.jsonl"
    path.write_text('{"question": "q", "context": "c"}\n\n{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(app.UsageError, match=f"{path}:3: expected a JSON object"):
        predict.records("qa", _options(input_file=str(path)))


def test_choose_flags_and_lines(tmp_path):
    """One --context with its --choice values, then JSON lines; misuse named before loading."""
    path = tmp_path / "items.jsonl"
    path.write_text('{"context": "c", "choices": ["a", "b", "d"]}\n\n', encoding="utf-8")
    assert predict.read_choices(["x"], ["y", "z"], str(path)) == [("x", ["y", "z"]),
                                                                  ("c", ["a", "b", "d"])]
    with pytest.raises(app.UsageError, match="--context given 2 times: choose takes one"):
        predict.records("choose", _options(context=["c", "d"], choice=["a", "b"]))
    with pytest.raises(app.UsageError, match="--choice given 1 times: give 2 or more"):
        predict.records("choose", _options(context=["c"], choice=["a"]))
    with pytest.raises(app.UsageError, match="--choice without --context"):
        predict.records("choose", _options(choice=["a", "b"]))
    with pytest.raises(app.UsageError, match="--text: not for choose"):
        predict.records("choose", _options(text=["a"]))
    with pytest.raises(app.UsageError, match="--choice: for the choose command only"):
        predict.records("ner", _options(text=["a"], choice=["b"]))
    path.write_text('{"context": "c", "choices": "a"}\n', encoding="utf-8")
    with pytest.raises(app.UsageError, match=f"{path}:1: expected a JSON object with a string "
                                             "'context' and a list of strings 'choices'"):
        predict.records("choose", _options(input_file=str(path)))
