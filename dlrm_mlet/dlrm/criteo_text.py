"""One raw Criteo line (Kaggle's ``train.txt``, Terabyte's ``day_<i>``) as numpy 1 DLRM reads it.

Upstream DLRM parses each categorical hash with ``np.array([int(x, 16) ...],
dtype=np.int32)``: on numpy 1 hashes above 2^31 silently wrap, on numpy 2
they raise ``OverflowError`` (upstream issue #394). Here each key is the hash
wrapped to int32 as numpy 1 wraps it (or reduced modulo ``--max-ind-range``),
so the tables are the ones numpy 1 DLRM builds; a malformed line is a
``ValueError`` with the reason, which the callers name by file and line.
"""

import re

import numpy as np

CRITEO_FIELDS = 40
INT32_MAX = 2**31 - 1

_CRITEO_ROW = re.compile(
    r"[01]\t" + r"(?:-?\d{1,10})?\t" * 13 + r"(?:[0-9a-fA-F]{1,8})?\t" * 25 + r"(?:[0-9a-fA-F]{1,8})?"
)
_DENSE = re.compile(r"-?\d{1,10}")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")


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
