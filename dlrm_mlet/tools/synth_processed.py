"""``dlrm-mlet synth --processed``: the generator's rows straight into DLRM's processed Criteo-Kaggle form.

At Criteo-Kaggle's size the text form is an 11 GB ``train.txt`` that DLRM's
preprocessing reads for hours; this writes what that preprocessing would
write, in minutes and in bounded memory. Files in OUT_DIR:

* ``kaggleAdDisplayChallenge_processed.npz``: ``X_cat`` (rows x 26 int32, each
  table's values numbered 0..n-1, a missing value one row of its own, as DLRM
  numbers them), ``X_int`` (rows x 13 int32, missing and negative values 0, as
  DLRM reads them), ``y`` (int32 labels) and ``counts`` (rows per table). Its
  members are stored, not compressed: DLRM's ``np.load`` reads it as it reads
  its own, and ``--mlet-mmap-data`` memory-maps it instead of loading it.
* ``train_day_count.npz``: DLRM's split into 7 near-equal days (the last one is
  halved into test and validation).
* ``synth_prob.npy``: each row's true click probability (float32).
* ``synth.json``: the generator's settings and the oracle's AUC, overall and on
  DLRM's test split.

DLRM finds the day counts through ``--raw-data-file``, which is never read:
``--raw-data-file=OUT_DIR/train.txt
--processed-data-file=OUT_DIR/kaggleAdDisplayChallenge_processed.npz``.

Two passes over the rows, which are counter-based (any block can be made
alone): the first makes only the categorical ids (no per-value parameters,
cheap) and keeps each table's distinct ids, sorted; the second makes whole
rows and numbers each id by its place among its table's distinct ids.
Memory: the distinct ids (8 bytes each) and a few blocks; the columns go to
disk as they are made.
"""

import json
import os
import shutil
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Dict, List, Protocol, Tuple

import numpy as np
import numpy.typing as npt

from ..data.days import day_sizes
from ..data.kaggle import KAGGLE_PROCESSED
from ..errors import MLETError
from ..files import StagedFiles, StrPath
from ..progress import progress_bar
from .synth import Statistics, check_args, labelled, model_record
from .synth_law import supports_for
from .synth_model import NCAT, NDENSE, Model, categorical_ids, generate_rows, global_bias, make_model

if TYPE_CHECKING:
    class Bar(Protocol):  # what ``progress.progress_bar`` yields
        def update(self, n: int) -> object: ...

DAY_COUNT = "train_day_count.npz"
PROB = "synth_prob.npy"
_BLOCK = 20_000  # rows per generated block (what fits the caches best)
_ID_BLOCK = 500_000  # rows per block of the first pass


def _merge_sorted(a, b):
    """The distinct values of two sorted arrays of distinct values (a stable sort merges two runs in linear time)."""
    merged = np.sort(np.concatenate([a, b]), kind="stable")
    keep = np.empty(len(merged), dtype=bool)
    keep[:1] = True
    np.not_equal(merged[1:], merged[:-1], out=keep[1:])
    return merged[keep]


def distinct_ids(model: Model, rows: int, bar: "Bar") -> List[np.ndarray]:
    """Per table, the sorted distinct ids of rows [0, rows); a missing value is id -1."""
    distinct = [np.zeros(0, dtype=np.int64) for _ in range(NCAT)]
    for start in range(0, rows, _ID_BLOCK):
        count = min(_ID_BLOCK, rows - start)
        ids, missing, _ = categorical_ids(model, start, count)
        ids[missing] = -1
        for f in range(NCAT):
            distinct[f] = _merge_sorted(distinct[f], np.unique(ids[:, f]))
        bar.update(count)
    return distinct


def _make_block(model, b0, distinct, start, count):
    r = generate_rows(model, start, count)
    labels, q = labelled(model, r, b0)
    ids = np.where(r["cat_missing"], -1, r["ids"])
    x_cat = np.stack([np.searchsorted(distinct[f], ids[:, f]) for f in range(NCAT)], axis=1).astype(np.int32)
    x_int = np.where(r["dense_missing"], 0, np.maximum(r["dense"], 0)).astype(np.int32)
    return labels, q, r["first_order"] + b0, x_cat, x_int


def _blocks(model, b0, distinct, rows):
    """``(start, block)`` in order, two blocks made at a time (numpy releases the GIL in the heavy
    parts) and at most three waiting: memory stays bounded."""
    with ThreadPoolExecutor(2) as pool:
        waiting = deque()
        for start in range(0, rows, _BLOCK):
            waiting.append((start, pool.submit(_make_block, model, b0, distinct, start, min(_BLOCK, rows - start))))
            if len(waiting) > 2:
                start, made = waiting.popleft()
                yield start, made.result()
        while waiting:
            start, made = waiting.popleft()
            yield start, made.result()


class _NpyFile:
    """An .npy file written front to back, block by block (no memory map: its pages would count as
    the writer's memory)."""

    def __init__(self, path: str, dtype: npt.DTypeLike, shape: Tuple[int, ...]) -> None:
        self.handle, self.dtype, self.left = open(path, "wb"), np.dtype(dtype), int(np.prod(shape))
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self.handle, header)

    def write(self, block: npt.ArrayLike) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self.left -= block.size
        self.handle.write(block.tobytes())

    def close(self) -> None:
        if self.left:
            raise MLETError(f"{self.handle.name}: {self.left} values missing")  # a bug, never a user's error
        self.handle.close()


def _store_npz(path, members):
    """An .npz of ``members`` (name: .npy file) whose members are stored, not compressed; no
    time stamps, so the same rows give the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, npy in members.items():
            with open(npy, "rb") as source, archive.open(zipfile.ZipInfo(name + ".npy"), "w",
                                                         force_zip64=True) as member:
                shutil.copyfileobj(source, member, 1 << 24)


def write_processed(out_dir: StrPath, rows: int, seed: int = 0, scale: float = 1.0, rank: int = 32, zipf: float = 1.1,
                    support: str = "calibrated", progress: bool = True, force: bool = False) -> Dict[str, Any]:
    """Write DLRM's processed Kaggle files of ``rows`` synthetic samples into ``out_dir``; returns synth.json's content.

    Refuses to replace an existing processed file unless ``force``; the
    processed file is renamed into place last, so one that exists is complete.
    """
    check_args(rows, seed, scale, rank, zipf)
    supports = supports_for(scale, support)
    out_dir = os.fspath(out_dir)
    target = os.path.join(out_dir, KAGGLE_PROCESSED)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MLETError(f"{out_dir}: not a directory")
    if os.path.exists(target) and not force:
        raise MLETError(f"{target} exists; pass --force to replace it")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise MLETError(f"{out_dir}: cannot create it ({error.strerror})") from None

    model = make_model(seed, scale, rank, zipf, supports=supports)
    b0 = global_bias(model)
    days = day_sizes(rows)
    test_start = sum(days[:-1])
    test_rows = (days[-1] + 1) // 2  # DLRM's test half of the last day (np.array_split's first part)
    stats, test_stats = Statistics(), Statistics()

    with StagedFiles(out_dir, "synth-processed", f"cannot write {out_dir}", "no processed file was written") as stage:
        with progress_bar(rows, "synth: distinct values", not progress) as bar:
            distinct = distinct_ids(model, rows, bar)
        counts = np.array([len(d) for d in distinct], dtype=np.int32)
        names = ("X_cat", "X_int", "y", "prob")
        files = [_NpyFile(stage.path(f"{name}.npy" if name != "prob" else PROB), dtype, shape)
                 for name, dtype, shape in zip(names, (np.int32, np.int32, np.int32, np.float32),
                                               ((rows, NCAT), (rows, NDENSE), (rows,), (rows,)))]
        with progress_bar(rows, "synth: rows", not progress) as bar:
            for start, (labels, q, first, x_cat, x_int) in _blocks(model, b0, distinct, rows):
                for out, block in zip(files, (x_cat, x_int, labels, q * 1e-6)):
                    out.write(block)
                end = start + len(labels)
                stats.add(labels, q, first)
                lo, hi = max(start, test_start) - start, min(end, test_start + test_rows) - start
                if lo < hi:
                    test_stats.add(labels[lo:hi], q[lo:hi], first[lo:hi])
                bar.update(len(labels))
        for out in files:
            out.close()
        np.save(stage.path("counts.npy"), counts)
        _store_npz(stage.path(KAGGLE_PROCESSED), {name: stage.path(f"{name}.npy")
                                                 for name in ("X_cat", "X_int", "y", "counts")})
        np.savez(stage.path(DAY_COUNT), total_per_file=np.array(days))
        test_record = test_stats.record(test_rows)
        info = {
            "format": "criteo-kaggle-processed", "generator": "dlrm-mlet synth --processed", "version": 1,
            "rows": rows, "seed": seed, "scale": scale, "rank": rank, "support": support,
            "supports": [int(s) for s in supports], "table_sizes": [int(n) for n in counts],
            **model_record(model, b0), **stats.record(rows),
            "test": {"rows": test_rows, "oracle_auc": test_record["oracle_auc"],
                     "oracle_log_loss": test_record["oracle_log_loss"]},
            "files": {"processed": KAGGLE_PROCESSED, "day_count": DAY_COUNT, "prob": PROB},
            "dlrm_flags": [f"--raw-data-file={os.path.join(os.path.abspath(out_dir), 'train.txt')}",
                           f"--processed-data-file={os.path.abspath(target)}"],
        }
        with open(stage.path("synth.json"), "w") as handle:
            json.dump(info, handle, indent=2)
            handle.write("\n")
        # the processed file last: DLRM takes it as the sign that preprocessing is done
        stage.publish((stage.path(name), os.path.join(out_dir, name))
                      for name in (PROB, "synth.json", DAY_COUNT, KAGGLE_PROCESSED))
    return info
