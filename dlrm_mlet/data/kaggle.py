"""Criteo-Kaggle preprocessing that works on numpy 2: the two files DLRM's ``CriteoDataset`` reads.

``preprocess_kaggle`` reads ``train.txt`` once (``criteo_text.py`` parses each
line) and writes what DLRM's own preprocessing would under numpy 1: each
value keyed by its hash wrapped to int32 (or reduced modulo
``--max-ind-range``), numbered in order of first appearance, missing values as
0, negative dense values as 0, rows split into 7 "days" of near-equal size.
Any malformed line stops it with the file, line number and reason, and
nothing is renamed into place until everything is written, so a crash never
leaves a file a later run would take for finished.
"""

import os
from typing import Dict, List, Tuple

import numpy as np

from ..errors import MLETError
from ..files import StrPath, atomic_write
from ..progress import progress_bar
from .criteo_text import parse_criteo_line
from .days import day_sizes
from .text import count_lines, numbered_lines, open_text

KAGGLE_PROCESSED = "kaggleAdDisplayChallenge_processed.npz"


def kaggle_paths(raw_path: StrPath, processed_path: str = "") -> Tuple[str, str]:
    """Where DLRM looks: ``DIR/<stem>_day_count.npz`` and the processed file."""
    directory = os.path.dirname(os.path.abspath(raw_path))
    stem = os.path.basename(raw_path).split(".")[0]
    day_count = os.path.join(directory, f"{stem}_day_count.npz")
    return day_count, processed_path or os.path.join(directory, KAGGLE_PROCESSED)


def preprocess_kaggle(raw_path: StrPath, processed_path: str = "", max_ind_range: int = -1,
                      sub_sample_rate: float = 0.0, quiet: bool = False) -> Tuple[str, str]:
    """Write DLRM's processed Kaggle files from a raw ``train.txt``; returns their paths.

    ``sub_sample_rate`` drops negatives exactly as DLRM does: one uniform draw
    from numpy's global RNG per row of each day, days in order.
    """
    day_count_path, processed_path = kaggle_paths(raw_path, processed_path)
    total = count_lines(raw_path) if os.path.isfile(raw_path) else 0
    sizes = day_sizes(total)
    y = np.zeros(total, dtype=np.int32)
    x_int = np.zeros((total, 13), dtype=np.int32)
    x_cat = np.zeros((total, 26), dtype=np.int32)
    tables: List[Dict[int, int]] = [{} for _ in range(26)]
    kept_per_day, rows = [], 0
    with open_text(raw_path) as handle, progress_bar(total, "preprocess Criteo", quiet) as bar:
        lines = numbered_lines(handle, raw_path)
        for size in sizes:
            draws = np.random.uniform(low=0.0, high=1.0, size=size) if sub_sample_rate > 0 else None
            kept = 0
            for k in range(size):
                number, line = next(lines)
                try:
                    label, dense, keys = parse_criteo_line(line, max_ind_range)
                except ValueError as error:
                    raise MLETError(f"{raw_path}:{number}: {error}; nothing was written") from None
                bar.update()
                if draws is not None and label == 0 and draws[k] < sub_sample_rate:
                    continue
                y[rows] = label
                x_int[rows] = dense
                x_cat[rows] = [table.setdefault(key, len(table)) for table, key in zip(tables, keys)]
                kept += 1
                rows += 1
            kept_per_day.append(kept)
    if rows == 0:
        raise MLETError(f"{raw_path}: no rows")
    np.maximum(x_int, 0, out=x_int)  # DLRM clamps negative dense values to 0
    counts = np.array([len(t) for t in tables], dtype=np.int32)
    # day_count first: DLRM treats the processed file as the sign that all is done.
    _save_npz(day_count_path, total_per_file=np.array(kept_per_day))
    _save_npz(processed_path, X_cat=x_cat[:rows], X_int=x_int[:rows], y=y[:rows], counts=counts)
    return day_count_path, processed_path


def _save_npz(path, **arrays):
    """``np.savez_compressed`` to exactly ``path``, atomically.

    Through an open file: given a name, numpy would append ``.npz`` to one
    that lacks it, and DLRM's ``--processed-data-file`` may be any name.
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)
