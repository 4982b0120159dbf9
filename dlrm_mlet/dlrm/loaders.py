"""DLRM's data loaders, with our preprocessing in front and Avazu beside them.

DLRM's ``make_criteo_data_and_loaders`` stays the loader for Criteo; what is
added is the preprocessing that fails or is missing upstream (``data/kaggle.py``,
``data/criteo.py``), the Avazu dataset (no upstream support) and one fix to the
MLPerf bin loader.
"""

import argparse
import os
import types

import torch

from ..errors import MLETError
from ..data import criteo, mapped
from ..data.avazu import AvazuDataset, preprocess_avazu
from ..data.kaggle import kaggle_paths, preprocess_kaggle
from ..data.mapped import Loaders
from .session import Scoring, fail, session


def make_data_and_loaders(args: argparse.Namespace, dp: types.ModuleType) -> Loaders:
    """DLRM's ``dp.make_criteo_data_and_loaders(args)``, plus our preprocessing and Avazu.

    Criteo-Kaggle: when the processed file is missing, ours writes it (numpy 2
    safe, malformed lines named, atomic) and DLRM then reads it as usual.
    Criteo-Terabyte, and Kaggle with ``--memory-map``: ``data/criteo.py`` writes
    DLRM's files the same way, with MLET on, or without ``--max-ind-range``
    (where stock preprocessing fails on numpy 2, #394); otherwise stock does.
    Avazu: our cached, memory-mapped dataset with DLRM's own batch format.
    ``--mlet-mmap-data``: a processed Criteo file memory-mapped (``mapped.py``),
    the same batches as DLRM's loader.
    Anything else goes to DLRM untouched.
    """
    enabled = session.config.enabled
    try:
        if args.data_set == "avazu":
            return _avazu_loaders(args, dp)
        if args.data_set == "kaggle" and not args.memory_map:
            day_count, processed = kaggle_paths(args.raw_data_file, args.processed_data_file)
            args.processed_data_file = processed  # DLRM's default "" never counts as done
            if not (os.path.exists(processed) and os.path.exists(day_count)):
                print(f"Preprocessing {args.raw_data_file} into {processed}", flush=True)
                preprocess_kaggle(args.raw_data_file, processed, args.max_ind_range, args.data_sub_sample_rate)
        elif args.data_set in ("kaggle", "terabyte") and (enabled or args.max_ind_range <= 0) \
                and not session.config.mmap_data:
            criteo.ensure_preprocessed(args)
            if enabled and criteo.uses_bin_files(args):
                _count_bin_samples(dp)
        if session.config.mmap_data:
            return _scored(args, dp, mapped.loaders(args))
    except MLETError as error:
        fail(str(error))
    return _scored(args, dp, dp.make_criteo_data_and_loaders(args))


def _scored(args, dp, loaders):
    """Remember what ``--mlet-metrics-json`` needs to score validation and buckets later,
    and what ``--mlet-memory-budget`` counts rare rows in."""
    train_data, train_ld, _, test_ld = loaders
    steps = (args.num_batches if getattr(args, "num_batches", 0) > 0 else len(train_ld)) * getattr(args, "nepochs", 1)
    if 0 < steps < session.config.log_freq:
        print(f"MLET: --mlet-log-freq={session.config.log_freq} is more than this run's {steps} steps: no MLET/* "
              "scalars will be written (give a smaller --mlet-log-freq to see them)", flush=True)
    if session.config.metrics_json:
        session.scoring = Scoring(args, dp, train_data, test_ld)
    if session.config.memory_budget:
        session.training = (train_data, args.max_ind_range)
    return loaders


def _count_bin_samples(dp):
    """Give DLRM's ``CriteoBinDataset`` the ``num_samples`` its own MLPerf log call reads.

    At the pinned commit ``make_criteo_data_and_loaders`` logs
    ``train_data.num_samples``, which the class never sets, so
    ``--mlperf-bin-loader`` stops with an AttributeError. The samples are the
    file's int32 rows of 40 fields. Done only with MLET on (stock stays stock).
    """
    cls = dp.data_loader_terabyte.CriteoBinDataset
    if not hasattr(cls, "num_samples"):
        cls.num_samples = property(lambda self: os.fstat(self.file.fileno()).st_size // (4 * self.tot_fea))


def _avazu_loaders(args, dp):
    """Avazu train and test sets in DLRM's batch format (its own collate function)."""
    cache = args.processed_data_file or os.path.join(
        os.path.dirname(os.path.abspath(args.raw_data_file)), "avazu_processed")
    if not os.path.exists(os.path.join(cache, "meta.json")):
        print(f"Preprocessing {args.raw_data_file} into {cache}", flush=True)
        preprocess_avazu(args.raw_data_file, cache)
    else:
        print(f"Reading pre-processed data={cache}", flush=True)
    train = AvazuDataset(cache, "train", args.max_ind_range)
    test = AvazuDataset(cache, "test", args.max_ind_range)
    loader = lambda dataset, batch, workers: torch.utils.data.DataLoader(  # noqa: E731
        dataset, batch_size=batch, shuffle=False, num_workers=workers,
        collate_fn=dp.collate_wrapper_criteo_offset, pin_memory=False, drop_last=False)
    return _scored(args, dp, (train, loader(train, args.mini_batch_size, args.num_workers),
                              test, loader(test, args.test_mini_batch_size, args.test_num_workers)))
