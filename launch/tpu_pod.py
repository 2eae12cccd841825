r"""Pre-train on a Cloud TPU pod: create or reuse a TPU VM, ship the code, install, run everywhere.

    python launch/tpu_pod.py --name=bert-large --zone=us-central2-b --accelerator_type=v4-32 \
        --workdir=gs://BUCKET/bert_large -- \
        python3 -m bert_jax.pretrain --config=configs/pretrain.py:large \
            --config.data.tokenizer=wordpiece:gs://BUCKET/vocab.txt \
            --config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.rules=fsdp

Steps (each a gcloud command; `--dry-run` prints them all, exactly, and runs none):
  1. describe the TPU VM; create it when it does not exist (reuse it otherwise);
  2. ship the code to every worker: the local git HEAD as a tarball (default), or a clone of
     --repo at --branch;
  3. install the package and jax[tpu] on every worker;
  4. run the same command on all workers (`--worker=all`) with the workdir on gs://; gcloud streams
     every worker's output, and each worker also keeps its log in ~/bert_jax_run.log.
JAX finds the other workers from the TPU metadata (bert_jax.parallel.multihost), so the command
is identical on every worker.
"""

import argparse
import os
import shlex
import subprocess
import sys

from command_flags import refuse_a_second_workdir  # beside this script

REMOTE_DIR = "bert_jax"  # under the worker's home folder
VENV = "bert_jax_venv"  # likewise: the Python 3.11 environment it runs in
TARBALL = "/tmp/bert_jax_code.tar.gz"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tpu(args, verb: str, *rest: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def _ssh_all(args, remote: str) -> list[str]:
    return _tpu(args, "ssh", args.name, "--worker=all", f"--command={remote}")


def describe_command(args) -> list[str]:
    return _tpu(args, "describe", args.name)


def create_command(args) -> list[str]:
    cmd = _tpu(args, "create", args.name, f"--accelerator-type={args.accelerator_type}",
               f"--version={args.runtime_version}")
    if args.spot:
        cmd.append("--spot")
    return cmd


def ship_commands(args) -> list[list[str]]:
    if args.repo:
        clone = (f"rm -rf ~/{REMOTE_DIR} && git clone --depth=1 --branch={shlex.quote(args.branch)}"
                 f" {shlex.quote(args.repo)} ~/{REMOTE_DIR}")
        return [_ssh_all(args, clone)]
    return [
        # The whole repository's HEAD from wherever this runs (from a subfolder, a plain
        # `git archive HEAD` would ship that folder alone).
        ["git", "-C", REPO_ROOT, "archive", "--format=tar.gz",
         f"--output={TARBALL}", "HEAD"],
        _tpu(args, "scp", TARBALL, f"{args.name}:{TARBALL}", "--worker=all"),
        _ssh_all(args, f"rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && "
                       f"tar -xzf {TARBALL} -C ~/{REMOTE_DIR}"),
    ]


def install_command(args) -> list[str]:
    """The package and jax[tpu] in a Python 3.11 virtualenv made by uv: the TPU VM images ship
    Python 3.10, older than jax and bert_jax need (uv fetches a 3.11 build where none is)."""
    return _ssh_all(args, f"cd ~/{REMOTE_DIR} && python3 -m pip install -q -U --user uv && "
                          f"python3 -m uv venv -q --python 3.11 --allow-existing ~/{VENV} && "
                          f"python3 -m uv pip install -q --python ~/{VENV}/bin/python "
                          "'jax[tpu]' -e .")


def remote_run(args, command: list[str]) -> str:
    """The one command every worker runs: env, the user's command, the gs:// workdir, a log."""
    env = {"BERT_JAX_INIT_TIMEOUT": str(args.init_timeout), "PYTHONUNBUFFERED": "1"}
    line = shlex.join([*command, f"--workdir={args.workdir}"])
    assignments = " ".join(f"{k}={v}" for k, v in env.items())
    return (f". ~/{VENV}/bin/activate && cd ~/{REMOTE_DIR} && {assignments} {line} 2>&1 | "
            f"tee -a ~/bert_jax_run.log; exit ${{PIPESTATUS[0]}}")


def run_command(args, command: list[str]) -> list[str]:
    return _ssh_all(args, remote_run(args, command))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument("--accelerator_type", default="v4-32")
    parser.add_argument("--runtime_version", default="tpu-ubuntu2204-base")
    parser.add_argument("--spot", action="store_true", help="create a Spot TPU VM")
    parser.add_argument("--workdir", required=True, help="gs://BUCKET/PATH, shared by all workers")
    parser.add_argument("--repo", default=None, help="clone this git URL instead of copying HEAD")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--skip_install", action="store_true")
    parser.add_argument("--init_timeout", type=int, default=600)
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    refuse_a_second_workdir(parser, command, args.workdir)
    if not args.workdir.startswith("gs://"):
        parser.error(f"--workdir must be on gs:// (every worker writes there), got {args.workdir}")

    steps = ship_commands(args) + ([] if args.skip_install else [install_command(args)])
    steps.append(run_command(args, command))
    if args.dry_run:
        print(f"{shlex.join(describe_command(args))} || {shlex.join(create_command(args))}")
        print("\n".join(shlex.join(step) for step in steps))
        return 0
    exists = subprocess.run(describe_command(args), capture_output=True).returncode == 0
    if not exists:
        subprocess.run(create_command(args), check=True)
    for step in steps:
        code = subprocess.run(step).returncode
        if code:
            print(f"[launch] failed ({code}): {shlex.join(step)}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
