"""What a run is scored on beyond DLRM's test split: the validation split and rare items.

Choosing a learning rate on the test split and reporting that split's AUC
overstates every arm; DLRM's loaders already hold out a validation half of
the last day (Kaggle, Terabyte) or a tenth of the rows (Avazu) that DLRM never
reads, so the glue scores it with DLRM's own forward. MLET's gain is said to
be largest on rare categories (arXiv 2309.15881), so the test samples are also
scored by **frequency bucket**: each sample falls in the bucket of the
training-split count of its rarest categorical value, counted on the
embedding row the model sees (after ``--max-ind-range``), since that is how
often the row was trained in one epoch.
"""

import argparse
import contextlib
import types
from typing import Any, Dict, Iterable, List, Optional, Sequence, cast

import numpy as np
import numpy.typing as npt
import torch

from ..data.avazu import AvazuDataset
from ..data.frequency import BUCKETS, RowCounts, count_rows
from ..data.mapped import Batch, MappedLoader, MappedSplit

_CHUNK = 1 << 20


@contextlib.contextmanager
def _numpy_rng_kept():
    """DLRM's datasets draw from numpy's global RNG; a twin built later must not move it."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


def validation_loader(args: argparse.Namespace, dp: types.ModuleType,
                      test_ld: Iterable[Batch]) -> Optional[Iterable[Batch]]:
    """The validation twin of DLRM's test loader (same batches, order and collate), or None."""
    if isinstance(test_ld, MappedLoader):
        return test_ld.twin("val")
    terabyte = dp.data_loader_terabyte
    if isinstance(test_ld, terabyte.DataLoader):
        return terabyte.DataLoader(test_ld.data_filename, test_ld.data_directory, test_ld.days,
                                   test_ld.batch_size, test_ld.max_ind_range, split="val")
    test = getattr(test_ld, "dataset", None)
    if isinstance(test, terabyte.CriteoBinDataset):
        name = test.file.name
        if not name.endswith("_test.bin"):
            return None
        counts = args.raw_data_file + "_fea_count.npz"
        twin = terabyte.CriteoBinDataset(name[: -len("_test.bin")] + "_val.bin", counts,
                                         test.batch_size, test.max_ind_range)
    elif isinstance(test, dp.CriteoDataset):
        with _numpy_rng_kept():
            twin = dp.CriteoDataset(args.data_set, args.max_ind_range, args.data_sub_sample_rate,
                                    args.data_randomize, "val", args.raw_data_file, args.processed_data_file,
                                    args.memory_map, args.dataset_multiprocessing)
    elif isinstance(test, AvazuDataset):
        twin = AvazuDataset(test.cache_dir, "val", test.max_ind_range)
    else:
        return None
    loader = cast(torch.utils.data.DataLoader, test_ld)  # one with a .dataset: torch's
    return torch.utils.data.DataLoader(twin, batch_size=loader.batch_size, shuffle=False, num_workers=0,
                                       collate_fn=loader.collate_fn, pin_memory=False, drop_last=False)


def _categorical_chunks(dataset):
    """The training split's categorical values, ``(rows, tables)`` int arrays, or None if unknown.

    From the arrays DLRM's datasets hold (or the day / bin files they read),
    never item by item: Criteo-Kaggle's 39M training rows take seconds.
    """
    if isinstance(dataset, MappedSplit):
        yield from dataset.categorical_blocks()
    elif isinstance(dataset, AvazuDataset):
        for start in range(0, len(dataset.rows), _CHUNK):
            yield np.asarray(dataset.x_cat[np.sort(dataset.rows[start:start + _CHUNK])])
    elif hasattr(dataset, "tot_fea") and hasattr(dataset, "file"):  # CriteoBinDataset: int32 rows
        rows = np.memmap(dataset.file.name, dtype=np.int32, mode="r").reshape(-1, dataset.tot_fea)
        for start in range(0, len(rows), _CHUNK):
            yield np.asarray(rows[start:start + _CHUNK, dataset.tad_fea:])
    elif getattr(dataset, "memory_map", False):  # CriteoDataset over day files
        for day in range(dataset.max_day_range):
            with np.load(f"{dataset.npzfile}_{day}_reordered.npz") as data:
                yield data["X_cat"]
    elif isinstance(getattr(dataset, "X_cat", None), (list, np.ndarray)):
        for start in range(0, len(dataset.X_cat), _CHUNK):
            yield np.asarray(dataset.X_cat[start:start + _CHUNK])
    else:
        raise LookupError(type(dataset).__name__)


def train_counts(dataset: object, table_sizes: Sequence[int], max_ind_range: int = -1) -> Optional[RowCounts]:
    """Per table, how often each embedding row occurs in the training split; None if unknown."""
    try:
        return count_rows(_categorical_chunks(dataset), table_sizes, max_ind_range)
    except LookupError:
        return None


def rarest_counts(loader: Iterable[Batch], counts: RowCounts) -> np.ndarray:
    """Per sample of ``loader`` (in its order), the training count of its rarest value."""
    out = []
    for batch in loader:
        offsets, indices = batch[1], batch[2]
        per_table = []
        for j, table in enumerate(counts):
            idx, off = np.asarray(indices[j], dtype=np.int64), np.asarray(offsets[j], dtype=np.int64)
            bag_min = np.full(len(off), np.iinfo(np.int64).max)  # an empty bag has no rarest value
            nonempty = off < len(idx)
            bag_min[nonempty] = np.minimum.reduceat(table[idx], off[nonempty])
            per_table.append(bag_min)
        out.append(np.min(per_table, axis=0))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def binary_metrics(p: npt.ArrayLike, y: npt.ArrayLike) -> Dict[str, Any]:
    """AUC (None when one class is missing), log loss and accuracy of click probabilities; ``constant``:
    every prediction the same (a model that collapsed, what a sweep records as diverged)."""
    import sklearn.metrics

    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    finite = bool(np.isfinite(p).all())
    return {
        "samples": int(y.size),
        "auc": float(sklearn.metrics.roc_auc_score(y, p)) if finite and 0 < y.sum() < y.size else None,
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if y.size else None,
        "accuracy": float(np.mean(np.round(p) == y)) if y.size else None,
        "constant": bool(finite and y.size > 1 and np.ptp(p) == 0),
    }


def bucket_metrics(p: npt.ArrayLike, y: npt.ArrayLike, rarest: npt.ArrayLike) -> List[Dict[str, Any]]:
    """Test metrics per frequency bucket (``BUCKETS``)."""
    p, y, rarest = (np.asarray(a).reshape(-1) for a in (p, y, rarest))
    if len(rarest) != len(p):
        raise ValueError(f"{len(rarest)} bucketed samples for {len(p)} scores")
    out = []
    for slug, label, low, high in BUCKETS:
        mask = (rarest >= low) & (rarest <= (np.iinfo(np.int64).max if high is None else high))
        out.append({"bucket": slug, "label": label, **binary_metrics(p[mask], y[mask])})
    return out
