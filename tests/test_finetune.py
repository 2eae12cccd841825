"""Fine-tuning end to end: a checkpoint written by pre-training fine-tunes on (a slice of) real
MRPC; encoder loaded bit-exactly, results.json, best checkpoint, submission file; bad input."""

import dataclasses
import importlib.util
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax.data import tokenization
from bert_jax.model.config import ModelConfig
from bert_jax.model.encoder import BertEncoder
from bert_jax.model.heads import BertForSequenceClassification
from bert_jax.tasks import finetune, glue
from bert_jax.train import checkpoint, loop, metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
HIDDEN = 32


def _load_config(path: pathlib.Path, arg: str):
    spec = importlib.util.spec_from_file_location(path.stem + "_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _override(config, overrides: dict):
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def pretrain_tiny(data_dir, workdir) -> str:
    """A checkpoint written by pre-training (tiny config, a few steps on a Gutenberg book); the
    session fixture `pretrained` (conftest.py)."""
    config = _override(_load_config(REPO / "configs" / "pretrain.py", "tiny"), {
        "model.hidden_size": HIDDEN, "model.num_layers": 1, "model.num_heads": 2,
        "model.intermediate_size": 64, "model.max_position_embeddings": 64,
        "data.source": f"prose:{data_dir}/gutenberg/*.txt",
        "data.tokenizer": f"wordpiece:{data_dir}/bert_vocab/vocab.txt",
        "data.max_seq_length": 32, "data.max_predictions_per_seq": 5,
        "train.batch_size": 8, "train.num_steps": 3, "train.log_every_steps": 3,
        "optimizer.warmup_steps": 1, "checkpoint.every_steps": 3,
        "eval.every_steps": 1000, "eval.num_batches": 1,
    })
    loop.train_and_evaluate(config, str(workdir))
    return str(workdir)


def mrpc_slice(data_dir, root) -> str:
    """A GLUE folder with slices of the real MRPC files (BOM and all) and a test split; the
    session fixture `mrpc_dir` (conftest.py)."""
    (root / "MRPC").mkdir()
    for split, start, count in (("train", 0, 48), ("dev", 0, 32)):
        lines = (data_dir / "glue" / "MRPC" / f"{split}.tsv").read_text(
            encoding="utf-8").splitlines(keepends=True)
        (root / "MRPC" / f"{split}.tsv").write_text("".join(lines[:1 + count]), encoding="utf-8")
    dev_rows = (data_dir / "glue" / "MRPC" / "dev.tsv").read_text(
        encoding="utf-8-sig").splitlines()[33:49]
    test = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    test += [f"{i}\t" + "\t".join(row.split("\t")[1:]) for i, row in enumerate(dev_rows)]
    (root / "MRPC" / "test.tsv").write_text("\n".join(test) + "\n", encoding="utf-8")
    return str(root)


def _finetune_config(init_checkpoint: str, glue_dir: str, **overrides):
    config = _load_config(REPO / "configs" / "finetune" / "glue.py", "mrpc")
    return _override(config, {
        "init_checkpoint": init_checkpoint, "data.dir": glue_dir, "data.max_seq_length": 32,
        "train.batch_size": 8, "train.eval_batch_size": 16, "train.num_epochs": 2,
        "train.log_every_steps": 2, "optimizer.learning_rate": 1e-3, **overrides,
    })


def finetune_two_seeds(pretrained_path: str, glue_dir: str, workdir) -> tuple:
    """(config, workdir, results) of two seeds fine-tuned on the MRPC slice; the session
    fixture `finetuned` (conftest.py), the reference of several modules' tests."""
    config = _finetune_config(pretrained_path, glue_dir, seeds=(0, 1))
    return config, str(workdir), finetune.finetune_and_evaluate(config, str(workdir))


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]}


def test_encoder_is_loaded_bit_exactly_and_head_is_new(pretrained, mrpc_dir, tmp_path):
    run = finetune.build(_finetune_config(pretrained, mrpc_dir), str(tmp_path))
    params = finetune.initial_state(run, seed=0).params
    stored = checkpoint.load_model(pretrained).params
    assert set(stored) >= {"bert", "mlm_head"}  # a pre-training checkpoint, heads and all
    want, got = _flat(stored["bert"]), _flat(params["bert"])
    assert want.keys() == got.keys() and len(want) > 10
    for name in want:
        assert np.array_equal(want[name], got[name]), name
    assert set(params) == {"bert", "classifier"}
    assert params["classifier"]["dense"]["kernel"].shape == (HIDDEN, 2)
    assert params["classifier"]["dense"]["bias"].shape == (2,)
    assert run.total_steps == 2 * 6  # 48 examples, batch 8, 2 epochs


@pytest.mark.parametrize("task_name", sorted(glue.TASKS))
def test_head_shapes_per_task(task_name):
    config = ModelConfig.from_size("tiny", vocab_size=100, max_position_embeddings=32)
    task = glue.get_task(task_name)
    shapes = jax.eval_shape(BertForSequenceClassification(config, task.num_labels).init,
                            jax.random.key(0), np.zeros((1, 8), np.int32))
    kernel = nn.unbox(shapes)["params"]["classifier"]["dense"]["kernel"]
    assert kernel.shape == (128, {"stsb": 1, "mnli": 3}.get(task_name, 2))


def test_results_json_per_epoch_best_and_median(finetuned):
    _, workdir, results = finetuned
    on_disk = json.loads((pathlib.Path(workdir) / "results.json").read_text())
    assert on_disk["best"] == results["best"] and on_disk["main_metric"] == "f1"
    assert set(on_disk["seeds"]) == {"0", "1"}
    for run in on_disk["seeds"].values():
        assert [e["epoch"] for e in run["epochs"]] == [1, 2]
        assert [e["step"] for e in run["epochs"]] == [6, 12]
        assert run["best"]["f1"] == max(e["f1"] for e in run["epochs"])
        assert all(0.0 <= e["accuracy"] <= 1.0 and np.isfinite(e["train_loss"])
                   for e in run["epochs"])
    best_f1 = [run["best"]["f1"] for run in on_disk["seeds"].values()]
    assert on_disk["best"]["f1"] == max(best_f1)
    assert on_disk["median"]["f1"] == pytest.approx(np.median(best_f1))
    assert (pathlib.Path(workdir) / "seed_0" / "tensorboard").is_dir()


def test_the_best_epoch_by_the_main_metric_is_kept(pretrained, mrpc_dir, monkeypatch, tmp_path):
    """Dev F1 (MRPC's main metric) of 0.5, 0.8, 0.6 over three epochs: epoch 2 is the seed's
    best, in results.json and as the one checkpoint kept, with epoch 2's parameters; accuracy,
    scripted to fall then rise, does not rank. Evaluation is scripted; one step an epoch."""
    scripted = iter([(0.5, 0.9), (0.8, 0.1), (0.6, 0.5)])  # (f1, accuracy) per epoch
    evaluated = []

    def evaluate(run, params):
        evaluated.append(_flat(jax.device_get(params)))
        f1, accuracy = next(scripted)
        return {"f1": f1, "accuracy": accuracy}

    monkeypatch.setattr(finetune, "evaluate", evaluate)
    config = _finetune_config(pretrained, mrpc_dir, seeds=(0,), **{
        "train.num_epochs": 3, "data.max_train_examples": 8, "data.predict_test": False})
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    seed = on_disk["seeds"]["0"]
    assert [(e["epoch"], e["step"], e["f1"]) for e in seed["epochs"]] == [
        (1, 1, 0.5), (2, 2, 0.8), (3, 3, 0.6)]
    assert (seed["best"]["epoch"], seed["best"]["step"]) == (2, 2)
    assert on_disk["best"]["f1"] == 0.8 and results["best"]["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "seed_0" / "checkpoints").iterdir()) == ["2"]
    assert seed["checkpoint"] == str(tmp_path / "seed_0" / "checkpoints" / "2")
    kept = checkpoint.load_model(seed["checkpoint"])
    assert kept.step == 2 and kept.meta["dev_metrics"]["f1"] == 0.8
    stored = _flat(kept.params)
    assert stored.keys() == evaluated[1].keys()
    for name, value in stored.items():
        np.testing.assert_array_equal(value, evaluated[1][name], err_msg=name)
    assert any(not np.array_equal(value, evaluated[2][name]) for name, value in stored.items())


def test_metrics_jsonl_holds_each_step_once_and_epoch_means_apart(finetuned):
    _, workdir, results = finetuned
    logged = [json.loads(line) for line in
              (pathlib.Path(workdir) / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in logged if e["split"] == "train"]
    assert steps == [2, 4, 6, 8, 10, 12]  # log_every_steps=2: no step twice
    epochs = [e for e in logged if e["split"] == "train_epoch"]
    assert [e["step"] for e in epochs] == [6, 12]
    assert [e["loss"] for e in epochs] == [
        e["train_loss"] for e in results["seeds"]["0"]["epochs"]]
    # Each logged step holds its window's means: three windows of two steps make the epoch.
    windows = {e["step"]: e["loss"] for e in logged if e["split"] == "train"}
    assert np.mean([windows[s] for s in (2, 4, 6)]) == pytest.approx(epochs[0]["loss"], rel=1e-6)
    assert np.mean([windows[s] for s in (8, 10, 12)]) == pytest.approx(epochs[1]["loss"],
                                                                       rel=1e-6)


def test_nan_dev_metric_ranks_last_and_is_null_in_results_json(tmp_path):
    # A regression head that predicts one constant has no correlation: scipy answers NaN,
    # which compares false with every score and so would stay "best" once it was first.
    nan = float("nan")
    assert np.isnan(glue.compute_metrics(glue.get_task("stsb"), np.ones(4),
                                         np.array([1.0, 2.0, 3.0, 4.0]))["spearman"])
    epochs = [{"epoch": 1, "step": 5, "spearman": nan}, {"epoch": 2, "step": 10, "spearman": 0.5}]
    runs = [{"seed": 0, "epochs": epochs[:1], "best": epochs[0]},
            {"seed": 1, "epochs": epochs, "best": epochs[1]}]
    results = finetune.summarize_seeds(glue.get_task("stsb"), runs)
    assert results["best"]["seed"] == 1 and results["best"]["spearman"] == 0.5
    finetune._write_results(str(tmp_path), results)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text  # strict JSON readers refuse it
    assert json.loads(text)["seeds"]["0"]["best"]["spearman"] is None


def test_training_logs_rates_of_real_tokens(finetuned):
    """Logged windows carry sequences/s, tokens/s of real tokens, MFU and the padding share;
    the first step at each bucket length (compilation) is left out of them."""
    _, workdir, _ = finetuned
    logged = [json.loads(line) for line in
              (pathlib.Path(workdir) / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    windows = [e for e in logged if e["split"] == "train" and "tokens_per_sec" in e]
    assert windows, "no logged window with rates"
    for entry in windows:
        assert entry["sequences_per_sec"] > 0 and entry["mfu"] > 0
        assert entry["tokens_per_sec"] <= 32 * entry["sequences_per_sec"]  # max_seq_length 32
        assert 0 <= entry["padding_fraction"] < 1 and 0 <= entry["input_wait_fraction"] < 1
        assert entry["eta_minutes"] >= 0


def test_step_work_counts_real_rows_and_tokens(pretrained, mrpc_dir, tmp_path):
    run = finetune.build(_finetune_config(pretrained, mrpc_dir), str(tmp_path))
    features = run.features["train"]
    batches = list(run.task.batches(features, 32))  # 48 examples: 32, then 16 and filler
    assert [len(indices) for indices, _ in batches] == [32, 16]
    indices, batch = batches[1]
    work = finetune._step_work(run, batch)
    assert work.sequences == 16
    assert work.tokens == sum(len(features.input_ids[i]) for i in indices)
    assert work.padded_tokens == 32 * batch["input_ids"].shape[1]
    assert work.flops == work.tokens * metrics.flops_per_token(
        run.model_config, batch["input_ids"].shape[1], 0)


def test_best_checkpoint_reproduces_its_dev_metrics(finetuned, mrpc_dir, tmp_path):
    config, workdir, results = finetuned
    best = results["seeds"][str(results["best"]["seed"])]
    loaded = checkpoint.load_model(best["checkpoint"])
    assert loaded.meta["task"]["name"] == "mrpc" and loaded.meta["task"]["labels"] == ["0", "1"]
    assert loaded.step == results["best"]["step"]
    run = finetune.build(config, str(tmp_path))
    metrics = finetune.evaluate(run, nn.unbox(loaded.params))
    assert metrics == pytest.approx({"f1": results["best"]["f1"],
                                     "accuracy": results["best"]["accuracy"]}, abs=1e-6)


def test_submission_file_for_the_test_split(finetuned):
    _, workdir, results = finetuned
    path = pathlib.Path(results["predictions"]["test"])
    assert path == pathlib.Path(workdir) / "predictions" / "MRPC.tsv"
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 17
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(16)]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}


def test_nonfinite_loss_stops_fine_tuning_naming_the_step(pretrained, mrpc_dir, tmp_path):
    """The first update at this rate sends the weights to ~1e30; the next forward overflows and
    the run stops there (the shared check of pre-training), not after an epoch of NaNs."""
    config = _finetune_config(pretrained, mrpc_dir, **{"optimizer.learning_rate": 1e30})
    with pytest.raises(loop.NonFiniteLossError,
                       match=r"at step \d+ .*train.skip_nonfinite_updates"):
        finetune.finetune_and_evaluate(config, str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Bad input: each fails before any training, naming the problem.


def test_hidden_size_other_than_the_config_expects(pretrained, mrpc_dir, tmp_path):
    config = _finetune_config(pretrained, mrpc_dir, **{"model.hidden_size": 768})
    with pytest.raises(ValueError, match=f"has hidden_size {HIDDEN} but the config expects "
                                         "model.hidden_size=768"):
        finetune.build(config, str(tmp_path))


def _encoder_checkpoint(root, model_config: ModelConfig, params_config: ModelConfig, tokenizer):
    params = BertEncoder(params_config).init(jax.random.key(0), np.zeros((1, 8), np.int32))
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(params["params"]))
    meta = checkpoint.make_meta(0, model_config, tokenizer)
    return checkpoint.save_model(str(root), 0, params, meta)


@pytest.fixture(scope="module")
def vocab_tokenizer(data_dir):
    return tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")


def test_checkpoint_whose_weights_do_not_match_its_hidden_size(vocab_tokenizer, mrpc_dir,
                                                                tmp_path):
    small = ModelConfig.from_size("tiny", hidden_size=HIDDEN, num_layers=1, num_heads=2,
                                  max_position_embeddings=64)
    stated = ModelConfig.from_size("tiny", hidden_size=64, num_layers=1, num_heads=2,
                                   max_position_embeddings=64)
    path = _encoder_checkpoint(tmp_path / "ckpt", stated, small, vocab_tokenizer)
    with pytest.raises(ValueError, match=r"does not fit this model: parameter "
                                         r"embeddings/\S+ is \([\d, ]*32,?\) in the checkpoint "
                                         r"but \([\d, ]*64,?\)"):
        finetune.build(_finetune_config(path, mrpc_dir), str(tmp_path / "run"))


def test_tokenizer_larger_than_the_embedding_table(vocab_tokenizer, mrpc_dir, tmp_path):
    config = ModelConfig.from_size("tiny", vocab_size=1000, hidden_size=HIDDEN, num_layers=1,
                                   num_heads=2, max_position_embeddings=64)
    path = _encoder_checkpoint(tmp_path / "ckpt", config, config, vocab_tokenizer)
    with pytest.raises(ValueError, match="its tokenizer has 30522 tokens but the token embedding "
                                         "has 1000 rows"):
        finetune.build(_finetune_config(path, mrpc_dir), str(tmp_path / "run"))


def test_bfloat16_checkpoint_fine_tunes_with_float32_parameters(vocab_tokenizer, mrpc_dir,
                                                                 tmp_path):
    """Parameters take the run's model.param_dtype (float32), not the checkpoint's: AdamW's
    small updates would round away in bfloat16."""
    stored = ModelConfig.from_size("tiny", hidden_size=HIDDEN, num_layers=1, num_heads=2,
                                   max_position_embeddings=64, param_dtype="bfloat16")
    path = _encoder_checkpoint(tmp_path / "ckpt", stored, stored, vocab_tokenizer)
    want = _flat(checkpoint.load_model(path).params)
    assert {value.dtype.name for value in want.values()} == {"bfloat16"}
    run = finetune.build(_finetune_config(path, mrpc_dir), str(tmp_path / "run"))
    assert run.model_config.param_dtype == "float32"
    got = _flat(finetune.initial_state(run, seed=0).params["bert"])
    assert got.keys() == want.keys()
    for name, value in got.items():
        assert value.dtype == np.float32, name
        np.testing.assert_array_equal(value, want[name].astype(np.float32), err_msg=name)


def test_missing_init_checkpoint(mrpc_dir, tmp_path):
    with pytest.raises(ValueError, match="config.init_checkpoint is required"):
        finetune.build(_finetune_config("", mrpc_dir), str(tmp_path))


def test_a_negative_seed_is_refused_before_training(mrpc_dir, tmp_path):
    with pytest.raises(ValueError, match=r"seeds: seed -3 is not an integer >= 0"):
        finetune.finetune_and_evaluate(_finetune_config("unused", mrpc_dir, seeds=(0, -3)),
                                       str(tmp_path))


def test_a_repeated_seed_is_refused_before_training(mrpc_dir, tmp_path):
    # The repeat was read back as the first run's result: one seed where two were asked for.
    with pytest.raises(ValueError, match=r"seeds=\(0, 1, 0\) repeats seed\(s\) \[0\]"):
        finetune.finetune_and_evaluate(_finetune_config("unused", mrpc_dir, seeds=(0, 1, 0)),
                                       str(tmp_path))


@pytest.mark.parametrize("key, value, expected", [
    ("data.max_train_examples", -5, r"0 \(all of them\) or a number of rows >= 1"),
    ("train.checkpoint_every_steps", -1, r"0 \(after each epoch only\) or steps >= 1"),
    ("optimizer.warmup_proportion", 1.5, r"the share of the training steps that warm up, "
                                         r"in \[0, 1\]")])
def test_fine_tuning_counts_out_of_range_are_named(pretrained, mrpc_dir, tmp_path, key, value,
                                                   expected):
    # A negative max_train_examples trained on every row (67k for SST-2).
    with pytest.raises(ValueError, match=rf"{key}={value}: expected {expected}"):
        finetune.build(_finetune_config(pretrained, mrpc_dir, **{key: value}), str(tmp_path))


def test_a_pair_task_needs_two_token_types(pretrained, mrpc_dir, tmp_path):
    run = finetune.build(_finetune_config(pretrained, mrpc_dir), str(tmp_path))
    one_segment = dataclasses.replace(run.model_config, type_vocab_size=1)
    with pytest.raises(ValueError, match=r"mrpc pairs two segments, but the checkpoint x has "
                                         r"type_vocab_size=1"):
        finetune._check_segments_fit(run.task, run.features["dev"], one_segment, "x")


def test_a_fine_tuning_workdir_given_as_a_checkpoint_names_its_seeds(finetuned):
    _, workdir, _ = finetuned
    with pytest.raises(FileNotFoundError, match=r"it is a fine-tuning workdir: give one of "
                                                rf"its seeds, {workdir}/seed_0, {workdir}/seed_1"):
        checkpoint.load_model(workdir)


def test_unknown_config_key_fails_loudly():
    config = _load_config(REPO / "configs" / "finetune" / "glue.py", "sst2")
    with pytest.raises(AttributeError):
        config.train.epochs = 4
    with pytest.raises(ValueError, match="unknown GLUE task"):
        _load_config(REPO / "configs" / "finetune" / "glue.py", "squad")


@pytest.mark.slow
def test_cli_writes_results(pretrained, mrpc_dir, tmp_path):
    workdir = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "bert_jax.finetune", "--config=configs/finetune/glue.py:mrpc",
         f"--workdir={workdir}", f"--config.init_checkpoint={pretrained}",
         f"--config.data.dir={mrpc_dir}", "--config.data.max_seq_length=32",
         "--config.train.batch_size=8", "--config.train.num_epochs=1",
         "--config.seeds=(3,)"],
        cwd=REPO, check=True, capture_output=True, timeout=600)
    results = json.loads((workdir / "results.json").read_text())
    assert results["best"]["seed"] == 3 and 0.0 <= results["best"]["f1"] <= 1.0
    # 6 steps, fewer than a window (log_every_steps=50): the epoch's last step is still
    # logged, with the rates of the steps that did not compile.
    logged = [json.loads(line) for line in
              (workdir / "seed_3" / "metrics.jsonl").read_text().splitlines()]
    [last] = [e for e in logged if e["split"] == "train"]
    assert last["step"] == 6 and last["tokens_per_sec"] > 0


def test_classify_from_the_best_checkpoint_matches_evaluation(finetuned, mrpc_dir):
    from bert_jax import inference

    _, _, results = finetuned
    best = results["seeds"][str(results["best"]["seed"])]
    predictor = inference.load(best["checkpoint"], batch_size=16)
    examples = glue.load_examples(glue.get_task("mrpc"), "dev", directory=mrpc_dir)
    outputs = predictor.classify([(e.text_a, e.text_b) for e in examples])
    predictions = np.array([int(o["label"]) for o in outputs])
    metrics = glue.compute_metrics(glue.get_task("mrpc"), predictions,
                                   np.array([e.label for e in examples]))
    assert metrics["f1"] == pytest.approx(results["best"]["f1"], abs=1e-6)
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-5 for o in outputs)
    with pytest.raises(ValueError, match="classify needs a checkpoint fine-tuned for sentence"):
        inference.Predictor(predictor.model_config, {"bert": predictor.params["bert"]},
                            predictor.tokenizer).classify(["a"])


def test_checkpoint_of_a_cudnn_run_predicts_and_fine_tunes_here(pretrained, mrpc_dir, tmp_path):
    """A checkpoint whose model config asks for cuDNN attention (pre-trained on GPUs) opens on
    this CPU: predict and fine-tuning use XLA's attention (cuDNN's would fail: "cuDNN is not
    detected"); fine-tuning takes remat and the attention kernel from its own config."""
    import dataclasses

    from bert_jax import inference

    loaded = checkpoint.load_model(pretrained)
    bf16_config = dataclasses.replace(loaded.model_config, dtype="bfloat16")  # as a GPU run's
    gpu_config = dataclasses.replace(bf16_config, attention_implementation="cudnn")
    for name, config in (("xla", bf16_config), ("gpu", gpu_config)):
        checkpoint.save_model(str(tmp_path / name), loaded.step, loaded.params,
                              checkpoint.make_meta(loaded.step, config, loaded.tokenizer))
    text = ["the [MASK] was dark ."]
    want = inference.load(str(tmp_path / "xla")).fill_mask(text)
    assert inference.load(str(tmp_path / "gpu")).fill_mask(text) == want
    run = finetune.build(_finetune_config(str(tmp_path / "gpu"), mrpc_dir,
                                          **{"model.remat_policy": "full"}), str(tmp_path / "ft"))
    assert run.model_config.attention_implementation is None
    assert run.model_config.remat_policy == "full"
