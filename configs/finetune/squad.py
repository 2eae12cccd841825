r"""SQuAD fine-tuning: `configs/finetune/squad.py` (v1.1) or `configs/finetune/squad.py:v2`.

    python -m bert_jax.finetune --config=configs/finetune/squad.py --workdir=OUT \
        --config.init_checkpoint=PATH \
        --config.data.train_file=train-v1.1.json --config.data.dev_file=dev-v1.1.json

Features as the original BERT: max_seq_length 384, doc_stride 128, max_query_length 64; n-best
20 and max_answer_length 30 in post-processing. Without data.train_file, the articles of one
file (data.dev_file, default the staged SQuAD v1.1 dev set) are split: heldout_fraction of them
are scored, the rest trained on. Recipe: the paper's for each version (configs/finetune/
common.py otherwise): v1.1 3 epochs of batch 32 at learning rate 5e-5, v2.0 2 epochs of batch 48
at 5e-5. (The original code's README ran v1.1 for 2 epochs at 3e-5, batch 12 or 24.)
"""

from ml_collections import config_dict

from configs.finetune import common

VERSIONS = {"v1": "squad", "v2": "squad_v2"}


def get_config(version: str = "v1") -> config_dict.ConfigDict:
    if version not in VERSIONS:
        raise ValueError(f"unknown SQuAD version {version!r}; expected one of {sorted(VERSIONS)}")
    config = common.base_config(VERSIONS[version])
    config.data = common.data_section(
        source="json",  # json (official files) | tfds (squad/v1.1, squad/v2.0)
        train_file="",  # "" = split the articles of dev_file
        dev_file="",  # "" = the staged SQuAD v1.1 dev set
        tfds_data_dir="",
        heldout_fraction=0.2,  # without train_file: the share of articles scored
        split_seed=0,
        max_seq_length=384,
        doc_stride=128,
        max_query_length=64,
        max_train_examples=0,  # > 0: a fixed random subset of the training questions
        subset_seed=0,
        n_best_size=20,
        max_answer_length=30,
        null_score_diff_threshold=0.0,  # v2: predict "" when null beats the best span by more
    )
    config.optimizer.learning_rate = 5e-5
    if version == "v1":
        config.train.num_epochs, config.train.batch_size = 3, 32
    else:
        config.train.num_epochs, config.train.batch_size = 2, 48
    config.lock()
    return config
