"""GLUE fine-tuning configs: one per task, with the BERT paper's recipe as defaults.

    python -m bert_jax.finetune --config=configs/finetune/glue.py:sst2 --workdir=OUT \
        --config.init_checkpoint=PATH [--config.seeds="(0,1,2)"] [--config.k=v ...]

TASK is one of cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli. The recipe: AdamW, learning
rate 2e-5 (the paper searched 2e-5..5e-5), batch 32, 3 epochs, 10% linear warmup then linear
decay, dropout 0.1, max_seq_length 128. The model architecture and tokenizer come from the
checkpoint; model.hidden_size, when set, is a check that the checkpoint is the expected one.
The config is locked, so a misspelt key fails instead of being ignored.
"""

from ml_collections import config_dict

from bert_jax.tasks import glue


def get_config(task: str = "sst2") -> config_dict.ConfigDict:
    glue.get_task(task)  # fails early on an unknown task
    config = config_dict.ConfigDict()
    config.task = task
    config.init_checkpoint = ""  # a checkpoint path (step folder, checkpoint root or workdir)
    # True: the checkpoint's architecture and tokenizer, but freshly initialised weights (the
    # baseline that shows what pre-training is worth).
    config.random_init = False
    config.seeds = (0,)  # one restart per seed; results.json reports each, the best, the median

    config.model = config_dict.ConfigDict()
    config.model.hidden_size = config_dict.placeholder(int)  # a check against the checkpoint
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.dtype = "float32"

    config.data = config_dict.ConfigDict(dict(
        source="tsv",  # tsv (GLUE distribution folders) | tfds (glue/<task>)
        dir="",  # the folder holding CoLA/, SST-2/, ...; "" = the staged shared data
        tfds_data_dir="",
        max_seq_length=128,
        max_train_examples=0,  # > 0: a fixed random subset of the train split
        subset_seed=0,
        predict_test=True,  # write GLUE submission files when the test split is present
        skip_empty=False,  # skip (with a warning) instead of failing on empty sentences
    ))
    config.train = config_dict.ConfigDict(dict(
        batch_size=32,  # global
        eval_batch_size=64,
        num_epochs=3,
        grad_accum_steps=1,
        log_every_steps=50,
        skip_nonfinite_updates=False,
        save_best_checkpoint=True,
    ))
    config.optimizer = config_dict.ConfigDict(dict(
        name="adamw",
        learning_rate=2e-5,
        warmup_proportion=0.1,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        grad_clip_norm=1.0,
    ))
    config.mesh = config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules="data"))
    config.lock()
    return config
