"""The launch scripts' --dry-run output: every worker, the same command, the environment set."""

import os
import shlex
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["python3", "-m", "bert_jax.pretrain", "--config=configs/pretrain.py:large",
         "--config.mesh.fsdp=-1"]


def dry_run(script: str, *args: str, cwd: str | None = None) -> list[str]:
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *args,
                           "--dry-run", "--", *TRAIN], capture_output=True, text=True,
                          timeout=60, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_local_runs_the_same_command_in_every_process():
    lines = dry_run("local.py", "--num_processes=3", "--devices_per_process=2", "--port=4321")
    assert lines[-1] == "wait"
    commands = [shlex.split(line.removesuffix(" &")) for line in lines[:-1]]
    assert len(commands) == 3
    for i, words in enumerate(commands):
        env = dict(w.split("=", 1) for w in words[1:] if "=" in w and not w.startswith("-"))
        assert words[0] == "env" and words[-len(TRAIN):] == TRAIN
        assert env["BERT_JAX_PROCESS_ID"] == str(i)
        assert env["BERT_JAX_NUM_PROCESSES"] == "3"
        assert env["BERT_JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:4321"
        assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
        assert env["JAX_PLATFORMS"] == "cpu"


def test_tpu_pod_creates_or_reuses_ships_installs_and_runs_on_all_workers():
    lines = dry_run("tpu_pod.py", "--name=bert", "--zone=us-central2-b",
                    "--accelerator_type=v4-32", "--workdir=gs://bucket/run", "--project=p1",
                    cwd=os.path.join(REPO, "launch"))  # from a subfolder: the whole repository
    describe, create = lines[0].split(" || ")
    assert shlex.split(describe)[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"]
    assert "--accelerator-type=v4-32" in shlex.split(create)
    assert shlex.split(lines[1])[:4] == ["git", "-C", REPO, "archive"]
    ssh = [shlex.split(line) for line in lines[2:] if " ssh " in line]
    assert len(ssh) == 3  # unpack, install, run
    for words in ssh:
        assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bert"]
        assert "--worker=all" in words and "--zone=us-central2-b" in words
        assert "--project=p1" in words
    scp = [shlex.split(line) for line in lines if " scp " in line]
    assert len(scp) == 1 and "--worker=all" in scp[0]
    run = next(w for w in ssh[-1] if w.startswith("--command=")).removeprefix("--command=")
    assert "BERT_JAX_INIT_TIMEOUT=600" in run and "PYTHONUNBUFFERED=1" in run
    assert shlex.join(TRAIN + ["--workdir=gs://bucket/run"]) in run
    install = next(w for w in ssh[1] if w.startswith("--command="))
    # The images' Python is 3.10: the package installs into a 3.11 virtualenv, and runs there.
    assert "uv venv -q --python 3.11" in install and "uv pip install" in install
    assert run.startswith(". ~/bert_jax_venv/bin/activate && ")


def test_tpu_pod_can_clone_a_repository_instead():
    lines = dry_run("tpu_pod.py", "--name=bert", "--zone=z", "--workdir=gs://b/r",
                    "--repo=https://example.org/bert_jax.git", "--branch=v1", "--skip_install")
    assert len(lines) == 3  # describe||create, clone, run
    assert "git clone --depth=1 --branch=v1 https://example.org/bert_jax.git" in lines[1]
    assert all("--worker=all" in line for line in lines[1:])


def test_tpu_pod_requires_gs_workdir():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "tpu_pod.py"),
                           "--name=b", "--zone=z", "--workdir=/tmp/x", "--dry-run", "--",
                           *TRAIN], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "must be on gs://" in proc.stderr


def test_slurm_one_process_per_gpu():
    lines = dry_run("slurm.py", "--nodes=4", "--gpus_per_node=8", "--workdir=/shared/run",
                    "--code_dir=/shared/bert_jax", "--script=job.sbatch")
    text = "\n".join(lines)
    assert "#SBATCH --nodes=4" in text and "#SBATCH --ntasks-per-node=8" in text
    assert "#SBATCH --gpus-per-node=8" in text
    assert "export BERT_JAX_INIT_TIMEOUT=600" in text and "cd /shared/bert_jax" in text
    srun = shlex.split(next(line for line in lines if line.startswith("srun ")))
    assert "--gpus-per-task=1" in srun and "--kill-on-bad-exit=1" in srun
    assert srun[-len(TRAIN) - 1:] == TRAIN + ["--workdir=/shared/run"]
    assert lines[-1] == "sbatch job.sbatch"


def test_slurm_runs_in_the_repository_by_default_from_any_folder():
    lines = dry_run("slurm.py", "--nodes=1", "--gpus_per_node=8", "--workdir=/shared/run",
                    cwd=os.path.join(REPO, "launch"))
    assert f"cd {shlex.quote(REPO)}" in lines


def test_slurm_one_process_per_node():
    lines = dry_run("slurm.py", "--nodes=2", "--gpus_per_node=4", "--mode=per_node",
                    "--workdir=gs://b/r")
    text = "\n".join(lines)
    assert "#SBATCH --ntasks-per-node=1" in text and "--gpus-per-task" not in text


def test_local_dry_run_shows_the_xla_flags_the_processes_get():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "local.py"),
                           "--num_processes=2", "--devices_per_process=2", "--dry-run", "--",
                           *TRAIN], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, XLA_FLAGS="--xla_dump_to=/tmp/hlo"))
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines()[:-1]:
        assert ("XLA_FLAGS=--xla_dump_to=/tmp/hlo --xla_force_host_platform_device_count=2"
                in shlex.split(line))


# A child that reports SIGTERM, then exits 0 (as bert_jax's entrypoints do after saving).
_CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
if sys.argv[1:] == ["kill"] and os.environ["BERT_JAX_PROCESS_ID"] == "1":
    os.kill(os.getpid(), signal.SIGKILL)
print("ready", flush=True)
time.sleep(60)
"""


def _launch_children(*child_args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(REPO, "launch", "local.py"),
                             "--num_processes=2", "--", sys.executable, "-c", _CHILD,
                             *child_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_local_passes_sigterm_to_every_process_and_waits_for_them():
    launcher = _launch_children()
    ready = 0
    while ready < 2:  # both children have installed their handler
        ready += launcher.stdout.readline().endswith("ready\n")
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 0, err
    assert sorted(line for line in out.splitlines() if "got SIGTERM" in line) == [
        "[process 0] got SIGTERM", "[process 1] got SIGTERM"]


def test_local_reports_a_process_killed_by_a_signal_as_128_plus_it():
    launcher = _launch_children("kill")
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 128 + signal.SIGKILL == 137, err
    assert "process 1 exited with status 137" in err


def test_slurm_refuses_a_directive_value_with_spaces():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "slurm.py"), "--nodes=1",
                           "--gpus_per_node=8", "--workdir=/shared/run",
                           "--log_dir=/shared/my logs", "--dry-run", "--", *TRAIN],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--log_dir='/shared/my logs' holds whitespace" in proc.stderr


def _launch(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("theirs", [["--workdir=gs://b/other"], ["--workdir", "gs://b/other"],
                                    ["-workdir=gs://b/other"]], ids=["equals", "space", "dash"])
@pytest.mark.parametrize("script", ["slurm.py", "tpu_pod.py"])
def test_a_command_with_its_own_workdir_is_refused(script, theirs):
    """The launchers append --workdir; absl would silently take whichever came last."""
    where = ["--nodes=2"] if script == "slurm.py" else ["--name=b", "--zone=z"]
    proc = _launch(script, *where, "--workdir=gs://b/run", "--dry-run", "--", *TRAIN, *theirs)
    assert proc.returncode == 2 and not proc.stdout
    assert ("the command gives --workdir=gs://b/other, and the launcher adds its own "
            "--workdir=gs://b/run; give the workdir once") in proc.stderr
