"""Datasets for patched DLRM: Criteo-Kaggle preprocessing that works on numpy 2, and Avazu.

Criteo-Kaggle. Upstream DLRM parses each categorical hash with
``np.array([int(x, 16) ...], dtype=np.int32)``: on numpy 1 hashes above 2^31
silently wrap, on numpy 2 they raise ``OverflowError`` (upstream issue #394).
``preprocess_kaggle`` reads ``train.txt`` once and writes the two files DLRM's
``CriteoDataset`` reads, with the same tables numpy 1 gives: each value keyed by
its hash wrapped to int32 (or reduced modulo ``--max-ind-range``), numbered in
order of first appearance, missing values as 0, negative dense values as 0,
rows split into 7 "days" of near-equal size. Any malformed line stops it with
the file, line number and reason, and nothing is renamed into place until
everything is written, so a crash never leaves a file a later run would take
for finished.

Avazu. ``preprocess_avazu`` streams the raw Kaggle CSV into a cache folder of
``.npy`` files (memory-mapped on use, so training memory does not grow with
the row count): 21 categorical columns re-indexed per column in order of first
appearance, one dense feature ``hour_of_day`` (DLRM's collate function feeds it
as ``log(x + 1)``), and the MLET authors' random 80/10/10 split with seed 123.
"""

import json
import os
import re

import numpy as np

from ..errors import MLETError
from ..files import StagedFiles, atomic_write
from ..progress import progress_bar

KAGGLE_DAYS = 7
KAGGLE_PROCESSED = "kaggleAdDisplayChallenge_processed.npz"
CRITEO_FIELDS = 40
INT32_MAX = 2**31 - 1

AVAZU_COLUMNS = (
    "id click hour C1 banner_pos site_id site_domain site_category app_id app_domain "
    "app_category device_id device_ip device_model device_type device_conn_type "
    "C14 C15 C16 C17 C18 C19 C20 C21"
).split()
AVAZU_CATEGORICAL = AVAZU_COLUMNS[3:]
AVAZU_SPLIT_SEED = 123

_CRITEO_ROW = re.compile(
    r"[01]\t" + r"(?:-?\d{1,10})?\t" * 13 + r"(?:[0-9a-fA-F]{1,8})?\t" * 25 + r"(?:[0-9a-fA-F]{1,8})?"
)
_DENSE = re.compile(r"-?\d{1,10}")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")
_HOUR = re.compile(r"\d{6}(?:[01]\d|2[0-3])")


def count_lines(path):
    """Lines in a file, counted in 16 MiB blocks (fast, constant memory)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(16 * 2**20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _open_text(path):
    if not os.path.isfile(path):
        raise MLETError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise MLETError(f"{path}: the file is empty")
    return open(path, "rb")


def _lines(handle, path):
    """Numbered lines without their line ending; non-UTF-8 bytes are named by line.

    Decoded line by line (not by a text stream's blocks) so the error points at
    the right line.
    """
    for number, raw in enumerate(handle, 1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise MLETError(f"{path}:{number}: not UTF-8 text ({error.reason})") from None


def criteo_row_error(fields):
    """Why a split Criteo line is malformed (the slow path, for the message only)."""
    if len(fields) != CRITEO_FIELDS:
        return f"expected {CRITEO_FIELDS} tab-separated fields, found {len(fields)}"
    if fields[0] not in ("0", "1"):
        return f"label must be 0 or 1, got {fields[0]!r}"
    for j, value in enumerate(fields[1:14], 1):
        if value and not _DENSE.fullmatch(value):
            return f"dense feature I{j} is not an integer: {value!r}"
        if value and not -INT32_MAX - 1 <= int(value) <= INT32_MAX:
            return f"dense feature I{j} is out of the int32 range: {value!r}"
    for j, value in enumerate(fields[14:], 1):
        if value and not _HEX.fullmatch(value):
            return f"categorical feature C{j} is not 1-8 hex digits: {value!r}"
    return None


def parse_criteo_line(line, max_ind_range=-1):
    """``(label, dense[13], keys[26])`` of one raw line, keyed as numpy 1 DLRM keys them.

    Raises ValueError with the reason when the line is malformed.
    """
    fields = line.split("\t")
    if not _CRITEO_ROW.fullmatch(line):
        raise ValueError(criteo_row_error(fields) or "malformed line")
    dense = [int(v) if v else 0 for v in fields[1:14]]
    if max(dense) > INT32_MAX or min(dense) < -INT32_MAX - 1:
        raise ValueError(criteo_row_error(fields))
    keys = []
    for value in fields[14:]:
        key = int(value, 16) if value else 0
        if max_ind_range > 0:
            key %= max_ind_range
        elif key > INT32_MAX:
            key -= 2**32  # numpy 1's int32 wrap-around
        keys.append(key)
    return int(fields[0]), dense, keys


_DIGIT = np.zeros(256, np.int64)  # a character's digit value ('-' and padding count as 0)
_DIGIT[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_DIGIT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_BASE = np.array([10] * 14 + [16] * 26, np.int64)  # label and dense decimal, keys hex


def parse_criteo_block(lines, max_ind_range=-1):
    """``parse_criteo_line`` for many lines at once: ``(rows, bad)``.

    ``rows`` is an ``(n, 40)`` int64 array (label, dense, keys; keys as
    ``parse_criteo_line`` gives them), ``bad`` the index of the first malformed
    line or None (``parse_criteo_line(lines[bad])`` then names the reason).
    Same regular expression and rules; the numbers are read by numpy for the
    whole block, digit column by digit column, several times faster than
    Python's int() per field.
    """
    for index, line in enumerate(lines):
        if not _CRITEO_ROW.fullmatch(line):
            return None, index
    n = len(lines)
    if n == 0:
        return np.zeros((0, CRITEO_FIELDS), np.int64), None
    # Validated ASCII fields of at most 11 characters, zero-padded on the right ("" is all padding: 0).
    chars = np.array("\t".join(lines).split("\t"), dtype="S11").view(np.uint8).reshape(n, CRITEO_FIELDS, 11)
    rows = np.zeros((n, CRITEO_FIELDS), np.int64)
    for column in range(11):
        char = chars[..., column]
        rows = np.where(char != 0, rows * _BASE + _DIGIT[char], rows)
    rows[chars[..., 0] == ord("-")] *= -1
    dense, keys = rows[:, 1:14], rows[:, 14:]
    out_of_range = np.flatnonzero(((dense > INT32_MAX) | (dense < -INT32_MAX - 1)).any(axis=1))
    if len(out_of_range):
        return None, int(out_of_range[0])
    if max_ind_range > 0:
        keys %= max_ind_range
    else:
        keys[keys > INT32_MAX] -= 2**32  # numpy 1's int32 wrap-around
    return rows, None


def kaggle_paths(raw_path, processed_path=""):
    """Where DLRM looks: ``DIR/<stem>_day_count.npz`` and the processed file."""
    directory = os.path.dirname(os.path.abspath(raw_path))
    stem = os.path.basename(raw_path).split(".")[0]
    day_count = os.path.join(directory, f"{stem}_day_count.npz")
    return day_count, processed_path or os.path.join(directory, KAGGLE_PROCESSED)


def day_sizes(total, days=KAGGLE_DAYS):
    """DLRM's split of ``total`` rows into ``days`` near-equal parts."""
    size, extra = divmod(total, days)
    return [size + (j < extra) for j in range(days)]


def preprocess_kaggle(raw_path, processed_path="", max_ind_range=-1, sub_sample_rate=0.0, quiet=False):
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
    tables = [{} for _ in range(26)]
    kept_per_day, rows = [], 0
    with _open_text(raw_path) as handle, progress_bar(total, "preprocess Criteo", quiet) as bar:
        lines = _lines(handle, raw_path)
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

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)


# --------------------------------------------------------------------------- Avazu


def avazu_row_error(fields, columns):
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


def avazu_split(total, seed=AVAZU_SPLIT_SEED):
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


def preprocess_avazu(csv_path, cache_dir, quiet=False):
    """Stream an Avazu CSV into ``cache_dir`` (renamed into place, whole, when complete)."""
    total = count_lines(csv_path) if os.path.isfile(csv_path) else 0
    parent, name = os.path.split(os.path.abspath(cache_dir))
    with StagedFiles(parent, name, f"cannot write {cache_dir}") as stage:
        work = stage.path(name)
        os.mkdir(work)
        with _open_text(csv_path) as handle:
            numbered = _lines(handle, csv_path)
            first = next(numbered, (1, ""))[1]
            columns, has_header = _avazu_columns(first, csv_path)
            rows_max = total - has_header
            x_cat = np.lib.format.open_memmap(os.path.join(work, "X_cat.npy"), "w+", np.int32, (rows_max, 21))
            x_int = np.lib.format.open_memmap(os.path.join(work, "X_int.npy"), "w+", np.int32, (rows_max, 1))
            y = np.lib.format.open_memmap(os.path.join(work, "y.npy"), "w+", np.int8, (rows_max,))
            where = [columns.index(c) for c in AVAZU_CATEGORICAL]
            click, hour = columns.index("click"), columns.index("hour")
            tables = [{} for _ in AVAZU_CATEGORICAL]
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
        for name, indices in avazu_split(rows).items():
            np.save(os.path.join(work, f"{name}_idx.npy"), indices.astype(np.int64))
        counts = [len(t) for t in tables]
        with open(os.path.join(work, "meta.json"), "w") as handle:
            json.dump({"rows": rows, "counts": counts, "columns": AVAZU_CATEGORICAL,
                       "source": os.path.abspath(csv_path), "split_seed": AVAZU_SPLIT_SEED}, handle)
        stage.publish([(work, cache_dir)])  # an older cache there is replaced whole
    return cache_dir


def _chain_first(first, numbered):
    yield 1, first
    yield from numbered


class AvazuDataset:
    """One split of a preprocessed Avazu cache, item by item like DLRM's CriteoDataset.

    Items are ``(X_int, X_cat, y)`` rows, so DLRM's own collate function and
    training loop take them unchanged.
    """

    def __init__(self, cache_dir, split, max_ind_range=-1):
        with open(os.path.join(cache_dir, "meta.json")) as handle:
            meta = json.load(handle)
        self.counts = np.array(meta["counts"], dtype=np.int64)
        self.m_den = 1
        self.n_emb = len(self.counts)
        self.cache_dir, self.max_ind_range = cache_dir, max_ind_range
        load = lambda name: np.load(os.path.join(cache_dir, name), mmap_mode="r")  # noqa: E731
        self.x_cat, self.x_int, self.y = load("X_cat.npy"), load("X_int.npy"), load("y.npy")
        self.rows = load(f"{split}_idx.npy")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        i = self.rows[index]
        x_cat = self.x_cat[i]
        if self.max_ind_range > 0:
            x_cat = x_cat % self.max_ind_range
        return np.asarray(self.x_int[i]), np.asarray(x_cat), int(self.y[i])
