"""Rows of a data file with named columns: CSV, TSV or JSON lines, local or gs://.

    rows = table_files.read_rows("gs://bucket/reviews/train.csv")   # [(where, {column: value})]

`where` is "FILE:LINE" (a JSON array's item: "FILE[ITEM]"), for error messages that point at
the row. The format comes from the file name (.csv; .tsv; .jsonl, .ndjson, .json) unless
given:
- CSV: the first row names the columns; RFC 4180 quoting, so a quoted field may hold commas,
  quotes ("") and line breaks.
- TSV: the first row names the columns; no quoting (the GLUE convention): quotes are text,
  and a field cannot hold a tab or a line break.
- JSON lines: one object per line; .json may also be one array of objects. Values keep their
  JSON types (labels may be strings, numbers or booleans).
A UTF-8 byte-order mark is dropped; blank lines are skipped.
"""

from __future__ import annotations

import csv
import io
import json
import os

import tensorflow as tf

FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".json": "jsonl"}


def file_format(path: str, fmt: str = "auto") -> str:
    """`fmt`, or with fmt='auto' the format its extension names."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"data.format={fmt!r}; expected auto or one of {FORMATS}")
        return fmt
    extension = os.path.splitext(path)[1].lower()
    if extension not in _EXTENSIONS:
        raise ValueError(f"{path}: cannot tell the format from the extension {extension!r} "
                         f"(known: {sorted(_EXTENSIONS)}); set data.format to one of {FORMATS}")
    return _EXTENSIONS[extension]


def read_rows(path: str, fmt: str = "auto") -> list[tuple[str, dict]]:
    """[(where, {column: value})] of every non-blank row of the file."""
    fmt = file_format(path, fmt)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    if fmt == "jsonl":
        return _json_rows(path, text)
    return _delimited_rows(path, text, fmt)


def _delimited_rows(path: str, text: str, fmt: str) -> list[tuple[str, dict]]:
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header, rows, first_line = None, [], 1
    try:
        for fields in reader:
            # A quoted field may span lines: a record is named by the line it starts on.
            line, first_line = first_line, reader.line_num + 1
            if not any(field.strip() for field in fields):
                continue
            if header is None:
                header = [name.strip() for name in fields]
                repeated = sorted({name for name in header if header.count(name) > 1})
                if repeated:
                    raise ValueError(f"{path}:{line}: the header names column(s) "
                                     f"{repeated} more than once")
                continue
            where = f"{path}:{line}"
            if len(fields) != len(header):
                raise ValueError(f"{where}: {len(fields)} {fmt.upper()} fields, expected "
                                 f"{len(header)} (the header's {header})")
            rows.append((where, dict(zip(header, fields))))
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: malformed {fmt.upper()}: {e}") from None
    if header is None:
        raise ValueError(f"{path} is empty: expected a header row naming the columns")
    return rows


def _json_rows(path: str, text: str) -> list[tuple[str, dict]]:
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        rows = [(f"{path}[{i}]", item) for i, item in enumerate(items)]
    else:
        rows = []
        # Records end at "\n" only: str.splitlines would also split at U+2028, U+2029 and
        # U+0085, which json.dumps(ensure_ascii=False) writes raw inside strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object: {e}") from None
    for where, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with named fields, got "
                             f"{type(row).__name__}")
    return rows
