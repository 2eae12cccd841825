"""Multiple choice (configs/finetune/multiple_choice.py): SWAG's CSV layout read as the paper's
pairs, padded choices that change nothing, fine-tuning with predictions that `predict choose`
reproduces, scoring the checkpoint, and errors that name the row."""

import json
import pathlib

import jax
import numpy as np
import optax
import pytest

from bert_jax import inference, predict
from bert_jax.data import sentences, tokenization
from bert_jax.tasks import finetune, multiple_choice
from bert_jax.train import checkpoint
from configs.finetune import multiple_choice as multiple_choice_configs
from tests.test_finetune import _override
from tests.test_predict import _options
from tests.test_text_classification import _write_as

SWAG_COLUMNS = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
                "ending0", "ending1", "ending2", "ending3", "label"]


def _config(**overrides):
    return _override(multiple_choice_configs.get_config(), overrides)


def _next_sentences(data_dir, count: int, seed: int = 0) -> list[dict]:
    """SWAG's construction on Frankenstein: `sent1` a sentence, `sent2` the first two words of
    the next one, the right ending the rest of it and three wrong ones the rests of random
    sentences of the book, at a random position; SWAG's CSV columns."""
    lines = (data_dir / "gutenberg" / "84-0.txt").read_text(encoding="utf-8").splitlines()
    pairs = []
    for paragraph in sentences.iter_paragraphs(lines):
        said = sentences.split_sentences(paragraph)
        pairs += [(a, b) for a, b in zip(said, said[1:]) if 5 <= len(b.split()) <= 30
                  and len(a.split()) <= 40]
    rng = np.random.default_rng(seed)
    rows = []
    for number, index in enumerate(rng.choice(len(pairs), count, replace=False)):
        context, following = pairs[index]
        words = following.split()
        wrong = [pairs[j][1].split()[2:] for j in rng.choice(len(pairs), 3, replace=False)]
        label = int(rng.integers(4))
        endings = [" ".join(w) for w in wrong]
        endings.insert(label, " ".join(words[2:]))
        start = " ".join(words[:2])
        rows.append({"": str(number), "video-id": f"book84-{index}", "fold-ind": str(number),
                     "startphrase": f"{context} {start}", "sent1": context, "sent2": start,
                     "gold-source": "gold", **{f"ending{k}": e for k, e in enumerate(endings)},
                     "label": str(label)})
    return rows


def _tokenizer(data_dir):
    return tokenization.load_tokenizer(f"wordpiece:{data_dir}/bert_vocab/vocab.txt")


def test_swag_csv_gives_the_papers_pairs(data_dir, tmp_path):
    """Each choice is `[CLS] sent1 [SEP] sent2 ending [SEP]` with token types 0 then 1, the
    label the right ending's index; SWAG's unnamed index column and quoted fields read."""
    rows = _next_sentences(data_dir, 12)
    rows[0]["sent1"] = 'He said, "stay", and left.'  # commas and quotes inside a CSV field
    path = _write_as(rows, tmp_path / "val.csv")
    tokenizer = _tokenizer(data_dir)
    task = multiple_choice.MultipleChoiceTask(_config(**{"data.dev_file": str(path)}).data)
    features = task.load(tokenizer, with_train=False)["dev"]
    assert len(features) == 12 and len(features.rows) == 48
    assert features.labels.tolist() == [int(r["label"]) for r in rows]
    for i, row in enumerate(rows):
        assert features.num_choices(i) == 4
        a = tokenizer.encode_batch([row["sent1"]])[0]
        for k in range(4):
            b = tokenizer.encode_batch([f"{row['sent2']} {row[f'ending{k}']}"])[0]
            ids = features.rows.input_ids[features.starts[i] + k]
            assert ids.tolist() == [tokenizer.cls_id, *a, tokenizer.sep_id, *b,
                                    tokenizer.sep_id]
            assert features.rows.type_ids[features.starts[i] + k].tolist() == (
                [0] * (len(a) + 2) + [1] * (len(b) + 1))
            assert features.choices[i][k] == f"{row['sent2']} {row[f'ending{k}']}"


def test_padded_choices_change_no_score_and_no_loss(pretrained, data_dir, tmp_path):
    """Examples with 2 to 5 choices (a JSON list each) batched together: every real choice
    scores as when its example is run alone, and the loss is the mean cross-entropy over each
    example's own choices, padded ones left out."""
    rows = _next_sentences(data_dir, 8)
    items = []
    for i, row in enumerate(rows):
        keep = 2 + i % 4  # 2, 3, 4, 5 choices
        choices = [f"{row['sent2']} {row[f'ending{k}']}" for k in range(4)]
        label = int(row["label"])
        choices = ([choices[label]] + [c for k, c in enumerate(choices) if k != label]
                   + [rows[(i + 1) % 8]["sent1"]])[:keep]
        items.append({"context": row["sent1"], "choices": choices[::-1], "answer": keep - 1})
    path = _write_as(items, tmp_path / "items.jsonl")
    config = _config(**{"init_checkpoint": pretrained, "data.dev_file": str(path),
                        "data.context_column": "context", "data.start_column": "",
                        "data.choice_columns": "choices", "data.label_column": "answer",
                        "data.max_seq_length": 64, "train.eval_batch_size": 8,
                        "train.num_epochs": 0})
    task = multiple_choice.MultipleChoiceTask(config.data)
    loaded = checkpoint.load_model(pretrained)
    features = task.load(loaded.tokenizer, with_train=False)["dev"]
    assert [features.num_choices(i) for i in range(8)] == [2, 3, 4, 5] * 2
    model = task.make_model(loaded.model_config)
    params = model.init(jax.random.key(0), **task.init_batch(64))["params"]
    params = {**params, "bert": finetune.encoder_params(loaded.params, pretrained)}

    apply = jax.jit(model.apply)

    def scores(indices, batch_size):
        batch = multiple_choice.pad_batch(features, indices, batch_size, 64, task._filler)
        return batch, apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                            batch["attention_mask"])

    batch, together = scores(list(range(8)), 10)  # 2 filler rows, 5 choices wide
    assert together.shape == (10, 5)
    alone = {}  # the examples with the same number of choices, in a batch of their width
    for count in (2, 3, 4, 5):
        same = [i for i in range(8) if features.num_choices(i) == count]
        out = np.asarray(scores(same, len(same))[1])
        assert out.shape[1] == count
        alone.update({i: out[r] for r, i in enumerate(same)})
    for i in range(8):
        np.testing.assert_allclose(np.asarray(together)[i, :features.num_choices(i)], alone[i],
                                   atol=1e-5)
    sums = task.sums(together, batch)
    expected = np.mean([optax.softmax_cross_entropy_with_integer_labels(
        alone[i], features.labels[i]) for i in range(8)])
    assert float(sums["loss_sum"] / sums["count"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(sums["count"]) == 8
    correct = sum(int(np.argmax(alone[i]) == features.labels[i]) for i in range(8))
    assert float(sums["correct"]) == correct


def test_fine_tunes_predicts_and_scores_its_checkpoint(pretrained, data_dir, tmp_path):
    """SWAG-layout train / val / labelled test files: results.json's accuracies are those of the
    prediction files, the checkpoint's task is multiple choice, `predict choose` gives the
    prediction file's probabilities, and scoring the checkpoint alone gives its best epoch."""
    rows = _next_sentences(data_dir, 96, seed=1)
    files = {name: str(_write_as(part, tmp_path / f"{name}.csv")) for name, part in
             (("train", rows[:64]), ("val", rows[64:80]), ("test", rows[80:]))}
    common = {"data.train_file": files["train"], "data.dev_file": files["val"],
              "data.test_file": files["test"], "data.max_seq_length": 48,
              "data.id_column": "video-id", "train.batch_size": 8,
              "train.eval_batch_size": 16, "train.log_every_steps": 4,
              "optimizer.learning_rate": 1e-3}
    results = finetune.finetune_and_evaluate(
        _config(init_checkpoint=pretrained, **common, **{"train.num_epochs": 2}),
        str(tmp_path / "run"))
    assert results["task"] == "multiple_choice" and results["main_metric"] == "accuracy"
    assert [sorted(e) for e in results["epochs"]] == [sorted(
        ["epoch", "step", "train_loss", "accuracy", "accuracy_test", "seconds"])] * 2
    best = results["seeds"]["0"]
    for split, name in (("dev", "accuracy"), ("test", "accuracy_test")):
        lines = pathlib.Path(best["predictions"][split]).read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == 16
        assert [r["id"] for r in records] == [r["video-id"] for r in
                                              (rows[64:80] if split == "dev" else rows[80:])]
        assert results["best"][name] == pytest.approx(
            np.mean([r["choice"] == r["gold"] for r in records]))
        for r in records:
            assert sum(r["probabilities"]) == pytest.approx(1.0)
            assert r["score"] == max(r["probabilities"])
    meta = checkpoint.load_model(best["checkpoint"]).meta["task"]
    assert meta == {"name": "multiple_choice", "kind": "multiple_choice", "max_seq_length": 48}

    dev = [json.loads(line) for line in
           pathlib.Path(best["predictions"]["dev"]).read_text().splitlines()]
    predictor = inference.load(best["checkpoint"], batch_size=4)
    items = [(r["sent1"], [f"{r['sent2']} {r[f'ending{k}']}" for k in range(4)])
             for r in rows[64:80]]
    chosen = predictor.choose(items)
    for mine, theirs in zip(chosen, dev):
        assert mine["choice"] == theirs["choice"] and mine["text"] == theirs["text"]
        np.testing.assert_allclose(mine["probabilities"], theirs["probabilities"], atol=1e-5)
    with pytest.raises(ValueError, match="item 1: expected a list of 2 or more choices"):
        predictor.choose([items[0], (items[1][0], items[1][1][:1])])
    with pytest.raises(ValueError, match="item 0: a choice is empty"):
        predictor.choose([(items[0][0], ["", *items[0][1]])])
    with pytest.raises(ValueError, match=r"item 0: expected a \(context, \[choice, ...\]\) "):
        predictor.choose(["What comes next?"])
    cli = predict.records("choose", _options(checkpoint=best["checkpoint"],
                                             context=[items[0][0]], choice=items[0][1]))
    assert cli[0]["choice"] == chosen[0]["choice"] and cli[0]["context"] == items[0][0]

    scored = finetune.finetune_and_evaluate(
        _config(init_checkpoint=best["checkpoint"], **common, **{"train.num_epochs": 0}),
        str(tmp_path / "score"))
    assert scored["best"]["accuracy"] == results["best"]["accuracy"]
    assert scored["best"]["accuracy_test"] == results["best"]["accuracy_test"]


def test_bad_files_and_checkpoints_are_named(finetuned, data_dir, tmp_path):
    tokenizer = _tokenizer(data_dir)
    good = _next_sentences(data_dir, 3)

    def load(rows, name="val.csv", **data):
        path = tmp_path / name
        _write_as(rows, path)
        config = _config(**{"data.dev_file": str(path), **{f"data.{k}": v
                                                            for k, v in data.items()}})
        return multiple_choice.MultipleChoiceTask(config.data).load(tokenizer, with_train=False)

    def bad(**changes):
        return [good[0], {**good[1], **changes}, good[2]]

    path = tmp_path / "val.csv"
    with pytest.raises(ValueError, match=f"{path}:3: label 4 is not the index of one of its 4 "
                                         r"choices \(0..3\)"):
        load(bad(label="4"))
    with pytest.raises(ValueError, match=f"{path}:3: label 'B' in column 'label' is not a "
                                         "choice index"):
        load(bad(label="B"))
    with pytest.raises(ValueError, match=f"{path}:3: choice\\(s\\) \\[2\\] are empty"):
        load(bad(ending2=" "))
    with pytest.raises(ValueError, match=f"{path}:3: no context text in column 'sent1'"):
        load(bad(sent1=""))
    with pytest.raises(ValueError, match=r"no column\(s\) \['ending3'\]"):
        load([{k: v for k, v in r.items() if k != "ending3"} for r in good])
    jsonl = tmp_path / "items.jsonl"
    items = [{"context": "It rained.", "choices": ["We stayed in.", "We swam."], "label": 0},
             {"context": "It snowed.", "choices": ["We skied."], "label": 0}]
    lists = {"start_column": "", "context_column": "context", "choice_columns": "choices"}
    with pytest.raises(ValueError, match=f"{jsonl}:2: 1 choice\\(s\\); an example needs 2"):
        load(items, "items.jsonl", **lists)
    items[1]["choices"] = "We skied."
    with pytest.raises(ValueError, match=f"{jsonl}:2: column 'choices' holds 'We skied.'; with "
                                         "one choice column it must hold a list"):
        load(items, "items.jsonl", **lists)
    items[1]["choices"], items[1]["label"] = ["We skied.", "We slept."], 1.0
    with pytest.raises(ValueError, match=f"{jsonl}:2: label 1.0 .* is not a choice index"):
        load(items, "items.jsonl", **lists)

    # A checkpoint fine-tuned for another kind of task is refused, by name.
    classifier = finetuned[2]["seeds"]["0"]["checkpoint"]
    val = _write_as(good, tmp_path / "val.csv")
    with pytest.raises(ValueError, match="fine-tuned for sentence \\(pair\\) classification "
                                         "\\(mrpc\\), not for multiple choice"):
        finetune.finetune_and_evaluate(
            _config(init_checkpoint=classifier, **{"data.dev_file": str(val),
                                                   "data.max_seq_length": 32,
                                                   "train.num_epochs": 0}),
            str(tmp_path / "score"))
    with pytest.raises(ValueError, match="choose needs a checkpoint fine-tuned for multiple "
                                         "choice, as SWAG.*fine-tuned on mrpc"):
        inference.load(classifier).choose([("It rained.", ["We stayed in.", "We swam."])])
