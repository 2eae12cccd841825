r"""Fine-tune a checkpoint on a GLUE task, SQuAD, CoNLL-2003 NER, multiple choice (SWAG) or one's
own classification files (configs/finetune/).

    python -m bert_jax.finetune --config=configs/finetune/glue.py:sst2 --workdir=OUT \
        --config.init_checkpoint=PATH [--config.k=v ...]

Multi-host runs start as pre-training's do (see bert_jax/pretrain.py): by themselves on Cloud
TPU VMs and under SLURM, else with --coordinator_address, --num_processes and --process_id.
"""

from absl import app, flags
from ml_collections import config_flags

from bert_jax.parallel import multihost
from bert_jax.tasks import finetune
from bert_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/finetune/glue.py:sst2",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (local or gs://).", required=True)
_START_PROCESSES = multihost.define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    loop.quiet_library_logs()
    _START_PROCESSES()
    finetune.finetune_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
