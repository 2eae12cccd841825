"""Starting a pre-training run from another checkpoint's weights (`config.init_checkpoint`).

What this serves:
- the BERT paper's two phases: most steps at sequence length 128, then a new run at 512 that
  starts from the first run's weights and learns the remaining position embeddings;
- continued pre-training of an existing BERT (a converted Hugging Face or original Google
  checkpoint, or one of ours) on a user's own text.

As the original implementation's `init_checkpoint`, only the weights carry over: the optimizer
state, step count, learning-rate schedule and data iterator start afresh. The checkpoint fixes
the architecture and the tokenizer; the run's config keeps the numerics (dropout, dtypes, remat,
layer scanning, attention kernel). Pre-training heads or a pooler that the checkpoint lacks (an
encoder-only export) start freshly initialised, and are logged; the encoder must all be there.
A workdir that already holds its own checkpoint resumes from it instead, so a preempted
second phase continues where it stopped rather than starting over.
"""

import dataclasses

import jax
import numpy as np
from absl import logging

from bert_jax.data import tokenization
from bert_jax.interop import hf
from bert_jax.model.config import ModelConfig, model_config_from_section
from bert_jax.train import checkpoint

# The fields that shape the weights: they come from the checkpoint. A run config may repeat
# them (with the checkpoint's values) but not change them.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads",
                       "intermediate_size", "max_position_embeddings", "type_vocab_size",
                       "layer_norm_eps")
# Weights that may start fresh when the checkpoint has none (top-level names under params).
_OPTIONAL_PREFIXES = ("bert/pooler/", "mlm_head/", "nsp_head/")
_TOKEN_TABLE = "bert/embeddings/token_embed/embedding"


@dataclasses.dataclass
class WarmStart:
    """The run's model config and tokenizer, and the checkpoint's weights in the pre-training
    model's layout (host arrays; None when the run resumes from its own checkpoint)."""

    where: str  # the checkpoint's step folder
    model_config: ModelConfig  # checkpoint architecture, config numerics
    tokenizer: tokenization.Tokenizer
    params: dict | None  # flat {"bert/encoder/...": np.ndarray}


def load(config, resume_root: str | None = None) -> WarmStart:
    """Reads `config.init_checkpoint` (a workdir, checkpoint root or step folder).

    With `resume_root` (the workdir's own checkpoints), the run continues from there: the
    architecture and tokenizer are read from it and no weights, so a second phase still resumes
    after its first phase's folder is gone.
    """
    if config.data.tokenizer_lowercase:
        raise ValueError(f"data.tokenizer_lowercase does not apply with init_checkpoint "
                         f"{config.init_checkpoint}: its tokenizer keeps the casing its weights "
                         f"were trained with")
    if resume_root is not None:
        root, step, meta = checkpoint.load_meta(resume_root)
        where = f"{root}/{step}"
        stored = ModelConfig.from_dict(meta["model_config"])
        tokenizer = checkpoint.tokenizer_from_json(meta["tokenizer"])
        check_same_tokenizer(config.data.tokenizer, tokenizer, where)
        return WarmStart(where, run_model_config(stored, config.model, where), tokenizer,
                         params=None)
    loaded = checkpoint.load_model(config.init_checkpoint)
    root, _ = checkpoint.resolve(config.init_checkpoint)
    where = f"{root}/{loaded.step}"
    check_same_tokenizer(config.data.tokenizer, loaded.tokenizer, where)
    model_config = run_model_config(loaded.model_config, config.model, where)
    params = pretraining_layout(jax.device_get(loaded.params), loaded.model_config,
                                model_config, where)
    token_table = params.get(_TOKEN_TABLE)
    if token_table is None:
        raise ValueError(f"init_checkpoint {where} has no token embedding table ({_TOKEN_TABLE})")
    checkpoint.check_tokenizer_fits(loaded.tokenizer, model_config, token_table.shape[0], where)
    logging.info("initialising from %s (step %d): %d-layer, %d-wide encoder; its tokenizer "
                 "(%d tokens); optimizer state and step start afresh", where, loaded.step,
                 model_config.num_layers, model_config.hidden_size,
                 loaded.tokenizer.vocab_size)
    return WarmStart(where, model_config, loaded.tokenizer, params)


def check_same_tokenizer(spec: str, stored: tokenization.Tokenizer, where: str) -> None:
    """data.tokenizer may name a tokenizer only if it is the checkpoint's own (the same files:
    kind, vocabulary, casing); `train`, the default, means the checkpoint's."""
    if spec == "train":
        return
    given = tokenization.load_tokenizer(spec)
    if checkpoint.tokenizer_to_json(given) != checkpoint.tokenizer_to_json(stored):
        raise ValueError(
            f"data.tokenizer={spec!r} ({given.vocab_size} tokens) is not the tokenizer of "
            f"init_checkpoint {where} ({stored.vocab_size} tokens), which its weights were "
            f"trained with: leave data.tokenizer unset to use the checkpoint's")


def run_model_config(stored: ModelConfig, model_section, where: str) -> ModelConfig:
    """The checkpoint's architecture with the run's numerics.

    A model key the config sets explicitly must agree with the checkpoint; `model.size` names
    a default architecture only, so the checkpoint's replaces it (with a warning when they
    differ, as a user who typed `:large` would want to know).
    """
    for name in ARCHITECTURE_FIELDS:
        given = model_section[name]
        if given is not None and given != getattr(stored, name):
            raise ValueError(f"init_checkpoint {where} has {name}={getattr(stored, name)} but the "
                             f"config sets model.{name}={given}: the checkpoint fixes the "
                             f"architecture (leave model.{name} unset)")
    from_config = model_config_from_section(model_section)
    differing = [f"{name} {getattr(stored, name)} (model.size={model_section.size}: "
                 f"{getattr(from_config, name)})" for name in ARCHITECTURE_FIELDS[1:5]
                 if getattr(stored, name) != getattr(from_config, name)]
    if differing:
        logging.warning("the architecture comes from init_checkpoint %s: %s", where,
                        ", ".join(differing))
    return dataclasses.replace(
        from_config, **{name: getattr(stored, name) for name in ARCHITECTURE_FIELDS})


def pretraining_layout(params: dict, stored: ModelConfig, run: ModelConfig,
                       where: str) -> dict:
    """Flat {"bert/...", "mlm_head/...", "nsp_head/..."} from any checkpoint of ours: a
    pre-training or fine-tuning one (encoder under `bert`) or a converted encoder-only one
    (encoder at the top level); the encoder's layers stacked or not as the run scans them."""
    params = dict(params)
    if "bert" not in params:
        if "embeddings" not in params:
            raise ValueError(f"init_checkpoint {where} holds no BERT encoder (top-level keys "
                             f"{sorted(params)})")
        params = {"bert": {k: params.pop(k) for k in checkpoint.ENCODER_KEYS if k in params},
                  **params}
    if hf.is_zero_pooler(params["bert"]):  # an import of a model without one: start fresh
        params["bert"] = {k: v for k, v in params["bert"].items() if k != "pooler"}
    if stored.scan_layers != run.scan_layers:
        bert = dict(params["bert"])
        relayout = hf.stack_layers if run.scan_layers else hf.unstack_layers
        bert["encoder"] = relayout(bert["encoder"], stored.num_layers)
        params["bert"] = bert
    return {name: np.asarray(value) for name, value in checkpoint.flat_names(params).items()}


def initial_params(warm: WarmStart, fresh_params, shardings):
    """`fresh_params` (a sharded initialisation) with every weight the checkpoint holds put in
    its place, on the same sharding; bit-exact copies, cast only where param_dtype differs."""
    fresh, placement = checkpoint.flat_names(fresh_params), checkpoint.flat_names(shardings)
    missing = [name for name in fresh if name not in warm.params]
    required = [name for name in missing if not name.startswith(_OPTIONAL_PREFIXES)]
    if required:
        raise ValueError(f"init_checkpoint {warm.where} lacks encoder weights the model needs: "
                         f"{', '.join(required[:5])}{' ...' if len(required) > 5 else ''}")
    if missing:
        logging.warning("init_checkpoint %s has no %s: they start freshly initialised",
                        warm.where, ", ".join(sorted({_group(n) for n in missing})))
    unused = sorted({_group(name) for name in warm.params if name not in fresh})
    if unused:
        logging.info("init_checkpoint %s: not used by pre-training: %s", warm.where,
                     ", ".join(unused))
    merged = {}
    for name, value in fresh.items():
        if name in missing:
            merged[name] = value
            continue
        stored = warm.params[name]
        if stored.shape != value.shape:
            raise ValueError(f"init_checkpoint {warm.where} does not fit this model: parameter "
                             f"{name} is {stored.shape} in the checkpoint but {value.shape} in "
                             f"the run")
        merged[name] = jax.device_put(stored.astype(value.dtype, copy=False), placement[name])
    return _unflatten(merged)


def _group(name: str) -> str:
    """'mlm_head/transform/kernel' -> 'mlm_head'; 'bert/pooler/dense/bias' -> 'bert/pooler'."""
    parts = name.split("/")
    return "/".join(parts[:2]) if parts[0] == "bert" else parts[0]


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
