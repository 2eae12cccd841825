"""Fine-tuned checkpoints as transformers' task models and back (interop.hf_tasks): exported
classifiers, QA and NER models give transformers our outputs with our labels; importing an export
gives back the checkpoint's predictions; task models made by transformers import with theirs."""

import json
import logging
import pathlib
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax import inference
from bert_jax.interop import convert, hf_tasks
from bert_jax.model.heads import (BertForQuestionAnswering, BertForSequenceClassification,
                                  BertForTokenClassification)
from bert_jax.tasks import base, finetune
from bert_jax.train import checkpoint
from tests.conftest import require
from tests.test_finetune import _finetune_config, vocab_tokenizer  # noqa: F401 (fixture)
from tests.test_inference import (NER_LABELS, _random_params, _save_finetuned, _softmax,
                                  _tiny_config, minilm_folder, ner_checkpoint,  # noqa: F401
                                  squad_checkpoints)
from tests.test_finetune_tasks import _config

REPO = pathlib.Path(__file__).resolve().parents[1]

TEXTS = ["A gripping, beautifully acted film.", "Dull and far too long.",
         "The plot never quite comes together, but the cast is a joy to watch."]
PAIRS = [("A man is playing a guitar.", "Someone is strumming a guitar."),
         ("The cat is sleeping on the sofa.", "Stock markets fell sharply on Monday."),
         ("How do I reset my password?", "What are the steps to change my password?")]
QUESTION = ("Who founded the company?",
            "The company was founded in 1951 by two engineers from Geneva, who later sold it.")


@pytest.fixture(scope="module")
def classifiers(vocab_tokenizer, tmp_path_factory):  # noqa: F811 (fixture)
    """"sst2" (single texts, 2 labels), "mnli" (pairs, 3 labels), "stsb" (pairs, regression)
    -> a random tiny BertForSequenceClassification saved as that task's fine-tuning run."""
    model_config = _tiny_config(vocab_tokenizer)
    out = {}
    for name in ("sst2", "mnli", "stsb"):
        task = base.make_task(_config("glue", name))
        params = _random_params(BertForSequenceClassification(model_config, task.task.num_labels))
        out[name] = _save_finetuned(tmp_path_factory.mktemp(name), vocab_tokenizer, model_config,
                                    params, task)
    return out


def _load_exported(auto_class: str, folder: str):
    """transformers' model from an export, which must fill every weight and use every tensor."""
    transformers = require("transformers")
    model, info = getattr(transformers, auto_class).from_pretrained(
        folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def _hf_inputs(folder: str, first: list[str], second: list[str] | None = None) -> dict:
    """The exported tokenizer's batch, as transformers' AutoTokenizer makes it."""
    tokenizer = require("transformers").AutoTokenizer.from_pretrained(folder)
    return tokenizer(first, second, padding=True, return_tensors="pt")


def _logits(model, inputs) -> dict:
    with require("torch").no_grad():
        out = model(**inputs)
    return {name: value.numpy() for name, value in out.items()}


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]}


# ----------------------------------------------------------------------------------------------
# Export: transformers runs our fine-tuned models.


@pytest.mark.parametrize("name", ["sst2", "mnli", "stsb"])
def test_exported_classifier_gives_transformers_our_predictions(name, classifiers, tmp_path):
    convert.export_hf(classifiers[name], str(tmp_path))
    model = _load_exported("AutoModelForSequenceClassification", str(tmp_path))
    assert type(model).__name__ == "BertForSequenceClassification"
    predictor = inference.load(classifiers[name])
    labels = predictor.task["labels"]
    inputs = TEXTS if name == "sst2" else PAIRS
    first = [x if isinstance(x, str) else x[0] for x in inputs]
    second = None if name == "sst2" else [b for _, b in inputs]
    logits = _logits(model, _hf_inputs(str(tmp_path), first, second))["logits"]
    ours = predictor.classify(inputs)
    if labels is None:
        assert model.config.problem_type == "regression" and logits.shape == (3, 1)
        np.testing.assert_allclose([o["score"] for o in ours], logits[:, 0], atol=1e-4)
        return
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    assert model.config.label2id == {label: i for i, label in enumerate(labels)}
    np.testing.assert_allclose([[o["probabilities"][label] for label in labels] for o in ours],
                               _softmax(logits), atol=1e-5)
    assert [o["label"] for o in ours] == [labels[i] for i in logits.argmax(-1)]


def test_exported_classifier_runs_in_a_transformers_pipeline(classifiers, tmp_path):
    """Tokenizer, model and labels from the folder alone, as a user serving it would."""
    convert.export_hf(classifiers["sst2"], str(tmp_path))
    classify = require("transformers").pipeline("text-classification", model=str(tmp_path))
    ours = inference.load(classifiers["sst2"]).classify(TEXTS)
    theirs = classify(TEXTS)
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    np.testing.assert_allclose([t["score"] for t in theirs], [o["score"] for o in ours],
                               atol=1e-5)


def test_exported_qa_model_gives_transformers_our_span_logits(squad_checkpoints, tmp_path):
    convert.export_hf(squad_checkpoints["v1"], str(tmp_path))
    model = _load_exported("AutoModelForQuestionAnswering", str(tmp_path))
    assert type(model).__name__ == "BertForQuestionAnswering"
    exported = json.loads((tmp_path / "config.json").read_text())
    assert exported[hf_tasks.TASK_KEY] == checkpoint.load_model(squad_checkpoints["v1"]).meta[
        "task"]
    inputs = _hf_inputs(str(tmp_path), [QUESTION[0]], [QUESTION[1]])
    theirs = _logits(model, inputs)
    loaded = checkpoint.load_model(squad_checkpoints["v1"])
    ours = BertForQuestionAnswering(loaded.model_config).apply(
        {"params": nn.unbox(loaded.params)},
        *(inputs[k].numpy() for k in ("input_ids", "token_type_ids", "attention_mask")))
    for name in ("start_logits", "end_logits"):
        np.testing.assert_allclose(np.asarray(ours[name]), theirs[name], atol=1e-4)


def test_exported_ner_model_gives_transformers_our_tag_logits(ner_checkpoint, tmp_path):
    convert.export_hf(ner_checkpoint, str(tmp_path))
    model = _load_exported("AutoModelForTokenClassification", str(tmp_path))
    assert type(model).__name__ == "BertForTokenClassification"
    assert [model.config.id2label[i] for i in range(len(NER_LABELS))] == NER_LABELS
    inputs = _hf_inputs(str(tmp_path), ["Peter Blackburn lives in Brussels .", "EU rejects it"])
    loaded = checkpoint.load_model(ner_checkpoint)
    ours = BertForTokenClassification(loaded.model_config, len(NER_LABELS)).apply(
        {"params": nn.unbox(loaded.params)},
        *(inputs[k].numpy() for k in ("input_ids", "token_type_ids", "attention_mask")))
    np.testing.assert_allclose(np.asarray(ours), _logits(model, inputs)["logits"], atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Import: an export comes back as the checkpoint it was.


def _round_trip(path: str, tmp_path) -> str:
    convert.export_hf(path, str(tmp_path / "hf"))
    return convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))


@pytest.mark.parametrize("name", ["sst2", "mnli", "stsb"])
def test_imported_export_classifies_as_the_checkpoint(name, classifiers, tmp_path):
    back = _round_trip(classifiers[name], tmp_path)
    original, again = checkpoint.load_model(classifiers[name]), checkpoint.load_model(back)
    assert again.meta["task"] == original.meta["task"]
    want, got = _flat(original.params), _flat(again.params)
    assert want.keys() == got.keys()
    for key in want:
        assert np.array_equal(want[key], got[key]), key
    inputs = TEXTS if name == "sst2" else PAIRS
    assert inference.load(back).classify(inputs) == inference.load(classifiers[name]).classify(
        inputs)
    if name == "sst2":  # the task says single texts, and still does
        with pytest.raises(ValueError, match="takes single sentences"):
            inference.load(back).classify(PAIRS)


def test_imported_export_answers_and_tags_as_the_checkpoints(squad_checkpoints, ner_checkpoint,
                                                             tmp_path):
    for version, path in squad_checkpoints.items():
        back = _round_trip(path, tmp_path / version)
        assert checkpoint.load_model(back).meta["task"] == checkpoint.load_model(path).meta["task"]
        questions = [QUESTION, ("Where were they from?", QUESTION[1])]
        assert (inference.load(back).answer(questions, top_k=2)
                == inference.load(path).answer(questions, top_k=2))
    back = _round_trip(ner_checkpoint, tmp_path / "ner")
    texts = ["Peter Blackburn lives in Brussels .", "EU rejects German call to boycott lamb ."]
    assert inference.load(back).tag(texts) == inference.load(ner_checkpoint).tag(texts)
    # transformers' token model has no pooler: the import's is zeros, and not pooled with.
    predictor = inference.load(back)
    assert not np.any(np.asarray(predictor.params["bert"]["pooler"]["dense"]["kernel"]))
    with pytest.raises(ValueError, match="pooler is all zeros.*'cls' or 'mean'"):
        predictor.embed(["A sentence."], pooling="pooled")
    assert predictor.embed(["A sentence."], pooling="mean").shape == (1, 32)


# ----------------------------------------------------------------------------------------------
# Import: task models written by transformers.


def _transformers_task_model(auto_class: str, folder, minilm: str, **config_fields) -> str:
    """A random small transformers task model (MiniLM's vocabulary) saved with save_pretrained;
    biases and LayerNorm parameters random too, so a dropped or swapped one cannot hide."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128,
                                     max_position_embeddings=64, **config_fields)
    model = getattr(transformers, auto_class)(config).eval()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                tensor.normal_(0.0, 0.5)
    model.save_pretrained(str(folder))
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(f"{minilm}/{name}", pathlib.Path(folder) / name)
    return str(folder)


def _torch_ids(predictor, texts: list[str]):
    """[CLS] text [SEP] rows of our tokenizer, padded, as torch tensors."""
    torch = require("torch")
    rows = [[predictor.tokenizer.cls_id, *predictor.tokenizer.encode(t), predictor.tokenizer.sep_id]
            for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, (ids != 0).long()


def test_transformers_classifier_imports_with_its_labels(minilm_folder, tmp_path):  # noqa: F811
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    folder = _transformers_task_model("BertForSequenceClassification", tmp_path / "hf",
                                      minilm_folder, id2label=labels,
                                      label2id={v: k for k, v in labels.items()})
    predictor = inference.load(convert.import_hf(folder, str(tmp_path / "ours")))
    assert predictor.task["labels"] == ["negative", "neutral", "positive"]
    assert predictor.task["name"] == "hf"  # the folder's name
    ids, mask = _torch_ids(predictor, TEXTS)
    model = require("transformers").BertForSequenceClassification.from_pretrained(folder).eval()
    logits = _logits(model, {"input_ids": ids, "attention_mask": mask})["logits"]
    ours = predictor.classify(TEXTS)
    np.testing.assert_allclose([[o["probabilities"][v] for v in labels.values()] for o in ours],
                               _softmax(logits), atol=1e-5)
    # Whether the model takes pairs is not in its config: both are accepted.
    assert len(predictor.classify([TEXTS[0], PAIRS[0]])) == 2
    # Its pooler is transformers' own, so pooling with it is allowed.
    assert predictor.embed(["A sentence."], pooling="pooled").shape == (1, 64)


def test_transformers_regression_and_qa_and_ner_models_import(minilm_folder, tmp_path):  # noqa
    regression = _transformers_task_model("BertForSequenceClassification", tmp_path / "stsb",
                                          minilm_folder, num_labels=1)
    predictor = inference.load(convert.import_hf(regression, str(tmp_path / "stsb_ours")))
    assert predictor.task["labels"] is None and predictor.task["is_regression"]
    ids, mask = _torch_ids(predictor, TEXTS)
    model = require("transformers").BertForSequenceClassification.from_pretrained(regression)
    logits = _logits(model.eval(), {"input_ids": ids, "attention_mask": mask})["logits"]
    np.testing.assert_allclose([o["score"] for o in predictor.classify(TEXTS)], logits[:, 0],
                               atol=1e-4)

    qa = _transformers_task_model("BertForQuestionAnswering", tmp_path / "qa", minilm_folder)
    predictor = inference.load(convert.import_hf(qa, str(tmp_path / "qa_ours")))
    # 64 positions: the windows of 384 shrink to 64, the question and stride in proportion.
    assert predictor.task == {"name": "qa", "kind": hf_tasks.SPANS,
                              **hf_tasks.IMPORT_DEFAULTS[hf_tasks.SPANS], "max_seq_length": 64,
                              "max_query_length": 10, "doc_stride": 21}
    answer = predictor.answer([QUESTION])[0]
    assert answer["answer"] and answer["answer"] in QUESTION[1]

    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    ner = _transformers_task_model("BertForTokenClassification", tmp_path / "ner",
                                   minilm_folder, id2label=dict(enumerate(tags)),
                                   label2id={t: i for i, t in enumerate(tags)})
    predictor = inference.load(convert.import_hf(ner, str(tmp_path / "ner_ours")))
    assert predictor.task["labels"] == tags and predictor.task["max_seq_length"] == 64
    words = "John Smith lives in Paris .".split()
    tagged = predictor.tag([words])[0]
    ids, mask = _torch_ids(predictor, [" ".join(words)])
    model = require("transformers").BertForTokenClassification.from_pretrained(ner).eval()
    logits = _logits(model, {"input_ids": ids, "attention_mask": mask})["logits"][0]
    # Each word's tag is its first piece's (pieces of these words: one each, then [SEP]).
    assert len(ids[0]) == len(words) + 2
    assert [w["tag"] for w in tagged["words"]] == [tags[i] for i in logits[1:-1].argmax(-1)]


def test_multi_label_classifier_imports_and_exports_with_its_sigmoids(minilm_folder,  # noqa
                                                                      tmp_path):
    """transformers' multi_label_classification: a sigmoid per label; imported, classify gives
    its probabilities and every label above 1/2; exported again, the same problem type."""
    labels = {0: "sports", 1: "politics", 2: "science", 3: "arts"}
    folder = _transformers_task_model("BertForSequenceClassification", tmp_path / "hf",
                                      minilm_folder, id2label=labels,
                                      label2id={v: k for k, v in labels.items()},
                                      problem_type="multi_label_classification")
    predictor = inference.load(convert.import_hf(folder, str(tmp_path / "ours")))
    assert predictor.task["multi_label"] and predictor.task["labels"] == list(labels.values())
    ids, mask = _torch_ids(predictor, TEXTS)
    model = require("transformers").BertForSequenceClassification.from_pretrained(folder).eval()
    want = 1 / (1 + np.exp(-_logits(model, {"input_ids": ids, "attention_mask": mask})["logits"]))
    ours = predictor.classify(TEXTS)
    np.testing.assert_allclose([[o["probabilities"][v] for v in labels.values()] for o in ours],
                               want, atol=1e-5)
    assert [o["labels"] for o in ours] == [[v for v, p in zip(labels.values(), row) if p > 0.5]
                                           for row in want]
    assert any(len(o["labels"]) != 1 for o in ours)  # not one label per input
    convert.export_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert exported["problem_type"] == "multi_label_classification"
    assert exported["id2label"] == {str(k): v for k, v in labels.items()}


def test_import_defaults_are_the_task_configs_defaults():
    squad = _config("squad")
    assert squad.task == "squad"  # SQuAD v1.1 by default: version_2 False
    for key, value in hf_tasks.IMPORT_DEFAULTS[hf_tasks.SPANS].items():
        if key != "version_2":
            assert squad.data[key] == value, key
    assert _config("ner").data.max_seq_length == hf_tasks.IMPORT_DEFAULTS[hf_tasks.TOKENS][
        "max_seq_length"]


def test_bad_task_models_are_named(minilm_folder, tmp_path):  # noqa: F811
    untagged = _transformers_task_model("BertForTokenClassification", tmp_path / "untagged",
                                        minilm_folder, num_labels=3)  # LABEL_0 .. LABEL_2
    with pytest.raises(ValueError, match="'LABEL_0'; entities are read from IOB tags"):
        convert.import_hf(untagged, str(tmp_path / "a"))

    # config.json says three labels, the weights hold two rows.
    folder = _transformers_task_model("BertForSequenceClassification", tmp_path / "three",
                                      minilm_folder)
    config_path = pathlib.Path(folder) / "config.json"
    config = json.loads(config_path.read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"classifier.weight has shape \(2, 64\)"):
        convert.import_hf(folder, str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_unknown_head_is_named_and_the_encoder_imported(minilm_folder, tmp_path,  # noqa: F811
                                                        caplog):
    # A class of someone's own (a classifier's tensors under another name): its head is not
    # one of ours.
    folder = _transformers_task_model("BertForSequenceClassification", tmp_path / "custom",
                                      minilm_folder)
    config_file = pathlib.Path(folder) / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "architectures": ["BertForCustomHead"]}))
    with caplog.at_level(logging.WARNING):
        path = convert.import_hf(folder, str(tmp_path / "ours"))
    assert "2 tensor(s)" in caplog.text
    assert "['classifier.bias', 'classifier.weight']" in caplog.text
    loaded = checkpoint.load_model(path)
    assert "task" not in loaded.meta and set(loaded.params) == {"embeddings", "encoder", "pooler"}


def test_fine_tuning_from_an_imported_qa_model_starts_a_fresh_pooler(minilm_folder,  # noqa: F811
                                                                     mrpc_dir, tmp_path,  # noqa
                                                                     caplog):
    qa = _transformers_task_model("BertForQuestionAnswering", tmp_path / "qa", minilm_folder)
    path = convert.import_hf(qa, str(tmp_path / "ours"))
    with caplog.at_level(logging.WARNING):
        run = finetune.build(_finetune_config(path, mrpc_dir), str(tmp_path / "run"))
    assert "no pooler (or an all-zero one)" in caplog.text
    params = finetune.initial_state(run, seed=0).params
    assert np.any(np.asarray(params["bert"]["pooler"]["dense"]["kernel"]))
    imported = checkpoint.load_model(path).params["bert"]
    np.testing.assert_array_equal(params["bert"]["embeddings"]["token_embed"]["embedding"],
                                  imported["embeddings"]["token_embed"]["embedding"])


def test_multiple_choice_model_imports_and_exports(minilm_folder, tmp_path):  # noqa: F811
    """transformers' BertForMultipleChoice: imported, `choose` gives the softmax of its scores
    over each item's choices; exported again, transformers loads every tensor unchanged."""
    torch = require("torch")
    transformers = require("transformers")
    folder = _transformers_task_model("BertForMultipleChoice", tmp_path / "swag", minilm_folder)
    predictor = inference.load(convert.import_hf(folder, str(tmp_path / "ours")))
    assert predictor.task == {"name": "swag", "kind": base.CHOICES, "max_seq_length": 64}
    items = [(PAIRS[0][0], [PAIRS[0][1], PAIRS[1][1], PAIRS[2][1]]),
             (TEXTS[2], [TEXTS[0], TEXTS[1], QUESTION[1]])]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer([c for c, choices in items for _ in choices],
                       [choice for _, choices in items for choice in choices],
                       padding=True, return_tensors="pt")
    inputs = {k: v.reshape(2, 3, -1) for k, v in inputs.items()}  # [items, choices, length]
    model = transformers.BertForMultipleChoice.from_pretrained(folder).eval()
    logits = _logits(model, inputs)["logits"]
    chosen = predictor.choose(items)
    np.testing.assert_allclose([c["probabilities"] for c in chosen], _softmax(logits), atol=1e-5)
    assert [c["choice"] for c in chosen] == logits.argmax(-1).tolist()

    convert.export_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
    exported = _load_exported("AutoModelForMultipleChoice", str(tmp_path / "back"))
    assert type(exported).__name__ == "BertForMultipleChoice"
    assert json.loads((tmp_path / "back" / "config.json").read_text())[hf_tasks.TASK_KEY] == (
        predictor.task)
    want, got = model.state_dict(), exported.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
