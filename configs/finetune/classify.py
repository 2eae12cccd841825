r"""Fine-tuning on one's own classification (or regression) data: CSV, TSV or JSON lines files.

    python -m bert_jax.finetune --config=configs/finetune/classify.py --workdir=OUT \
        --config.init_checkpoint=PATH --config.data.train_file=train.csv \
        --config.data.dev_file=dev.csv --config.data.text_columns=text \
        --config.data.label_column=label [--config.k=v ...]

Pairs: --config.data.text_columns=premise,hypothesis. See bert_jax/tasks/text_classification.py
for the labels, the held-out dev rows, the metrics and the prediction files. The recipe is the
paper's (configs/finetune/common.py).
"""

from ml_collections import config_dict

from bert_jax.tasks import text_classification
from configs.finetune import common


def get_config() -> config_dict.ConfigDict:
    config = common.base_config(text_classification.NAME)
    config.data = common.data_section(**common.own_files_keys(
        text_columns="text",  # one column, or two comma-separated (a pair)
        label_column="label",
        labels="",  # label names in index order, comma-separated; "": the train file's, sorted
        regression=False,  # the label is a number; one output, squared error
        multi_label=False,  # any number of labels a row (a JSON list, or joined by
        # label_separator); one sigmoid each
        label_separator="|",
        metrics="",  # comma-separated, the first picks the best epoch; "": accuracy,f1_macro
        # (classification), pearson,spearman (regression), f1_micro,f1_macro,accuracy
        # (multi-label)
        max_seq_length=128,
        skip_empty=False,  # skip (with a counted warning) instead of failing on empty texts
    ))
    config.lock()
    return config
