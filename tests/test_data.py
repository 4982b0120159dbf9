"""Criteo-Kaggle and Avazu parsing and preprocessing (dlrm_mlet.data.criteo_text, kaggle, avazu)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHARED_DATA
from dlrm_mlet import MLETError
from dlrm_mlet.data.avazu import AVAZU_COLUMNS, AvazuDataset, avazu_split, preprocess_avazu
from dlrm_mlet.data.criteo_text import parse_criteo_line
from dlrm_mlet.data.kaggle import kaggle_paths, preprocess_kaggle

GOOD = "\t".join(["1"] + ["5", "", "-3"] + ["0"] * 10 + ["68fd1e64", "", "FFFFFFFF"] + ["0a"] * 23)


def criteo_file(tmp_path, lines, name="train.txt"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_good_line_is_keyed_as_numpy_1_dlrm_keys_it():
    label, dense, keys = parse_criteo_line(GOOD)
    assert label == 1 and dense[:3] == [5, 0, -3] and len(dense) == 13
    # 0xFFFFFFFF wraps to -1 (numpy 1's int32), missing is 0.
    assert keys[:3] == [0x68FD1E64, 0, -1] and keys[3] == 10 and len(keys) == 26
    assert parse_criteo_line(GOOD, max_ind_range=1000)[2][0] == 0x68FD1E64 % 1000


@pytest.mark.parametrize(
    "line,reason",
    [
        ("\t".join(GOOD.split("\t")[:-1]), "expected 40 tab-separated fields, found 39"),
        (GOOD + "\t0a", "expected 40 tab-separated fields, found 41"),
        ("2" + GOOD[1:], "label must be 0 or 1, got '2'"),
        ("\t" + GOOD[2:], "label must be 0 or 1, got ''"),
        (GOOD.replace("\t5\t", "\t5.5\t", 1), "dense feature I1 is not an integer: '5.5'"),
        (GOOD.replace("\t5\t", "\tx\t", 1), "dense feature I1 is not an integer: 'x'"),
        (GOOD.replace("\t5\t", "\t9999999999\t", 1), "dense feature I1 is out of the int32 range"),
        (GOOD.replace("68fd1e64", "68fd1e6g"), "categorical feature C1 is not 1-8 hex digits: '68fd1e6g'"),
        (GOOD.replace("68fd1e64", "168fd1e64"), "categorical feature C1 is not 1-8 hex digits"),
        (GOOD.replace("68fd1e64", " 68fd1e6"), "categorical feature C1 is not 1-8 hex digits"),
    ],
)
def test_malformed_lines_are_named(line, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_criteo_line(line)


def test_preprocess_matches_the_contract_dlrm_reads(tmp_path):
    lines = [GOOD, GOOD.replace("68fd1e64", "00000001"), "0" + GOOD[1:]] * 5
    raw = criteo_file(tmp_path, lines)
    day_count, processed = preprocess_kaggle(str(raw))
    assert processed == str(tmp_path / "kaggleAdDisplayChallenge_processed.npz")
    assert day_count == str(tmp_path / "train_day_count.npz")
    with np.load(processed) as data:
        assert data["X_cat"].shape == (15, 26) and data["X_int"].shape == (15, 13)
        assert list(data["y"][:3]) == [1, 1, 0]
        assert data["X_int"].min() == 0  # negative dense values become 0, as in DLRM
        assert list(data["X_cat"][:3, 0]) == [0, 1, 0]  # first appearance order
        assert data["counts"][0] == 2 and data["counts"][1] == 1
    assert list(np.load(day_count)["total_per_file"]) == [3, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(
    "content,message",
    [
        (GOOD + "\n" + GOOD[:-3] + "\n", r"train\.txt:2: expected 40 tab-separated fields"),
        (GOOD + "\n" + "x" + GOOD[1:] + "\n", r"train\.txt:2: label must be 0 or 1"),
        ("", r"train\.txt: the file is empty"),
    ],
)
def test_a_bad_file_stops_preprocessing_and_leaves_nothing(tmp_path, content, message):
    raw = tmp_path / "train.txt"
    raw.write_text(content)
    with pytest.raises(MLETError, match=message):
        preprocess_kaggle(str(raw))
    assert sorted(os.listdir(tmp_path)) == ["train.txt"]


def test_non_utf8_is_named_by_line(tmp_path):
    raw = tmp_path / "train.txt"
    raw.write_bytes((GOOD + "\n").encode() + b"\xff\xfe" + GOOD.encode() + b"\n")
    with pytest.raises(MLETError, match=r"train\.txt:2: not UTF-8 text"):
        preprocess_kaggle(str(raw))
    assert sorted(os.listdir(tmp_path)) == ["train.txt"]


def test_sub_sampling_drops_negatives_like_dlrm(tmp_path):
    raw = criteo_file(tmp_path, ["0" + GOOD[1:]] * 70 + [GOOD] * 7)
    np.random.seed(3)
    _, processed = preprocess_kaggle(str(raw), max_ind_range=-1, sub_sample_rate=0.5)
    with np.load(processed) as data:
        assert data["y"].sum() == 7 and 7 < len(data["y"]) < 77


def test_a_criteo_file_gives_one_index_per_distinct_hash(criteo_sample, tmp_path):
    shutil.copy(criteo_sample, tmp_path / "train.txt")
    _, processed = preprocess_kaggle(str(tmp_path / "train.txt"))
    rows = [line.rstrip("\n").split("\t") for line in open(criteo_sample)]
    distinct = [len({row[14 + j] or "0" for row in rows}) for j in range(26)]
    with np.load(processed) as data:
        assert list(data["counts"]) == distinct
        assert data["X_cat"].shape == (len(rows), 26)
        assert list(data["y"]) == [int(row[0]) for row in rows]


def test_same_tables_as_stock_dlrm_on_numpy_1(criteo_sample, dlrm_dir, tmp_path):
    """The reference: DLRM's own preprocessing, run under numpy 1.26 (installed by test.sh)."""
    numpy1 = os.environ.get("DLRM_MLET_NUMPY1", "")
    if not os.path.isdir(os.path.join(numpy1, "numpy")):
        pytest.skip("numpy 1 reference not installed (run_scripts/test.sh installs it)")
    for side in ("stock", "ours"):
        (tmp_path / side).mkdir()
        shutil.copy(criteo_sample, tmp_path / side / "train.txt")
    code = (
        "import numpy, data_utils; assert numpy.__version__.startswith('1.'); "
        f"data_utils.getCriteoAdData({str(tmp_path / 'stock' / 'train.txt')!r}, "
        "'kaggleAdDisplayChallenge_processed', -1, 0.0, 7, 'train', 'total', True, False, False)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([numpy1, dlrm_dir]))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    day_count, processed = preprocess_kaggle(str(tmp_path / "ours" / "train.txt"))
    stock_day, stock = kaggle_paths(str(tmp_path / "stock" / "train.txt"))
    with np.load(stock) as a, np.load(processed) as b:
        for key in ("X_cat", "X_int", "y", "counts"):
            assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(np.load(stock_day)["total_per_file"], np.load(day_count)["total_per_file"])


# --------------------------------------------------------------------------- Avazu

AVAZU_ROW = "1000009418151094273,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79"


def avazu_file(tmp_path, rows, header=True, name="train.csv"):
    path = tmp_path / name
    path.write_text((",".join(AVAZU_COLUMNS) + "\n" if header else "") + "".join(r + "\n" for r in rows))
    return path


def vary(i):
    fields = AVAZU_ROW.split(",")
    fields[1] = str(i % 2)
    fields[2] = f"141021{i % 24:02d}"
    fields[5] = f"site{i % 7}"
    return ",".join(fields)


@pytest.mark.parametrize("header", [True, False])
def test_avazu_cache_with_and_without_header(tmp_path, header):
    raw = avazu_file(tmp_path, [vary(i) for i in range(50)], header=header)
    cache = preprocess_avazu(str(raw), str(tmp_path / "cache"), quiet=True)
    meta = json.load(open(os.path.join(cache, "meta.json")))
    assert meta["rows"] == 50 and len(meta["counts"]) == 21
    assert meta["counts"][AVAZU_COLUMNS[3:].index("site_id")] == 7
    train = AvazuDataset(cache, "train")
    x_int, x_cat, y = train[0]
    assert x_int.shape == (1,) and 0 <= x_int[0] <= 23 and x_cat.shape == (21,) and y in (0, 1)
    assert train.m_den == 1 and list(train.counts) == meta["counts"]
    sizes = [len(AvazuDataset(cache, s)) for s in ("train", "val", "test")]
    assert sizes == [40, 5, 5]


def test_avazu_split_is_the_authors_and_covers_every_row_once():
    split = avazu_split(1001)
    together = np.concatenate([split["train"], split["val"], split["test"]])
    assert sorted(together) == list(range(1001))
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (801, 100, 100)
    # Their loader: np.random.seed(123), then the permutations in this order.
    np.random.seed(123)
    parts = np.array_split(np.random.permutation(1001), 5)
    assert np.array_equal(split["train"], np.random.permutation(np.concatenate(parts[:-1])))


@pytest.mark.parametrize(
    "bad,message",
    [
        (AVAZU_ROW + ",extra", r"train\.csv:3: expected 24 comma-separated fields, found 25"),
        (AVAZU_ROW.replace(",0,14102100,", ",2,14102100,"), r"train\.csv:3: click must be 0 or 1, got '2'"),
        (AVAZU_ROW.replace(",14102100,", ",141021,"), r"train\.csv:3: hour must be YYMMDDHH, got '141021'"),
        (AVAZU_ROW.replace(",14102100,", ",14102125,"), r"hour must be YYMMDDHH, got '14102125'"),
    ],
)
def test_avazu_bad_rows_leave_no_cache(tmp_path, bad, message):
    raw = avazu_file(tmp_path, [AVAZU_ROW, bad])
    with pytest.raises(MLETError, match=message):
        preprocess_avazu(str(raw), str(tmp_path / "cache"), quiet=True)
    assert sorted(os.listdir(tmp_path)) == ["train.csv"]


def test_avazu_header_missing_columns(tmp_path):
    raw = tmp_path / "train.csv"
    raw.write_text("id,click,hour\n1,0,14102100\n")
    with pytest.raises(MLETError, match=r"train\.csv:1: header lacks Avazu columns C1, banner_pos"):
        preprocess_avazu(str(raw), str(tmp_path / "cache"), quiet=True)


@pytest.mark.parametrize("name,rows,header", [("train", 8999, True), ("test", 1000, False)])
def test_the_real_avazu_samples(tmp_path, name, rows, header):
    path = os.path.join(SHARED_DATA, "avazu", name)
    if not os.path.isfile(path):
        pytest.skip(f"real Avazu sample not found at {path}")
    cache = preprocess_avazu(path, str(tmp_path / "cache"), quiet=True)
    meta = json.load(open(os.path.join(cache, "meta.json")))
    assert meta["rows"] == rows
    y = np.load(os.path.join(cache, "y.npy"))
    assert 0.1 < y.mean() < 0.2
    hours = np.load(os.path.join(cache, "X_int.npy"))
    assert hours.min() == 0 and hours.max() == 0  # every sample row is from 00h
