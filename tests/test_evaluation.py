"""What ``--mlet-metrics-json`` scores beyond DLRM's test split: validation and rare-item buckets."""

import argparse
import json
import os

import numpy as np
import pytest
import torch

from conftest import import_script, run_dlrm
from dlrm_mlet.dlrm import evaluation, session
from dlrm_mlet.data.days import day_sizes
from dlrm_mlet.dlrm.loaders import make_data_and_loaders
from dlrm_mlet.tools.synth import write_synthetic


class Rows:
    """A training split as DLRM's in-memory CriteoDataset holds it: a list of per-sample arrays."""

    def __init__(self, x_cat):
        self.X_cat = [np.array(r) for r in x_cat]


def batch(bags):
    """One DLRM batch (X, lS_o, lS_i, T) from per-table lists of per-sample bags."""
    offsets = [np.cumsum([0] + [len(b) for b in table[:-1]]) for table in bags]
    indices = [np.concatenate([np.array(b, dtype=np.int64) for b in table]) for table in bags]
    n = len(bags[0])
    return torch.zeros(n, 1), [torch.tensor(o) for o in offsets], [torch.tensor(i) for i in indices], torch.zeros(n, 1)


def test_buckets_count_the_rarest_value_of_each_test_sample_over_the_training_split():
    # two tables; training rows (table 0, table 1)
    train = Rows([(0, 5), (0, 5), (0, 6), (1, 5)] + [(0, 5)] * 120)
    counts = evaluation.train_counts(train, table_sizes=[3, 8])
    assert counts[0].tolist() == [123, 1, 0] and counts[1][5:7].tolist() == [123, 1]
    loader = [
        batch([[[0], [1]], [[5], [5]]]),  # sample 0: both values seen >100 times; sample 1: value 1 seen once
        batch([[[2], [0, 1]], [[5], [5, 6]]]),  # sample 2: unseen value 2; sample 3: a bag whose rarest is 1
    ]
    rarest = evaluation.rarest_counts(loader, counts)
    assert rarest.tolist() == [123, 1, 0, 1]
    p, y = np.array([0.9, 0.2, 0.4, 0.7]), np.array([1, 0, 1, 1])
    buckets = {b["bucket"]: b for b in evaluation.bucket_metrics(p, y, rarest)}
    assert [b["samples"] for b in buckets.values()] == [1, 2, 0, 1]
    assert buckets["1_10"]["auc"] == 1.0  # the 1-10 pair: 0.7 (click) ranked above 0.2
    assert buckets["unseen"]["auc"] is None  # one sample, one class: AUC undefined, said so
    assert buckets["unseen"]["log_loss"] == pytest.approx(-np.log(0.4))
    assert buckets["11_100"]["samples"] == 0 and buckets["11_100"]["log_loss"] is None
    with pytest.raises(ValueError, match="3 bucketed samples for 4 scores"):
        evaluation.bucket_metrics(p, y, rarest[:3])


def test_max_ind_range_counts_the_row_the_model_sees():
    counts = evaluation.train_counts(Rows([(7,), (2,), (12,)]), table_sizes=[5], max_ind_range=5)
    assert counts[0].tolist() == [0, 0, 3, 0, 0]


def test_an_unknown_training_dataset_gives_no_buckets_not_wrong_ones():
    assert evaluation.train_counts(object(), table_sizes=[3]) is None


def kaggle_args(raw, **overrides):
    base = dict(data_set="kaggle", raw_data_file=str(raw), processed_data_file="", max_ind_range=-1,
                data_sub_sample_rate=0.0, data_randomize="total", memory_map=False, dataset_multiprocessing=False,
                mlperf_logging=True, mini_batch_size=128, test_mini_batch_size=100, num_workers=0,
                test_num_workers=0)
    return argparse.Namespace(**{**base, **overrides})


def test_the_validation_split_is_dlrms_held_out_half_and_leaves_the_rng_alone(patched_dlrm, tmp_path):
    write_synthetic(tmp_path, 2100, seed=3, progress=False)
    dp = import_script(patched_dlrm, "dlrm_eval_split").dp
    args = kaggle_args(tmp_path / "train.txt")
    session.use_config(session.Config(metrics_json=str(tmp_path / "m.json")))
    try:
        np.random.seed(5)
        train_data, _, test_data, test_ld = make_data_and_loaders(args, dp)
        state = np.random.get_state()
        val = evaluation.validation_loader(args, dp, test_ld)
        assert np.array_equal(np.random.get_state()[1], state[1])  # training draws what stock draws
        targets = torch.cat([b[3] for b in val]).reshape(-1).numpy()
    finally:
        session.reset()
    last_day = day_sizes(2100)[-1]  # 300 rows: the first 150 are test, the next 150 validation
    with np.load(args.processed_data_file) as saved:
        y = saved["y"][-last_day:]
    assert len(test_data) == 150 and len(targets) == 150
    assert np.array_equal(targets, y[150:]) and not np.array_equal(targets, y[:150])


def test_metrics_json_adds_validation_and_buckets_without_changing_the_run(patched_dlrm, tmp_path):
    write_synthetic(tmp_path, 3000, seed=2, progress=False)
    args = ["--arch-sparse-feature-size=4", "--arch-mlp-bot=13-16-4", "--arch-mlp-top=16-1",
            "--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={tmp_path}/train.txt",
            "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1", "--mini-batch-size=128",
            "--print-freq=4", "--test-freq=10", "--test-mini-batch-size=100", "--mlperf-logging",
            "--numpy-rand-seed=3", "--mlet-hidden-dim=16"]
    plain = run_dlrm(patched_dlrm, args, tmp_path).stdout
    scored = run_dlrm(patched_dlrm, args + [f"--mlet-metrics-json={tmp_path}/m.json"], tmp_path).stdout
    strip = lambda out: [line.split(", ms/it")[0] for line in out.splitlines()  # noqa: E731
                         if line.startswith(("Finished training", "recall"))]
    assert strip(plain) == strip(scored) and strip(plain)  # same losses, same test AUC
    metrics = json.load(open(tmp_path / "m.json"))
    val = metrics["validation"]
    assert metrics["samples"] == 214 and val["samples"] == 214 and val["auc"] != metrics["auc"]
    assert f"validation AUC {val['auc']}" in scored
    buckets = metrics["buckets"]["test"]
    assert [b["label"] for b in buckets] == ["unseen", "1-10", "11-100", ">100"]
    assert sum(b["samples"] for b in buckets) == 214
    assert os.path.exists(tmp_path / "m.json") and not [p for p in os.listdir(tmp_path) if ".tmp" in p]
