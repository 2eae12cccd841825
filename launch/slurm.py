r"""Pre-train on a SLURM GPU cluster: writes an sbatch script and submits it.

    python launch/slurm.py --nodes=4 --gpus_per_node=8 --workdir=/shared/runs/bert_large -- \
        python -m bert_jax.pretrain --config=configs/pretrain.py:large \
            --config.data.tokenizer=wordpiece:/shared/vocab.txt \
            --config.mesh.data=-1 --config.mesh.fsdp=8 --config.mesh.rules=fsdp

--mode=per_gpu (default) starts one process per GPU (srun binds one GPU to each task);
--mode=per_node starts one process per node that drives all its GPUs. Every task runs the same
command; bert_jax.parallel.multihost reads SLURM_PROCID / SLURM_NTASKS / SLURM_STEP_NODELIST and
makes the first node the coordinator. `--dry-run` prints the script and the sbatch command.
"""

import argparse
import os
import shlex
import subprocess
import sys

from command_flags import refuse_a_second_workdir  # beside this script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sbatch_script(args, command: list[str]) -> str:
    per_gpu = args.mode == "per_gpu"
    tasks_per_node = args.gpus_per_node if per_gpu else 1
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={args.log_dir}/%x-%j.out",
        *([f"#SBATCH --partition={args.partition}"] if args.partition else []),
        *([f"#SBATCH --account={args.account}"] if args.account else []),
        "set -euo pipefail",
        f"export BERT_JAX_INIT_TIMEOUT={args.init_timeout}",
        "export PYTHONUNBUFFERED=1",
        # Processes start at slightly different times: leave room for the others' buffers.
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
        *([f"cd {shlex.quote(args.code_dir)}"] if args.code_dir else []),
    ]
    srun = ["srun", "--kill-on-bad-exit=1", "--label"]
    if per_gpu:
        srun.append("--gpus-per-task=1")
    lines.append(shlex.join([*srun, *command, f"--workdir={args.workdir}"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--mode", choices=("per_gpu", "per_node"), default="per_gpu")
    parser.add_argument("--cpus_per_task", type=int, default=8)
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--job_name", default="bert_jax")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--log_dir", default="slurm_logs")
    parser.add_argument("--code_dir", default=REPO_ROOT,
                        help="the repository on the cluster's shared filesystem (default: the "
                             "one this script is in)")
    parser.add_argument("--workdir", required=True, help="shared filesystem or gs:// folder")
    parser.add_argument("--init_timeout", type=int, default=600)
    parser.add_argument("--script", default="bert_jax_job.sbatch", help="where to write it")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    refuse_a_second_workdir(parser, command, args.workdir)
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus_per_node must be >= 1")
    for name in ("job_name", "log_dir", "partition", "account", "time"):
        value = getattr(args, name)
        if value and any(c.isspace() for c in value):
            # #SBATCH lines are not shell lines: sbatch would split such a value at the space.
            parser.error(f"--{name}={value!r} holds whitespace, which an #SBATCH line cannot "
                         "carry; choose a name or folder without spaces")

    script = sbatch_script(args, command)
    submit = ["sbatch", args.script]
    if args.dry_run:
        print(f"# {args.script}\n{script}")
        print(shlex.join(["mkdir", "-p", args.log_dir]))
        print(shlex.join(submit))
        return 0
    with open(args.script, "w") as f:
        f.write(script)
    os.makedirs(args.log_dir, exist_ok=True)
    return subprocess.run(submit).returncode


if __name__ == "__main__":
    sys.exit(main())
