"""Conversion between foreign BERT checkpoints and this package's self-describing checkpoints."""

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from bert_jax.data import tokenization
from bert_jax.interop import hf, hf_tasks, hf_tokenizer, tf1
from bert_jax.model.config import ModelConfig
from bert_jax.train import checkpoint


def import_hf(folder: str, output: str, lowercase: bool | None = None) -> str:
    """A Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin,
    vocab.txt) -> a checkpoint.

    Pre-training heads are kept when the folder has them (BertForPreTraining). A task model
    (BertForSequenceClassification, BertForQuestionAnswering, BertForTokenClassification, as
    config.json's `architectures` says) becomes a fine-tuned checkpoint, head, labels and task
    included, that inference classifies, answers or tags with (interop.hf_tasks). Otherwise
    the checkpoint holds the encoder and pooler only. lowercase=None takes tokenizer_config.json's
    do_lower_case (else tokenizer.json's normaliser; default true). The vocabulary is
    vocab.txt, else the WordPiece vocabulary inside tokenizer.json (folders saved by a fast
    tokenizer only); a folder that export_hf wrote gives back the exported tokenizer itself
    (SentencePiece ones included).
    """
    with _fresh_output(output) as staging:
        # The tokenizer first: a folder without one fails before its weights are read.
        tokenizer = _hf_tokenizer(folder, lowercase)
        hf_config = hf.read_hf_config(folder)
        tensors = hf.read_hf_weights(folder)
        config = hf.config_from_hf(hf_config)
        if hf_tasks.task_architecture(hf_config) is None:
            _save_imported(staging, config, tensors, tokenizer, f"hf:{folder}")
        else:
            name = os.path.basename(os.path.normpath(folder))
            params, task = hf_tasks.from_hf(tensors, config, hf_config, name)
            _check_vocab_size(tokenizer, config, f"hf:{folder}")
            meta = checkpoint.make_meta(_IMPORTED_STEP, config, tokenizer, source=f"hf:{folder}",
                                        task=task)
            checkpoint.save_model(staging, _IMPORTED_STEP, params, meta)
    return _imported_step_path(output)


def import_tf1(folder: str, output: str, lowercase: bool | None = None) -> str:
    """An original Google BERT folder (bert_model.ckpt.*, bert_config.json, vocab.txt) -> a
    checkpoint, pre-training heads included when the checkpoint has them.

    lowercase=None infers it from the folder name: `cased_...` and `multi_cased_...` keep case;
    `uncased_...` and other names lowercase.
    """
    with _fresh_output(output) as staging:
        if lowercase is None:
            lowercase = tf1.lowercase_from_name(folder)
            says = "cased" in os.path.basename(os.path.normpath(folder)).lower()
            logging.info("%s: %s vocab (%s)", folder, "uncased" if lowercase else "cased",
                         "from the folder name" if says else "the folder name says neither "
                         "cased nor uncased: the default; --nolowercase reads a cased vocab")
        vocab_path = os.path.join(folder, tf1.VOCAB_FILE)
        if not tf.io.gfile.exists(vocab_path):
            raise FileNotFoundError(f"{folder} has no {tf1.VOCAB_FILE}: {_NO_TOKENIZER}")
        tokenizer = tokenization.WordPieceTokenizer(vocab_path, lowercase=lowercase)
        config, tensors = tf1.read_tf1_folder(folder)
        _save_imported(staging, config, tensors, tokenizer, f"tf1:{folder}")
    return _imported_step_path(output)


_NO_TOKENIZER = ("a checkpoint is imported together with its vocabulary, so that nobody pairs "
                 "weights and vocab by hand")


def _save_imported(output: str, config: ModelConfig, tensors: dict,
                   tokenizer: tokenization.Tokenizer, source: str) -> None:
    """HF-named tensors + config + tokenizer -> the imported step of a checkpoint at `output`."""
    with_heads = any(name.startswith("cls.predictions.") for name in tensors)
    if not with_heads and any(name.startswith(hf.NSP_PREFIX) for name in tensors):
        logging.warning("%s has a next-sentence head but no masked-LM head (transformers' "
                        "BertForNextSentencePrediction): imported as an encoder with its pooler, "
                        "without that head (pre-training from it starts both heads fresh)",
                        source)
    params = hf.params_from_hf(tensors, config, with_heads=with_heads)
    _check_vocab_size(tokenizer, config, source)
    meta = checkpoint.make_meta(_IMPORTED_STEP, config, tokenizer, source=source,
                                has_pretraining_heads=with_heads)
    checkpoint.save_model(output, _IMPORTED_STEP, jax.tree_util.tree_map(np.asarray, params),
                          meta)


def _check_vocab_size(tokenizer: tokenization.Tokenizer, config: ModelConfig, source: str):
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{source}: vocab.txt has {tokenizer.vocab_size} tokens but the model "
                         f"config says vocab_size={config.vocab_size}")


_IMPORTED_STEP = 0  # an import is the one step of a new checkpoint root


def _imported_step_path(output: str) -> str:
    """The step folder an import into `output` wrote (what the CLI prints)."""
    return os.path.join(checkpoint.absolute(output), str(_IMPORTED_STEP))


@contextlib.contextmanager
def _fresh_output(output: str, local_writer: bool = False) -> Iterator[str]:
    """The folder every conversion writes its result into, all or nothing.

    Entered before anything is read, it refuses an OUTPUT that holds files: an earlier
    conversion's would mix with this one's (an old tokenizer.json, which transformers prefers),
    and Orbax keeps an existing step rather than write ours. A local result goes into a
    temporary sibling renamed to OUTPUT once complete, so a failure or a kill leaves no partial
    OUTPUT. A remote one (gs://...) is written in place: renaming a folder there copies it file
    by file, no more atomic than writing it. A `local_writer` (plain open(), safetensors,
    tokenizers: none of them reach gs://) writes a remote result into a local temporary folder,
    uploaded once complete: a failure before the upload leaves no remote files.
    """
    output = checkpoint.absolute(output)
    _refuse_nonempty(output)
    if "://" in output:
        if not local_writer:
            yield output
            return
        staging = tempfile.mkdtemp(prefix="bert_jax_export_")
        try:
            yield staging
            _upload(staging, output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    if os.path.islink(output):  # a link to an empty folder: the rename replaces its target
        output = os.path.realpath(output)
    staging = f"{output}.tmp-{uuid.uuid4().hex[:8]}"  # a sibling: the rename stays on one disk
    os.makedirs(staging)
    try:
        yield staging
        os.replace(staging, output)  # replaces an empty OUTPUT; fails if one was filled meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # what a failure left; nothing once renamed


def _upload(local: str, remote: str) -> None:
    """Copies the local folder's files, subfolders included, into the remote folder."""
    for folder, _, names in os.walk(local):
        relative = os.path.relpath(folder, local)
        target = remote if relative == "." else f"{remote.rstrip('/')}/{relative}"
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(folder, name), f"{target}/{name}")


def _refuse_nonempty(output: str) -> None:
    """Raises unless `output` is missing or an empty folder (users often create it first)."""
    if not tf.io.gfile.exists(output):
        return
    if not tf.io.gfile.isdir(output):
        raise FileExistsError(f"output {output} is a file, not a folder: choose a new folder")
    held = sorted(tf.io.gfile.listdir(output))
    if held:
        more = ", ..." if len(held) > 3 else ""
        raise FileExistsError(
            f"output folder {output} is not empty (it holds {', '.join(held[:3])}{more}): a "
            "conversion writes a folder of its own, so that no earlier files mix with its "
            "result; choose a new folder or remove it")


def _hf_tokenizer(folder: str, lowercase: bool | None) -> tokenization.Tokenizer:
    """The tokenizer export_hf saved there, else vocab.txt, else tokenizer.json's WordPiece
    vocabulary; casing as import_hf says."""
    if tf.io.gfile.exists(os.path.join(folder, tokenization.METADATA_FILE)):
        exported = tokenization.load_tokenizer_dir(folder)  # export_hf's: exactly ours
        if lowercase is None:
            return exported
        if isinstance(exported, tokenization.SentencePieceTokenizer):
            raise ValueError(f"{folder}: a SentencePiece model's casing is part of the model; "
                             "import it without a lowercase choice")
    vocab_path = os.path.join(folder, "vocab.txt")
    json_path = os.path.join(folder, "tokenizer.json")
    tokenizer_config = _read_json(os.path.join(folder, "tokenizer_config.json"), {})
    config_lowercase = tokenizer_config.get("do_lower_case")
    if tf.io.gfile.exists(vocab_path):
        tokens, normalizer = None, {}
    elif tf.io.gfile.exists(json_path):
        tokens, normalizer = _tokenizer_json_wordpiece(json_path)
        vocab_path = json_path
    else:
        raise FileNotFoundError(f"{folder} has no tokenizer (neither vocab.txt nor "
                                f"tokenizer.json): {_NO_TOKENIZER}")
    lowercase = next(choice for choice in (lowercase, config_lowercase,
                                           normalizer.get("lowercase"), True)
                     if choice is not None)
    # None (the usual) strips accents as it lowercases; some models lowercase and keep them.
    strip_accents = next((choice for choice in (tokenizer_config.get("strip_accents"),
                                                normalizer.get("strip_accents"))
                          if choice is not None), None)
    return tokenization.WordPieceTokenizer(vocab_path, lowercase=lowercase,
                                           strip_accents=strip_accents, tokens=tokens)


def _tokenizer_json_wordpiece(path: str) -> tuple[list[str], dict]:
    """The tokens (by id) of a fast tokenizer's tokenizer.json, and its BertNormalizer's
    settings ({} for another normaliser)."""
    saved = _read_json(path, None)
    model = saved.get("model") or {}
    if model.get("type") != "WordPiece":
        raise ValueError(f"{path}: model type {model.get('type')!r}, expected 'WordPiece' "
                         "(BERT's tokenizer)")
    prefix = model.get("continuing_subword_prefix", "##")
    if prefix != "##":
        raise ValueError(f"{path}: continuing_subword_prefix {prefix!r}, expected '##'")
    by_id = {i: token for token, i in model["vocab"].items()}
    if sorted(by_id) != list(range(len(model["vocab"]))):
        raise ValueError(f"{path}: vocabulary ids are not 0..{len(model['vocab']) - 1}, each "
                         "once")
    normalizer = saved.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        normalizer = {}
    return [by_id[i] for i in range(len(by_id))], normalizer


def _read_json(path: str, missing):
    if not tf.io.gfile.exists(path):
        return missing
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e


def export_hf(checkpoint_path: str, output: str) -> str:
    """A checkpoint of this package -> a Hugging Face folder that transformers loads.

    Writes config.json, model.safetensors and the tokenizer's files in both forms: ours, and
    those transformers' AutoTokenizer reads (interop.hf_tokenizer). The model is a
    BertForPreTraining with its MLM and NSP heads, a BertForMaskedLM with its MLM head alone
    (an import of one), else a BertModel (encoder and pooler); a
    fine-tuned checkpoint becomes its task's transformers class, head and labels included
    (interop.hf_tasks).
    """
    import flax.linen as nn
    from safetensors.numpy import save_file

    with _fresh_output(output, local_writer=True) as staging:
        loaded = checkpoint.load_model(checkpoint_path)
        config = loaded.model_config
        params = _unrolled(nn.unbox(loaded.params), config)
        hf_config = hf.config_to_hf(config)
        task = loaded.meta.get("task")
        if task:
            tensors, task_fields = hf_tasks.to_hf(params, config, task, checkpoint_path)
            hf_config.update(task_fields)
        else:
            with_heads = "mlm_head" in params
            tensors = hf.params_to_hf(params, config, with_heads=with_heads)
            if not with_heads:
                hf_config["architectures"] = ["BertModel"]
            elif "nsp_head" not in params:  # imported from one
                hf_config["architectures"] = ["BertForMaskedLM"]
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                  os.path.join(staging, "model.safetensors"))
        # Ours (exact re-import by import_hf), then the files transformers reads.
        loaded.tokenizer.save(staging)
        hf_tokenizer.write_hf_tokenizer(loaded.tokenizer, staging, config.max_position_embeddings)
    return output


def export_tf1(checkpoint_path: str, output: str) -> str:
    """A checkpoint of this package -> an original Google BERT folder (bert_model.ckpt.*,
    bert_config.json, vocab.txt) that the original code (and import_tf1) reads: the encoder
    and pooler, and the MLM and NSP heads where the checkpoint has them.

    The original reads a WordPiece vocab.txt; the casing is the user's `do_lower_case` flag
    there (Google's folder names say it: uncased_* / cased_*), logged here. A fine-tuned
    checkpoint's task head is left out, with a warning: the original's fine-tuning scripts
    start from the encoder (--to=hf keeps heads).
    """
    import flax.linen as nn

    with _fresh_output(output) as staging:
        loaded = checkpoint.load_model(checkpoint_path)
        tokenizer, config = loaded.tokenizer, loaded.model_config
        if not isinstance(tokenizer, tokenization.WordPieceTokenizer):
            raise ValueError(f"{checkpoint_path} has a {type(tokenizer).__name__}: the "
                             "original BERT code reads a WordPiece vocab.txt only; export it "
                             "with --to=hf")
        params = _unrolled(nn.unbox(loaded.params), config)
        if loaded.meta.get("task"):
            logging.warning("%s is fine-tuned (%s): its task head is not written; the original "
                            "BERT folder holds the encoder and pooler (--to=hf keeps the head)",
                            checkpoint_path, loaded.meta["task"].get("name"))
            params = {"bert": params["bert"]}
        with_heads = "mlm_head" in params
        if with_heads and "nsp_head" not in params:
            raise ValueError(f"{checkpoint_path} has an MLM head but no NSP head (an import of a "
                             "BertForMaskedLM), which the original BertForPreTraining always has; "
                             "export it with --to=hf")
        encoder = params.get("bert", params)  # an encoder-only import holds it at the top level
        if hf.is_zero_pooler(encoder):
            raise ValueError(f"{checkpoint_path} has no pooler (an import of a transformers model "
                             "without one), which the original BERT always has; export it with "
                             "--to=hf")
        if with_heads:
            tensors = hf.params_to_hf(params, config, with_heads=True)
        else:  # the original names the encoder's variables bert/... all the same
            tensors = {f"bert.{name}": value for name, value in
                       hf.params_to_hf(encoder, config, with_heads=False).items()}
        vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        logging.info("%s: %s vocab; the original code needs --do_lower_case=%s", output,
                     "uncased" if tokenizer.lowercase else "cased", tokenizer.lowercase)
        if tokenizer.strip_accents != tokenizer.lowercase:
            logging.warning("%s: the tokenizer %s accents, but the original code strips them "
                            "exactly when it lowercases: its ids will differ on accented text",
                            output, "strips" if tokenizer.strip_accents else "keeps")
        tf1.write_tf1_folder(staging, config, tensors, vocab)
    return output


def _unrolled(params: dict, config) -> dict:
    """Scanned checkpoints store layers stacked; HF names one tensor per layer."""
    if not config.scan_layers:
        return params
    encoder_parent = params["bert"] if "bert" in params else params
    encoder_parent["encoder"] = hf.unstack_layers(encoder_parent["encoder"], config.num_layers)
    return params
