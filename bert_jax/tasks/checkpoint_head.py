"""A fine-tuned checkpoint's task head, made ready to score a task (train.num_epochs=0).

The checkpoint must be fine-tuned for the same kind of task: a sentence (pair) classifier for
GLUE, a span model for SQuAD, a token tagger for NER, a choice scorer for multiple choice
(tasks.base.task_kind). NER takes the checkpoint's tags as its label set
(FinetuneTask.labels_from_train). GLUE's labels are fixed by the task, and the checkpoint's
are matched to them by name, in any case: the same names in another order (MNLI models list
contradiction / entailment / neutral in several orders) put the head's output columns in the
task's order; other names of the same number (LABEL_0, NEGATIVE, ...) are matched by
position, with a warning.
"""

import numpy as np
from absl import logging

from bert_jax.interop.hf_tasks import HEADS
from bert_jax.tasks.base import CHOICES, SPANS, TOKENS, task_kind

_KINDS = {None: "sentence (pair) classification", SPANS: "question answering",
          TOKENS: "token classification", CHOICES: "multiple choice"}


def check_kind(fine_tuned: dict | None, task_meta: dict, where: str) -> None:
    """The checkpoint (its meta task entry `fine_tuned`) is fine-tuned for the task's kind."""
    if not fine_tuned:
        raise ValueError(f"train.num_epochs=0 scores a fine-tuned checkpoint, but {where} is not "
                         "fine-tuned (its metadata names no task): fine-tune it first")
    kind = task_kind(task_meta)
    if task_kind(fine_tuned) != kind:
        raise ValueError(f"{where} is fine-tuned for {_KINDS[task_kind(fine_tuned)]} "
                         f"({fine_tuned.get('name')}), not for {_KINDS[kind]} as "
                         f"{task_meta['name']}")


def head_for_task(params: dict, fine_tuned: dict | None, task_meta: dict, where: str) -> dict:
    """{head key: head params} of checkpoint params fine-tuned on `fine_tuned` (its meta task
    entry), with its output columns in the order of `task_meta`'s labels."""
    check_kind(fine_tuned, task_meta, where)
    kind = task_kind(task_meta)
    key = HEADS[kind].params_key
    if key not in params:
        raise ValueError(f"{where} has no {key!r} head (its params hold {sorted(params)})")
    head = {name: np.asarray(value) for name, value in params[key]["dense"].items()}
    have, want = fine_tuned.get("labels"), task_meta.get("labels")
    if kind in (SPANS, CHOICES):  # no labels: start / end, or one score per choice
        return {key: {"dense": head}}
    if (have is None) != (want is None):
        kinds = ["a regression" if labels is None else "a classifier" for labels in (have, want)]
        raise ValueError(f"{where} is {kinds[0]} but {task_meta['name']} is {kinds[1]}")
    if bool(fine_tuned.get("multi_label")) != bool(task_meta.get("multi_label")):
        kinds = ["multi-label (a sigmoid per label)" if meta.get("multi_label") else
                 "single-label (softmax)" for meta in (fine_tuned, task_meta)]
        raise ValueError(f"{where} is {kinds[0]} but {task_meta['name']} is {kinds[1]}")
    if have is not None and len(have) != len(want):
        raise ValueError(f"{where} has {len(have)} labels {have}; {task_meta['name']} has "
                         f"{len(want)}: {want}")
    order = None if have is None else label_order(have, want)
    if order is not None:  # the task's label i is the head's column order[i]
        head = {"kernel": head["kernel"][..., order], "bias": head["bias"][order]}
    elif have is not None:
        logging.warning("%s's labels %s are not %s's %s: matched by position", where, have,
                        task_meta["name"], want)
    return {key: {"dense": head}}


def label_order(have: list, want: list) -> list[int] | None:
    """Where each of `want`'s labels is in `have`, matched by name, or else by name whatever
    the case (transformers' MNLI heads name CONTRADICTION, NEUTRAL, ENTAILMENT, GLUE
    contradiction, entailment, neutral); None when the names do not match one to one."""
    for key in (str, lambda name: str(name).casefold()):
        keyed_have, keyed_want = [key(n) for n in have], [key(n) for n in want]
        if len(set(keyed_have)) == len(have) and sorted(keyed_have) == sorted(keyed_want):
            return [keyed_have.index(name) for name in keyed_want]
    return None
