"""Avazu for patched DLRM: a streamed cache of memory-mapped arrays and a dataset DLRM's loop takes.

``preprocess_avazu`` streams the raw Kaggle CSV into a cache folder of
``.npy`` files (memory-mapped on use, so training memory does not grow with
the row count): 21 categorical columns re-indexed per column in order of first
appearance, one dense feature ``hour_of_day`` (DLRM's collate function feeds it
as ``log(x + 1)``), and the MLET authors' random 80/10/10 split with seed 123.
"""

import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import MLETError
from ..files import StagedFiles, StrPath
from ..progress import progress_bar
from .text import count_lines, numbered_lines, open_text

AVAZU_COLUMNS = (
    "id click hour C1 banner_pos site_id site_domain site_category app_id app_domain "
    "app_category device_id device_ip device_model device_type device_conn_type "
    "C14 C15 C16 C17 C18 C19 C20 C21"
).split()
AVAZU_CATEGORICAL = AVAZU_COLUMNS[3:]
AVAZU_SPLIT_SEED = 123
_HOUR = re.compile(r"\d{6}(?:[01]\d|2[0-3])")


def avazu_row_error(fields: Sequence[str], columns: Sequence[str]) -> Optional[str]:
    if len(fields) != len(columns):
        return f"expected {len(columns)} comma-separated fields, found {len(fields)}"
    row = dict(zip(columns, fields))
    if row["click"] not in ("0", "1"):
        return f"click must be 0 or 1, got {row['click']!r}"
    if not _HOUR.fullmatch(row["hour"]):
        return f"hour must be YYMMDDHH, got {row['hour']!r}"
    return None


def _avazu_columns(first_line, path):
    """Column order from the header, or the raw Kaggle order when there is none."""
    fields = first_line.split(",")
    if fields and fields[0] == "id" and "click" in fields:
        missing = [c for c in AVAZU_COLUMNS if c not in fields]
        if missing:
            raise MLETError(f"{path}:1: header lacks Avazu columns {', '.join(missing)}")
        return fields, True
    return list(AVAZU_COLUMNS), False


def avazu_split(total: int, seed: int = AVAZU_SPLIT_SEED) -> Dict[str, np.ndarray]:
    """Train, val and test row indices exactly as the MLET authors drew them.

    Their loader seeded numpy's global RNG with 123, permuted all rows, kept the
    first four fifths for training (permuted again) and split the last fifth
    in half, validation first (each half permuted).
    """
    rng = np.random.RandomState(seed)
    parts = np.array_split(rng.permutation(total), 5)
    train = rng.permutation(np.concatenate(parts[:-1]))
    val, test = np.array_split(parts[-1], 2)
    test = rng.permutation(test)
    val = rng.permutation(val)
    return {"train": train, "val": val, "test": test}


def preprocess_avazu(csv_path: StrPath, cache_dir: StrPath, quiet: bool = False) -> StrPath:
    """Stream an Avazu CSV into ``cache_dir`` (renamed into place, whole, when complete)."""
    total = count_lines(csv_path) if os.path.isfile(csv_path) else 0
    parent, name = os.path.split(os.path.abspath(cache_dir))
    with StagedFiles(parent, name, f"cannot write {cache_dir}") as stage:
        work = stage.path(name)
        os.mkdir(work)
        with open_text(csv_path) as handle:
            numbered = numbered_lines(handle, csv_path)
            first = next(numbered, (1, ""))[1]
            columns, has_header = _avazu_columns(first, csv_path)
            rows_max = total - has_header
            x_cat = np.lib.format.open_memmap(os.path.join(work, "X_cat.npy"), "w+", np.int32, (rows_max, 21))
            x_int = np.lib.format.open_memmap(os.path.join(work, "X_int.npy"), "w+", np.int32, (rows_max, 1))
            y = np.lib.format.open_memmap(os.path.join(work, "y.npy"), "w+", np.int8, (rows_max,))
            where = [columns.index(c) for c in AVAZU_CATEGORICAL]
            click, hour = columns.index("click"), columns.index("hour")
            tables: List[Dict[str, int]] = [{} for _ in AVAZU_CATEGORICAL]
            lines = numbered if has_header else _chain_first(first, numbered)
            rows = 0
            with progress_bar(rows_max, "preprocess Avazu", quiet) as bar:
                for number, line in lines:
                    fields = line.split(",")
                    if len(fields) != len(columns) or fields[click] not in ("0", "1") or \
                            not _HOUR.fullmatch(fields[hour]):
                        reason = avazu_row_error(fields, columns)
                        raise MLETError(f"{csv_path}:{number}: {reason}; nothing was written")
                    y[rows] = fields[click] == "1"
                    x_int[rows, 0] = int(fields[hour][-2:])
                    x_cat[rows] = [t.setdefault(fields[j], len(t)) for t, j in zip(tables, where)]
                    rows += 1
                    bar.update()
            if rows == 0:
                raise MLETError(f"{csv_path}: no rows")
            for array in (x_cat, x_int, y):
                array.flush()
            del x_cat, x_int, y
        _write_split(work, rows, [len(t) for t in tables], os.path.abspath(csv_path))
        stage.publish([(work, cache_dir)])  # an older cache there is replaced whole
    return cache_dir


def subsample_avazu(cache_dir: StrPath, rows: np.ndarray, target: StrPath) -> StrPath:
    """A cache in ``target`` of ``rows`` (sorted indices) of the cache in ``cache_dir``, as if
    ``preprocess_avazu`` had read only those lines: values renumbered per column in order of first
    appearance, and the authors' split drawn for that many rows."""
    load = lambda name: np.load(os.path.join(cache_dir, name), mmap_mode="r")  # noqa: E731
    x_cat = np.asarray(load("X_cat.npy")[rows])
    counts = []
    for f in range(x_cat.shape[1]):
        _, first, inverse = np.unique(x_cat[:, f], return_index=True, return_inverse=True)
        order = np.empty(len(first), dtype=np.int32)
        order[np.argsort(first)] = np.arange(len(first), dtype=np.int32)
        x_cat[:, f] = order[inverse.ravel()]
        counts.append(len(first))
    parent, name = os.path.split(os.path.abspath(target))
    with StagedFiles(parent, name, f"cannot write {target}") as stage:
        work = stage.path(name)
        os.mkdir(work)
        np.save(os.path.join(work, "X_cat.npy"), x_cat)
        for member in ("X_int", "y"):
            np.save(os.path.join(work, f"{member}.npy"), np.asarray(load(f"{member}.npy")[rows]))
        _write_split(work, len(rows), counts, f"rows of {os.path.abspath(cache_dir)}")
        stage.publish([(work, target)])
    return target


def _write_split(folder, rows, counts, source):
    """The split's row indices and ``meta.json``, which marks the cache complete."""
    for name, indices in avazu_split(rows).items():
        np.save(os.path.join(folder, f"{name}_idx.npy"), indices.astype(np.int64))
    with open(os.path.join(folder, "meta.json"), "w") as handle:
        json.dump({"rows": rows, "counts": counts, "columns": AVAZU_CATEGORICAL, "source": source,
                   "split_seed": AVAZU_SPLIT_SEED}, handle)


def _chain_first(first, numbered):
    yield 1, first
    yield from numbered


class AvazuDataset:
    """One split of a preprocessed Avazu cache, item by item like DLRM's CriteoDataset.

    Items are ``(X_int, X_cat, y)`` rows, so DLRM's own collate function and
    training loop take them unchanged.
    """

    def __init__(self, cache_dir: StrPath, split: str, max_ind_range: int = -1) -> None:
        with open(os.path.join(cache_dir, "meta.json")) as handle:
            meta = json.load(handle)
        self.counts = np.array(meta["counts"], dtype=np.int64)
        self.m_den = 1
        self.n_emb = len(self.counts)
        self.cache_dir, self.max_ind_range = cache_dir, max_ind_range
        load = lambda name: np.load(os.path.join(cache_dir, name), mmap_mode="r")  # noqa: E731
        self.x_cat, self.x_int, self.y = load("X_cat.npy"), load("X_int.npy"), load("y.npy")
        self.rows = load(f"{split}_idx.npy")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray, int]:
        i = self.rows[index]
        x_cat = self.x_cat[i]
        if self.max_ind_range > 0:
            x_cat = x_cat % self.max_ind_range
        return np.asarray(self.x_int[i]), np.asarray(x_cat), int(self.y[i])
