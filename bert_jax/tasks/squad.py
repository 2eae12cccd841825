"""SQuAD v1.1 / v2.0: reader, windowed features, and predictions from start/end logits.

    examples, version = squad.read_squad("dev-v1.1.json.zip")
    features = squad.make_features(examples, tokenizer, training=False)
    # model: start_logits, end_logits [F, L] for features.batch(rows) ...
    predictions, null_score_diff, nbest = squad.postprocess(examples, features, start, end)
    squad_metrics.squad_v1_scores(examples, predictions)

Each example becomes one or more windows `[CLS] question [SEP] context-window [SEP]` (segment
ids 0 / 1) sliding over the context's pieces by `doc_stride`, as the original BERT does. Answers
are located through the tokenizer's character offsets, so a predicted span maps back to the
exact characters of the context (no whitespace-word alignment, no text reconstruction).

Answers whose text is not the context's text at answer_start are kept with start -1: the
official evaluation compares texts only, so they stay gold answers for scoring, but no training
target comes from them (a question left with no usable answer has no training feature). The
questions of an empty context are skipped. Both are counted and logged once per file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np
from absl import logging

from bert_jax.data import tokenization

_LOGGED_QIDS = 5  # qids named in a warning


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question about one context, with its gold answers (none: no-answer question)."""

    qid: str
    title: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, char start in context; -1 = does not match)
    is_impossible: bool


# ----------------------------------------------------------------------------------------------
# Readers.


def read_squad(path: str) -> tuple[list[SquadExample], str]:
    """(examples, version string) of an official SQuAD JSON file, plain or as a one-JSON zip.

    `path` may be local or on any tf.io.gfile file system (gs://...).
    """
    data = _read_bytes(path)
    if zipfile.is_zipfile(io.BytesIO(data)):
        data = _only_json_member(path, data)
    try:
        dataset = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a SQuAD JSON file ({e})") from None
    where = f"{path}:"
    collector = _Collector()
    for a, article in enumerate(_field(dataset, "data", list, where)):
        at = f"{where} data[{a}]"
        title = _field(article, "title", str, at)
        for p, paragraph in enumerate(_field(article, "paragraphs", list, at)):
            pat = f"{at}.paragraphs[{p}]"
            context = _field(paragraph, "context", str, pat)
            for q, qa in enumerate(_field(paragraph, "qas", list, pat)):
                qat = f"{pat}.qas[{q}]"
                answers = [
                    (_field(ans, "text", str, f"{qat}.answers[{i}]"),
                     _field(ans, "answer_start", int, f"{qat}.answers[{i}]"))
                    for i, ans in enumerate(_field(qa, "answers", list, qat))
                ]
                collector.add(_field(qa, "id", str, qat), title, _field(qa, "question", str, qat),
                              context, answers, qa.get("is_impossible", False) is True)
    version = dataset.get("version", "")
    return collector.finish(path), version if isinstance(version, str) else str(version)


def examples_from_tfds(records: Iterable[dict]) -> list[SquadExample]:
    """Examples of TFDS squad/v1.1 or squad/v2.0 records (numpy dicts, bytes strings)."""
    collector = _Collector()
    for record in records:
        answers = record["answers"]
        collector.add(
            _text(record["id"]), _text(record["title"]), _text(record["question"]),
            _text(record["context"]),
            list(zip(map(_text, answers["text"]), map(int, answers["answer_start"]))),
            bool(record.get("is_impossible", False)),
        )
    return collector.finish("TFDS squad records")


class _Collector:
    """Builds examples, checking answers against their context and counting what it drops."""

    def __init__(self):
        self.examples: list[SquadExample] = []
        self.mismatched: list[str] = []  # qid per answer that does not match its context
        self.empty_context = 0  # questions skipped

    def add(self, qid, title, question, context, answers, is_impossible):
        if not context.strip():
            self.empty_context += 1
            return
        checked = []
        for text, start in answers:
            if not (0 <= start and context[start:start + len(text)] == text):
                self.mismatched.append(qid)
                start = -1
            checked.append((text, start))
        self.examples.append(
            SquadExample(qid, title, question, context, tuple(checked), is_impossible))

    def finish(self, source: str) -> list[SquadExample]:
        if self.mismatched:
            logging.warning(
                "%s: %d answers do not match their context at answer_start (kept for scoring, "
                "not for training), of questions %s", source, len(self.mismatched),
                ", ".join(list(dict.fromkeys(self.mismatched))[:_LOGGED_QIDS]))
        if self.empty_context:
            logging.warning("%s: skipped %d questions with an empty context", source,
                            self.empty_context)
        return self.examples


def _field(node, key: str, kind: type, where: str):
    """node[key], which must be a `kind`; a ValueError naming the path otherwise."""
    if not isinstance(node, dict):
        raise ValueError(f"{where} is a {type(node).__name__}, expected an object")
    if key not in node:
        raise ValueError(f"{where} has no key {key!r}")
    value = node[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}.{key} is a {type(value).__name__}, expected {kind.__name__}")
    return value


def _only_json_member(path: str, data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [n for n in archive.namelist()
                   if n.endswith(".json") and not n.startswith("__MACOSX/")]
        if len(members) != 1:
            raise ValueError(f"{path}: a SQuAD zip must hold one .json file; it holds {members}")
        return archive.read(members[0])


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def split_articles(
    examples: Sequence[SquadExample], heldout_fraction: float, seed: int
) -> tuple[list[SquadExample], list[SquadExample]]:
    """(train, heldout): a seeded random `heldout_fraction` of the article titles held out.

    No title is on both sides (at least one article on each when there are two or more); each
    side keeps the examples' order.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    titles = list(dict.fromkeys(e.title for e in examples))
    count = round(heldout_fraction * len(titles))
    if heldout_fraction > 0 and len(titles) > 1:
        count = min(max(count, 1), len(titles) - 1)
    order = np.random.default_rng(seed).permutation(len(titles))
    heldout = {titles[i] for i in order[:count]}
    return ([e for e in examples if e.title not in heldout],
            [e for e in examples if e.title in heldout])


# ----------------------------------------------------------------------------------------------
# Features.


@dataclasses.dataclass
class SquadFeatures:
    """One row per window, padded to L = max_seq_length."""

    input_ids: np.ndarray  # [F, L] int32, padded with the tokenizer's pad id
    token_type_ids: np.ndarray  # [F, L] int32: 0 [CLS] question [SEP], 1 context [SEP]
    lengths: np.ndarray  # [F] int32 real tokens
    start_positions: np.ndarray  # [F] int32 answer start in the row; 0 ([CLS]) = none here
    end_positions: np.ndarray  # [F] int32 answer end (inclusive); 0 = none here
    example_index: np.ndarray  # [F] int32 index into the examples
    token_char_spans: np.ndarray  # [F, L, 2] int32 context char span of a context token, else -1
    token_is_max_context: np.ndarray  # [F, L] bool: this row is the token's max-context window

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def context_mask(self) -> np.ndarray:
        """[F, L] bool: the context tokens (the only ones an answer may cover)."""
        return self.token_char_spans[..., 0] >= 0

    def batch(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """The model inputs and targets of some rows (the batch contract's keys)."""
        rows = np.asarray(rows, np.int64)
        length = self.input_ids.shape[1]
        return {
            "input_ids": self.input_ids[rows],
            "token_type_ids": self.token_type_ids[rows],
            "attention_mask": (np.arange(length)[None, :] < self.lengths[rows, None]).astype(
                np.int32),
            "start_positions": self.start_positions[rows],
            "end_positions": self.end_positions[rows],
        }


@dataclasses.dataclass(frozen=True)
class _Window:
    example: int
    start: int  # first context piece
    length: int  # context pieces
    target: tuple[int, int]  # answer's first and last context piece; (-1, -1) = none


def make_features(
    examples: Sequence[SquadExample],
    tokenizer: tokenization.Tokenizer,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    training: bool,
) -> SquadFeatures:
    """Windows of every example; in training, only of examples with a usable target.

    The target is the first answer that matches its context (a v1.1 training question has
    one), else [CLS] for an impossible question. Answer boundaries that fall inside a piece
    widen the target to whole pieces; such answers are counted and logged.
    """
    if max_seq_length - max_query_length - 3 < 1:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for the context after "
                         f"a question of max_query_length={max_query_length} and 3 specials")
    if doc_stride < 1:
        raise ValueError(f"doc_stride must be positive, got {doc_stride}")
    contexts = list(dict.fromkeys(e.context for e in examples))
    encoded = dict(zip(contexts, tokenizer.encode_batch_with_offsets(contexts)))
    encoded = {c: (np.asarray(ids, np.int32), np.asarray(spans, np.int32).reshape(-1, 2))
               for c, (ids, spans) in encoded.items()}
    questions = tokenizer.encode_batch([e.question for e in examples])
    windows, stats = [], {"unaligned": 0, "no_target": 0, "no_pieces": 0}
    for index, example in enumerate(examples):
        ids, spans = encoded[example.context]
        target = _target(example, spans, stats)
        if not len(ids):
            stats["no_pieces"] += 1
        elif training and target is None:
            stats["no_target"] += 1
        else:
            budget = max_seq_length - min(len(questions[index]), max_query_length) - 3
            windows += [_Window(index, start, length, target or (-1, -1))
                        for start, length in _window_spans(len(ids), budget, doc_stride)]
    _log_stats(stats, len(examples), training)
    return _assemble(windows, examples, encoded, questions, tokenizer, max_seq_length,
                     max_query_length)


def _target(example: SquadExample, spans: np.ndarray, stats: dict) -> tuple[int, int] | None:
    """The training target in context pieces: (-1, -1) impossible, None when there is none."""
    if example.is_impossible:
        return -1, -1
    for text, start in example.answers:
        if start < 0:
            continue
        aligned = align_answer(spans, text, start)
        if aligned is None or not aligned[2]:
            stats["unaligned"] += 1
        if aligned is not None:
            return aligned[0], aligned[1]
    return None


def align_answer(spans: np.ndarray, text: str, start: int) -> tuple[int, int, bool] | None:
    """(first piece, last piece, exact) of an answer (its text without surrounding whitespace)
    among pieces with character spans `spans` [N, 2]; exact when the pieces' characters are
    the answer's; None when no piece holds any of its characters."""
    stripped = text.strip()
    begin = start + len(text) - len(text.lstrip())
    end = begin + len(stripped)
    hit = np.flatnonzero((spans[:, 1] > spans[:, 0]) & (spans[:, 1] > begin) & (spans[:, 0] < end))
    if not stripped or not len(hit):
        return None
    first, last = int(hit[0]), int(hit[-1])
    return first, last, bool(spans[first, 0] == begin and spans[last, 1] == end)


def _window_spans(num_pieces: int, budget: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of the windows over num_pieces pieces, as the original BERT slides them:
    by `stride`, the last one ending at the last piece."""
    out, start = [], 0
    while True:
        length = min(num_pieces - start, budget)
        out.append((start, length))
        if start + length == num_pieces:
            return out
        start += min(length, stride)


def _max_context_window(windows: Sequence[_Window], num_pieces: int) -> np.ndarray:
    """[N] for each piece, which of an example's windows gives it the most context.

    The original's score: min(left, right context) + 0.01 * window length; the first wins ties.
    """
    piece = np.arange(num_pieces)[None, :]  # [1, N]
    start = np.array([w.start for w in windows])[:, None]  # [W, 1]
    length = np.array([w.length for w in windows])[:, None]  # [W, 1]
    inside = (piece >= start) & (piece < start + length)  # [W, N]
    score = np.minimum(piece - start, start + length - 1 - piece) + 0.01 * length
    return np.argmax(np.where(inside, score, -np.inf), axis=0)


def _assemble(windows, examples, encoded, questions, tokenizer, max_seq_length,
              max_query_length) -> SquadFeatures:
    n, length = len(windows), max_seq_length
    f = SquadFeatures(
        input_ids=np.full([n, length], tokenizer.pad_id, np.int32),
        token_type_ids=np.zeros([n, length], np.int32),
        lengths=np.zeros([n], np.int32),
        start_positions=np.zeros([n], np.int32),
        end_positions=np.zeros([n], np.int32),
        example_index=np.array([w.example for w in windows], np.int32).reshape(n),
        token_char_spans=np.full([n, length, 2], -1, np.int32),
        token_is_max_context=np.zeros([n, length], bool),
    )
    row = 0
    while row < n:
        index = windows[row].example
        ids, spans = encoded[examples[index].context]
        count = next((k for k in range(row, n) if windows[k].example != index), n) - row
        best = _max_context_window(windows[row:row + count], len(ids))
        head = [tokenizer.cls_id, *questions[index][:max_query_length], tokenizer.sep_id]
        for w, window in enumerate(windows[row:row + count]):
            r, a, b = row + w, window.start, window.start + window.length
            body = len(head) + window.length  # context ends here; the last [SEP] follows
            f.input_ids[r, :len(head)] = head
            f.input_ids[r, len(head):body] = ids[a:b]
            f.input_ids[r, body] = tokenizer.sep_id
            f.token_type_ids[r, len(head):body + 1] = 1
            f.lengths[r] = body + 1
            f.token_char_spans[r, len(head):body] = spans[a:b]
            f.token_is_max_context[r, len(head):body] = best[a:b] == w
            first, last = window.target
            if a <= first and last < b:
                f.start_positions[r] = len(head) + first - a
                f.end_positions[r] = len(head) + last - a
        row += count
    return f


def _log_stats(stats: dict, num_examples: int, training: bool) -> None:
    if stats["unaligned"]:
        logging.info("SQuAD features: %d of %d questions' answers do not start and end at piece "
                     "boundaries (targets widened to whole pieces)", stats["unaligned"],
                     num_examples)
    if stats["no_target"]:
        logging.warning("SQuAD features: %d questions without an answer that matches its "
                        "context have no training feature", stats["no_target"])
    if stats["no_pieces"]:
        logging.warning("SQuAD features: %d questions whose context has no tokens have no "
                        "feature%s", stats["no_pieces"],
                        "" if training else " (they are predicted \"\")")


# ----------------------------------------------------------------------------------------------
# Predictions.


def postprocess(
    examples: Sequence[SquadExample],
    features: SquadFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float], dict[str, list[dict]]]:
    """(predictions {qid: text}, null_score_diff {qid: float} (v2 only), nbest {qid: [...]}).

    start_logits, end_logits: [F, W] for the rows of `features` (W <= L covering every row's
    length). Candidates, as in the original BERT: in each window the n_best_size best starts
    (context tokens in their max-context window) and ends (context tokens), paired with
    end >= start and at most max_answer_length tokens, ranked by start + end logit; equal texts
    count once. (The original takes the top n over all positions, then drops the disallowed
    ones; taking them among the allowed ones only can find more spans, never fewer.) For v2
    the null answer scores the smallest [CLS] start + end logit over the
    windows, null_score_diff is it minus the best span's score, and the prediction is "" when
    that exceeds `null_score_diff_threshold`.
    """
    start_logits = np.asarray(start_logits, np.float32)
    end_logits = np.asarray(end_logits, np.float32)
    width = start_logits.shape[1] if start_logits.ndim == 2 else -1
    if (start_logits.shape != end_logits.shape or start_logits.shape[0] != len(features)
            or width < int(features.lengths.max(initial=0)) or width > features.input_ids.shape[1]):
        raise ValueError(f"logits of shapes {start_logits.shape} and {end_logits.shape} do not "
                         f"cover the {len(features)} feature rows of up to "
                         f"{int(features.lengths.max(initial=0))} tokens")
    rows_of = [[] for _ in examples]
    for row, index in enumerate(features.example_index.tolist()):
        rows_of[index].append(row)
    predictions, null_score_diff, nbest = {}, {}, {}
    for example, rows in zip(examples, rows_of):
        null = None
        if version_2_with_negative and rows:
            null = min(rows, key=lambda r: start_logits[r, 0] + end_logits[r, 0])
        candidates, best = _ranked_answers(example.context, features, rows, null, start_logits,
                                           end_logits, n_best_size, max_answer_length)
        nbest[example.qid] = _nbest(candidates)
        predictions[example.qid] = best[3] if best else ""
        if null is not None:
            diff = float(start_logits[null, 0] + end_logits[null, 0]) - (
                best[0] if best else -np.inf)
            null_score_diff[example.qid] = diff
            if diff > null_score_diff_threshold:
                predictions[example.qid] = ""
    return predictions, null_score_diff, nbest


def _ranked_answers(context, features, rows, null, start_logits, end_logits, n_best_size,
                    max_answer_length):
    """(the best distinct answers, best first, the best non-null one) of one example.

    Each answer is (score, start logit, end logit, text); the null answer (from row `null`, if
    any) is "". Texts are made only for the candidates the ranking reaches.
    """
    found = [_window_spans_scored(features, row, start_logits[row], end_logits[row],
                                  n_best_size, max_answer_length) for row in rows]
    if null is not None:
        found.append((np.array([start_logits[null, 0] + end_logits[null, 0]]),
                      np.array([-1]), np.zeros([1], np.int64), np.zeros([1], np.int64)))
    if not found:
        return [], None
    score, row, start, end = (np.concatenate(parts) for parts in zip(*found))  # each [K]
    chosen, seen, best = [], set(), None
    for k in np.argsort(-score, kind="stable").tolist():  # ties keep window and index order
        r, i, j = int(row[k]), int(start[k]), int(end[k])
        if r < 0:  # the null answer
            answer = (float(score[k]), float(start_logits[null, 0]), float(end_logits[null, 0]), "")
        else:
            spans = features.token_char_spans[r]
            text = span_text(context, spans[i, 0], spans[j, 1])
            if not text:  # pieces without characters of their own (SentencePiece)
                continue
            answer = (float(score[k]), float(start_logits[r, i]), float(end_logits[r, j]), text)
            best = best or answer
        if answer[3] not in seen and len(chosen) < n_best_size:
            seen.add(answer[3])
            chosen.append(answer)
        if best and len(chosen) >= n_best_size:
            break
    if null is not None and "" not in seen:  # the original adds the null answer after n-best
        chosen.append((float(start_logits[null, 0] + end_logits[null, 0]),
                       float(start_logits[null, 0]), float(end_logits[null, 0]), ""))
    return chosen, best


def span_text(context: str, begin: int, end: int) -> str:
    """context[begin:end], its end moved past combining characters (a decomposed accent, as in
    "cafe\u0301"): the tokenizers' normalisation drops them, so a piece's offsets end before
    them, while the original BERT answers with whole whitespace-separated words, marks and all
    (and the gold answers keep them)."""
    while end < len(context) and unicodedata.combining(context[end]):
        end += 1
    return context[begin:end]


def _window_spans_scored(features, row, start_logits, end_logits, n_best_size,
                         max_answer_length):
    """(score, row, start, end) arrays of one window's spans: best starts x best ends."""
    width = len(start_logits)
    context_tokens = features.token_char_spans[row, :width, 0] >= 0  # [W]
    starts = _top(start_logits, context_tokens & features.token_is_max_context[row, :width],
                  n_best_size)
    ends = _top(end_logits, context_tokens, n_best_size)
    s, e = np.meshgrid(starts, ends, indexing="ij")  # [n, n] start-major, as the original loops
    keep = (e >= s) & (e - s + 1 <= max_answer_length)
    s, e = s[keep], e[keep]
    return start_logits[s] + end_logits[e], np.full(len(s), row), s, e


def _top(logits: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest allowed logits, largest first (ties: the lower index)."""
    indices = np.flatnonzero(allowed)
    return indices[np.argsort(-logits[indices], kind="stable")[:n]]


def _nbest(answers) -> list[dict]:
    """The n-best entries with softmax probabilities; one empty answer when there is none."""
    answers = answers or [(0.0, 0.0, 0.0, "")]
    scores = np.array([a[0] for a in answers], np.float64)
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    return [{"text": text, "probability": float(p), "start_logit": start, "end_logit": end}
            for (_, start, end, text), p in zip(answers, probabilities)]


def write_predictions(path: str, predictions: dict[str, str]) -> None:
    """{qid: answer text} as the official evaluation scripts read it; local or gs://."""
    parent = os.path.dirname(path)
    if parent and "://" in path:
        _gfile().makedirs(parent)
    elif parent:
        os.makedirs(parent, exist_ok=True)
    with _open(path, "wb") as f:
        f.write(json.dumps(predictions, indent=2, ensure_ascii=False).encode("utf-8"))


def _read_bytes(path: str) -> bytes:
    exists = _gfile().exists(path) if "://" in path else os.path.isfile(path)
    if not exists:
        raise FileNotFoundError(f"SQuAD file not found: {path}")
    with _open(path, "rb") as f:
        return f.read()


def _open(path: str, mode: str):
    return _gfile().GFile(path, mode) if "://" in path else open(path, mode)


def _gfile():
    """tf.io.gfile, imported only for remote paths: TensorFlow's import costs seconds."""
    import tensorflow as tf

    return tf.io.gfile
