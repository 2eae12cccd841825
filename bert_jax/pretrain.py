"""Pre-train BERT (masked LM + next-sentence prediction, or MLM only).

    python -m bert_jax.pretrain --config=configs/pretrain.py:base --workdir=DIR [--config.k=v]

Multi-host runs start by themselves on Cloud TPU VMs and under SLURM (srun); elsewhere give
--coordinator_address, --num_processes and --process_id (or use launch/local.py).
"""

from absl import app, flags
from ml_collections import config_flags

from bert_jax.parallel import multihost
from bert_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/pretrain.py:base",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (local or gs://).", required=True)
_START_PROCESSES = multihost.define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    loop.quiet_library_logs()
    _START_PROCESSES()
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
