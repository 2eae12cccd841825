r"""GLUE fine-tuning configs: one per task, with the BERT paper's recipe as defaults.

    python -m bert_jax.finetune --config=configs/finetune/glue.py:sst2 --workdir=OUT \
        --config.init_checkpoint=PATH [--config.seeds="(0,1,2)"] [--config.k=v ...]

TASK is one of cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; max_seq_length 128 (see
configs/finetune/common.py for the recipe). The model architecture and tokenizer come from the
checkpoint; model.hidden_size, when set, is a check that the checkpoint is the expected one.
The config is locked, so a misspelt key fails instead of being ignored.
"""

from ml_collections import config_dict

from bert_jax.tasks import glue
from configs.finetune import common


def get_config(task: str = "sst2") -> config_dict.ConfigDict:
    glue.get_task(task)  # fails early on an unknown task
    config = common.base_config(task)
    config.data = common.data_section(
        source="tsv",  # tsv (GLUE distribution folders) | tfds (glue/<task>)
        dir="",  # the folder holding CoLA/, SST-2/, ...; "" = the staged shared data
        tfds_data_dir="",
        max_seq_length=128,
        max_train_examples=0,  # > 0: a fixed random subset of the train split
        subset_seed=0,
        predict_test=True,  # write GLUE submission files when the test split is present
        # Skip (with a counted warning) train and dev rows with an empty sentence or a wrong
        # number of fields, instead of failing on them.
        skip_empty=False,
    )
    config.lock()
    return config
