"""Where a fine-tuning seed stands, kept on disk so that a stopped run resumes exactly.

A seed saves its train state (params, optimizer state, step) and its progress (SeedProgress:
the epoch under way, the batches of it done, that epoch's running train sums, the finished
epochs' records and the best one) to SEED_DIR/progress/<step>: after each epoch but the last,
every train.checkpoint_every_steps steps, and when SIGTERM (a preemption) stops the run. A
finished seed writes SEED_DIR/result.json and drops its progress. Running the same command
again skips the finished seeds and continues the others where they stopped, with the same
batches in the same order and the same dropout (both follow the seed, epoch and step), so that
its results are those of a run that was never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from bert_jax.train import checkpoint
from bert_jax.train.state import TrainState

PROGRESS_DIR, RESULT_FILE = "progress", "result.json"

# Config keys a resumed run may change: they alter neither the batches nor the updates. (A
# seed's rate is optimizer.learning_rate: a sweep's runs hold theirs there.)
_MAY_CHANGE = ("seeds", "learning_rates", "train.log_every_steps",
               "train.checkpoint_every_steps")


@dataclasses.dataclass
class SeedProgress:
    """A seed's place in its epochs, as JSON-ready values."""

    epoch: int = 1  # the epoch under way, from 1
    batches_done: int = 0  # of that epoch
    train_sums: dict = dataclasses.field(default_factory=dict)  # that epoch's per-step metrics
    train_steps: int = 0  # steps in train_sums
    epochs: list = dataclasses.field(default_factory=list)  # records of the finished epochs
    best: dict | None = None  # the best record so far; its params: SEED_DIR/checkpoints/<step>

    def add_step(self, values: dict) -> None:
        """One step's train metrics into the epoch's sums (in step order, so a resumed epoch
        sums to the same floats)."""
        for name, value in values.items():
            if name == "grad_norm" and values.get("overflow"):
                continue  # float16 gradients that overflowed (skipped): an infinite norm
            self.train_sums[name] = self.train_sums.get(name, 0.0) + value
        self.train_steps += 1

    def train_means(self) -> dict:
        """Means over the epoch's steps; the gradient norm's over those that did not overflow."""
        overflowed = self.train_sums.get("overflow", 0.0)
        return {name: total / max(self.train_steps - (overflowed if name == "grad_norm" else 0), 1)
                for name, total in self.train_sums.items()}

    def end_epoch(self, record: dict, best: dict) -> None:
        self.epochs.append(record)
        self.best = best
        self.epoch += 1
        self.batches_done, self.train_sums, self.train_steps = 0, {}, 0


class ProgressCheckpointer:
    """A seed's latest train state and progress in SEED_DIR/progress (one step kept)."""

    def __init__(self, seed_dir: str, run_config: dict):
        self.seed_dir = seed_dir
        self.run_config = run_config
        self.root = progress_root(seed_dir)
        self._checkpointer = checkpoint.TrainCheckpointer(seed_dir, keep=1, root=self.root)
        self._saved_step = self._checkpointer.latest_step()

    def restore(self, abstract_state: TrainState) -> tuple[TrainState, SeedProgress] | None:
        """The saved state (onto abstract_state's shardings) and progress, or None if the seed
        has saved none. Refuses progress saved under another config."""
        step = self._checkpointer.latest_step()
        if step is None:
            return None
        state, saved, meta = self._checkpointer.restore(step, abstract_state)
        check_same_run(meta["run_config"], self.run_config, f"{self.root}/{step}")
        if saved is None:
            raise ValueError(f"{self.root}/{step} was saved by another number of processes; "
                             "resume it with the same number, or start a new workdir")
        progress = SeedProgress(**saved)
        logging.info("%s resumes at step %d (epoch %d, %d of its batches done)",
                     self.seed_dir, step, progress.epoch, progress.batches_done)
        return state, progress

    def save(self, state: TrainState, progress: SeedProgress) -> None:
        """Starts an async save (the arrays reach host memory before it returns)."""
        step = int(jax.device_get(state.step))
        if step == self._saved_step:
            # The same train state with more progress (an epoch that ended on a periodic save,
            # or a run stopped at an epoch's end): only the progress is rewritten. Deleting the
            # step to save it again would leave nothing to resume from until the save commits.
            self._checkpointer.replace_data(step, dataclasses.asdict(progress))
            return
        self._saved_step = step
        self._checkpointer.save(step, state, dataclasses.asdict(progress),
                                {"step": step, "run_config": self.run_config})

    def wait(self) -> None:
        """Returns once the latest save is committed."""
        self._checkpointer.wait()

    def close(self) -> None:
        """Waits for a save in flight (also when the run failed: its last save still lands)."""
        if self._checkpointer is not None:
            self._checkpointer.wait()
            self._checkpointer.close()
            self._checkpointer = None

    def remove(self) -> None:
        """Drops the progress once the seed's result is written."""
        self.close()
        drop_progress(self.seed_dir)


def progress_root(seed_dir: str) -> str:
    return os.path.join(checkpoint.absolute(seed_dir), PROGRESS_DIR)


def drop_progress(seed_dir: str) -> None:
    """Removes SEED_DIR/progress, if any (every process calls it; process 0 removes)."""
    root = progress_root(seed_dir)
    multihost_utils.sync_global_devices(f"bert_jax_progress_done_{root}")
    if jax.process_index() == 0 and tf.io.gfile.isdir(root):
        tf.io.gfile.rmtree(root)


def check_same_run(saved: dict, current: dict, where: str) -> None:
    """A resumed seed must train as it began: every config key but _MAY_CHANGE the same."""
    old, new = _flatten(saved), _flatten(current)
    changed = sorted(key for key in old.keys() | new.keys()
                     if key not in _MAY_CHANGE and old.get(key) != new.get(key))
    if changed:
        details = "; ".join(f"{key}: {old.get(key)!r} then, {new.get(key)!r} now"
                            for key in changed[:5])
        raise ValueError(f"{where} holds a seed begun under another config ({details}): "
                         "rerun with the same config to resume, or use a new workdir")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            # JSON turns tuples into lists: compare the saved and the live config alike.
            out[f"{prefix}{key}"] = json.loads(json.dumps(value, default=str))
    return out


def finished_result(seed_dir: str, run_config: dict) -> dict | None:
    """A finished seed's result (SEED_DIR/result.json), or None. Refuses one finished under
    another config."""
    path = os.path.join(seed_dir, RESULT_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f)
    check_same_run(saved["run_config"], run_config, path)
    return saved["result"]


def write_result(seed_dir: str, result: dict, run_config: dict) -> None:
    """Process 0 writes the seed's result: from now on a rerun skips the seed."""
    if jax.process_index() == 0:
        path = os.path.join(seed_dir, RESULT_FILE)
        with tf.io.gfile.GFile(path + ".tmp", "w") as f:
            json.dump({"result": result, "run_config": run_config}, f, indent=2, default=str)
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    multihost_utils.sync_global_devices(f"bert_jax_seed_result_{seed_dir}")
