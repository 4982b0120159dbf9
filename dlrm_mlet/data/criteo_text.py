"""Raw Criteo text (Kaggle's ``train.txt``, Terabyte's ``day_<i>``): one line as numpy 1 DLRM reads it,
and whole days parsed into int32 scratch files, the first stage of preprocessing.

One line. Upstream DLRM parses each categorical hash with ``np.array([int(x, 16) ...],
dtype=np.int32)``: on numpy 1 hashes above 2^31 silently wrap, on numpy 2
they raise ``OverflowError`` (upstream issue #394). Here each key is the hash
wrapped to int32 as numpy 1 wraps it (or reduced modulo ``--max-ind-range``),
so the tables are the ones numpy 1 DLRM builds; a malformed line is a
``ValueError`` with the reason, which the callers name by file and line.

Whole days. Rows stream through in blocks of ``BLOCK`` lines, parsed by ``parse_criteo_block``
and written as raw int32 rows of ``FIELDS`` values (label, 13 dense, 26 keys
numbered by ``KeyTable``: the ``.bin`` row layout), so memory does not grow with the
line count and the later stages (``criteo_shuffle``) read the rows back by plain
file reads. Numbering and sub-sampling draws follow DLRM's ``getCriteoAdData`` exactly.
"""

import os
import re
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import MLETError
from ..files import StrPath
from ..progress import progress_bar
from .days import day_sizes
from .text import count_lines, numbered_lines, open_text

if TYPE_CHECKING:  # criteo.py owns the layout and imports this module
    from .criteo import Layout

CRITEO_FIELDS = 40
INT32_MAX = 2**31 - 1

_CRITEO_ROW = re.compile(
    r"[01]\t" + r"(?:-?\d{1,10})?\t" * 13 + r"(?:[0-9a-fA-F]{1,8})?\t" * 25 + r"(?:[0-9a-fA-F]{1,8})?"
)
_DENSE = re.compile(r"-?\d{1,10}")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")


def criteo_row_error(fields: Sequence[str]) -> Optional[str]:
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


def parse_criteo_line(line: str, max_ind_range: int = -1) -> Tuple[int, List[int], List[int]]:
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


def parse_criteo_block(lines: Sequence[str], max_ind_range: int = -1) -> Tuple[Optional[np.ndarray], Optional[int]]:
    """``parse_criteo_line`` for many lines at once: ``(rows, bad)``.

    ``rows`` is an ``(n, 40)`` int64 array (label, dense, keys; keys as
    ``parse_criteo_line`` gives them), ``bad`` the index of the first malformed
    line or None (``parse_criteo_line(lines[bad])`` then names the reason).
    Same regular expression and rules; the numbers are read by numpy for the
    whole block, digit column by digit column, rather than by Python's int()
    per field: a few array operations a block instead of 39 calls a line.
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

BLOCK = 1 << 14  # rows per streamed block
FIELDS = 40  # y, 13 dense, 26 categorical: one int32 scratch row, the .bin row layout


def scratch_blocks(path: StrPath, rows: int, step: int = BLOCK) -> Iterator[np.ndarray]:
    """The int32 rows of a scratch file, ``step`` at a time, read with plain reads.

    Scratch files are raw int32 rows of 40 fields (the .bin layout), written
    by appending and read by blocks: nothing is memory-mapped for long, so
    the process's resident memory does not grow with the files.
    """
    with open(path, "rb") as handle:
        for _ in range(0, rows, step):
            yield np.fromfile(handle, np.int32, step * FIELDS).reshape(-1, FIELDS)


def parse_days(layout: "Layout", work: StrPath, max_ind_range: int, sub_sample_rate: float,
               quiet: bool) -> Tuple[List[str], List[int], List["KeyTable"]]:
    """Parse every day into an int32 scratch file; returns (file per day, kept rows per day, key tables).

    Keys are numbered in order of first appearance over the kept rows, days in
    order: the order DLRM's ``convertDicts`` are filled and then enumerated.
    Sub-sampling draws one uniform per line of each day, before that day's
    lines, as DLRM's ``process_one_file`` does (drawn in blocks: the same stream).
    """
    if len(layout["inputs"]) == 1:  # Kaggle: one file, cut into 7 near-equal days
        total = count_lines(layout["inputs"][0]) if os.path.isfile(layout["inputs"][0]) else 0
        parts = [(layout["inputs"][0], n) for n in day_sizes(total, layout["days"])]
    else:
        parts = [(p, count_lines(p) if os.path.isfile(p) else 0) for p in layout["inputs"]]
    tables = [KeyTable(max_ind_range) for _ in range(26)]
    scratch, kept, handle, lines = [], [], None, None
    with progress_bar(sum(n for _, n in parts), "preprocess Criteo", quiet) as bar:
        try:
            for i, (path, size) in enumerate(parts):
                if handle is None or handle.name != path:
                    if handle is not None:
                        handle.close()
                    handle = open_text(path)
                    lines = numbered_lines(handle, path)
                path_i = os.path.join(work, f"processed_{i}.bin")
                with open(path_i, "wb") as rows:
                    n = _parse_day(lines, path, size, rows, tables, max_ind_range, sub_sample_rate, bar)
                scratch.append(path_i)
                kept.append(n)
        finally:
            if handle is not None:
                handle.close()
    if sum(kept) == 0:
        raise MLETError(f"{layout['inputs'][0]}: no rows; nothing was written")
    return scratch, kept, tables


def _parse_day(lines, path, size, rows, tables, max_ind_range, sub_sample_rate, bar):
    """Parse the next ``size`` lines of ``lines`` into the open scratch file ``rows``; returns the rows kept."""
    n = 0
    for start in range(0, size, BLOCK):
        count = min(BLOCK, size - start)
        draws = np.random.uniform(low=0.0, high=1.0, size=count) if sub_sample_rate > 0 else None
        numbered = [next(lines, (None, None)) for _ in range(count)]
        if numbered[-1][1] is None:
            raise MLETError(f"{path}: ended early; nothing was written")
        block, bad = parse_criteo_block([line for _, line in numbered], max_ind_range)
        if bad is not None:
            number, line = numbered[bad]
            try:
                parse_criteo_line(line, max_ind_range)
            except ValueError as error:
                raise MLETError(f"{path}:{number}: {error}; nothing was written") from None
        if draws is not None:
            block = block[(block[:, 0] != 0) | (draws >= sub_sample_rate)]
        if len(block):
            np.maximum(block[:, 1:14], 0, out=block[:, 1:14])  # DLRM clamps dense values at 0
            for j, table in enumerate(tables):
                block[:, 14 + j] = table.number(block[:, 14 + j])
            rows.write(block.astype(np.int32).tobytes())
            n += len(block)
        bar.update(count)
    return n


class KeyTable:
    """One categorical feature's keys, numbered in order of first appearance.

    The numbering DLRM's ``convertDicts`` give, with memory that does not grow
    with the row count, and less of it than DLRM's dicts at Terabyte scale.
    Keys start in a dict (about 120 bytes per distinct value). With
    ``--max-ind-range N`` keys lie in ``[0, N)``, so once a table holds more than
    N/30 distinct values (where a dense int32 lookup of N entries, 4 bytes
    each, becomes the smaller of the two) it moves to that lookup: at the
    MLPerf setting (N = 40M) a large table costs at most 160 MB instead of
    about 4.8 GB of dict. Without a cap keys span all of int32: dict it stays.
    """

    DENSE_BYTES_PER_KEY = 4
    DICT_BYTES_PER_KEY = 120  # measured: benchmarks/preprocess_memory.py

    def __init__(self, max_ind_range=-1):
        self._cap = max_ind_range
        self._lookup = None
        self._dict = {}
        self._keys = np.empty(1024, dtype=np.int32)  # key of each index, grown by doubling
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def keys(self) -> np.ndarray:
        """The key of each index, in index order (``_fea_dict``'s ``unique``)."""
        return self._keys[: self._count].copy()

    def number(self, keys: np.ndarray) -> np.ndarray:
        """The index of each key, new keys numbered in order of first appearance."""
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        if self._lookup is not None:
            ids = self._lookup[unique]
            new = np.flatnonzero(ids < 0)
        else:
            ids = np.fromiter((self._dict.get(k, -1) for k in unique.tolist()), dtype=np.int64, count=len(unique))
            new = np.flatnonzero(ids < 0)
        new = new[np.argsort(first[new], kind="stable")]  # first appearance within the block
        fresh = np.arange(self._count, self._count + len(new))
        ids[new] = fresh
        self._append(unique[new])
        if self._lookup is not None:
            self._lookup[unique[new]] = fresh
        else:
            self._dict.update(zip(unique[new].tolist(), fresh.tolist()))
            if self._cap > 0 and self._count * self.DICT_BYTES_PER_KEY > self._cap * self.DENSE_BYTES_PER_KEY:
                self._lookup = np.full(self._cap, -1, dtype=np.int32)
                self._lookup[self._keys[: self._count]] = np.arange(self._count, dtype=np.int32)
                self._dict = None
        return ids[inverse.reshape(-1)]

    def _append(self, keys):
        need = self._count + len(keys)
        if need > len(self._keys):
            grown = np.empty(max(need, 2 * len(self._keys)), dtype=np.int32)
            grown[: self._count] = self._keys[: self._count]
            self._keys = grown
        self._keys[self._count:need] = keys
        self._count = need

