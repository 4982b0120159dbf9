"""Criteo Terabyte and memory-map preprocessing (dlrm_mlet.data.criteo) against DLRM's own.

The reference is DLRM's ``data_utils.getCriteoAdData`` run under numpy 1.26
(where it works): every file DLRM's loaders read is compared array by array,
dtype included, and so is the next draw of numpy's global RNG (what model
init would draw next). Then patched DLRM trains MLET on each data path, and
unpatched stock DLRM loads the folded checkpoint and prints the same AUC.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import import_script, run_dlrm, with_32bit_hashes  # noqa: F401
from dlrm_mlet import MLETError
from dlrm_mlet.data.criteo import criteo_layout, preprocess_criteo
from dlrm_mlet.data.criteo_shuffle import first_pass_buckets
from dlrm_mlet.tools.synth import write_synthetic_days

DAYS, PER_DAY = 24, 300
SEED = 7


@pytest.fixture(scope="module")
def days_dir(tmp_path_factory):
    """24 synthetic days of 300 rows; some keys at or above 2^31, to exercise numpy 1's int32 wrap."""
    src = tmp_path_factory.mktemp("days")
    write_synthetic_days(src, DAYS * PER_DAY, DAYS, progress=False)
    for i in range(DAYS):
        with_32bit_hashes(src / f"day_{i}", i % 5)
    return src


def copy_days(days_dir, dest, kaggle=False):
    dest.mkdir()
    names = [f"day_{i}" for i in range(DAYS)]
    if kaggle:  # the same rows as one Kaggle train.txt
        with open(dest / "train.txt", "w") as out:
            for name in names:
                out.write((days_dir / name).read_text())
        return str(dest / "train.txt")
    for name in names:
        shutil.copy(days_dir / name, dest / name)
    return str(dest / "day")


def numpy1_reference(dlrm_dir, raw, kaggle, max_ind_range, sub_sample_rate, memory_map):
    """DLRM's own preprocessing under numpy 1; returns the draw numpy's RNG gives next."""
    numpy1 = os.environ.get("DLRM_MLET_NUMPY1", "")
    if not os.path.isdir(os.path.join(numpy1, "numpy")):
        pytest.skip("numpy 1 reference not installed (run_scripts/test.sh installs it)")
    days = 7 if kaggle else 24
    out = "kaggleAdDisplayChallenge_processed" if kaggle else "terabyte_processed"
    code = (
        "import numpy, data_utils; assert numpy.__version__.startswith('1.'); "
        f"numpy.random.seed({SEED}); "
        f"data_utils.getCriteoAdData({raw!r}, {out!r}, {max_ind_range}, {sub_sample_rate}, {days}, "
        f"'train', 'total', {kaggle}, {memory_map}, False); print(numpy.random.randint(2**31))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([numpy1, dlrm_dir]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return int(proc.stdout.split()[-1])


def assert_same_npz(stock, ours):
    with np.load(stock) as a, np.load(ours) as b:
        assert sorted(a.files) == sorted(b.files), ours
        for key in a.files:
            assert a[key].dtype == b[key].dtype, (ours, key, a[key].dtype, b[key].dtype)
            assert np.array_equal(a[key], b[key]), (ours, key)


@pytest.mark.parametrize(
    "data_set,memory_map,max_ind_range,sub_sample_rate",
    [
        ("terabyte", True, -1, 0.0),
        ("terabyte", True, 1000, 0.4),  # collisions under the modulus, and unequal days
        ("terabyte", False, -1, 0.0),
        ("kaggle", True, -1, 0.25),
    ],
)
def test_same_files_and_rng_as_numpy_1_dlrm(days_dir, dlrm_dir, tmp_path, data_set, memory_map,
                                           max_ind_range, sub_sample_rate):
    kaggle = data_set == "kaggle"
    stock_raw = copy_days(days_dir, tmp_path / "stock", kaggle)
    ours_raw = copy_days(days_dir, tmp_path / "ours", kaggle)
    stock_next = numpy1_reference(dlrm_dir, stock_raw, kaggle, max_ind_range, sub_sample_rate, memory_map)
    np.random.seed(SEED)
    preprocess_criteo(data_set, ours_raw, "", max_ind_range, sub_sample_rate, memory_map, quiet=True)
    assert np.random.randint(2**31) == stock_next  # later draws (model init) match stock
    stock, ours = criteo_layout(data_set, stock_raw), criteo_layout(data_set, ours_raw)
    files = ["day_count", "fea_count"]
    for key in files:
        assert_same_npz(stock[key], ours[key])
    for a, b in zip(stock["fea_dict"], ours["fea_dict"]):
        assert_same_npz(a, b)
    if memory_map:
        for a, b in zip(stock["reordered"], ours["reordered"]):
            assert_same_npz(a, b)
    else:
        assert_same_npz(stock["processed"], ours["processed"])
    if sub_sample_rate:
        kept = np.load(ours["day_count"])["total_per_file"]
        assert kept.sum() < DAYS * PER_DAY and len(set(kept)) > 1
    leftovers = [n for n in os.listdir(tmp_path / "ours") if n.startswith(".")]
    assert leftovers == []  # the scratch folder is gone


def test_bin_files_are_what_dlrm_converts_from_its_reordered_files(days_dir, dlrm_dir, tmp_path):
    """The --mlperf-bin-loader files, against DLRM's numpy_to_binary on numpy 1 DLRM's reordered days."""
    stock_raw = copy_days(days_dir, tmp_path / "stock")
    ours_raw = copy_days(days_dir, tmp_path / "ours")
    numpy1_reference(dlrm_dir, stock_raw, False, 40000000, 0.0, True)
    np.random.seed(SEED)
    processed = str(tmp_path / "ours" / "terabyte_processed.npz")
    layout = preprocess_criteo("terabyte", ours_raw, processed, 40000000, 0.0, True, bins=True, quiet=True)
    sys.path.insert(0, dlrm_dir)
    try:
        import data_loader_terabyte
    finally:
        sys.path.remove(dlrm_dir)
    reordered = criteo_layout("terabyte", stock_raw)["reordered"]
    for split in ("train", "test", "val"):
        expected = tmp_path / f"stock_{split}.bin"
        inputs = reordered[:-1] if split == "train" else reordered[-1:]
        data_loader_terabyte.numpy_to_binary(input_files=inputs, output_file_path=str(expected), split=split)
        assert expected.read_bytes() == open(layout["bins"][split], "rb").read(), split
    assert layout["bins"]["train"] == str(tmp_path / "ours" / "terabyte_processed_train.bin")


def test_bin_files_from_existing_reordered_files_draw_nothing(days_dir, dlrm_dir, tmp_path):
    """Only the .bin files missing (a run without --mlperf-bin-loader came first): converted, no RNG."""
    from dlrm_mlet.data.criteo import reordered_to_bins

    raw = copy_days(days_dir, tmp_path / "data")
    layout = preprocess_criteo("terabyte", raw, "", 40000000, 0.0, True, quiet=True)
    assert not os.path.exists(layout["bins"]["train"])
    state = np.random.get_state()[1].copy()
    reordered_to_bins(layout)
    assert np.array_equal(np.random.get_state()[1], state)
    sys.path.insert(0, dlrm_dir)
    try:
        import data_loader_terabyte
    finally:
        sys.path.remove(dlrm_dir)
    for split in ("train", "test", "val"):
        expected = tmp_path / f"expected_{split}.bin"
        inputs = layout["reordered"][:-1] if split == "train" else layout["reordered"][-1:]
        data_loader_terabyte.numpy_to_binary(input_files=inputs, output_file_path=str(expected), split=split)
        assert expected.read_bytes() == open(layout["bins"][split], "rb").read(), split


def test_first_pass_redraws_match_dlrm_scalar_loop():
    """The windowed first pass against DLRM's row-by-row loop, on days that fill buckets early."""
    caps = np.array([5, 40, 1, 300, 7, 0, 60, 200], dtype=np.int64)
    np.random.seed(3)
    fill, ours = np.zeros(8, np.int64), []
    for i in range(8):
        ours.append(first_pass_buckets(i, int(caps[i]), caps, fill, "total"))
    after = np.random.randint(2**31)
    np.random.seed(3)
    total, theirs = [0] * 8, []
    for i in range(8):  # data_utils.concatCriteoAdData, 1st pass, data_split="train"
        size = int(caps[i])
        rand_u = np.random.randint(low=0, high=7, size=size)
        counter, buckets = [0] * 8, []
        for k in range(size):
            p = i
            if i < 7:
                p = rand_u[k]
                while total[p] + counter[p] >= caps[p]:
                    p = np.random.randint(low=0, high=7)
            buckets.append(p)
            counter[p] += 1
        total = [t + c for t, c in zip(total, counter)]
        theirs.append(buckets)
    assert np.random.randint(2**31) == after
    for a, b in zip(ours, theirs):
        assert list(a) == b
    assert list(fill) == list(caps)


def test_a_malformed_line_in_a_day_file_is_named_and_nothing_is_written(days_dir, tmp_path):
    raw = copy_days(days_dir, tmp_path / "data")
    lines = (tmp_path / "data" / "day_5").read_text().splitlines(True)
    lines[41] = "2" + lines[41][1:]
    (tmp_path / "data" / "day_5").write_text("".join(lines))
    with pytest.raises(MLETError, match=r"day_5:42: label must be 0 or 1, got '2'; nothing was written"):
        preprocess_criteo("terabyte", raw, memory_map=True, quiet=True)
    assert sorted(os.listdir(tmp_path / "data")) == sorted(f"day_{i}" for i in range(DAYS))


def test_a_failure_while_writing_leaves_no_final_file(days_dir, tmp_path, monkeypatch):
    """A crash after the scratch is written (here: in the last reordered day) renames nothing."""
    from dlrm_mlet.data import criteo_shuffle

    raw = copy_days(days_dir, tmp_path / "data")
    real = criteo_shuffle._write_npz

    def failing(path, members):
        if path.endswith("reordered_23.npz"):
            raise OSError(28, "No space left on device")
        return real(path, members)

    monkeypatch.setattr(criteo_shuffle, "_write_npz", failing)
    with pytest.raises(MLETError, match="No space left on device; nothing was written"):
        preprocess_criteo("terabyte", raw, memory_map=True, bins=True, quiet=True)
    assert sorted(os.listdir(tmp_path / "data")) == sorted(f"day_{i}" for i in range(DAYS))


def test_synth_days_writes_the_terabyte_layout(tmp_path):
    from dlrm_mlet.cli import main

    assert main(["synth", str(tmp_path / "tb"), "--rows", "100", "--days", "24", "--quiet"]) == 0
    sizes = [len((tmp_path / "tb" / f"day_{i}").read_text().splitlines()) for i in range(24)]
    assert sizes == [5] * 4 + [4] * 20
    first = (tmp_path / "tb" / "day_0").read_text().splitlines()[0].split("\t")
    assert len(first) == 40 and first[0] in ("0", "1")
    assert not [n for n in os.listdir(tmp_path / "tb") if n.startswith(".")]
    with pytest.raises(MLETError, match="day_0 exists"):
        write_synthetic_days(tmp_path / "tb", 100, 24, progress=False)


def aucs(stdout):
    return re.findall(r"\bauc (\d+\.\d+),", stdout)


MODEL = [
    "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1",
    "--data-generation=dataset", "--loss-function=bce", "--round-targets=True",
    "--learning-rate=0.1", "--mini-batch-size=128", "--test-mini-batch-size=64",
    "--test-freq=27", "--print-freq=27", "--mlperf-logging", "--numpy-rand-seed=3",
]


@pytest.mark.parametrize(
    "data_set,flags,launcher",
    [
        ("terabyte", ["--memory-map"], False),
        ("terabyte", ["--memory-map", "--max-ind-range=40000000"], False),
        ("terabyte", [], False),
        ("terabyte", ["--max-ind-range=1000"], False),
        ("terabyte", ["--memory-map", "--max-ind-range=40000000", "--mlperf-bin-loader",
                      "--mlperf-bin-shuffle"], False),
        ("terabyte", ["--memory-map", "--max-ind-range=40000000", "--mlperf-bin-loader",
                      "--mlperf-bin-shuffle"], True),
        ("kaggle", ["--memory-map"], False),
    ],
    ids=["tb-mmap", "tb-mmap-range", "tb", "tb-range", "tb-bin", "tb-bin-launcher", "kaggle-mmap"],
)
def test_mlet_trains_and_stock_dlrm_scores_the_folded_checkpoint_the_same(
        patched_dlrm, stock_dlrm, days_dir, tmp_path, data_set, flags, launcher):
    kaggle = data_set == "kaggle"
    raw = copy_days(days_dir, tmp_path / "data", kaggle)
    processed = str(tmp_path / "data" / ("kaggleAdDisplayChallenge_processed.npz" if kaggle
                                         else "terabyte_processed.npz"))
    data = [f"--data-set={data_set}", f"--raw-data-file={raw}", f"--processed-data-file={processed}"]
    model, metrics = str(tmp_path / "model.pt"), tmp_path / "metrics.json"
    mlet = ["--mlet-hidden-dim=64", f"--save-model={model}", f"--mlet-metrics-json={metrics}"]
    if launcher:  # dlrm-mlet run on a stock checkout routes the same glue
        trained = run_dlrm(stock_dlrm, MODEL + data + flags + mlet, tmp_path, launcher=True)
    else:
        trained = run_dlrm(patched_dlrm, MODEL + data + flags + mlet, tmp_path)
    assert "Preprocessing" in trained.stdout and "(dlrm-mlet" in trained.stdout
    # Every loader has its validation twin and its training counts (the buckets cover every test score).
    scored = json.load(open(metrics))
    assert scored["validation"]["samples"] > 0 and 0 < scored["validation"]["auc"] < 1
    assert sum(b["samples"] for b in scored["buckets"]["test"]) == scored["samples"] > 0
    seen = [b["samples"] for b in scored["buckets"]["test"][1:]]
    assert sum(seen) > 0  # not every sample "unseen": the training counts were found and read
    if "--mlperf-bin-loader" in flags:
        assert os.path.getsize(processed.replace(".npz", "_train.bin")) == 23 * PER_DAY * 160
        # Stock DLRM cannot run --mlperf-bin-loader at this commit (CriteoBinDataset has no
        # num_samples), so it scores with --memory-map on the same reordered files: their
        # test split (first half of day 23) holds the same rows as terabyte_processed_test.bin.
        flags = [f for f in flags if not f.startswith("--mlperf-bin")]
    loaded = run_dlrm(stock_dlrm, MODEL + data + flags + [f"--load-model={model}", "--inference-only"], tmp_path)
    assert "Reading pre-processed data" in loaded.stdout  # stock preprocessed nothing
    assert aucs(trained.stdout) and aucs(loaded.stdout)[-1] == aucs(trained.stdout)[-1]


def test_block_parser_reads_lines_as_the_line_parser_does(days_dir):
    from dlrm_mlet.data.criteo_text import parse_criteo_block, parse_criteo_line

    lines = (days_dir / "day_3").read_text().splitlines()
    edge = lines[0].split("\t")
    edge[1:4], edge[14:17] = ["-2147483648", "", "2147483647"], ["aBcD", "", "FFFFFFFF"]
    lines.append("\t".join(edge))
    for max_ind_range in (-1, 1000):
        rows, bad = parse_criteo_block(lines, max_ind_range)
        expected = [[y, *d, *k] for y, d, k in (parse_criteo_line(line, max_ind_range) for line in lines)]
        assert bad is None and rows.tolist() == expected
    too_big = "\t".join(edge[:1] + ["2147483648"] + edge[2:])
    assert parse_criteo_block(lines[:5] + [too_big], -1) == (None, 5)
    assert parse_criteo_block(lines[:2] + [lines[2][:-2] + "\tzz"], -1) == (None, 2)


@pytest.mark.parametrize("cap", [-1, 50, 1000])
def test_key_table_numbers_keys_as_dlrm_dicts_do_before_and_after_it_turns_dense(cap):
    """DLRM numbers keys by first appearance (``convertDicts``); a capped table moves from a dict
    to a dense lookup once that is smaller (here after cap/30 keys): the numbering must not notice."""
    from dlrm_mlet.data.criteo_text import KeyTable

    rng = np.random.default_rng(0)
    high = cap if cap > 0 else 2**31
    blocks = [rng.integers(-high if cap < 0 else 0, high, size=n) for n in (7, 300, 1, 2000)]
    table, reference = KeyTable(cap), {}
    for keys in blocks:
        expected = [reference.setdefault(int(k), len(reference)) for k in keys]
        assert table.number(keys).tolist() == expected
    assert len(table) == len(reference) and table.keys().tolist() == list(reference)
    if cap > 0:
        assert table._lookup is not None  # it did turn dense, mid-way
