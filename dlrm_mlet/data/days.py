"""DLRM's days: how many, their sizes, where their counts are, and the rows of each split.

DLRM cuts a Criteo file into days (Kaggle 7, Terabyte 24) and trains on all
but the last, which it halves into its test split and a validation split it
never reads. Every reader and writer here takes that rule from this module.
"""

import glob
import os
import zipfile
from typing import List, Sequence, Tuple

import numpy as np

from ..files import StrPath

KAGGLE_DAYS = 7
DAYS = {"kaggle": KAGGLE_DAYS, "terabyte": 24}


def day_sizes(total: int, days: int = KAGGLE_DAYS) -> List[int]:
    """DLRM's split of ``total`` rows into ``days`` near-equal parts."""
    size, extra = divmod(total, days)
    return [size + (j < extra) for j in range(days)]


def day_count_path(data_set: str, raw_data_file: StrPath) -> str:
    """Where DLRM's ``CriteoDataset`` reads the days' sizes: beside ``--raw-data-file``, named after it."""
    folder, name = os.path.split(os.path.abspath(raw_data_file))
    return os.path.join(folder, (name.split(".")[0] if data_set == "kaggle" else name) + "_day_count.npz")


def kaggle_days(path: StrPath, total: int) -> Tuple[List[int], str]:
    """``(rows per day, where they came from)`` of a processed .npz of ``total`` rows.

    The days' sizes are in DLRM's ``<stem>_day_count.npz``, named after the
    raw file, not this one: a sibling whose days add up to ``total`` is taken;
    without one, DLRM's split of the rows into 7 near-equal days.
    """
    found = set()
    for other in glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), "*_day_count.npz")):
        try:
            with np.load(other) as data:
                days = tuple(int(v) for v in data["total_per_file"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
        if sum(days) == total:
            found.add((days, os.path.basename(other)))
    if len({days for days, _ in found}) == 1:
        days, name = min(found)
        return list(days), f"days from {name}"
    return day_sizes(total), f"{KAGGLE_DAYS} near-equal days, as DLRM splits them"


def split_rows(day_sizes: Sequence[int], split: str, randomize: str) -> np.ndarray:
    """The rows of ``split`` in DLRM's order, drawing from numpy's global RNG exactly as DLRM does.

    DLRM's ``CriteoDataset`` (not memory-mapped) shuffles each training day
    (``randomize="day"``) or the whole training split (``"total"``) whichever
    split it builds, and halves the last day into test and validation.
    """
    offsets = np.cumsum(day_sizes)
    days = np.array_split(np.arange(offsets[-1]), offsets[:-1])
    if randomize == "day":
        for i in range(len(days) - 1):
            days[i] = np.random.permutation(days[i])
    train = np.concatenate(days[:-1])
    test, val = np.array_split(days[-1], 2)
    if randomize == "total":
        train = np.random.permutation(train)
    return {"train": train, "test": test, "val": val}[split]
