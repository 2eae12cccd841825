"""Fine-tuned checkpoints <-> transformers' task models, head included.

A checkpoint fine-tuned here stores its task (meta["task"], see tasks/*.meta()). Each kind of
task has a transformers class with the same head on the same encoder:

    GLUE classification / regression   BertForSequenceClassification  classifier.*   with pooler
    SQuAD extractive QA                BertForQuestionAnswering       qa_outputs.*   no pooler
    CoNLL-2003 NER                     BertForTokenClassification     classifier.*   no pooler
    multiple choice (SWAG)             BertForMultipleChoice          classifier.*   with pooler

Exports write the label names to config.json's id2label / label2id (problem_type "regression"
for STS-B), so transformers' pipelines print them, and the whole task entry under TASK_KEY, so
that importing the export gives back the checkpoint's task as it was (pair or single texts,
windows, post-processing). A task model from elsewhere gets its labels from id2label and the
rest from IMPORT_DEFAULTS, the defaults of this package's task configs.

transformers' QA and token models have no pooler; an import of one gets a zero pooler, which
inference refuses to pool with (Predictor.embed).
"""

import dataclasses
from collections.abc import Callable

from absl import logging

from bert_jax.interop import hf
from bert_jax.model.config import ModelConfig
from bert_jax.model.heads import (BertForMultipleChoice, BertForQuestionAnswering,
                                  BertForSequenceClassification, BertForTokenClassification)
from bert_jax.tasks import conlleval
from bert_jax.tasks.base import CHOICES, SPANS, TOKENS, task_kind

# config.json key holding the fine-tuned task's meta entry (transformers keeps unknown keys).
TASK_KEY = "bert_jax_task"

# What an imported task model's config.json cannot say: configs/finetune/squad.py's and
# ner.py's defaults (the original BERT's SQuAD windows and post-processing; tests check that
# the two agree). A model with fewer positions gets max_seq_length = max_position_embeddings,
# and QA's max_query_length and doc_stride shrink in proportion.
IMPORT_DEFAULTS = {
    SPANS: {"version_2": False, "max_seq_length": 384, "doc_stride": 128,
            "max_query_length": 64, "n_best_size": 20, "max_answer_length": 30,
            "null_score_diff_threshold": 0.0},
    TOKENS: {"max_seq_length": 128},
    CHOICES: {"max_seq_length": 128},
}


@dataclasses.dataclass(frozen=True)
class TaskHead:
    """A kind of task's transformers class and where its head lives in both trees."""

    architecture: str  # the transformers class
    hf_prefix: str  # its head's tensor names: PREFIX.weight, PREFIX.bias
    params_key: str  # our head's params: params[KEY]["dense"]
    with_pooler: bool  # transformers' class has the pooler
    make_model: Callable[[ModelConfig, int], object]  # (config, num_labels) -> our module
    input_shape: tuple[int, ...] = (1, 1)  # the smallest input our module takes


HEADS = {
    None: TaskHead("BertForSequenceClassification", "classifier", "classifier", True,
                   BertForSequenceClassification),
    SPANS: TaskHead("BertForQuestionAnswering", "qa_outputs", "qa_outputs", False,
                    lambda config, _: BertForQuestionAnswering(config)),
    TOKENS: TaskHead("BertForTokenClassification", "classifier", "classifier", False,
                     BertForTokenClassification),
    # One score per choice (a dense layer with one output), whatever the number of choices.
    CHOICES: TaskHead("BertForMultipleChoice", "classifier", "classifier", True,
                      lambda config, _: BertForMultipleChoice(config), (1, 1, 1)),
}
_KIND_BY_ARCHITECTURE = {head.architecture: kind for kind, head in HEADS.items()}


def _rules(head: TaskHead, config: ModelConfig) -> list:
    return (hf.encoder_rules(config, "bert.", "bert/", with_pooler=head.with_pooler)
            + hf.dense_rules(head.hf_prefix, f"{head.params_key}/dense", "plain"))


# ----------------------------------------------------------------------------------------------
# Export.


def to_hf(params: dict, config: ModelConfig, task: dict, source: str) -> tuple[dict, dict]:
    """A fine-tuned checkpoint's unrolled params and task -> (HF tensors, config.json fields
    that name the class, the labels and the task)."""
    kind = task_kind(task)
    head = HEADS[kind]
    if head.params_key not in params:
        raise ValueError(f"{source} is fine-tuned on {task.get('name')} but its params have no "
                         f"{head.params_key!r} head (they hold {sorted(params)})")
    fields = {"architectures": [head.architecture], TASK_KEY: task}
    labels = task.get("labels")
    if kind is None and labels is None:  # a regression (STS-B): one output, the score
        fields.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                      problem_type="regression")
    elif kind not in (SPANS, CHOICES):  # QA's two outputs (start, end) are transformers'
        # default num_labels; a choice has one score, which num_labels does not describe
        fields.update(id2label={str(i): name for i, name in enumerate(labels)},
                      label2id={name: i for i, name in enumerate(labels)})
        if kind is None:
            fields["problem_type"] = ("multi_label_classification" if task.get("multi_label")
                                      else "single_label_classification")
    return hf.tensors_by_rules(params, _rules(head, config)), fields


# ----------------------------------------------------------------------------------------------
# Import.


def task_architecture(hf_config: dict) -> str | None:
    """The task class config.json's `architectures` names, if it names one of HEADS'."""
    found = [a for a in hf_config.get("architectures") or [] if a in _KIND_BY_ARCHITECTURE]
    return found[0] if found else None


def from_hf(tensors: dict, config: ModelConfig, hf_config: dict, name: str) -> tuple[dict, dict]:
    """A transformers task model's tensors and config.json -> (params as fine-tuning writes
    them, the task entry for meta["task"]). `name` names the task where config.json carries
    none of ours (the folder it came from)."""
    kind = _KIND_BY_ARCHITECTURE[task_architecture(hf_config)]
    head = HEADS[kind]
    num_labels = 2 if kind in (SPANS, CHOICES) else _num_labels(hf_config)
    task = hf_config.get(TASK_KEY) or _task_from_hf_config(hf_config, kind, config, name)
    unrolled = dataclasses.replace(config, scan_layers=False)
    shapes = hf.module_param_shapes(head.make_model(unrolled, num_labels),
                                    input_shape=head.input_shape)
    params = hf.params_by_rules(tensors, _rules(head, config), shapes, config)
    if not head.with_pooler:
        logging.warning("%s has no pooler (transformers' %s has none): imported as zeros, which "
                        "inference will not pool with", name, head.architecture)
        hf.zero_pooler(params, config)
    return params, task


def _num_labels(hf_config: dict) -> int:
    """transformers' rule: id2label's size, else num_labels, else 2."""
    if hf_config.get("id2label"):
        return len(hf_config["id2label"])
    return int(hf_config.get("num_labels", 2))


def _label_names(hf_config: dict, num_labels: int) -> list[str]:
    id2label = {int(i): str(label) for i, label in (hf_config.get("id2label") or {}).items()}
    if sorted(id2label) != list(range(num_labels)):
        raise ValueError(f"config.json's id2label has ids {sorted(id2label)}; expected 0.."
                         f"{num_labels - 1}, one name each")
    return [id2label[i] for i in range(num_labels)]


def _task_from_hf_config(hf_config: dict, kind: str | None, config: ModelConfig,
                         name: str) -> dict:
    if kind in (SPANS, CHOICES):
        task = {"name": name, "kind": kind, **IMPORT_DEFAULTS[kind]}
    elif kind == TOKENS:
        labels = _label_names(hf_config, _num_labels(hf_config))
        for label in labels:
            try:
                conlleval.split_tag(label)
            except ValueError as e:
                raise ValueError(f"{name}: id2label names {label!r}; entities are read from "
                                 f"IOB tags ({e})") from e
        task = {"name": name, "kind": TOKENS, "labels": labels, **IMPORT_DEFAULTS[TOKENS]}
    else:
        num_labels = _num_labels(hf_config)
        regression = hf_config.get("problem_type") == "regression" or num_labels == 1
        # pair None: the model does not say whether it takes pairs, so classify takes both.
        task = {"name": name, "labels": None if regression else _label_names(
                    hf_config, num_labels),
                "is_regression": regression, "pair": None, "metrics": []}
        if hf_config.get("problem_type") == "multi_label_classification":
            task["multi_label"] = True  # independent sigmoids
    length = task["max_seq_length"] if "max_seq_length" in task else None
    if length is not None and length > config.max_position_embeddings:
        task["max_seq_length"] = config.max_position_embeddings
        if kind == SPANS:  # the question and the stride keep their share of a shorter window
            scale = config.max_position_embeddings / length
            for key in ("max_query_length", "doc_stride"):
                task[key] = max(1, int(task[key] * scale))
    logging.info("%s: task settings not in its config.json, from this package's defaults: %s",
                 name, task)
    return task
