"""Fine-tuning resumes where it stopped (tasks/progress.py): after SIGTERM mid-epoch, and after a
crash between periodic saves, the same command finishes with the results and best checkpoints
of the run that was never stopped (tests/test_finetune.py's `finetuned`, two seeds on an MRPC
slice: 6 steps per epoch, 2 epochs); finished seeds are not trained again."""

import json
import os
import pathlib
import signal

import jax
import numpy as np
import pytest

from bert_jax.tasks import finetune, progress
from bert_jax.train import checkpoint
from tests.test_finetune import _finetune_config, _flat

STEPS_PER_SEED = 12


def _interrupt_at_call(monkeypatch, call: int, action) -> list:
    """Wraps the train step of every Run that finetune.build makes: after its `call`-th step
    (counted across seeds) `action()` runs. Returns the list the steps are counted in."""
    calls, real_build = [], finetune.build

    def build(config, workdir):
        run = real_build(config, workdir)
        train_step = run.train_step

        def counted(state, batch, rng):
            out = train_step(state, batch, rng)
            calls.append(1)
            if len(calls) == call:
                action()
            return out

        run.train_step = counted
        return run

    monkeypatch.setattr(finetune, "build", build)
    return calls


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)  # the real signal, caught by the run's own handler


def _crash():
    raise RuntimeError("simulated crash")


def _assert_same_seed(workdir, reference_workdir, seed: int, with_checkpoint: bool = True):
    """The seed's epochs and best as the uninterrupted run's (bar wall time), and its best
    checkpoint's params bit for bit."""
    got = json.loads((pathlib.Path(workdir) / f"seed_{seed}" / progress.RESULT_FILE).read_text())[
        "result"]
    want = json.loads((pathlib.Path(reference_workdir) / "results.json").read_text())["seeds"][
        str(seed)]
    for name in ("epochs", "best"):
        drop = lambda records: [{k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
                                for r in (records if name == "epochs" else [records])]
        assert drop(got[name]) == drop(want[name]), name
    assert not (pathlib.Path(workdir) / f"seed_{seed}" / progress.PROGRESS_DIR).exists()
    if not with_checkpoint:
        return
    ours = _flat(checkpoint.load_model(got["checkpoint"]).params)
    theirs = _flat(checkpoint.load_model(want["checkpoint"]).params)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert np.array_equal(ours[key], theirs[key]), key


def test_sigterm_mid_epoch_then_rerun_finishes_as_if_never_stopped(finetuned, monkeypatch,
                                                                   tmp_path):
    config, reference, _ = finetuned  # seeds 0 and 1
    # SIGTERM at seed 1's step 9: three batches into its second epoch.
    calls = _interrupt_at_call(monkeypatch, STEPS_PER_SEED + 9, _sigterm)
    stopped = finetune.finetune_and_evaluate(config, str(tmp_path))
    assert stopped == {"preempted": True, "seed": 1, "finished_seeds": 1}
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "seed_0" / progress.RESULT_FILE).exists()
    saved = checkpoint.TrainCheckpointer(
        "", keep=1, root=str(tmp_path / "seed_1" / progress.PROGRESS_DIR))
    assert saved.latest_step() == 9
    saved.close()

    changed = config.copy_and_resolve_references()
    changed.optimizer.learning_rate = 2e-3
    with pytest.raises(ValueError, match=rf"{tmp_path} holds a seed begun under another "
                       r"config \(optimizer.learning_rate: 0.001 then, 0.002 now\)"):
        finetune.finetune_and_evaluate(changed, str(tmp_path))
    (tmp_path / "config.json").unlink()  # without it, each seed checks its own
    with pytest.raises(ValueError, match=r"seed_0/result.json holds a seed begun under "
                       r"another config \(optimizer.learning_rate: 0.001 then, 0.002 now\)"):
        finetune.finetune_and_evaluate(changed, str(tmp_path))  # finished seeds are checked too

    calls.clear()  # the rerun: seed 0 is read back, seed 1 trains its last 3 steps
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    assert len(calls) == 3
    for seed in (0, 1):
        _assert_same_seed(tmp_path, reference, seed)
    want = json.loads((pathlib.Path(reference) / "results.json").read_text())
    assert results["best"]["f1"] == want["best"]["f1"] and results["median"] == want["median"]


def test_crash_between_periodic_saves_resumes_from_the_last(finetuned, pretrained, mrpc_dir,
                                                            monkeypatch, tmp_path):
    _, reference, _ = finetuned
    # Saves at steps 3, 6 (also the end of epoch 1) and 9; the crash comes at step 11.
    config = _finetune_config(pretrained, mrpc_dir, **{
        "train.checkpoint_every_steps": 3, "train.save_best_checkpoint": False})
    calls = _interrupt_at_call(monkeypatch, 11, _crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune.finetune_and_evaluate(config, str(tmp_path))
    changed = config.copy_and_resolve_references()
    changed.train.batch_size = 16
    described = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=rf"{tmp_path} holds a seed begun under another "
                       r"config \(train.batch_size: 8 then, 16 now\)"):
        finetune.finetune_and_evaluate(changed, str(tmp_path))
    assert (tmp_path / "config.json").read_text() == described  # refused before rewriting it
    (tmp_path / "config.json").unlink()  # without it, each seed checks its own
    with pytest.raises(ValueError, match=r"seed_0/progress/9 holds a seed begun under another "
                       r"config \(train.batch_size: 8 then, 16 now\)"):
        finetune.finetune_and_evaluate(changed, str(tmp_path))

    calls.clear()
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    assert len(calls) == STEPS_PER_SEED - 9
    _assert_same_seed(tmp_path, reference, 0, with_checkpoint=False)
    # save_best_checkpoint=False: the best epoch's params were on disk only while the seed ran.
    assert "checkpoint" not in results["seeds"]["0"]
    assert not (tmp_path / "seed_0" / "checkpoints").exists()


def test_a_seed_resumes_only_under_the_config_it_began_with(pretrained, mrpc_dir):
    saved = _finetune_config(pretrained, mrpc_dir).to_dict()
    same = _finetune_config(pretrained, mrpc_dir, **{
        "seeds": (0, 1, 2), "train.log_every_steps": 5, "train.checkpoint_every_steps": 7})
    progress.check_same_run(json.loads(json.dumps(saved)), same.to_dict(), "here")
    changed = _finetune_config(pretrained, mrpc_dir, **{"optimizer.learning_rate": 2e-3,
                                                        "data.max_seq_length": 64})
    with pytest.raises(ValueError, match=r"here holds a seed begun under another config "
                       r"\(data.max_seq_length: 32 then, 64 now; optimizer.learning_rate: "
                       r"0.001 then, 0.002 now\)"):
        progress.check_same_run(saved, changed.to_dict(), "here")


def test_seed_progress_sums_and_epochs():
    state = progress.SeedProgress()
    for loss in (0.5, 0.25, 0.75):
        state.add_step({"loss": loss})
        state.batches_done += 1
    assert state.train_means() == {"loss": 0.5}
    state.end_epoch({"epoch": 1, "f1": 0.5}, {"epoch": 1, "f1": 0.5})
    assert (state.epoch, state.batches_done, state.train_steps, state.train_sums) == (2, 0, 0, {})
    assert progress.SeedProgress(**json.loads(json.dumps(jax.tree_util.tree_map(
        lambda x: x, state.__dict__)))) == state


def test_an_epoch_ending_on_a_periodic_save_rewrites_only_its_progress(finetuned, pretrained,
                                                                       mrpc_dir, monkeypatch,
                                                                       tmp_path):
    """Step 6 is both a periodic save and epoch 1's end: the epoch's record joins the saved
    step in place, with no moment when no step is on disk (it was deleted, then saved again).
    A crash right after resumes from it, in epoch 2."""
    _, reference, _ = finetuned
    config = _finetune_config(pretrained, mrpc_dir, **{"train.checkpoint_every_steps": 3})
    steps_on_disk, real_replace = [], checkpoint.TrainCheckpointer.replace_data

    def replace_data(self, step, data_state):
        steps_on_disk.append(self.latest_step())
        real_replace(self, step, data_state)

    monkeypatch.setattr(checkpoint.TrainCheckpointer, "replace_data", replace_data)
    calls = _interrupt_at_call(monkeypatch, 7, _crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune.finetune_and_evaluate(config, str(tmp_path))
    assert steps_on_disk == [6]
    saver = progress.ProgressCheckpointer(str(tmp_path / "seed_0"), config.to_dict())
    _, saved = saver.restore(finetune.build(config, str(tmp_path)).abstract_state)
    saver.close()
    assert saved.epoch == 2 and saved.batches_done == 0 and len(saved.epochs) == 1

    calls.clear()
    finetune.finetune_and_evaluate(config, str(tmp_path))
    assert len(calls) == STEPS_PER_SEED - 6
    _assert_same_seed(tmp_path, reference, 0)


def test_a_rerun_cleans_up_after_a_seed_stopped_right_after_its_result(pretrained, mrpc_dir,
                                                                       monkeypatch, tmp_path):
    """Killed between writing seed_0/result.json and dropping its progress and older bests:
    the rerun takes the result and removes what the seed no longer needs."""
    config = _finetune_config(pretrained, mrpc_dir)
    real_write = progress.write_result

    def write_then_crash(*args):
        real_write(*args)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(progress, "write_result", write_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune.finetune_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "seed_0" / progress.PROGRESS_DIR).is_dir()
    monkeypatch.setattr(progress, "write_result", real_write)
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "seed_0" / progress.PROGRESS_DIR).exists()
    assert os.listdir(tmp_path / "seed_0" / "checkpoints") == [str(results["best"]["step"])]


def test_crash_after_a_best_checkpoint_before_the_progress_naming_it(finetuned, pretrained,
                                                                    mrpc_dir, monkeypatch,
                                                                    tmp_path):
    """Epoch 1's best is written, then the run dies before its progress is saved: the rerun
    resumes from the periodic save at step 6 (all of epoch 1's batches done), scores epoch 1
    again and rewrites its best checkpoint over the stale one."""
    _, reference, _ = finetuned
    config = _finetune_config(pretrained, mrpc_dir, **{"train.checkpoint_every_steps": 3})
    real_save_best, saved = finetune._save_best, []

    def save_best_then_crash(*args):
        real_save_best(*args)
        saved.append(args[2])
        if len(saved) == 1:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(finetune, "_save_best", save_best_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune.finetune_and_evaluate(config, str(tmp_path))
    assert saved == [6] and (tmp_path / "seed_0" / "checkpoints" / "6").is_dir()
    results = finetune.finetune_and_evaluate(config, str(tmp_path))
    assert saved[1] == 6  # epoch 1 scored again, its best rewritten
    _assert_same_seed(tmp_path, reference, 0)
    assert os.listdir(tmp_path / "seed_0" / "checkpoints") == [str(results["best"]["step"])]
