"""The notebooks execute headlessly on tiny settings, so they cannot rot."""

import json
import os
import pathlib

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, workdir: pathlib.Path, env: dict, monkeypatch) -> str:
    """Runs the notebook with `env` (and BERT_JAX_NOTEBOOK_WORKDIR=workdir); its printed text."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in {**env, "BERT_JAX_NOTEBOOK_WORKDIR": str(workdir)}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()
    return "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for o in cell.get("outputs", []))


@pytest.mark.slow
def test_quickstart_executes(tmp_path, monkeypatch):
    outputs = _execute("quickstart.ipynb", tmp_path, {"BERT_JAX_NOTEBOOK_STEPS": "30"},
                       monkeypatch)
    assert "->" in outputs  # fill-mask printed its completions
    assert os.path.isdir(tmp_path / "checkpoints")


@pytest.mark.slow
def test_finetune_sst2_executes(tmp_path, monkeypatch):
    # One length bucket (16) and 8 steps: the train step compiles once.
    outputs = _execute("finetune_sst2.ipynb", tmp_path, {
        "BERT_JAX_NOTEBOOK_TRAIN_EXAMPLES": "256", "BERT_JAX_NOTEBOOK_EPOCHS": "1",
        "BERT_JAX_NOTEBOOK_MAX_SEQ_LENGTH": "16"}, monkeypatch)
    results = json.loads((tmp_path / "sst2" / "results.json").read_text())
    assert [e["epoch"] for e in results["seeds"]["0"]["epochs"]] == [1]
    assert 0.0 <= results["best"]["accuracy"] <= 1.0
    config = json.loads((tmp_path / "sst2" / "config.json").read_text())
    assert config["train_examples"] == 256 and config["model_config"]["num_layers"] == 6
    printed = [line for line in outputs.splitlines()
               if line.endswith("too long.") and not line.startswith("transformers")]
    assert len(printed) == 1 and printed[0].split()[0] in ("negative", "positive")
    assert "transformers gives the same label for 3 of 3 sentences" in outputs
