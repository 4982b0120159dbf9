"""The rare-lookup share: counts per embedding row from every processed-data format, on hand-made data."""

import json

import numpy as np
import pytest

from conftest import terabyte_layouts
from dlrm_mlet.cli import main
from dlrm_mlet.data.avazu import preprocess_avazu
from dlrm_mlet.data.frequency import count_rows, profile, rare_lookup_share
from dlrm_mlet.data.processed import training_split
from dlrm_mlet.errors import MLETError
from dlrm_mlet.tools import pays

# --------------------------------------------------------------------------- the statistic


def test_profile_of_hand_made_counts():
    # table 0: one row per class (unseen, once, 5 times, 20 times, 200 times); table 1: 3 rows seen 10, 11, 0 times
    info = profile([np.array([0, 1, 5, 20, 200]), np.array([10, 11, 0])])
    t0, t1, overall = info["tables"][0], info["tables"][1], info["overall"]
    assert (t0["rows"], t0["seen"], t0["lookups"]) == (5, 4, 226)
    assert {c: v["rows"] for c, v in t0["classes"].items()} == dict.fromkeys(["unseen", "1", "2-10", "11-100", ">100"],
                                                                              0.2)
    assert t0["classes"]["1"]["lookups"] == 1 / 226 and t0["classes"][">100"]["lookups"] == 200 / 226
    assert t0["classes"]["unseen"]["lookups"] == 0
    assert t0["rare_lookup_share"] == 6 / 226  # the rows seen once and 5 times
    assert t1["rare_lookup_share"] == 10 / 21  # 10 is rare, 11 is not
    assert (overall["rows"], overall["seen"], overall["lookups"]) == (8, 6, 247)
    assert overall["rare_lookup_share"] == (6 + 10) / 247 == rare_lookup_share([np.array([0, 1, 5, 20, 200]),
                                                                               np.array([10, 11, 0])])
    assert overall["classes"]["unseen"]["rows"] == 2 / 8
    assert overall["classes"]["11-100"]["lookups"] == (20 + 11) / 247


def test_a_table_without_lookups_has_no_share():
    info = profile([np.zeros(3, np.int64)])
    assert info["tables"][0]["rare_lookup_share"] is None and info["overall"]["rare_lookup_share"] is None


def test_count_rows_in_blocks_with_max_ind_range():
    x_cat = np.array([[0, 5], [1, 5], [0, 6], [3, 13]])
    counts = count_rows([x_cat[:2], x_cat[2:]], [4, 8], max_ind_range=8)
    assert [c.tolist() for c in counts] == [[2, 1, 0, 1], [0, 0, 0, 0, 0, 3, 1, 0]]  # 13 % 8 = 5
    with pytest.raises(MLETError, match="table 1: index 13 outside its 8 rows"):
        count_rows([x_cat], [4, 8])
    with pytest.raises(MLETError, match="3 columns for 2 tables"):
        count_rows([np.zeros((2, 3), np.int64)], [4, 8])


# --------------------------------------------------------------------------- every processed format


def _split_counts(path, sizes=None):
    split = training_split(str(path))
    return split, count_rows(split.blocks(), sizes or split.sizes)


def test_a_kaggle_npz_counts_all_days_but_the_last(tmp_path):
    x_cat = np.array([[i % 3, i % 7] for i in range(70)])
    np.savez(tmp_path / "processed.npz", X_cat=x_cat.astype(np.float64), X_int=np.zeros((70, 13)), y=np.zeros(70),
             counts=np.array([3, 7], np.int32))
    split, counts = _split_counts(tmp_path / "processed.npz")
    assert split.rows == 60 and split.sizes == [3, 7]  # DLRM's 7 near-equal days: the last 10 rows are test
    assert [c.tolist() for c in counts] == [np.bincount(x_cat[:60, j], minlength=n).tolist()
                                            for j, n in enumerate((3, 7))]
    np.savez(tmp_path / "train_day_count.npz", total_per_file=np.array([50, 20]))  # DLRM's day sizes win
    assert training_split(str(tmp_path / "processed.npz")).rows == 50


@pytest.fixture(scope="module")
def terabyte(tmp_path_factory):
    """24 synthetic days of 50 rows preprocessed three ways: processed .npz, memory-map day files, .bin files."""
    return terabyte_layouts(tmp_path_factory.mktemp("tb"), 1200, bins=True)


def test_every_terabyte_format_gives_the_same_training_counts(terabyte):
    plain, mapped = terabyte
    layouts = [plain["processed"], mapped["reordered"][1], mapped["bins"]["train"]]
    results = [_split_counts(path) for path in layouts]
    rows = {split.rows for split, _ in results}
    assert len(rows) == 1 and rows.pop() == 1150  # 23 of 24 days of 50 rows
    first = results[0][1]
    for split, counts in results[1:]:
        assert split.sizes == results[0][0].sizes
        assert all(np.array_equal(a, b) for a, b in zip(first, counts))  # shuffled within days: same counts
    assert "days 0-22 of 24" in results[1][0].source and "_fea_count.npz" in results[2][0].source


def test_files_that_are_not_a_training_split_are_named(terabyte, tmp_path):
    plain, mapped = terabyte
    with pytest.raises(MLETError, match="not the training split; give the <stem>_train.bin"):
        training_split(mapped["bins"]["test"])
    with pytest.raises(MLETError, match="holds table sizes only"):
        training_split(plain["fea_count"])
    with pytest.raises(MLETError, match="raw text"):
        training_split(plain["inputs"][0])
    with pytest.raises(MLETError, match="no such file or folder"):
        training_split(str(tmp_path / "nothing.npz"))


def test_an_avazu_cache_counts_its_training_rows(tmp_path):
    columns = ("id click hour C1 banner_pos site_id site_domain site_category app_id app_domain app_category "
               "device_id device_ip device_model device_type device_conn_type C14 C15 C16 C17 C18 C19 C20 C21").split()
    fields = "1,0,14102100,1005,0,s,sd,sc,a,ad,ac,di,dip,dm,1,2,15706,320,50,1722,0,35,-1,79".split(",")
    lines = []
    for i in range(100):
        row = list(fields)
        row[0], row[12] = str(i), f"ip{i}"  # device_ip: every value once
        lines.append(",".join(row))
    (tmp_path / "train.csv").write_text(",".join(columns) + "\n" + "\n".join(lines) + "\n")
    cache = preprocess_avazu(str(tmp_path / "train.csv"), str(tmp_path / "cache"), quiet=True)
    split, counts = _split_counts(cache)
    ip = columns[3:].index("device_ip")
    assert split.rows == 80 and counts[ip].sum() == 80 and counts[ip].max() == 1
    assert profile(counts)["tables"][ip]["rare_lookup_share"] == 1.0
    assert profile(counts)["tables"][0]["rare_lookup_share"] == 0.0  # C1: one value, 80 times


# --------------------------------------------------------------------------- dlrm-mlet data


def test_data_command_prints_the_share_and_the_nearest_regimes(terabyte, tmp_path, capsys):
    plain, _ = terabyte
    split, counts = _split_counts(plain["processed"])
    share = rare_lookup_share(counts)
    regimes = [{"data": name, "regime": name, "optimizer": "sgd", "epochs": 1, "rare_lookup_share": s,
                "best_baseline": {"d": 16, "auc": 0.75, "sd": 0.001, "bytes": 100},
                "match": None, "saving": None, "gains": [{"d": 4, "k": 256, "gain": g, "se": 0.001, "seeds": 2}]}
               for name, s, g in (("low", share / 2, -0.001), ("high", share * 2, 0.004), ("higher", 0.9, 0.01))]
    pays.write_summary(regimes, str(tmp_path / "map.json"))
    assert main(["data", plain["processed"], "--map", str(tmp_path / "map.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]  # the verdict first: which evidence, how sure, what to run for a measured one
    assert first.startswith("verdict: the share alone cannot decide it; the nearest measured regime (") and \
        "had no tuned size saving" in first and f"dlrm-mlet advise {plain['processed']} --minutes 60" in first
    once = profile(counts)["overall"]["classes"]["1"]["lookups"]
    assert ("warning: " in out.splitlines()[1]) == (once > 0.05)
    assert f"rare-lookup share: {100 * share:.1f} % of {split.rows * 26} training lookups" in out
    near = out.split("Where this falls on the map")[1]
    assert "low (rare-lookup share" in near and "high (rare-lookup share" in near and "higher" not in near
    assert "d=4: +0.0040 ± 0.0010 (k=256)" in near
    assert main(["data", plain["processed"], "--map", str(tmp_path / "map.json"), "--quiet", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["overall"]["rare_lookup_share"] == share and [e["regime"] for e in info["map"]] == ["low", "high"]
    assert info["verdict"] == first and set(info) >= {"tables", "overall", "map", "sample_warning", "verdict"}
    assert main(["data", plain["fea_count"], "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_small_sample_of_larger_data_is_warned_about_and_a_full_file_is_not(tmp_path, capsys):
    """Good-Turing: many lookups on values seen once mean more samples would keep finding new values."""
    from dlrm_mlet.tools.data_report import data_report
    from dlrm_mlet.tools.synth_processed import write_processed

    small = tmp_path / "small"
    write_processed(small, 3000, seed=1, scale=1.0, rank=2, support="calibrated", progress=False)
    info = data_report(str(small / "kaggleAdDisplayChallenge_processed.npz"), quiet=True)
    assert info["sample_warning"].startswith("warning: ") and "count the full data" in info["sample_warning"]
    dense = tmp_path / "dense"
    write_processed(dense, 20000, seed=1, scale=0.0001, rank=2, support="published", progress=False)
    assert data_report(str(dense / "kaggleAdDisplayChallenge_processed.npz"), quiet=True)["sample_warning"] is None
