"""A sweep's results file: its columns, and reading and writing it whole.

One row per DLRM run (``sweep.py`` writes them, ``report.py`` reads them).
Columns added later read as their defaults in an older file.
"""

import csv
import fcntl
import io
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple

from ..data.frequency import BUCKETS
from ..errors import MLETError
from ..files import StrPath, atomic_write_text
from .serving import PRECISIONS, fields

BUCKET_FIELDS = [f"test_{slug}_{m}" for slug, *_ in BUCKETS for m in ("samples", "auc", "log_loss")]
# Columns added after the first release, with the value an older file's rows take
SERVED_FIELDS = [field for precision in PRECISIONS for field in fields(precision)]
LATER_FIELDS = {"regime": "", "optimizer": "sgd", "rare_lookup_share": "", "tables": "plain", "train_samples": "",
                "peak_memory_mib": "", **dict.fromkeys(SERVED_FIELDS, "")}
FIELDS = [
    "dataset", "regime", "optimizer", "tables", "rare_lookup_share", "train_samples", "d", "k", "lr", "seed", "epochs",
    "status", "note",
    "val_auc", "val_log_loss", "val_accuracy", "test_auc", "test_log_loss", "test_accuracy", *BUCKET_FIELDS,
    "train_seconds", "train_ms_per_it", "peak_memory_mib", "inference_embedding_bytes", "training_embedding_bytes",
    *SERVED_FIELDS,
]
# One run as the file holds it: column -> its text ("" where none). A row a run has just made
# (``sweep.run_one``) holds numbers until it is written: a ``Dict[str, Any]`` until then.
Row = Dict[str, str]
Run = Tuple[int, int, float, int]  # one run of a sweep's grid: (d, k, lr, seed), its key within the sweep

def run_key(row: Mapping[str, Any]) -> Tuple[str, str, str, str, int, int, float, int, int]:
    """What makes a run: a CSV row with the same key is never run again."""
    return (row["dataset"], row["regime"], row["optimizer"], row["tables"], int(row["d"]), int(row["k"]), float(row["lr"]),
            int(row["seed"]), int(row["epochs"]))


def read_rows(path: StrPath) -> List[Row]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(FIELDS) - set(LATER_FIELDS) - set(rows[0]):
        if "lr" not in rows[0] and "test_auc" in rows[0]:
            raise MLETError(f"{path}: written by an older dlrm-mlet (no lr or validation columns); "
                            "sweep into a new file")
        raise MLETError(f"{path}: not a sweep results file (columns {', '.join(rows[0])})")
    return [{**LATER_FIELDS, **row} for row in rows]


def write_rows(path: StrPath, rows: Iterable[Mapping[str, Any]]) -> None:
    """Rewrite the whole CSV atomically: never a torn row."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def update_rows(path: StrPath, change: Callable[[List[Row]], List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Rewrite the CSV with ``change(rows)`` of the rows on disk now, under a lock: sweeps that write
    one CSV at once (a curve and its controls) each add their rows, and none drops another's."""
    folder, name = os.path.split(os.path.abspath(path))
    with open(os.path.join(folder, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = change(read_rows(path))
        write_rows(path, rows)
    return rows
