"""``--mlet-mmap-data``: DLRM's processed Criteo file memory-mapped, each batch made in one gather.

DLRM's loader for a processed Kaggle (or Terabyte, without ``--memory-map``)
file loads the whole file for each split it builds, keeps every sample of the
split as its own numpy view in a Python list (tens of millions at
Criteo-Kaggle's size: more memory than the data), and builds each batch from
its samples one at a time. Here the file's arrays are memory-mapped (its
members must be stored, not compressed: a compressed file is rewritten once
beside it), a split is a vector of row numbers, and a batch is one gather.

The batches are DLRM's, bit for bit: the same split of the same days, the
same shuffling drawn from numpy's global RNG in the same calls (so the model's
initial weights, drawn next, are the same too), and the same collate
arithmetic (``log(x + 1)`` in float32, indices modulo ``--max-ind-range``).
A test holds the two loaders to that.
"""

import argparse
import math
import os
from typing import Any, Iterable, Iterator, List, Sequence, Tuple, Union, cast

import numpy as np
import torch

from ..errors import MLETError
from ..files import StrPath
from .days import DAYS, day_count_path, split_rows
from .processed import is_stored, npz_memmap, store_npz

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # DLRM's (dense, offsets, indices, targets)
# DLRM's (train_data, train_ld, test_data, test_ld): datasets (torch's, or duck-typed ones such as Avazu's:
# DLRM reads their counts and m_den) and loaders of its batches
Loaders = Tuple[Any, Iterable[Batch], Any, Iterable[Batch]]
_COLUMNS = ("X_int", "X_cat", "y")
_COUNT_CHUNK = 1 << 20


def stored_file(path: StrPath) -> StrPath:
    """``path``, or a stored (uncompressed) copy beside it, written once when ``path`` is compressed."""
    if is_stored(path, _COLUMNS):
        return path
    stem, ext = os.path.splitext(path)
    copy = f"{stem}_stored{ext}"
    if not (os.path.exists(copy) and os.path.getmtime(copy) >= os.path.getmtime(path)):
        print(f"MLET: {path} is compressed; writing its arrays uncompressed to {copy} once, so that "
              "--mlet-mmap-data can memory-map them", flush=True)
        store_npz(path, copy)
    return copy


class MappedSplit(torch.utils.data.Dataset):
    """One split of a processed file, memory-mapped; what DLRM reads of its ``CriteoDataset``."""

    def __init__(self, path: StrPath, day_sizes: Sequence[int], split: str, randomize: str, max_ind_range: int) -> None:
        self.path, self.split, self.max_ind_range, self.day_sizes = path, split, max_ind_range, list(day_sizes)
        self.X_int, self.X_cat, self.y = (npz_memmap(path, name) for name in _COLUMNS)
        self.counts = np.asarray(npz_memmap(path, "counts"))
        if sum(day_sizes) != len(self.y):
            raise MLETError(f"{path}: {len(self.y)} rows, but the day counts add up to {sum(day_sizes)}")
        self.rows = split_rows(day_sizes, split, randomize)
        self.m_den, self.n_emb = self.X_int.shape[1], len(self.counts)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.generic]:  # DLRM's item: one sample
        i = self.rows[index]
        x_cat = self.X_cat[i] % self.max_ind_range if self.max_ind_range > 0 else self.X_cat[i]
        return self.X_int[i], x_cat, self.y[i]

    def batch(self, start: int, stop: int) -> Batch:
        """Samples [start, stop) of the split as ``collate_wrapper_criteo_offset`` makes them."""
        rows = self.rows[start:stop]
        x_cat = np.asarray(self.X_cat[rows])
        if self.max_ind_range > 0:
            x_cat = x_cat % self.max_ind_range
        x_int = torch.log(torch.from_numpy(np.asarray(self.X_int[rows])).to(torch.float32) + 1)
        size = len(rows)
        offsets = torch.arange(size).expand(x_cat.shape[1], size).contiguous()
        indices = torch.from_numpy(np.ascontiguousarray(x_cat.T)).to(torch.long)
        target = torch.from_numpy(np.asarray(self.y[rows])).to(torch.float32).view(-1, 1)
        return x_int, offsets, indices, target

    def categorical_blocks(self) -> Iterator[np.ndarray]:
        """The split's categorical values, ``(rows, tables)`` blocks in file order (for counting)."""
        rows = np.sort(self.rows)
        for start in range(0, len(rows), _COUNT_CHUNK):
            yield np.asarray(self.X_cat[rows[start:start + _COUNT_CHUNK]])


class MappedLoader:
    """Batches of a ``MappedSplit`` in order, as DLRM's ``DataLoader`` (no shuffle, last batch short) yields them."""

    def __init__(self, dataset: MappedSplit, batch_size: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.dataset), self.batch_size):
            yield self.dataset.batch(start, start + self.batch_size)

    def twin(self, split: str, randomize: str = "none") -> "MappedLoader":
        """The same file's ``split`` (``"val"``: the half of the last day DLRM never reads), same batches."""
        d = self.dataset
        state = np.random.get_state()  # a twin built later must not move DLRM's RNG
        try:
            twin = MappedSplit(d.path, d.day_sizes, split, randomize, d.max_ind_range)
        finally:
            np.random.set_state(state)
        return MappedLoader(twin, self.batch_size)


def loaders(args: argparse.Namespace) -> Loaders:
    """DLRM's ``(train_data, train_loader, test_data, test_loader)`` for ``args``, memory-mapped."""
    if args.data_set not in DAYS or args.memory_map:
        raise MLETError("--mlet-mmap-data reads DLRM's processed Criteo file: give --data-set=kaggle or "
                        "terabyte, without --memory-map")
    day_count = day_count_path(args.data_set, args.raw_data_file)
    for path, what in ((args.processed_data_file, "--processed-data-file"), (day_count, "its day counts")):
        if not path or not os.path.isfile(path):
            raise MLETError(f"--mlet-mmap-data: {what} {path or '(not given)'} does not exist; preprocess the "
                            "data once without --mlet-mmap-data (or write it with dlrm-mlet synth --processed)")
    path = stored_file(args.processed_data_file)
    with np.load(day_count) as data:
        day_sizes = [int(n) for n in data["total_per_file"]]
    if len(day_sizes) != DAYS[args.data_set]:
        raise MLETError(f"{day_count}: {len(day_sizes)} days, DLRM's {args.data_set} split has {DAYS[args.data_set]}")
    made: List[Union[MappedSplit, MappedLoader]] = []
    for split, batch in (("train", args.mini_batch_size), ("test", args.test_mini_batch_size)):
        dataset = MappedSplit(path, day_sizes, split, args.data_randomize, args.max_ind_range)
        made += [dataset, MappedLoader(dataset, batch)]
    print(f"MLET: {path} memory-mapped ({len(made[0])} training, {len(made[2])} test samples)", flush=True)
    return cast(Loaders, tuple(made))  # the loop made the four of them, in DLRM's order
