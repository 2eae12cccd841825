"""What every fine-tuning config shares: checkpoint, seeds, model, train, optimizer, mesh.

The defaults are the BERT paper's fine-tuning recipe: AdamW, learning rate 2e-5 (the paper
searched 2e-5..5e-5: learning_rates runs that search), batch 32, 3 epochs, 10% linear warmup
then linear decay, dropout 0.1.
Each task config adds its `task` name and `data` section and changes what its recipe changes.
"""

from ml_collections import config_dict


def base_config(task: str) -> config_dict.ConfigDict:
    config = config_dict.ConfigDict()
    config.task = task
    config.init_checkpoint = ""  # a checkpoint path (step folder, checkpoint root or workdir)
    # True: the checkpoint's architecture and tokenizer, but freshly initialised weights (the
    # baseline that shows what pre-training is worth).
    config.random_init = False
    config.seeds = (0,)  # one restart per seed; results.json reports each, the best, the median
    # A sweep: every seed at each rate (in WORKDIR/lr_<rate>), the rate of the best run wins,
    # as the paper chose among (5e-5, 4e-5, 3e-5, 2e-5). Empty: optimizer.learning_rate alone.
    config.learning_rates = ()

    config.model = config_dict.ConfigDict()
    config.model.hidden_size = config_dict.placeholder(int)  # a check against the checkpoint
    config.model.hidden_dropout = 0.1
    config.model.attention_dropout = 0.1
    config.model.dtype = "float32"
    # Parameters (and so AdamW's updates) stay float32 whatever the checkpoint stored: an
    # update of lr 2e-5 x ~1 rounds away in bfloat16, whose spacing near 0.05 is 2.4e-4.
    config.model.param_dtype = "float32"
    # Memory and speed, as in pre-training (configs/pretrain.py), whatever the checkpoint was
    # trained with: remat_policy none | full | dots | dots_no_batch; attention_implementation
    # None (XLA's) | cudnn (GPUs; fused only where attention_dropout=0).
    config.model.remat_policy = "none"
    config.model.attention_implementation = config_dict.placeholder(str)

    config.train = config_dict.ConfigDict(dict(
        batch_size=32,  # global
        eval_batch_size=64,
        num_epochs=3,  # 0: score a checkpoint fine-tuned for the task, training nothing
        grad_accum_steps=1,
        prng_impl="threefry2x32",  # or rbg: see configs/pretrain.py
        log_every_steps=50,
        skip_nonfinite_updates=False,
        # model.dtype=float16 only (V100, T4): the dynamic loss scale starts here, halves when
        # the gradients overflow (that step is skipped) and doubles after growth_interval
        # finite steps in a row (bert_jax/train/loss_scale.py).
        loss_scale_initial=2.0 ** 15,
        loss_scale_growth_interval=2000,
        save_best_checkpoint=True,
        # The seed's state is also saved after each epoch and on SIGTERM, so that the same
        # command resumes a stopped run (tasks/progress.py); 0: no saves within an epoch.
        checkpoint_every_steps=1000,
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
    # data x fsdp x tensor within a slice (-1: the remaining devices); dcn_data > 1: data
    # parallelism across that many slices (TPU multislice) or processes (GPU nodes) over DCN.
    config.mesh = config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1,
                                              rules="data"))
    return config


def data_section(**task_keys) -> config_dict.ConfigDict:
    """A task's `data` keys plus those every task shares."""
    return config_dict.ConfigDict(dict(
        **task_keys,
        # Padded lengths of batches: coarse (16, 32, 64, ...) or fine (8, 16, 24, 32, 48, 64,
        # ...: less padding, about twice the compiled shapes; for large tasks). See
        # bert_jax/tasks/batching.py for the measured difference.
        length_buckets="coarse",
    ))


def own_files_keys(**task_keys) -> dict:
    """The `data` keys of a task on one's own files (bert_jax/tasks/own_files.py), then the
    task's own."""
    return dict(
        train_file="",  # local or gs://
        dev_file="",  # "": hold out dev_fraction of the train rows instead
        test_file="",  # "": none; predicted with the best epoch, scored too when labelled
        format="auto",  # auto (from the extension) | csv | tsv | jsonl
        id_column="",  # names the rows of the prediction files; "" (or a file without the
        # column): the row's index
        dev_fraction=0.1,  # without dev_file: the train rows held out as dev
        max_train_examples=0,  # > 0: a fixed random subset of the train rows
        subset_seed=0,  # picks that subset and the held-out dev rows
        **task_keys,
    )
