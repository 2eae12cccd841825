"""The pre-training loop: resume, step, log, evaluate, checkpoint, stop cleanly on SIGTERM."""

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging

from bert_jax.data import pipeline
from bert_jax.parallel import mesh as mesh_lib
from bert_jax.train import checkpoint, losses, metrics, setup as setup_lib, steps, warm_start
from bert_jax.train import loss_scale as loss_scale_lib
from bert_jax.train.state import TrainState


class NonFiniteLossError(FloatingPointError):
    pass


STOP_VOTE = "stop_vote"  # the batch entry (and step metric) that carries the processes' votes


class PreemptionFlag:
    """Set by SIGTERM; the loop (pre-training's, fine-tuning's) saves at the next step boundary
    and exits cleanly.

    With several processes, every one must stop at the same step: a process that stops to save
    while another has already queued the next step (whose collectives need the first) hangs
    both, and the checkpoint is lost. So each step carries every process's flag as a vote
    (`vote_into`, read back by `host_step_metrics`), and all stop once a step's votes, which
    they all read at the same point of the loop, hold one. One process stops at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._agreed = False
        self._vote_layout: dict = {}  # mesh -> (sharding, size, this process's rows) of votes

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling, as in notebooks
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    @property
    def stop(self) -> bool:
        """Whether to stop now: this process's SIGTERM alone, or every process's agreement."""
        return self.requested if jax.process_count() == 1 else self._agreed

    def vote_into(self, batch: dict, mesh) -> dict:
        """The placed batch plus this process's vote: one row per data-parallel shard it
        holds, of a [data x fsdp] array the step reduces to its maximum."""
        if mesh not in self._vote_layout:  # worked out once per mesh, not at every step
            sharding, size = mesh_lib.batch_sharding(mesh), mesh_lib.data_parallel_size(mesh)
            rows = len({index[0].indices(size)[:2] for index in
                        sharding.addressable_devices_indices_map((size,)).values()})
            self._vote_layout[mesh] = sharding, size, rows
        sharding, size, rows = self._vote_layout[mesh]
        votes = np.full((rows,), int(self.requested), np.int32)
        return {**batch, STOP_VOTE: jax.make_array_from_process_local_data(sharding, votes,
                                                                           (size,))}

    def count(self, vote: float | None) -> None:
        """A step's votes, read back on the host: any one stops every process."""
        if vote is not None and vote > 0:
            self._agreed = True


def with_stop_vote(train_step):
    """train_step(state, batch, rng) that also takes the batch's STOP_VOTE entry, if any, and
    returns its maximum as the STOP_VOTE metric (the step itself never sees it)."""

    def step(state, batch, rng):
        batch = dict(batch)
        votes = batch.pop(STOP_VOTE, None)
        state, step_metrics = train_step(state, batch, rng)
        if votes is not None:
            step_metrics = {**step_metrics, STOP_VOTE: jnp.max(votes)}
        return state, step_metrics

    return step


REAL_TOKENS = "real_tokens"


def with_real_tokens(train_step):
    """train_step(state, batch, rng) that also returns the batch's real (not padding) tokens,
    summed over the global batch on the devices: exact on any number of hosts, and read with
    the step's other metrics, so no extra host sync."""

    def step(state, batch, rng):
        state, step_metrics = train_step(state, batch, rng)
        real = jnp.sum(batch["attention_mask"], dtype=jnp.int32)
        return state, {**step_metrics, REAL_TOKENS: real}

    return step


class MetricWriter:
    """Console lines on every process; TensorBoard events and metrics.jsonl on process 0."""

    def __init__(self, workdir: str):
        self._process = jax.process_index()
        self._writer = None
        self._jsonl = None
        if self._process == 0:
            self._writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
            self._path = os.path.join(workdir, "metrics.jsonl")
            self._jsonl = tf.io.gfile.GFile(self._path, "a")

    def write(self, step: int, values: dict, prefix: str = "train") -> None:
        line = " ".join(f"{k}={_format(v)}" for k, v in values.items())
        logging.info("[process %d] %s step %d: %s", self._process, prefix, step, line)
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}/{name}", value)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        self._jsonl.flush()

    def drop_after(self, step: int) -> None:
        """Forgets metrics.jsonl's records of steps after `step` (and a line cut short): a run
        resumed there logs them again. TensorBoard's event files keep theirs."""
        if self._jsonl is None or not tf.io.gfile.exists(self._path):
            return
        self._jsonl.close()
        path = self._path
        with tf.io.gfile.GFile(path) as f:
            lines = f.read().splitlines()
        kept = [line for line in lines if _logged_step(line) <= step]
        if len(kept) < len(lines):
            logging.info("%s: %d records after step %d dropped (logged again from there)",
                         path, len(lines) - len(kept), step)
            with tf.io.gfile.GFile(path + ".tmp", "w") as f:
                f.write("".join(line + "\n" for line in kept))
            tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
        self._jsonl = tf.io.gfile.GFile(path, "a")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._jsonl.close()


def _logged_step(line: str) -> float:
    """A metrics.jsonl line's step; infinity for a line cut short (a run killed mid-write)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _format(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class StepWork:
    """What one train step computed: sequences, tokens, model FLOPs (metrics.flops_per_token)
    and, where it differs from `tokens`, the positions computed including padding."""

    sequences: int
    tokens: int
    flops: float
    padded_tokens: int | None = None


class Throughput:
    """Sequences/s, tokens/s, model TFLOP/s per device, MFU, ETA and input-wait fraction of
    the training steps of one logging window; time spent `excluded()` (compiling, evaluating,
    checkpointing) is not training time and counts in none of them.

    Each step reports its own work (`step_done`): pre-training's is the same at every step
    (every position; its real share comes later, with the steps' metrics: `report`'s
    real_fraction), fine-tuning's follows its length buckets. With `padded_tokens` given, the
    window also reports the fraction of the computed positions that were padding.
    """

    def __init__(self, num_steps: int, dtype: str):
        self._num_steps = num_steps
        self._num_devices = jax.device_count()
        self._peak = _peak_flops(dtype)
        self.reset()

    def reset(self):
        self._start = time.perf_counter()
        self._steps = 0
        self._sequences = self._tokens = self._padded_tokens = 0
        self._flops = 0.0
        self._input_wait = 0.0
        self._excluded = 0.0

    @contextlib.contextmanager
    def excluded(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._excluded += time.perf_counter() - start

    def add_input_wait(self, seconds: float):
        self._input_wait += seconds

    def step_done(self, work: StepWork):
        self._steps += 1
        self._sequences += work.sequences
        self._tokens += work.tokens
        self._flops += work.flops
        self._padded_tokens += work.padded_tokens or 0

    def report(self, step: int, real_fraction: float | None = None) -> dict:
        """The window's rates; none when no timed step ran in it (e.g. only the first one).

        `real_fraction`: the share of the steps' `tokens` that were real, where the steps
        reported every position (pre-training, whose counts come with the step's metrics);
        tokens and FLOPs then count the real ones, as fine-tuning's do."""
        if self._steps == 0:
            return {}
        tokens, flops, padded = self._tokens, self._flops, self._padded_tokens
        if real_fraction is not None:
            tokens, flops, padded = tokens * real_fraction, flops * real_fraction, tokens
        elapsed = max(time.perf_counter() - self._start - self._excluded, 1e-9)
        flops_per_device = flops / elapsed / self._num_devices
        seconds_per_step = elapsed / self._steps
        report = {
            "sequences_per_sec": self._sequences / elapsed,
            "tokens_per_sec": tokens / elapsed,
            "tflops_per_device": flops_per_device / 1e12,
            "mfu": flops_per_device / self._peak,
            "input_wait_fraction": self._input_wait / elapsed,
            "eta_minutes": (self._num_steps - step) * seconds_per_step / 60,
        }
        if padded:
            report["padding_fraction"] = 1 - tokens / padded
        return report


def events_after(done: int, num_steps: int, every: int) -> int:
    """How many steps after `done` (up to num_steps) evaluate, or save: the multiples of
    `every`, and the last step."""
    multiples = num_steps // every - done // every
    return multiples + int(num_steps % every != 0 and done < num_steps)


@functools.cache
def _peak_flops(dtype: str) -> float:
    """Datasheet peak, else a measured one: once per process, on a matmul small enough that a
    CPU run does not spend seconds on it before every start."""
    return metrics.datasheet_peak(dtype) or metrics.measure_matmul_peak(dtype, size=1024)


def mean_metrics(history: list[dict]) -> dict:
    """Each metric's mean over the window's steps. A step whose float16 gradients overflowed
    (the update skipped) has an infinite gradient norm: the norm's mean leaves those steps out,
    and `overflow`'s mean says how many there were."""
    means = {}
    for key in history[0]:
        values = [m[key] for m in history]
        if key == "grad_norm" and "overflow" in history[0]:
            values = [v for v, m in zip(values, history) if not m["overflow"]] or [math.nan]
        means[key] = float(np.mean(values))
    return means


class Trainer:
    """Holds the jitted steps and the run's moving parts; `run()` trains to num_steps."""

    def __init__(self, config, workdir: str):
        setup_lib.check_workdir_writable(workdir)
        setup_lib.check_step_intervals({
            "train.num_steps": config.train.num_steps,
            "train.log_every_steps": config.train.log_every_steps,
            "eval.every_steps": config.eval.every_steps,
            "checkpoint.every_steps": config.checkpoint.every_steps})
        setup_lib.check_counts({
            "train.batch_size": config.train.batch_size,
            "train.grad_accum_steps": config.train.grad_accum_steps,
            "eval.num_batches": config.eval.num_batches,
            # 0 would let Orbax delete every checkpoint as soon as it is written.
            "checkpoint.keep": config.checkpoint.keep})
        setup_lib.check_seeds("train.seed", [config.train.seed])
        self.config = config
        self.workdir = workdir
        self.warm_start = None
        self._preemption = PreemptionFlag()  # run() enters its own, which takes SIGTERM
        if config.init_checkpoint:
            own = checkpoint.train_checkpoints_root(workdir)
            self.warm_start = warm_start.load(
                config, resume_root=own if checkpoint.has_steps(own) else None)
            self.tokenizer = self.warm_start.tokenizer
        else:
            self.tokenizer = setup_lib.load_or_train_tokenizer(config.data, workdir)
        self.setup = setup_lib.build(
            config, self.tokenizer, self.warm_start and self.warm_start.model_config)
        self.local_batch = config.train.batch_size // jax.process_count()
        data = self.setup.pipeline_config
        # Every position of the global batch; the logged rates count the real ones
        # (with_real_tokens).
        tokens = config.train.batch_size * data.max_seq_length
        self._step_work = StepWork(
            sequences=config.train.batch_size, tokens=tokens,
            flops=tokens * metrics.flops_per_token(self.setup.model_config, data.max_seq_length,
                                                   data.num_predictions))
        # Batches reach the devices in the prefetch thread, off the step's critical path.
        self._place_on_mesh = functools.partial(mesh_lib.global_batch, mesh=self.setup.mesh)
        self.train_data = pipeline.make_pretraining_iterator(
            self.setup.pipeline_config, self.tokenizer, batch_size=self.local_batch,
            seed=config.train.seed, split="train", place=self._place_on_mesh)
        self._held_out_batches: list[dict] | None = None  # on the mesh
        self.checkpointer = checkpoint.TrainCheckpointer(workdir, config.checkpoint.keep)
        self.writer = MetricWriter(workdir)
        self.rng = steps.root_rng(config.train.seed, config.train.prng_impl)
        self._compile_steps()

    def _compile_steps(self):
        s = self.setup
        sums_fn = steps.pretraining_sums_fn(s.model, s.use_nsp)
        batch_sharding = mesh_lib.batch_sharding(s.mesh)
        replicated = mesh_lib.replicated(s.mesh)
        train = functools.partial(
            steps.train_step, sums_fn=sums_fn, optimizer=s.optimizer, schedule=s.schedule,
            grad_accum_steps=self.config.train.grad_accum_steps)
        self.train_step = setup_lib.with_mesh_and_rules(s, jax.jit(
            with_stop_vote(with_real_tokens(train)),
            in_shardings=(s.state_shardings, batch_sharding, replicated),
            out_shardings=(s.state_shardings, replicated), donate_argnums=0))
        self.eval_step = setup_lib.with_mesh_and_rules(s, jax.jit(
            functools.partial(steps.eval_step, sums_fn=sums_fn),
            in_shardings=(s.state_shardings.params, batch_sharding), out_shardings=replicated))

    def initial_state(self) -> TrainState:
        """The latest checkpoint of the workdir, else a fresh sharded initialisation (with
        init_checkpoint's weights in it, and an optimizer state for those)."""
        step = self.checkpointer.latest_step()
        if step is None:
            # Outside the rules context: placement comes from out_shardings, and flax's
            # DenseGeneral cannot constrain its flat kernel with the 3-D logical names.
            state = self.setup.init_state(jax.random.fold_in(self.rng, 1 << 30))
            if self.warm_start is None:
                return state
            shardings = self.setup.state_shardings
            params = warm_start.initial_params(self.warm_start, state.params, shardings.params)
            opt_state = jax.jit(self.setup.optimizer.init,
                                out_shardings=shardings.opt_state)(params)
            return state.replace(params=params, opt_state=opt_state)
        state, data_state, meta = self.checkpointer.restore(step, self.setup.abstract_state)
        if data_state is None:
            logging.warning("checkpoint at step %d was written by another number of processes: "
                            "the data iterators start afresh", step)
        else:
            self.train_data.set_state(data_state)
        logging.info("resumed from %s at step %d", self.checkpointer.root, meta["step"])
        return state

    def save(self, state: TrainState, step: int) -> None:
        meta = checkpoint.make_meta(step, self.setup.model_config, self.tokenizer,
                                    run_config=self.config.to_dict())
        self.checkpointer.save(step, state, self.train_data.get_state(), meta)

    def evaluate(self, params) -> dict:
        total = None
        for batch in self._eval_batches():
            sums = self.eval_step(params, batch)
            total = sums if total is None else losses.tree_add(total, sums)
        return {k: float(v) for k, v in losses.summarize(jax.device_get(total)).items()}

    def _write_evaluation(self, step: int, params) -> None:
        start = time.perf_counter()
        values = self.evaluate(params)
        self.writer.write(step, {**values, "seconds": time.perf_counter() - start}, prefix="eval")

    def _eval_batches(self) -> list[dict]:
        """The held-out batches, the same at every evaluation so that numbers compare across
        steps. Read once and kept on the devices (eval.num_batches batches, tens of MB for
        BERT-Large): finding held-out documents scans the whole source, and a prefetch thread
        left running between evaluations would take CPU time from training."""
        if self._held_out_batches is None:
            eval_data = pipeline.make_pretraining_iterator(
                self.setup.pipeline_config, self.tokenizer, batch_size=self.local_batch,
                seed=self.config.train.seed, split="eval", place=self._place_on_mesh)
            try:
                self._held_out_batches = [
                    next(eval_data) for _ in range(self.config.eval.num_batches)]
            finally:
                eval_data.close()
            passes = eval_data.get_state()["epoch"] + 1
            if passes > 1:
                logging.warning(
                    "evaluation reads the held-out documents %d times (with new masks) to fill "
                    "eval.num_batches=%d batches of %d: raise data.eval_fraction (now %g) for "
                    "more distinct held-out text", passes, self.config.eval.num_batches,
                    self.local_batch, self.config.data.eval_fraction)
        return self._held_out_batches

    def run(self) -> dict:
        """Trains to train.num_steps (or until SIGTERM); returns the last logged metrics."""
        try:
            return self._train()
        finally:  # also on errors: input threads stopped, files flushed, pending saves done
            self.close()

    def _train(self) -> dict:
        cfg = self.config.train
        state = self.initial_state()
        start_step = int(jax.device_get(state.step))
        # Only now: a rerun that the checkpoint refuses (another model) keeps the description
        # of the run that wrote it; and records of steps after the checkpoint, which this run
        # logs again, go.
        setup_lib.write_run_description(self.workdir, self.config, self.setup)
        self.writer.drop_after(start_step)
        throughput = Throughput(cfg.num_steps, self.setup.model_config.dtype)
        history, pending, last_logged = [], None, {}
        pauses = {}  # "evaluate"/"save" -> seconds the latest one took, for the ETA
        with PreemptionFlag() as preemption:
            self._preemption = preemption
            if start_step < cfg.num_steps:
                # Now rather than at the first evaluation, hours in: a source without held-out
                # documents fails before any training is spent.
                self._eval_batches()
            # The prefetch thread starts now and fills its queue while the first step compiles.
            self.train_data.start()
            for step in range(start_step, cfg.num_steps):
                if step == start_step:
                    state, step_metrics = self._first_step(state, throughput)
                else:
                    state, step_metrics = self._step(state, throughput)
                # Read step N-1's metrics only now that step N is queued: no per-step host sync.
                if pending is not None:
                    history.append(self._checked(*pending))
                pending = (step + 1, step_metrics)
                done = step + 1
                stop = preemption.stop or done == cfg.num_steps
                if done % cfg.log_every_steps == 0 or stop:
                    history.append(self._checked(*pending))
                    pending = None
                    real = sum(m.pop(REAL_TOKENS) for m in history)
                    real_fraction = real / (len(history) * self._step_work.tokens)
                    last_logged = {**mean_metrics(history),
                                   **throughput.report(done, real_fraction)}
                    if "eta_minutes" in last_logged:
                        last_logged["eta_minutes"] += self._pauses_ahead(done, pauses) / 60
                    self.writer.write(done, last_logged)
                    history = []
                    throughput.reset()
                evaluate = done % self.config.eval.every_steps == 0 or done == cfg.num_steps
                save = done % self.config.checkpoint.every_steps == 0 or stop
                if evaluate or save:
                    # Steps so far count as training time; evaluation and saving do not.
                    jax.block_until_ready(state)
                    with throughput.excluded():
                        # Saved first: a failing evaluation must not cost the step's checkpoint
                        # (and the save's writes overlap the evaluation).
                        if save:
                            if pending is not None:  # never checkpoint unchecked parameters
                                history.append(self._checked(*pending))
                                pending = None
                            start = time.perf_counter()
                            self.save(state, done)
                            pauses["save"] = time.perf_counter() - start
                        if evaluate:
                            start = time.perf_counter()
                            self._write_evaluation(done, state.params)
                            pauses["evaluate"] = time.perf_counter() - start
                if stop:
                    break
        self.checkpointer.wait()
        return last_logged

    def _pauses_ahead(self, done: int, pauses: dict) -> float:
        """Seconds the evaluations and saves after step `done` will take, each as long as the
        latest of its kind (the first evaluation also compiles; later ones are alike)."""
        every = {"evaluate": self.config.eval.every_steps,
                 "save": self.config.checkpoint.every_steps}
        return sum(seconds * events_after(done, self.config.train.num_steps, every[kind])
                   for kind, seconds in pauses.items())

    def _step(self, state: TrainState, throughput: Throughput | None):
        """One train step, dispatched (not awaited); its input wait is added to `throughput`."""
        wait_start = time.perf_counter()
        batch = next(self.train_data)
        if throughput is not None:
            throughput.add_input_wait(time.perf_counter() - wait_start)
            throughput.step_done(self._step_work)
        return self.train_step(state, self._preemption.vote_into(batch, self.setup.mesh),
                               self.rng)

    def _first_step(self, state: TrainState, throughput: Throughput):
        """The first step compiles and waits for the pipeline's first chunk: timed on its own,
        so that the first window's rates and input wait describe training alone."""
        with throughput.excluded():
            start = time.perf_counter()
            state, step_metrics = self._step(state, None)
            jax.block_until_ready(step_metrics)
            logging.info("first step (compilation and input start): %.1f s",
                         time.perf_counter() - start)
        return state, step_metrics

    def _checked(self, step: int, step_metrics) -> dict:
        return host_step_metrics(step, step_metrics, self.config.train.skip_nonfinite_updates,
                                 self._preemption)

    def close(self):
        self.writer.close()
        self.train_data.close()
        self.checkpointer.close()


def host_step_metrics(step: int, step_metrics, skip_nonfinite: bool,
                      preemption: PreemptionFlag | None = None) -> dict:
    """A step's metrics as floats on the host; a non-finite step (whose update the train step
    did not apply) raises unless `skip_nonfinite`, and is then logged. The processes' stop
    vote goes to `preemption`, not into the metrics.

    With float16 compute, a step whose gradients overflowed at a loss scale above the minimum
    is routine: the scale has halved, and `overflow` (1.0, else 0.0) counts such steps."""
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    vote = values.pop(STOP_VOTE, None)
    if preemption is not None:
        preemption.count(vote)
    nonfinite = values.pop("nonfinite") > 0
    if "loss_scale" in values:
        values["overflow"] = float(nonfinite and loss_scale_lib.overflowed(values))
        if values["overflow"]:
            logging.info("step %d: float16 gradients overflowed at loss scale %g: update "
                         "skipped, scale halved", step, values["loss_scale"])
            return values
    if nonfinite:
        if not skip_nonfinite:
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {step} (loss={values['loss']}); the "
                f"update was not applied. Set train.skip_nonfinite_updates to skip such steps")
        logging.warning("step %d: non-finite loss or gradient, update skipped", step)
    return values


def train_and_evaluate(config, workdir: str) -> dict:
    """Pre-trains per `config` in `workdir`, resuming from its latest checkpoint if any."""
    return Trainer(config, workdir).run()


def quiet_library_logs() -> None:
    """Orbax logs every save step at INFO through absl; keep the console to the run's own lines."""

    class _DropOrbaxInfo(__import__("logging").Filter):
        def filter(self, record):
            return record.levelno >= 30 or "orbax" not in record.pathname

    logging.get_absl_handler().addFilter(_DropOrbaxInfo())
