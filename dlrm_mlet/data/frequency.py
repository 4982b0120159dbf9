"""How often each embedding row is trained, and the **rare-lookup share**.

MLET's gain is said to come from rows that are seen rarely (arXiv 2309.15881:
"largest gain on rare items"). Whether a dataset has such rows is a property
of the data, not of a table's size: a ten-million-row table whose lookups all
land on a few thousand frequent rows is, for training, a small table. So the
data is described by the training-split count of every embedding row (on the
row the model sees: after ``--max-ind-range``), and summarised by one number:

    rare-lookup share = the share of training lookups that land on a row
                        seen at most RARE_MAX (10) times in training.

It is computed per table and over all tables (every lookup of every table
counts once, so small tables dilute it as they dilute a model's gradient).
The same 1..10 band is the "1-10" test bucket of ``--mlet-metrics-json`` and
the ``rare`` rule of ``--mlet-memory-budget``.
"""

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import MLETError

NAME = "rare-lookup share"
RowCounts = Sequence[np.ndarray]  # per table, the training count of each embedding row (``count_rows``)
RARE = (1, 10)  # a rare row: seen 1..10 times in one epoch of the training split
RARE_MAX = RARE[1]
# Classes of rows by training count: (label, smallest count, largest count or None)
CLASSES = (("unseen", 0, 0), ("1", 1, 1), ("2-10", 2, 10), ("11-100", 11, 100), (">100", 101, None))
# Test samples by the training count of their rarest value (--mlet-metrics-json, the report's rare items):
# (slug for CSV columns, label, smallest count, largest count or None)
BUCKETS = (
    ("unseen", "unseen", 0, 0),
    ("1_10", "1-10", *RARE),
    ("11_100", "11-100", RARE_MAX + 1, 100),
    ("over_100", ">100", 101, None),
)
BUCKET_RULE = "test samples by the training-split count of their rarest categorical value (embedding row)"


def cap_rows(rows: Iterable[int], max_ind_range: int) -> List[int]:
    """Table sizes as DLRM sizes its tables: ``min(count, R)`` when ``--max-ind-range R > 0``."""
    return [min(int(n), max_ind_range) if max_ind_range > 0 else int(n) for n in rows]


def count_rows(blocks: Iterable[np.ndarray], sizes: Iterable[int], max_ind_range: int = -1,
               progress: Optional[Callable[[int], object]] = None) -> RowCounts:
    """Per table, how often each embedding row occurs in ``blocks`` (rows x tables values).

    Values are reduced modulo ``max_ind_range`` when it is > 0, as DLRM's
    loaders reduce them; ``sizes`` are the tables' sizes (capped the same way).
    Memory: 8 bytes per table row, whatever the number of blocks.
    """
    counts = [np.zeros(int(n), dtype=np.int64) for n in sizes]
    for block in blocks:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != len(counts):
            raise MLETError(f"categorical values have {block.shape[-1]} columns for {len(counts)} tables")
        for j, table in enumerate(counts):
            column = block[:, j].astype(np.int64)
            if max_ind_range > 0:
                column %= max_ind_range
            if len(column) and (column.min() < 0 or column.max() >= len(table)):
                bad = column.min() if column.min() < 0 else column.max()
                raise MLETError(f"table {j}: index {bad} outside its {len(table)} rows")
            table += np.bincount(column, minlength=len(table))
        if progress:
            progress(len(block))
    return counts


def profile(counts: RowCounts) -> Dict[str, Any]:
    """Per table and overall: rows, rows seen, and the share of rows and of lookups in each class.

    Returns ``{"tables": [...], "overall": {...}}``; each entry has ``rows``,
    ``seen``, ``lookups``, ``rare_lookup_share`` and ``classes``: per class
    label, ``{"rows": share of rows, "lookups": share of lookups}`` (an unseen
    row has no lookups).
    """
    tables = [_profile_one(np.asarray(c)) for c in counts]
    overall = {"rows": sum(t["rows"] for t in tables), "seen": sum(t["seen"] for t in tables),
               "lookups": sum(t["lookups"] for t in tables), "classes": {}}
    for label, *_ in CLASSES:
        rows = sum(t["_rows"][label] for t in tables)
        lookups = sum(t["_lookups"][label] for t in tables)
        overall["classes"][label] = {"rows": _share(rows, overall["rows"]),
                                     "lookups": _share(lookups, overall["lookups"])}
    rare = sum(t["_rare"] for t in tables)
    overall["rare_lookup_share"] = _share(rare, overall["lookups"])
    for t in tables:
        del t["_rows"], t["_lookups"], t["_rare"]
    return {"tables": tables, "overall": overall}


def rare_lookup_share(counts: RowCounts) -> Optional[float]:
    """The rare-lookup share over all tables (see the module docstring); None without lookups."""
    return profile(counts)["overall"]["rare_lookup_share"]


def _profile_one(c):
    lookups = int(c.sum())
    out = {"rows": int(c.size), "seen": int((c > 0).sum()), "lookups": lookups, "classes": {},
           "_rows": {}, "_lookups": {}}
    for label, low, high in CLASSES:
        mask = (c >= low) if high is None else (c >= low) & (c <= high)
        rows, hits = int(mask.sum()), int(c[mask].sum())
        out["_rows"][label], out["_lookups"][label] = rows, hits
        out["classes"][label] = {"rows": _share(rows, c.size), "lookups": _share(hits, lookups)}
    lo, hi = RARE
    out["_rare"] = int(c[(c >= lo) & (c <= hi)].sum())
    out["rare_lookup_share"] = _share(out["_rare"], lookups)
    return out


def _share(part, whole):
    return part / whole if whole else None


def rare_rows(counts: RowCounts) -> List[int]:
    """Per table, how many embedding rows occur ``RARE`` times (1..10) in training.

    The score ``--mlet-memory-budget``'s ``rare`` rule ranks tables by.
    """
    lo, hi = RARE
    return [int(((np.asarray(c) >= lo) & (np.asarray(c) <= hi)).sum()) for c in counts]
