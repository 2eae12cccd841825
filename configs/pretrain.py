"""Pre-training configs: one file, several variants.

    python -m bert_jax.pretrain --config=configs/pretrain.py:base --workdir=DIR
    python -m bert_jax.pretrain --config=configs/pretrain.py:demo --workdir=/tmp/demo

The argument after ':' is a model size (tiny, mini, small, medium, base, large) or `demo`, the
CPU demo: a SentencePiece vocabulary and a tiny BERT trained on the built-in corpus in minutes.
Any key can be overridden on the command line, e.g. `--config.optimizer.learning_rate=2e-4`;
the config is locked, so a misspelt key fails instead of being ignored.
"""

from ml_collections import config_dict

from bert_jax.model.config import NAMED_SIZES


def model_section(size: str) -> config_dict.ConfigDict:
    """model.size picks a named size; every other model.* key overrides it when not None."""
    section = config_dict.ConfigDict()
    section.size = size
    for name, kind in (("vocab_size", int), ("hidden_size", int), ("num_layers", int),
                       ("num_heads", int), ("intermediate_size", int),
                       ("max_position_embeddings", int), ("type_vocab_size", int),
                       ("hidden_dropout", float), ("attention_dropout", float),
                       ("initializer_range", float), ("layer_norm_eps", float),
                       ("attention_implementation", str)):
        section[name] = config_dict.placeholder(kind)
    section.dtype = "float32"
    section.param_dtype = "float32"
    section.remat_policy = "none"
    section.scan_layers = False
    section.fused_qkv = True
    return section


def get_config(arg: str = "base") -> config_dict.ConfigDict:
    if arg not in NAMED_SIZES and arg != "demo":
        raise ValueError(f"unknown variant {arg!r}; expected one of {sorted(NAMED_SIZES)} or demo")
    config = config_dict.ConfigDict()
    # Weights to start from (a workdir, checkpoint root or step folder of ours, e.g. converted
    # from Hugging Face): its architecture and tokenizer, fresh optimizer state and step. The
    # paper's second phase: a run at sequence length 512 from the first phase's checkpoint.
    config.init_checkpoint = ""
    config.model = model_section("tiny" if arg == "demo" else arg)

    config.data = config_dict.ConfigDict(dict(
        source="builtin",  # builtin | text:GLOB | prose:GLOB | tfds:NAME[:SPLIT] | A+B (both)
        # A+B+...: times a train epoch reads each source, e.g. (2, 1) upsamples A; a fraction
        # reads that share of its files. Empty: once each (they mix in proportion to size).
        source_repeats=(),
        mode="nsp",  # nsp | full_sentences
        max_seq_length=128,
        # Unset: BERT's 20 at 128 tokens, 80 at 512 (15% of the row); follows max_seq_length.
        max_predictions_per_seq=config_dict.placeholder(int),
        masked_lm_prob=0.15,
        whole_word_masking=False,
        short_seq_prob=0.1,
        pack=False,
        eval_fraction=0.01,
        # sentencepiece:PATH.model | wordpiece:PATH/vocab.txt | a saved tokenizer folder |
        # `train`: train a SentencePiece vocabulary of tokenizer_vocab_size on data.source first.
        tokenizer="train",
        tokenizer_vocab_size=30000,
        # `train` only: an uncased vocabulary (the text case-folded), e.g. for lowercased tasks
        # such as GLUE's SST-2 and for uncased checkpoints.
        tokenizer_lowercase=False,
    ))
    config.train = config_dict.ConfigDict(dict(
        num_steps=1_000_000,
        batch_size=256,  # global, across all hosts
        grad_accum_steps=1,
        seed=0,
        # Dropout's random bits: threefry2x32 (the same masks on any mesh) or rbg (cheaper on
        # GPUs and TPUs; masks depend on the sharding). See bert_jax.train.steps.root_rng.
        prng_impl="threefry2x32",
        log_every_steps=100,
        skip_nonfinite_updates=False,
        # model.dtype=float16 only (V100, T4): the dynamic loss scale starts here, halves when
        # the gradients overflow (that step is skipped) and doubles after growth_interval
        # finite steps in a row (bert_jax/train/loss_scale.py).
        loss_scale_initial=2.0 ** 15,
        loss_scale_growth_interval=2000,
    ))
    config.optimizer = config_dict.ConfigDict(dict(
        name="adamw",  # adamw | lamb
        learning_rate=1e-4,
        warmup_steps=10_000,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        grad_clip_norm=1.0,
    ))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=10_000, keep=3))
    config.eval = config_dict.ConfigDict(dict(every_steps=10_000, num_batches=20))
    # data x fsdp x tensor within a slice (-1: the remaining devices); dcn_data > 1: data
    # parallelism across that many slices (TPU multislice) or processes (GPU nodes) over DCN.
    config.mesh = config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1,
                                              rules="data"))

    if arg == "large":
        config.optimizer.name = "lamb"
        # The LAMB paper scales its BERT rate with the square root of the batch: 5e-3 at 32K
        # sequences, i.e. 5e-3 * sqrt(batch / 32768). At this config's batch of 256 that is
        # 4.4e-4 (1.76e-3 is its rate for a batch of 4K); rescale it with train.batch_size.
        config.optimizer.learning_rate = 4.4e-4
    if arg == "demo":
        # Minutes on a laptop CPU: a small vocabulary and no dropout, because a 2-layer model
        # trained this briefly underfits rather than overfits. Full sentences and 2,000 steps:
        # until a tiny BERT learns to attend to a mask's neighbours (~1,200-1,500 steps here)
        # it predicts the corpus's most frequent pieces (the, a, is) whatever the context, and
        # on sentence pairs with NSP it takes longer still.
        config.data.mode = "full_sentences"
        config.model.max_position_embeddings = 128
        config.model.hidden_dropout = 0.0
        config.model.attention_dropout = 0.0
        config.data.tokenizer_vocab_size = 4000
        config.data.max_seq_length = 64
        config.data.max_predictions_per_seq = 10
        config.train.num_steps = 2000
        config.train.batch_size = 64
        config.train.log_every_steps = 100
        config.optimizer.learning_rate = 2e-3
        config.optimizer.warmup_steps = 200
        config.checkpoint.every_steps = 500
        config.eval.every_steps = 500
        config.eval.num_batches = 4
        # The built-in corpus is small (~2 MB): 1% held out fills a quarter of the evaluation's
        # 4 x 64 sequences, which then repeats it; 3% fills them once.
        config.data.eval_fraction = 0.03
    config.lock()
    return config
