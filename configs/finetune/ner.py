r"""CoNLL-2003 NER fine-tuning (token classification on every word's first piece).

    python -m bert_jax.finetune --config=configs/finetune/ner.py --workdir=OUT \
        --config.init_checkpoint=PATH [--config.k=v ...]

data.dir holds train.txt, valid.txt and test.txt in the CoNLL-2003 column format ("" = the staged
shared data). The best epoch is picked on valid (testa) by entity-level F1; test (testb) is scored
alongside as f1_test. Recipe: the paper's (configs/finetune/common.py) with 4 epochs and
learning rate 5e-5, common choices for NER.
"""

from ml_collections import config_dict

from configs.finetune import common


def get_config() -> config_dict.ConfigDict:
    config = common.base_config("conll2003")
    config.data = common.data_section(
        dir="",  # local or gs:// folder with train.txt, valid.txt, test.txt
        scheme="auto",  # auto | iob1 | iob2: the tagging of the files (read as IOB2)
        max_seq_length=128,  # longer sentences are split at word boundaries, never truncated
        max_train_examples=0,  # > 0: a fixed random subset of the train sentences
        subset_seed=0,
        score_test=True,  # score test.txt after every epoch (selection stays on valid)
    )
    config.train.num_epochs = 4
    config.optimizer.learning_rate = 5e-5
    config.lock()
    return config
