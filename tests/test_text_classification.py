"""Fine-tuning on one's own files (configs/finetune/classify.py): CSV / TSV / JSON lines read
alike, the same results as the GLUE task on the same data, a multi-class task from real books,
scoring its checkpoint, and errors that name the row."""

import csv
import json
import pathlib

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from bert_jax import inference
from bert_jax.data import sentences, tokenization
from bert_jax.tasks import classification, finetune, glue, table_files, text_classification
from bert_jax.train import checkpoint
from configs.finetune import classify as classify_configs
from tests.test_finetune import _finetune_config, _override


def _classify_config(**overrides):
    return _override(classify_configs.get_config(), overrides)


def _mrpc_files(mrpc_dir: str, **overrides):
    """The classify config over the MRPC slice's own TSV files, as the GLUE run's config."""
    folder = pathlib.Path(mrpc_dir) / "MRPC"
    return {"data.train_file": str(folder / "train.tsv"), "data.dev_file": str(folder / "dev.tsv"),
            "data.test_file": str(folder / "test.tsv"),
            "data.text_columns": "#1 String,#2 String", "data.label_column": "Quality",
            "data.id_column": "index", "data.metrics": "f1,accuracy", **overrides}


def _write_as(rows: list[dict], path: pathlib.Path) -> pathlib.Path:
    """rows written as path's format: CSV (quoted where needed), JSON lines or a JSON array."""
    if path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_csv_tsv_and_json_files_give_the_same_examples(data_dir, tmp_path):
    """The real MRPC train file (BOM, quotes inside sentences) as TSV, re-written as CSV, JSON
    lines and a JSON array: the same rows, and the same features as GLUE's reader gives."""
    tsv = data_dir / "glue" / "MRPC" / "train.tsv"
    rows = [row for _, row in table_files.read_rows(str(tsv))]
    assert len(rows) == 3668 and any('"' in r["#1 String"] for r in rows)
    for name in ("train.csv", "train.jsonl", "train.json"):
        path = _write_as(rows, tmp_path / name)
        assert [row for _, row in table_files.read_rows(str(path))] == rows, name
    tokenizer = tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")
    config = _classify_config(**_mrpc_files(str(data_dir / "glue"), **{
        "data.train_file": str(tmp_path / "train.csv"),
        "data.dev_file": str(data_dir / "glue" / "MRPC" / "dev.tsv"), "data.test_file": ""}))
    task = text_classification.TextClassificationTask(config.data)
    ours = task.load(tokenizer)
    glue_config = _finetune_config("", str(data_dir / "glue"), **{"data.max_seq_length": 128,
                                                                  "data.predict_test": False})
    want = classification.GlueFinetuneTask(glue.get_task("mrpc"),
                                           glue_config.data).load(tokenizer)
    assert task.labels == ["0", "1"]
    for split in ("train", "dev"):
        assert np.array_equal(ours[split].labels, want[split].labels), split
        assert all(np.array_equal(a, b) for a, b in
                   zip(ours[split].input_ids, want[split].input_ids)), split


def test_regression_labels_are_scores(data_dir):
    tokenizer = tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")
    folder = data_dir / "glue" / "STS-B"
    config = _classify_config(**{
        "data.train_file": str(folder / "dev.tsv"), "data.dev_file": str(folder / "dev.tsv"),
        "data.text_columns": "sentence1,sentence2", "data.label_column": "score",
        "data.regression": True})
    task = text_classification.TextClassificationTask(config.data)
    features = task.load(tokenizer)["dev"]
    want = glue.encode(glue.load_examples(glue.get_task("stsb"), "dev", directory=str(
        data_dir / "glue")), tokenizer, 128, is_regression=True)
    assert task.labels is None and task.main_metric == "pearson"
    assert features.labels.dtype == np.float32
    assert np.array_equal(features.labels, want.labels)
    assert task.meta()["is_regression"] and task.meta()["pair"]


def test_same_results_as_the_glue_task_on_the_same_files(finetuned, pretrained, mrpc_dir,
                                                          tmp_path):
    """The MRPC slice through the classify config: every seed's every epoch equals the GLUE mrpc
    run's, and the test file's predictions equal its submission."""
    _, _, glue_results = finetuned
    config = _override(_classify_config(**_mrpc_files(mrpc_dir)), {
        "init_checkpoint": pretrained, "data.max_seq_length": 32, "train.batch_size": 8,
        "train.eval_batch_size": 16, "train.num_epochs": 2, "train.log_every_steps": 2,
        "optimizer.learning_rate": 1e-3, "seeds": (0, 1)})
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    for seed in ("0", "1"):
        ours, theirs = results["seeds"][seed]["epochs"], glue_results["seeds"][seed]["epochs"]
        drop = ("seconds",)
        assert ([{k: v for k, v in e.items() if k not in drop} for e in ours]
                == [{k: v for k, v in e.items() if k not in drop} for e in theirs]), seed
    assert results["best"]["seed"] == glue_results["best"]["seed"]
    lines = pathlib.Path(results["predictions"]["test"]).read_text().splitlines()
    predicted = [json.loads(line) for line in lines]
    submission = pathlib.Path(glue_results["predictions"]["test"]).read_text().splitlines()[1:]
    assert [(p["id"], p["label"]) for p in predicted] == [tuple(s.split("\t"))
                                                          for s in submission]
    # The checkpoint classifies as the prediction file says, with the same probabilities.
    best = results["seeds"][str(results["best"]["seed"])]
    dev = [json.loads(line) for line in
           (pathlib.Path(best["predictions"]["dev"])).read_text().splitlines()]
    examples = glue.load_examples(glue.get_task("mrpc"), "dev", directory=mrpc_dir)
    predictor = inference.load(best["checkpoint"])
    predictor.max_length = 32  # predict truncates at the model's 64 positions; this run at 32
    outputs = predictor.classify([(e.text_a, e.text_b) for e in examples])
    assert [d["gold"] for d in dev] == [str(e.label) for e in examples]
    for d, out in zip(dev, outputs):
        assert d["label"] == out["label"]
        assert d["probabilities"] == pytest.approx(out["probabilities"], abs=1e-6)
    f1 = sk_metrics.f1_score([int(d["gold"]) for d in dev], [int(d["label"]) for d in dev])
    assert f1 == pytest.approx(results["best"]["f1"], abs=1e-9)


def _book_paragraphs(data_dir, per_book: int) -> list[dict]:
    """Paragraphs of the five staged books labelled with their book: a real 5-class task."""
    rows = []
    for path in sorted((data_dir / "gutenberg").glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        long = [p for p in sentences.iter_paragraphs(lines) if 20 <= len(p.split()) <= 60]
        book = path.stem.split("-")[0]
        rows += [{"paragraph": p, "book": int(book)} for p in long[:per_book]]
    return rows


def test_multiclass_from_json_lines_with_held_out_dev(pretrained, data_dir, tmp_path):
    """Which of five books a paragraph is from (JSON lines, integer labels), dev held out from
    the train file: labels sorted as numbers, metrics recomputable from the prediction file,
    and the best checkpoint scored alone (train.num_epochs=0) gives its best epoch's metrics."""
    train = _write_as(_book_paragraphs(data_dir, per_book=24), tmp_path / "books.jsonl")
    common = {"data.train_file": str(train), "data.text_columns": "paragraph",
              "data.label_column": "book", "data.dev_fraction": 0.25, "data.max_seq_length": 32,
              "train.batch_size": 8, "train.eval_batch_size": 16, "train.log_every_steps": 5,
              "optimizer.learning_rate": 1e-3}
    config = _classify_config(init_checkpoint=pretrained, **common, **{"train.num_epochs": 2})
    results = finetune.finetune_and_evaluate(config, str(tmp_path / "run"))
    best = results["seeds"]["0"]
    labels = checkpoint.load_model(best["checkpoint"]).meta["task"]["labels"]
    assert labels == ["11", "84", "1342", "1661", "2701"]  # as numbers, not strings
    dev = [json.loads(line) for line in
           pathlib.Path(best["predictions"]["dev"]).read_text().splitlines()]
    assert len(dev) == 30 and {d["gold"] for d in dev} <= set(labels)
    gold, predicted = [d["gold"] for d in dev], [d["label"] for d in dev]
    assert results["best"]["accuracy"] == pytest.approx(
        sk_metrics.accuracy_score(gold, predicted))
    assert results["best"]["f1_macro"] == pytest.approx(
        sk_metrics.f1_score(gold, predicted, average="macro"))
    assert results["main_metric"] == "accuracy"

    scored = finetune.finetune_and_evaluate(
        _classify_config(init_checkpoint=best["checkpoint"], **common,
                         **{"train.num_epochs": 0}), str(tmp_path / "score"))
    assert scored["best"]["accuracy"] == pytest.approx(results["best"]["accuracy"], abs=1e-9)
    assert scored["best"]["f1_macro"] == pytest.approx(results["best"]["f1_macro"], abs=1e-9)


def test_labelled_test_file_is_scored_each_epoch(pretrained, mrpc_dir, tmp_path):
    """A test file with the label column: its metrics are logged with the suffix _test per
    epoch, the best epoch is still picked on dev, and its predictions carry the gold label."""
    folder = pathlib.Path(mrpc_dir) / "MRPC"
    config = _classify_config(**_mrpc_files(mrpc_dir, **{"data.test_file": str(
        folder / "dev.tsv"), "data.id_column": ""}))
    config = _override(config, {
        "init_checkpoint": pretrained, "data.max_seq_length": 32, "train.batch_size": 16,
        "train.eval_batch_size": 16, "train.num_epochs": 1, "optimizer.learning_rate": 1e-3})
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    epoch = results["epochs"][0]
    assert epoch["f1_test"] == epoch["f1"] and epoch["accuracy_test"] == epoch["accuracy"]
    test = [json.loads(line) for line in
            pathlib.Path(results["predictions"]["test"]).read_text().splitlines()]
    assert [t["id"] for t in test] == [str(i) for i in range(32)]
    assert all("gold" in t for t in test)


def _task(tmp_path, rows=None, name="train.csv", **data):
    if rows is not None:
        _write_as(rows, tmp_path / name)
        data.setdefault("train_file", str(tmp_path / name))
    data.setdefault("dev_file", data.get("train_file", ""))
    config = _classify_config(**{f"data.{k}": v for k, v in data.items()})
    return text_classification.TextClassificationTask(config.data)


def test_bad_files_and_settings_are_named(data_dir, tmp_path):
    tokenizer = tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")
    rows = [{"text": "a fine film", "label": "pos"}, {"text": "dull", "label": "neg"}]
    # A dev label outside the train file's labels, with its row.
    _write_as(rows + [{"text": "so so", "label": "mixed"}], tmp_path / "dev.csv")
    with pytest.raises(ValueError, match=r"dev.csv:4: label 'mixed' is not among the train "
                                         r"file's labels \['neg', 'pos'\]"):
        _task(tmp_path, rows, dev_file=str(tmp_path / "dev.csv")).load(tokenizer)
    with pytest.raises(ValueError, match=r"train.csv:2: no column\(s\) \['review'\]; the row "
                                         r"has \['label', 'text'\]"):
        _task(tmp_path, rows, text_columns="review").load(tokenizer)
    with pytest.raises(ValueError, match=r"train.csv:3: empty text in column\(s\) \['text'\]"):
        _task(tmp_path, rows[:1] + [{"text": " ", "label": "neg"}]).load(tokenizer)
    with pytest.raises(ValueError, match="train.csv:4: empty label in column 'label'"):
        _task(tmp_path, rows + [{"text": "x", "label": ""}]).load(tokenizer)
    with pytest.raises(ValueError, match=r"train.csv:2: label 'pos' is not among data.labels"):
        _task(tmp_path, rows, labels="negative,positive").load(tokenizer)
    with pytest.raises(ValueError, match="label 'pos' is not a number"):
        _task(tmp_path, rows, regression=True).load(tokenizer)
    with pytest.raises(ValueError, match="f1 .binary., but there are 3 labels"):
        _task(tmp_path, rows + [{"text": "ok", "label": "mid"}], metrics="f1").load(tokenizer)
    # A row with a field too many (a stray tab) is named with its line.
    (tmp_path / "bad.tsv").write_text("text\tlabel\na\tpos\nb\tneg\textra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:3: 3 TSV fields, expected 2"):
        _task(tmp_path, train_file=str(tmp_path / "bad.tsv")).load(tokenizer)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        _task(tmp_path, train_file=str(tmp_path / "bad.jsonl")).load(tokenizer)
    with pytest.raises(ValueError, match=r"cannot tell the format from the extension '.txt'"):
        _task(tmp_path, train_file=str(tmp_path / "train.txt")).load(tokenizer)
    with pytest.raises(ValueError, match="pearson', which does not score a classification"):
        _task(tmp_path, rows, metrics="pearson")
    with pytest.raises(ValueError, match="'f1', which does not score a multi-label "
                                         "classification"):
        _task(tmp_path, rows, multi_label=True, metrics="f1")
    with pytest.raises(ValueError, match=r"jsonl:2: multi-label column 'label' holds 3"):
        (tmp_path / "multi.jsonl").write_text('{"text": "a", "label": ["x"]}\n'
                                              '{"text": "b", "label": 3}\n', encoding="utf-8")
        _task(tmp_path, train_file=str(tmp_path / "multi.jsonl"), multi_label=True).load(
            tokenizer)
    with pytest.raises(ValueError, match="names 3 column"):
        _task(tmp_path, rows, text_columns="a,b,c")
    with pytest.raises(ValueError, match="must be set: the files to fine-tune on"):
        _task(tmp_path, train_file="", dev_file="")


def test_rows_are_named_by_the_line_they_start_on_and_json_lines_end_at_newlines(tmp_path):
    from bert_jax.tasks import table_files

    # A record whose quoted field spans lines 3-5 is named by line 3, where it starts.
    (tmp_path / "multi.csv").write_text('text,label\nfour,neg\n"one\ntwo\nthree",pos,extra\n',
                                        encoding="utf-8")
    with pytest.raises(ValueError, match=r"multi.csv:3: 3 CSV fields, expected 2"):
        table_files.read_rows(str(tmp_path / "multi.csv"))
    (tmp_path / "ok.csv").write_text('text,label\n"one\ntwo",pos\n\nthree,neg\n',
                                     encoding="utf-8")
    assert [where for where, _ in table_files.read_rows(str(tmp_path / "ok.csv"))] == [
        f"{tmp_path}/ok.csv:2", f"{tmp_path}/ok.csv:5"]
    # Line and paragraph separators and NEL, raw inside JSON strings (json.dumps with
    # ensure_ascii=False writes them so): not record ends.
    texts = ["line\u2028break", "para\u2029graph", "next\u0085line"]
    (tmp_path / "raw.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": 1}, ensure_ascii=False) + "\n" for t in texts),
        encoding="utf-8")
    rows = table_files.read_rows(str(tmp_path / "raw.jsonl"))
    assert [(where.rsplit(":", 1)[1], row["text"]) for where, row in rows] == [
        ("1", texts[0]), ("2", texts[1]), ("3", texts[2])]


def _entity_types(data_dir, count: int) -> list[dict]:
    """CoNLL-2003 train sentences labelled with the entity types they mention (from the gold
    tags; none for some): a real multi-label task."""
    rows, words, types = [], [], set()
    for line in (data_dir / "conll2003" / "train.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                rows.append({"sentence": " ".join(words), "types": sorted(types)})
            words, types = [], set()
            if len(rows) == count:
                break
            continue
        words.append(fields[0])
        if fields[-1] != "O":
            types.add(fields[-1].split("-")[1])
    return rows


def test_multi_label_from_json_lists_and_joined_cells(pretrained, data_dir, tmp_path):
    """Entity types of CoNLL sentences: JSON lists and '|'-joined CSV cells read alike; the
    metrics of results.json are scikit-learn's on the prediction file, and predict classify
    gives the file's labels and probabilities."""
    rows = _entity_types(data_dir, 160)
    assert any(not r["types"] for r in rows) and any(len(r["types"]) > 1 for r in rows)
    _write_as(rows, tmp_path / "types.jsonl")
    _write_as([{**r, "types": "|".join(r["types"])} for r in rows], tmp_path / "types.csv")
    common = {"data.text_columns": "sentence", "data.label_column": "types",
              "data.multi_label": True, "data.dev_fraction": 0.25, "data.max_seq_length": 64,
              "train.batch_size": 8, "train.eval_batch_size": 16, "train.num_epochs": 2,
              "optimizer.learning_rate": 1e-3, "init_checkpoint": pretrained}
    tokenizer = checkpoint.load_model(pretrained).tokenizer
    loaded = [text_classification.TextClassificationTask(_classify_config(
        **common, **{"data.train_file": str(tmp_path / name)}).data) for name in
        ("types.jsonl", "types.csv")]
    features = [task.load(tokenizer) for task in loaded]
    assert loaded[0].labels == loaded[1].labels == ["LOC", "MISC", "ORG", "PER"]
    assert np.array_equal(features[0]["train"].labels, features[1]["train"].labels)
    assert features[0]["train"].labels.shape == (120, 4)

    config = _classify_config(**common, **{"data.train_file": str(tmp_path / "types.jsonl")})
    results = finetune.finetune_and_evaluate(config, str(tmp_path / "run"))
    assert results["main_metric"] == "f1_micro"
    best = results["seeds"]["0"]
    dev = [json.loads(line) for line in
           pathlib.Path(best["predictions"]["dev"]).read_text().splitlines()]
    binarize = lambda lists: np.array([[int(t in labels) for t in loaded[0].labels]  # noqa
                                       for labels in lists])
    gold, predicted = binarize([d["gold"] for d in dev]), binarize([d["labels"] for d in dev])
    assert results["best"]["f1_micro"] == pytest.approx(
        sk_metrics.f1_score(gold, predicted, average="micro", zero_division=0))
    assert results["best"]["accuracy"] == pytest.approx(sk_metrics.accuracy_score(gold,
                                                                                 predicted))
    predictor = inference.load(best["checkpoint"])
    dev_texts = [rows[int(d["id"])]["sentence"] for d in dev]  # ids: rows of the train file
    for d, out in zip(dev, predictor.classify(dev_texts)):
        assert out["labels"] == d["labels"]
        assert out["probabilities"] == pytest.approx(d["probabilities"], abs=1e-5)
