"""``--mlet-mmap-data``: the memory-mapped loader yields DLRM's own batches, bit for bit, and draws
numpy's global RNG as DLRM's loader does (so the model's initial weights, drawn next, are the same)."""

import os
import types

import numpy as np
import pytest
import torch

from conftest import import_script
from dlrm_mlet.dlrm import evaluation
from dlrm_mlet.data import mapped
from dlrm_mlet.data.kaggle import KAGGLE_PROCESSED, preprocess_kaggle
from dlrm_mlet.errors import MLETError
from dlrm_mlet.tools import synth
from dlrm_mlet.tools.synth_processed import write_processed

OPTIONS = dict(seed=1, scale=0.002, rank=4, support="published")


@pytest.fixture(scope="module")
def dp(stock_dlrm):
    return import_script(stock_dlrm, "stock_for_mapped").dp


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stored")
    write_processed(folder, 5000, progress=False, **OPTIONS)
    return folder


def dlrm_args(folder, randomize="total", max_ind_range=-1, batch=128, processed=KAGGLE_PROCESSED):
    return types.SimpleNamespace(
        data_set="kaggle", max_ind_range=max_ind_range, data_sub_sample_rate=0.0, data_randomize=randomize,
        raw_data_file=str(folder / "train.txt"), processed_data_file=str(folder / processed), memory_map=False,
        dataset_multiprocessing=False, mini_batch_size=batch, test_mini_batch_size=1000, num_workers=0,
        test_num_workers=0, mlperf_logging=False)


def made_by(make, args, seed=7):
    """The four loaders' objects, every batch of both loaders, and numpy's RNG draw that follows."""
    np.random.seed(seed)
    train_data, train_ld, test_data, test_ld = make(args)
    after = np.random.uniform(size=4)  # what DLRM's model init would draw next
    return train_data, [list(train_ld), list(test_ld)], after


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y) == 4
        for u, v in zip(x, y):
            assert u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v)


@pytest.mark.parametrize("randomize,max_ind_range,batch", [("total", -1, 128), ("day", -1, 100),
                                                            ("none", 300, 128)])
def test_batches_and_rng_draws_are_dlrms(dp, stored, randomize, max_ind_range, batch):
    args = dlrm_args(stored, randomize, max_ind_range, batch)
    theirs, (train_a, test_a), after_a = made_by(dp.make_criteo_data_and_loaders, args)
    ours, (train_b, test_b), after_b = made_by(mapped.loaders, args)
    assert_same_batches(train_a, train_b)
    assert_same_batches(test_a, test_b)
    assert np.array_equal(after_a, after_b)
    assert list(ours.counts) == list(theirs.counts) and ours.m_den == theirs.m_den
    assert len(train_b[-1][3]) == len(ours) % batch or len(ours) % batch == 0  # the last batch short, kept


def test_the_validation_twin_is_dlrms_val_split_and_leaves_the_rng(dp, stored):
    args = dlrm_args(stored)
    _, _, _, test_ld = mapped.loaders(args)
    np.random.seed(3)
    val = list(evaluation.validation_loader(args, dp, test_ld))
    state = np.random.uniform(size=2)
    np.random.seed(3)
    theirs = dp.CriteoDataset("kaggle", -1, 0.0, "total", "val", args.raw_data_file, args.processed_data_file)
    np.random.seed(3)
    reference = list(torch.utils.data.DataLoader(theirs, batch_size=1000, collate_fn=dp.collate_wrapper_criteo_offset))
    assert_same_batches(reference, val)
    assert np.array_equal(state, np.random.uniform(size=2))


def test_training_counts_are_the_training_split_s(stored):
    args = dlrm_args(stored)
    train_data, *_ = mapped.loaders(args)
    counts = evaluation.train_counts(train_data, list(train_data.counts))
    rows = np.sort(train_data.rows)
    x_cat = np.load(stored / KAGGLE_PROCESSED)["X_cat"][rows]
    for f in (0, 2, 11):
        assert np.array_equal(counts[f], np.bincount(x_cat[:, f], minlength=len(counts[f])))


def test_a_compressed_file_is_stored_once_beside_it(dp, tmp_path, capsys):
    synth.write_synthetic(tmp_path, 3000, progress=False, **OPTIONS)
    preprocess_kaggle(str(tmp_path / "train.txt"), quiet=True)  # DLRM's compressed members
    args = dlrm_args(tmp_path)
    _, batches_a, _ = made_by(dp.make_criteo_data_and_loaders, args)
    _, batches_b, _ = made_by(mapped.loaders, args)
    assert "writing its arrays uncompressed" in capsys.readouterr().out
    copy = tmp_path / KAGGLE_PROCESSED.replace(".npz", "_stored.npz")
    assert copy.exists()
    for a, b in zip(batches_a, batches_b):
        assert_same_batches(a, b)
    made_by(mapped.loaders, args)
    assert "uncompressed" not in capsys.readouterr().out  # once


def test_missing_files_and_other_data_are_one_line(tmp_path):
    with pytest.raises(MLETError, match="does not exist; preprocess the data once"):
        mapped.loaders(dlrm_args(tmp_path))
    with pytest.raises(MLETError, match="--data-set=kaggle or terabyte"):
        mapped.loaders(types.SimpleNamespace(data_set="avazu", memory_map=False))
    assert os.listdir(tmp_path) == []
