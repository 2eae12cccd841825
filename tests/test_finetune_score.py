"""train.num_epochs=0 scores a fine-tuned checkpoint without training (tasks/checkpoint_head.py):
our own gives the fine-tuning run's figures and files again; a transformers classifier whose
labels come in another order is scored with its columns put in the task's order; no train split
is read; SQuAD scores the whole dev file."""

import json
import pathlib

import pytest

from bert_jax import inference
from bert_jax.interop import convert
from bert_jax.tasks import conll, finetune, glue
from tests.test_convert_tasks import _transformers_task_model
from tests.test_finetune import _finetune_config
from tests.test_finetune_tasks import _config, _conll_slice, _small_squad
from tests.test_inference import (_squad_config, minilm_folder,  # noqa: F401 (fixtures)
                                  squad_checkpoints, vocab_tokenizer)


def test_own_checkpoint_scores_as_its_best_epoch(finetuned, tmp_path):
    config, workdir, results = finetuned
    seed = results["seeds"]["0"]
    scoring = config.copy_and_resolve_references()
    scoring.init_checkpoint = seed["checkpoint"]
    scoring.train.num_epochs = 0
    scored = finetune.finetune_and_evaluate(scoring, str(tmp_path))
    assert scored["epochs"] == [] and scored["best"]["epoch"] == 0
    assert scored["best"]["step"] == seed["best"]["step"]
    for name in ("f1", "accuracy"):
        assert scored["best"][name] == seed["best"][name], name
    assert json.loads((tmp_path / "results.json").read_text())["best"] == scored["best"]
    # The MRPC slice's test split: the same submission file as the run's best epoch.
    ours = pathlib.Path(scored["predictions"]["test"]).read_text()
    assert ours == pathlib.Path(seed["predictions"]["test"]).read_text()
    assert not (tmp_path / "seed_0").exists()  # nothing trained


def _rte_dev_only(data_dir, root: pathlib.Path) -> str:
    """A GLUE folder with the real RTE dev file and no train file: scoring needs none."""
    (root / "RTE").mkdir(parents=True)
    (root / "RTE" / "dev.tsv").write_bytes((data_dir / "glue" / "RTE" / "dev.tsv").read_bytes())
    return str(root)


def test_classifier_with_labels_in_another_order_scores_by_name(minilm_folder,  # noqa: F811
                                                                data_dir, tmp_path):
    labels = {0: "not_entailment", 1: "entailment"}  # RTE's order is entailment first
    folder = _transformers_task_model("BertForSequenceClassification", tmp_path / "hf",
                                      minilm_folder, id2label=labels,
                                      label2id={v: k for k, v in labels.items()})
    path = convert.import_hf(folder, str(tmp_path / "ours"))
    config = _config("glue", "rte")
    config.init_checkpoint, config.data.dir = path, _rte_dev_only(data_dir, tmp_path / "glue")
    config.data.max_seq_length, config.train.num_epochs = 64, 0
    scored = finetune.finetune_and_evaluate(config, str(tmp_path / "run"))

    # The reference: the imported model's own predictions by name, against the gold names.
    task = glue.get_task("rte")
    dev = glue.load_examples(task, "dev", directory=config.data.dir)
    predicted = inference.load(path).classify([(e.text_a, e.text_b) for e in dev])
    gold = [task.labels[e.label] for e in dev]
    accuracy = sum(p["label"] == g for p, g in zip(predicted, gold)) / len(dev)
    assert len(dev) == 277 and 0 < accuracy < 1
    assert scored["best"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_ner_tagger_scores_with_its_own_tags(minilm_folder, data_dir, tmp_path):  # noqa: F811
    """Its tags, in its order, are the label set (not the train split's): the dev tags written
    are those the imported model gives."""
    tags = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    folder = _transformers_task_model("BertForTokenClassification", tmp_path / "hf",
                                      minilm_folder, id2label=dict(enumerate(tags)),
                                      label2id={t: i for i, t in enumerate(tags)})
    path = convert.import_hf(folder, str(tmp_path / "ours"))
    config = _config("ner")
    config.init_checkpoint = path
    config.data.dir = str(_conll_slice(data_dir, tmp_path / "conll"))
    # Rows of 64 pieces, as the import's task entry says for tag(): the same rows both ways.
    config.data.max_seq_length, config.train.num_epochs = 64, 0
    scored = finetune.finetune_and_evaluate(config, str(tmp_path / "run"))
    assert conll.label_list(["LOC", "MISC", "ORG", "PER"]) != tags  # the train split's order

    gold = conll.read_conll(str(pathlib.Path(config.data.dir) / "valid.txt"))
    written = [[line.split(" ")[2] for line in block.splitlines()] for block in
               pathlib.Path(scored["predictions"]["dev"]).read_text().strip().split("\n\n")]
    tagged = inference.load(path).tag([list(s.words) for s in gold])
    assert written == [[w["tag"] for w in t["words"]] for t in tagged]
    assert len({tag for sentence in written for tag in sentence}) >= 2
    assert 0.0 <= scored["best"]["f1"] <= 1.0 and "f1_test" in scored["best"]


def test_what_cannot_be_scored_is_named(finetuned, pretrained, mrpc_dir,
                                        minilm_folder, tmp_path):  # noqa: F811
    _, _, results = finetuned
    with pytest.raises(ValueError, match="is not fine-tuned .*fine-tune it first"):
        finetune.build(_finetune_config(pretrained, mrpc_dir, **{"train.num_epochs": 0}),
                       str(tmp_path / "a"))
    qa = convert.import_hf(_transformers_task_model(
        "BertForQuestionAnswering", tmp_path / "qa", minilm_folder), str(tmp_path / "qa_ours"))
    with pytest.raises(ValueError, match="fine-tuned for question answering .*not for sentence"):
        finetune.build(_finetune_config(qa, mrpc_dir, **{"train.num_epochs": 0}),
                       str(tmp_path / "b"))
    stsb = convert.import_hf(_transformers_task_model(
        "BertForSequenceClassification", tmp_path / "stsb", minilm_folder, num_labels=1),
        str(tmp_path / "stsb_ours"))
    with pytest.raises(ValueError, match="is a regression but mrpc is a classifier"):
        finetune.build(_finetune_config(stsb, mrpc_dir, **{"train.num_epochs": 0}),
                       str(tmp_path / "c"))
    best = results["seeds"]["0"]["checkpoint"]
    with pytest.raises(ValueError, match="random_init would score an untrained model"):
        finetune.build(_finetune_config(best, mrpc_dir, **{"train.num_epochs": 0,
                                                           "random_init": True}),
                       str(tmp_path / "d"))
    with pytest.raises(ValueError, match="train.num_epochs=-1; expected >= 1, or 0"):
        finetune.build(_finetune_config(best, mrpc_dir, **{"train.num_epochs": -1}),
                       str(tmp_path / "e"))


def test_squad_scores_every_question_of_the_dev_file(squad_checkpoints, data_dir,  # noqa: F811
                                                     tmp_path):
    """Without a train file, fine-tuning holds out a fifth of the file's articles; scoring
    trains nothing, so all of them are scored."""
    config = _squad_config("v1")
    config.init_checkpoint = squad_checkpoints["v1"]
    config.data.dev_file = str(_small_squad(data_dir, tmp_path / "small.json"))
    config.train.num_epochs = 0
    scored = finetune.finetune_and_evaluate(config, str(tmp_path / "run"))
    questions = [q for a in json.loads(pathlib.Path(config.data.dev_file).read_text())["data"]
                 for p in a["paragraphs"] for q in p["qas"]]
    predictions = json.loads(pathlib.Path(scored["predictions"]["dev"]).read_text())
    assert sorted(predictions) == sorted(q["id"] for q in questions) and len(questions) == 16
    assert 0.0 <= scored["best"]["f1"] <= 100.0


def test_head_labels_match_by_name_then_whatever_the_case_else_by_position():
    from bert_jax.tasks.checkpoint_head import label_order

    glue_mnli = ["contradiction", "entailment", "neutral"]
    assert label_order(["entailment", "neutral", "contradiction"], glue_mnli) == [2, 0, 1]
    # transformers' MNLI heads often name them in capitals: matched, not taken by position
    # (which would swap contradiction and entailment here).
    assert label_order(["CONTRADICTION", "NEUTRAL", "ENTAILMENT"], glue_mnli) == [0, 2, 1]
    assert label_order(["LABEL_0", "LABEL_1", "LABEL_2"], glue_mnli) is None
    assert label_order(["b", "a", "c"], ["a", "b", "c"]) == [1, 0, 2]  # exact names first
    # Names that differ only in case within one list cannot be matched that way.
    assert label_order(["Neutral", "neutral", "x"], ["neutral", "NEUTRAL", "x"]) is None
