"""Streaming, numpy-2-safe Criteo preprocessing for DLRM's Terabyte and memory-map paths.

DLRM's own ``data_utils.getCriteoAdData`` fails on numpy 2 without
``--max-ind-range`` (int32 overflow, upstream #394) and holds whole days (as
float64) in memory. ``preprocess_criteo`` writes the files DLRM's loaders read,
with the values and dtypes numpy 1 DLRM writes, and draws from numpy's global
RNG exactly as DLRM does (same calls, same order, same amounts), so the files
are identical and the draws that follow (model init) match stock too:

* always: ``<stem>_day_count.npz`` (kept rows per day, int64),
  ``<stem>_fea_count.npz`` (table sizes, int32) and ``<stem>_fea_dict_<j>.npz``
  (``unique``: the raw key of each index of table j, int32, what serving needs);
* ``--memory-map``: ``<npz>_<i>_reordered.npz`` per day (X_cat, X_int, y, all
  float64 as DLRM's float scratch makes them), after DLRM's two-pass shuffle:
  rows of the training days dealt into day buckets by ``randint`` (with DLRM's
  scalar redraws when a bucket is full), then each training day permuted;
* otherwise: the processed file (X_cat float64, X_int and y int32, counts);
* ``--mlperf-bin-loader``: ``<processed stem>_{train,test,val}.bin``, int32
  rows ``[y, X_int, X_cat]`` as ``numpy_to_binary`` writes them.

Stems as DLRM names them: Terabyte ``DIR/day`` gives ``DIR/day_<i>`` inputs
and ``DIR/day_day_count.npz``, ``DIR/day_<i>_reordered.npz``; Kaggle
``DIR/train.txt`` gives ``DIR/train_day_count.npz``, ``DIR/train_day_<i>_reordered.npz``.
DLRM's other scratch (``day_<i>.npz``, ``_processed``, ``_intermediate_*``,
Kaggle's split text files) is kept in a hidden temporary folder beside the
output, in compact int32 form, and removed at the end; final files are renamed
into place when everything is written, the file DLRM takes as "done" last.

Stages: ``criteo_text`` (raw days into int32 scratch files, key numbering),
``criteo_shuffle`` (DLRM's two-pass shuffle, the npz and .bin files); this module
holds the layout, the entry points, and the hidden work folder they share.

Memory. It does not grow with the line count: rows stream in blocks of
16,384 through raw int32 scratch files (160 bytes a row on disk, one day's
worth per day), appended to and read back with plain file reads. What does
grow: the 26 key tables (``KeyTable``: a dict, about 120 bytes per distinct
value, or with ``--max-ind-range N`` a dense N-entry int32 lookup once that is
smaller: the table sizes, inherent), and with ``--memory-map`` the rows of one
day at a time: a bucket byte per row in the first pass, then DLRM's int64
permutation (8 bytes per row) in the second. The second pass reads the day's
scratch file at random, through a mapping whose pages are dropped after every
4,096 rows: fast while that file (160 bytes per row) fits the page cache,
disk-bound beyond.
"""

import argparse
import os
from typing import Dict, List, TypedDict

import numpy as np

from ..files import StagedFiles
from .criteo_text import parse_days
from .criteo_shuffle import bins_from_reordered, shuffle_days, write_processed

WORK_LABEL = "dlrm-mlet-criteo"  # the hidden work folder: .dlrm-mlet-criteo.HOST-PID.XXXX.tmp


class Layout(TypedDict):
    """``criteo_layout``: DLRM's days and the paths of every file it reads or writes for them."""

    days: int  # Kaggle 7, Terabyte 24
    dir: str  # the raw file's folder, where DLRM writes the counts and the day files
    inputs: List[str]  # the raw text files: Kaggle's one, or Terabyte's day_<i>
    processed: str
    day_count: str
    fea_count: str
    fea_dict: List[str]  # one per categorical feature
    reordered: List[str]  # one per day (--memory-map)
    bins: Dict[str, str]  # train, test, val (--mlperf-bin-loader)


def criteo_layout(data_set: str, raw_path: str, processed_path: str = "") -> Layout:
    """Every path DLRM derives from ``--raw-data-file`` and ``--processed-data-file``."""
    days, out = (7, "kaggleAdDisplayChallenge_processed") if data_set == "kaggle" else (24, "terabyte_processed")
    d_path = os.path.dirname(os.path.abspath(raw_path))
    base = os.path.basename(raw_path)
    d_file = base.split(".")[0] if data_set == "kaggle" else base
    npz = os.path.join(d_path, d_file + "_day" if data_set == "kaggle" else d_file)
    processed = os.path.abspath(processed_path) if processed_path else os.path.join(d_path, out + ".npz")
    stem = os.path.join(os.path.dirname(processed), os.path.basename(processed).split(".")[0])
    inputs = [raw_path] if data_set == "kaggle" else [f"{raw_path}_{i}" for i in range(days)]
    return {
        "days": days, "dir": d_path, "inputs": inputs, "processed": processed,
        "day_count": os.path.join(d_path, d_file + "_day_count.npz"),
        "fea_count": os.path.join(d_path, d_file + "_fea_count.npz"),
        "fea_dict": [os.path.join(d_path, f"{d_file}_fea_dict_{j}.npz") for j in range(26)],
        "reordered": [f"{npz}_{i}_reordered.npz" for i in range(days)],
        "bins": {s: f"{stem}_{s}.bin" for s in ("train", "test", "val")},
    }


def preprocess_criteo(data_set: str, raw_path: str, processed_path: str = "", max_ind_range: int = -1,
                      sub_sample_rate: float = 0.0, memory_map: bool = False, randomize: str = "total",
                      bins: bool = False, quiet: bool = False) -> Layout:
    """Write DLRM's preprocessed files for ``data_set`` (``kaggle`` or ``terabyte``); returns the layout.

    ``bins`` (memory-map only) also writes the ``--mlperf-bin-loader`` files.
    DLRM always preprocesses with ``data_split="train"``; that is what is done here.
    """
    layout = criteo_layout(data_set, raw_path, processed_path)
    with StagedFiles(layout["dir"], WORK_LABEL, f"cannot preprocess {raw_path}") as stage:
        scratch, kept, tables = parse_days(layout, stage.folder, max_ind_range, sub_sample_rate, quiet)
        finals = {}
        for j, table in enumerate(tables):
            finals[layout["fea_dict"][j]] = _savez(stage.path(f"fea_dict_{j}.npz"), unique=table.keys())
        counts = np.array([len(t) for t in tables], dtype=np.int32)
        finals[layout["fea_count"]] = _savez(stage.path("fea_count.npz"), counts=counts)
        finals[layout["day_count"]] = _savez(stage.path("day_count.npz"),
                                             total_per_file=np.array(kept, dtype=np.int64))
        if not memory_map:
            finals[layout["processed"]] = write_processed(stage.path("processed.npz"), scratch, kept, counts)
        else:
            for i, path in enumerate(shuffle_days(scratch, kept, stage.folder, randomize, bins)):
                finals[layout["reordered"][i]] = path
            if bins:  # train.bin last: with test.bin and the counts, DLRM's sign that all is done
                for split in ("val", "test", "train"):
                    finals[layout["bins"][split]] = stage.path(f"{split}.bin")
        stage.publish((path, final) for final, path in finals.items())
    return layout


def reordered_to_bins(layout: Layout) -> None:
    """The ``.bin`` files from existing ``_reordered.npz`` files, streamed (no RNG draws).

    What DLRM's ``ensure_dataset_preprocessed`` does when only the .bin files
    are missing, without loading a whole day.
    """
    with StagedFiles(layout["dir"], WORK_LABEL, f"cannot write {layout['bins']['train']}") as stage:
        paths = {s: stage.path(f"{s}.bin") for s in ("train", "test", "val")}
        bins_from_reordered(layout["reordered"], paths)
        stage.publish((paths[s], layout["bins"][s]) for s in ("val", "test", "train"))


def uses_bin_files(args: argparse.Namespace) -> bool:
    """Whether DLRM will read the ``--mlperf-bin-loader`` files (its own condition)."""
    return bool(args.mlperf_logging and args.memory_map and args.data_set == "terabyte"
                and args.mlperf_bin_loader)


def ensure_preprocessed(args: argparse.Namespace) -> Layout:
    """Before DLRM's loaders: write what they will read unless DLRM would find it done.

    DLRM's own signs of "done": every ``_reordered.npz`` (memory map), the
    processed file (otherwise), and the .bin files with the counts (bin
    loader). When only the .bin files are missing they are made from the
    reordered files, as DLRM does, with no new RNG draws.
    """
    layout = criteo_layout(args.data_set, args.raw_data_file, args.processed_data_file)
    bins = uses_bin_files(args)
    if not args.memory_map:
        args.processed_data_file = layout["processed"]  # DLRM's default "" never counts as done
        done = os.path.exists(layout["processed"])
    else:
        done = all(os.path.exists(p) for p in layout["reordered"])
    if not done:
        print(f"Preprocessing {args.raw_data_file} (dlrm-mlet, {args.data_set})", flush=True)
        preprocess_criteo(args.data_set, args.raw_data_file, args.processed_data_file, args.max_ind_range,
                          args.data_sub_sample_rate, args.memory_map, args.data_randomize, bins)
    elif bins and not all(os.path.exists(p) for p in [layout["bins"]["train"], layout["bins"]["test"],
                                                       layout["fea_count"]]):
        print(f"Writing {layout['bins']['train']} from the reordered files (dlrm-mlet)", flush=True)
        reordered_to_bins(layout)
    return layout


def _savez(path, **arrays):
    """A small npz in the work folder, as DLRM's ``np.savez_compressed`` writes it; returns its path."""
    np.savez_compressed(path, **arrays)
    return path
