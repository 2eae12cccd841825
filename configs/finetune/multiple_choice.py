r"""Multiple choice (SWAG, as in the BERT paper, or one's own files): the right choice of several.

    python -m bert_jax.finetune --config=configs/finetune/multiple_choice.py --workdir=OUT \
        --config.init_checkpoint=PATH --config.data.train_file=swag/train.csv \
        --config.data.dev_file=swag/val.csv [--config.k=v ...]

The column defaults read SWAG's CSV files; see bert_jax/tasks/multiple_choice.py for other
layouts (a JSON list of choices, choices without a start phrase), the held-out dev rows and the
prediction files. Recipe: the paper's SWAG fine-tuning, 3 epochs at learning rate 2e-5 with
batch 16.
"""

from ml_collections import config_dict

from bert_jax.tasks import multiple_choice
from configs.finetune import common


def get_config() -> config_dict.ConfigDict:
    config = common.base_config(multiple_choice.NAME)
    config.data = common.data_section(**common.own_files_keys(
        context_column="sent1",  # the first text of every pair
        start_column="sent2",  # put before every choice ("": the choices are whole texts)
        # One column per choice, comma-separated, or one column holding a list of choices.
        choice_columns="ending0,ending1,ending2,ending3",
        label_column="label",  # the right choice's index, from 0
        max_seq_length=128,  # per choice: [CLS] context [SEP] choice [SEP]
    ))
    config.train.batch_size = 16  # examples; each is one row per choice
    config.train.eval_batch_size = 32
    config.lock()
    return config
