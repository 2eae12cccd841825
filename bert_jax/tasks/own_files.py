"""What the tasks on one's own data files share (text_classification.py, multiple_choice.py).

data.train_file, data.dev_file and data.test_file (table_files.py reads them). Without a dev
file, data.dev_fraction of the train rows (fixed by data.subset_seed) is held out as dev. A
test file is predicted with the best epoch; when it has the label column it is also scored
after every epoch as a dev split (its metrics suffixed _test; the best epoch is still picked
on dev).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from absl import logging

# read(path, split, with_labels) -> (rows, labelled); with_labels None: labelled when the file
# has the label column (a test file).
Reader = Callable[[str, str, "bool | None"], tuple[list, bool]]


def column_list(value: str, key: str, allowed: tuple[int, ...]) -> tuple[str, ...]:
    """A comma-separated config value as names; its count must be one of `allowed`."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if len(names) not in allowed:
        raise ValueError(f"data.{key}={value!r} names {len(names)} column(s); expected "
                         f"{' or '.join(map(str, allowed))}, comma-separated")
    return names


def hold_out(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, dev) of rows: a fixed random `fraction` (at least one row) held out, each part in
    the file's order."""
    count = max(1, int(round(fraction * len(rows))))
    if count >= len(rows):
        raise ValueError(f"data.dev_fraction={fraction} of {len(rows)} rows leaves none to train")
    held = set(np.random.default_rng(seed).choice(len(rows), count, replace=False).tolist())
    return ([r for i, r in enumerate(rows) if i not in held],
            [r for i, r in enumerate(rows) if i in held])


class OwnFilesSplits:
    """Mixin of a FinetuneTask whose splits are the files of its `data` section."""

    data: object
    _labelled_test: bool = False

    def check_files(self) -> None:
        data = self.data
        if not data.train_file and not data.dev_file:
            raise ValueError("data.train_file (and data.dev_file, or a data.dev_fraction of the "
                             "train file) must be set: the files to fine-tune on")
        if not data.dev_file and not 0 < data.dev_fraction < 1:
            raise ValueError(f"without data.dev_file, data.dev_fraction={data.dev_fraction} "
                             "must be in (0, 1): the share of train rows held out as dev")

    @property
    def dev_splits(self) -> list[str]:
        return ["dev", "test"] if self._labelled_test else ["dev"]

    @property
    def prediction_splits(self) -> list[str]:
        return ["test"] if self.data.test_file and not self._labelled_test else []

    def read_splits(self, read: Reader, with_train: bool) -> tuple[dict, list]:
        """(split -> rows, every row of the train file): train (unless not with_train), dev
        (its file, or rows held out of the train file) and test when there is a test file.
        The train file is read when training and when dev rows are held out of it."""
        data = self.data
        splits, train_file_rows = {}, []
        if with_train or not data.dev_file:
            if not data.train_file:
                raise ValueError("data.train_file is empty: it is required to train, and to "
                                 "hold out dev rows when data.dev_file is empty")
            train_file_rows = read(data.train_file, "train", True)[0]
            if data.dev_file:
                splits["train"] = train_file_rows
            else:
                splits["train"], splits["dev"] = hold_out(train_file_rows, data.dev_fraction,
                                                          data.subset_seed)
                logging.info("no data.dev_file: %d of %s's %d rows held out as dev",
                             len(splits["dev"]), data.train_file, len(train_file_rows))
            if not with_train:
                del splits["train"]
        if data.dev_file:
            splits["dev"] = read(data.dev_file, "dev", True)[0]
        if data.test_file:
            splits["test"], self._labelled_test = read(data.test_file, "test", None)
        return splits, train_file_rows
