"""A learning-rate sweep (config.learning_rates): each rate's seeds train exactly as a run at
that rate alone, the rate of the best run is chosen, and a rerun keeps the finished rates."""

import json
import pathlib

import pytest

from bert_jax.tasks import finetune
from tests.test_finetune import _finetune_config


def _without_seconds(epochs: list) -> list:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


def test_sweep_trains_each_rate_as_alone_and_picks_the_best_run(finetuned, pretrained, mrpc_dir,
                                                                 tmp_path):
    _, _, alone = finetuned  # seeds 0 and 1 at learning rate 1e-3
    config = _finetune_config(pretrained, mrpc_dir, seeds=(0, 1), learning_rates=(3e-4, 1e-3))
    results = finetune.finetune_and_evaluate(config, str(tmp_path))

    rate_dir = tmp_path / "lr_0.001"
    same_rate = json.loads((rate_dir / "results.json").read_text())
    for seed in ("0", "1"):
        assert (_without_seconds(same_rate["seeds"][seed]["epochs"])
                == _without_seconds(alone["seeds"][seed]["epochs"])), seed
    other = json.loads((tmp_path / "lr_0.0003" / "results.json").read_text())
    assert other["seeds"]["0"]["epochs"][0]["train_loss"] != same_rate["seeds"]["0"]["epochs"][
        0]["train_loss"]

    by_rate = {0.0003: other, 0.001: same_rate}
    chosen = max(by_rate, key=lambda r: by_rate[r]["best"]["f1"])
    assert results["learning_rate"] == chosen
    assert results["best"] == {**by_rate[chosen]["best"], "learning_rate": chosen}
    assert results["seeds"] == by_rate[chosen]["seeds"]
    assert set(results["learning_rates"]) == {"0.0003", "0.001"}
    assert results["learning_rates"]["0.001"]["median"] == same_rate["median"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["learning_rate"] == chosen
    # The chosen rate's best seed's submission, at the top level.
    test_file = pathlib.Path(results["predictions"]["test"])
    assert test_file == tmp_path / "predictions" / "MRPC.tsv"
    best_seed = by_rate[chosen]["seeds"][str(by_rate[chosen]["best"]["seed"])]
    assert test_file.read_text() == pathlib.Path(best_seed["predictions"]["test"]).read_text()

    # The same command again reads every finished rate back: no training, the same results.
    again = finetune.finetune_and_evaluate(config, str(tmp_path))
    assert again["best"] == results["best"]
    assert again["learning_rates"].keys() == results["learning_rates"].keys()


def test_bad_sweeps_are_refused(pretrained, mrpc_dir, tmp_path):
    for rates in ((1e-3, 1e-3), (1e-3, 0.0)):
        config = _finetune_config(pretrained, mrpc_dir, learning_rates=rates)
        with pytest.raises(ValueError, match="expected distinct positive rates"):
            finetune.finetune_and_evaluate(config, str(tmp_path / "a"))
    config = _finetune_config(pretrained, mrpc_dir, learning_rates=(1e-3, 3e-4),
                              **{"train.num_epochs": 0})
    with pytest.raises(ValueError, match="learning_rates is set but train.num_epochs=0"):
        finetune.finetune_and_evaluate(config, str(tmp_path / "b"))
