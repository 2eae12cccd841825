"""Multi-host start (cluster detection, roll call, bounded errors) and a real multi-process run.

The end-to-end test starts 2 processes x 4 CPU devices with launch/local.py (gloo collectives
over loopback), compares their checkpoint with a 1-process 8-device run of the same global
batches, then restores that checkpoint in 1 process with 1 device and trains on. The workers of
the 1-process runs are this file's `__main__`.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from bert_jax.parallel import multihost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Cluster detection.


def test_detect_single_process_by_default():
    assert multihost.detect(environ={}) == multihost.ClusterSpec("single")


def test_detect_explicit_flags_and_environment():
    spec = multihost.detect("10.0.0.1:1234", 4, 2, environ={})
    assert spec == multihost.ClusterSpec("explicit", 4, 2, "10.0.0.1:1234")
    env = {multihost.ENV_ADDRESS: "h:9", multihost.ENV_NUM_PROCESSES: "2",
           multihost.ENV_PROCESS_ID: "1", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}
    assert multihost.detect(environ=env) == multihost.ClusterSpec("explicit", 2, 1, "h:9")


def test_detect_slurm():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "4242",
           "SLURM_STEP_NODELIST": "gpu[007-010,15],cpu1", "SLURM_JOB_NODELIST": "other"}
    spec = multihost.detect(environ=env)
    assert spec == multihost.ClusterSpec("slurm", 16, 3, "gpu007:24242")
    env[multihost.ENV_PORT] = "5555"
    assert multihost.detect(environ=env).coordinator_address == "gpu007:5555"


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("a[3-5]", "a3"), ("gpu[007,009-011]", "gpu007"), ("x1,x2", "x1"),
    ("node[1-2]-ib", "node1-ib"), ("rack[1-2]-node[01-04]", "rack1-node01"),
    ("gpu[3,5]-ib,cpu[1-2]", "gpu3-ib"),
])
def test_first_slurm_node(nodelist, first):
    assert multihost.first_slurm_node(nodelist) == first


def test_detect_tpu_vm_from_environment():
    assert multihost.detect(environ={"TPU_ACCELERATOR_TYPE": "v4-32"}).source == "tpu"


@pytest.mark.parametrize("args, match", [
    (("h:1", 2, None), "missing: process_id"),
    ((None, 2, 0), "missing: coordinator_address"),
    (("h:1", 2, 2), r"process_id 2 is not in \[0, 2\)"),
    (("nohostport", 2, 0), "is not HOST:PORT"),
    (("h:1", 0, 0), "num_processes must be >= 1"),
])
def test_detect_rejects_bad_explicit_settings(args, match):
    with pytest.raises(multihost.ClusterStartError, match=match):
        multihost.detect(*args, environ={})


# ---------------------------------------------------------------------------------------------
# Roll call: every process reports to process 0; a missing one is named within the timeout.


def test_roll_call_all_join():
    address, errors = f"127.0.0.1:{free_port()}", []

    def member(pid):
        try:
            multihost.roll_call(address, 3, pid, timeout_s=20)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=member, args=(p,)) for p in (2, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and not any(t.is_alive() for t in threads)


def test_roll_call_names_the_missing_process_on_every_side():
    address, raised = f"127.0.0.1:{free_port()}", {}

    def member(pid):
        try:
            multihost.roll_call(address, 3, pid, timeout_s=3)
        except multihost.ClusterStartError as e:
            raised[pid] = str(e)

    start = time.monotonic()
    threads = [threading.Thread(target=member, args=(p,)) for p in (0, 2)]  # 1 never starts
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert time.monotonic() - start < 15
    assert sorted(raised) == [0, 2]
    for message in raised.values():
        assert message.startswith("process 1 of 3 did not join the coordinator at")


def test_coordinator_that_never_answers_fails_in_bounded_time():
    start = time.monotonic()
    with pytest.raises(multihost.ClusterStartError,
                       match=r"process 1 of 2: the coordinator \(process 0\) at .* did not answer "
                             r"within 2 s"):
        multihost.roll_call(f"127.0.0.1:{free_port()}", 2, 1, timeout_s=2)
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------------------------------------
# Checkpoints: each process resumes its own part of the data.


class _AsProcess:
    """jax as the checkpoint module sees it, from process `index` of `count`."""

    def __init__(self, index: int, count: int):
        self._index, self._count = index, count

    def process_index(self) -> int:
        return self._index

    def process_count(self) -> int:
        return self._count

    def __getattr__(self, name):
        import jax

        return getattr(jax, name)


def test_each_process_restores_its_own_data_state(tmp_path, monkeypatch):
    """Every process reads one data iterator over its own shards, so a resumed process must take
    the state it saved, not another process's: two states as 2 processes write them (each its
    own file in the step's data item), read back by each of them; a run on another number of
    processes gets none. The end-to-end run restores on 1 process, where any index is 0."""
    import jax
    import jax.numpy as jnp

    from bert_jax.train import checkpoint
    from bert_jax.train.state import TrainState

    state = TrainState(step=jnp.asarray(7, jnp.int32), params={"w": jnp.arange(4.0)},
                       opt_state={"m": jnp.ones(4)})
    states = [{"shard": 0, "offset": 11}, {"shard": 1, "offset": 29}]
    checkpointer = checkpoint.TrainCheckpointer(str(tmp_path), keep=1, async_save=False)
    try:
        monkeypatch.setattr(checkpoint, "jax", _AsProcess(0, 2))
        checkpointer.save(7, state, states[0], {"step": 7})
        checkpointer.wait()
        monkeypatch.setattr(checkpoint, "jax", _AsProcess(1, 2))
        checkpointer.replace_data(7, states[1])  # process 1's file, beside process 0's
        written = os.listdir(tmp_path / "checkpoints" / "7" / checkpoint.DATA)
        assert sorted(name for name in written if name.endswith(".json")) == [
            "process_0-of-2.json", "process_1-of-2.json"]
        for index in (1, 0):
            monkeypatch.setattr(checkpoint, "jax", _AsProcess(index, 2))
            restored, data_state, meta = checkpointer.restore(7, state)
            assert data_state == states[index], index
        assert meta["step"] == 7 and int(restored.step) == 7
        np.testing.assert_array_equal(restored.params["w"], np.arange(4.0))
        monkeypatch.setattr(checkpoint, "jax", jax)
        assert checkpointer.restore(7, state)[1] is None  # written by 2, read by 1
    finally:
        checkpointer.close()


def test_entrypoint_reports_missing_host(data_dir, tmp_path):
    """The pretrain entrypoint, process 0 of 2, alone: a clear error, not a hang or an abort."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bert_jax.pretrain", "--config=configs/pretrain.py:tiny",
         f"--workdir={tmp_path}", f"--coordinator_address=127.0.0.1:{free_port()}",
         "--num_processes=2", "--process_id=0", "--init_timeout=3"],
        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
        capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "process 1 of 2 did not join the coordinator" in proc.stderr
    assert time.monotonic() - start < 120  # mostly imports; the wait itself is 3 s


# ---------------------------------------------------------------------------------------------
# A real multi-process run.


def overrides(data_dir, num_steps=STEPS) -> dict:
    return {
        # Three books: with 2 processes, each host reads whole files of its own.
        "data.source": f"prose:{data_dir}/gutenberg/1*-0.txt",
        "data.tokenizer": f"wordpiece:{data_dir}/bert_vocab/vocab.txt",
        "data.max_seq_length": 32,
        "data.max_predictions_per_seq": 5,
        "data.eval_fraction": 0.1,
        "model.max_position_embeddings": 64,
        "model.num_layers": 1,
        "train.batch_size": 8,
        "train.num_steps": num_steps,
        "train.log_every_steps": 1,
        "optimizer.warmup_steps": 1,
        "optimizer.learning_rate": 1e-3,
        "checkpoint.every_steps": STEPS,
        "eval.every_steps": 1000,
        "eval.num_batches": 1,
        "mesh.data": -1,
    }


def make_config(data_dir, num_steps=STEPS):
    from configs import pretrain

    config = pretrain.get_config("tiny")
    for key, value in overrides(data_dir, num_steps).items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def _params_npz(path, params):
    import jax

    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    np.savez(path, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})


class _TwoHosts:
    """Both hosts' iterators of a 2-process run, concatenated: the same global batches."""

    def __init__(self, iterators):
        self.iterators = iterators

    def __next__(self):
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self):
        for it in self.iterators:
            it.close()


def reference_worker(data_dir, workdir, out):
    """1 process, 8 devices: the 2-process run's global batches, STEPS train steps."""
    import jax

    from bert_jax.data import pipeline
    from bert_jax.parallel import mesh as mesh_lib
    from bert_jax.train import loop

    assert jax.device_count() == 8 and jax.process_count() == 1
    config = make_config(data_dir)
    trainer = loop.Trainer(config, workdir)
    data = _TwoHosts([pipeline.make_pretraining_iterator(
        trainer.setup.pipeline_config, trainer.tokenizer, batch_size=config.train.batch_size // 2,
        seed=config.train.seed, split="train", process_index=i, process_count=2)
        for i in range(2)])
    state = trainer.initial_state()
    for _ in range(STEPS):
        state, _ = trainer.train_step(state, mesh_lib.global_batch(next(data), trainer.setup.mesh),
                                      trainer.rng)
    _params_npz(out, state.params)
    data.close()
    trainer.close()


def continue_worker(data_dir, workdir, out):
    """1 process, 1 device: restores the 2-process checkpoint onto this mesh, trains one more."""
    import jax

    from bert_jax.train import loop

    assert jax.device_count() == 1
    trainer = loop.Trainer(make_config(data_dir, STEPS + 1), workdir)
    restored = trainer.initial_state()
    leaf = restored.params["bert"]["embeddings"]["token_embed"]["embedding"]
    assert leaf.sharding.device_set == {jax.devices()[0]}
    _params_npz(out, restored.params)
    result = trainer.run()
    with open(out + ".json", "w") as f:
        json.dump({"loss": result["loss"], "step": int(trainer.checkpointer.latest_step())}, f)


def _run(args, devices, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def _pretrain_command(workdir, settings: dict) -> list[str]:
    return [sys.executable, "-m", "bert_jax.pretrain", "--config=configs/pretrain.py:tiny",
            f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in settings.items()]]


def _on_two_processes(command: list[str], devices_per_process: int, timeout: int = 900):
    """`command` as 2 local processes (launch/local.py), its output captured."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "launch/local.py", "--num_processes=2",
         f"--devices_per_process={devices_per_process}", "--init_timeout=300", "--", *command],
        cwd=REPO, env=dict(env, PYTHONPATH=REPO), capture_output=True, text=True,
        timeout=timeout)


@pytest.mark.slow
def test_two_processes_equal_one_process_then_restore_on_one_device(data_dir, tmp_path):
    workdir = str(tmp_path / "two_processes")
    # Each process stands for one slice (a GPU node): data parallelism across them over "DCN".
    settings = {**overrides(data_dir), "mesh.dcn_data": 2}
    proc = _on_two_processes(_pretrain_command(workdir, settings), devices_per_process=4)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "[process 1]" in proc.stdout and "4 local of 8 devices" in proc.stdout
    data_dir_of_step = os.path.join(workdir, "checkpoints", str(STEPS), "data")
    assert sorted(os.listdir(data_dir_of_step)) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
    states = [json.load(open(os.path.join(data_dir_of_step, f"process_{i}-of-2.json")))
              for i in range(2)]
    assert all(s["batch"] == STEPS for s in states)

    reference = str(tmp_path / "reference.npz")
    _run([sys.executable, "-m", "tests.test_multihost", "reference", str(data_dir),
          str(tmp_path / "one_process"), reference], devices=8)
    restored = str(tmp_path / "restored.npz")
    _run([sys.executable, "-m", "tests.test_multihost", "continue", str(data_dir), workdir,
          restored], devices=1)

    want, got = np.load(reference), np.load(restored)
    assert sorted(want.files) == sorted(got.files) and len(want.files) > 10
    for name in want.files:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    continued = json.load(open(restored + ".json"))
    assert continued["step"] == STEPS + 1 and np.isfinite(continued["loss"])


def test_a_tensor_axis_across_processes_is_refused_before_training(data_dir, tmp_path):
    """Each process reads its own rows: with tensor=2 over 2 one-device processes, the two
    would hold the same batch rows with different examples in them. Refused, naming why."""
    settings = {**overrides(data_dir), "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 2}
    proc = _on_two_processes(_pretrain_command(tmp_path / "run", settings),
                             devices_per_process=1, timeout=600)
    assert proc.returncode != 0
    assert ("mesh data=1 x fsdp=1 x tensor=2: processes [0, 1] would hold the same batch rows "
            "0..") in proc.stdout, proc.stdout[-4000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_local",
                                                  os.path.join(REPO, "launch", "local.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigterm_to_one_process_stops_both_at_one_step_and_saves(data_dir, tmp_path):
    """A preemption notice that reaches one host only (or the hosts a step apart): every
    process stops after the same step and the checkpoint is written there. Before, the
    signalled one stopped to save while the other had queued the next step, and both hung."""
    workdir = tmp_path / "run"
    settings = {**overrides(data_dir, num_steps=100_000), "train.log_every_steps": 1,
                "checkpoint.every_steps": 5}
    command = _pretrain_command(workdir, settings)
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    envs = _launcher().process_envs(2, 1, free_port(), init_timeout=300)
    logs = [open(tmp_path / f"process_{i}.log", "w") for i in range(2)]
    workers = [subprocess.Popen(command, cwd=REPO, env={**base, **env, "PYTHONPATH": REPO},
                                stdout=log, stderr=subprocess.STDOUT)
               for env, log in zip(envs, logs)]
    try:
        deadline = time.monotonic() + 300
        while max(_logged_steps(workdir), default=0) < 8:  # past the first checkpoint
            assert all(w.poll() is None for w in workers), "a process ended early"
            assert time.monotonic() < deadline, "no step 8 within 300 s"
            time.sleep(0.05)
        workers[1].send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=120) for w in workers]
    finally:
        for worker, log in zip(workers, logs):
            worker.kill()
            log.close()
    output = "".join((tmp_path / f"process_{i}.log").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], output
    reached = max(_logged_steps(workdir))
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == reached > 8, (saved, reached)
    assert sorted(os.listdir(workdir / "checkpoints" / str(reached) / "data")) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]


def _logged_steps(workdir) -> list[int]:
    path = workdir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if entry["split"] == "train":
            steps.append(entry["step"])
    return steps


def _encoder_checkpoint(data_dir, root) -> str:
    """A tiny encoder-only checkpoint (uncased WordPiece), as a single-process converter writes."""
    import flax.linen as nn
    import jax

    from bert_jax.data import tokenization
    from bert_jax.model.config import ModelConfig
    from bert_jax.model.encoder import BertEncoder
    from bert_jax.train import checkpoint

    tokenizer = tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")
    config = ModelConfig.from_size("tiny", hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=64)
    params = BertEncoder(config).init(jax.random.key(0), np.zeros((1, 8), np.int32))
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(params["params"]))
    return checkpoint.save_model(str(root), 0, params, checkpoint.make_meta(0, config, tokenizer))


FINETUNE_FLAGS = ["--config.data.max_train_examples=64", "--config.train.batch_size=8",
                  "--config.train.eval_batch_size=8", "--config.train.num_epochs=2",
                  "--config.data.max_seq_length=32", "--config.optimizer.learning_rate=1e-3"]


@pytest.mark.slow
def test_fine_tuning_on_two_processes_equals_one_process(data_dir, tmp_path):
    """Both processes join one run (a process that started alone would fine-tune by itself and
    race the other for the same files): the same dev scores as one process with the same global
    batches, one results.json, one committed best checkpoint."""
    init = _encoder_checkpoint(data_dir, tmp_path / "encoder")
    command = [sys.executable, "-m", "bert_jax.finetune", "--config=configs/finetune/glue.py:mrpc",
               f"--config.init_checkpoint={init}", *FINETUNE_FLAGS]
    two = tmp_path / "two_processes"
    proc = _on_two_processes([*command, f"--workdir={two}"], devices_per_process=2)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "process 1 of 2: 2 local of 4 devices" in proc.stdout
    one = tmp_path / "one_process"
    _run([*command, f"--workdir={one}"], devices=4)
    results = [json.loads((folder / "results.json").read_text()) for folder in (two, one)]
    for epoch_two, epoch_one in zip(results[0]["epochs"], results[1]["epochs"]):
        for name in ("f1", "accuracy", "train_loss"):
            assert epoch_two[name] == pytest.approx(epoch_one[name], abs=1e-4), name
    committed = sorted(os.listdir(two / "seed_0" / "checkpoints"))
    assert committed == [str(results[0]["best"]["step"])]


if __name__ == "__main__":
    mode, data, workdir_arg, out_arg = sys.argv[1:5]
    {"reference": reference_worker, "continue": continue_worker}[mode](data, workdir_arg, out_arg)
