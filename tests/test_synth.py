import io
import json
import os
import re
import sys
import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from dlrm_mlet.tools import synth, synth_model
from dlrm_mlet.cli import main
from dlrm_mlet.errors import MLETError

HEX = re.compile(r"[0-9a-f]{8}")


def read_rows(out_dir):
    with open(os.path.join(out_dir, "train.txt")) as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


def read_probs(out_dir):
    return np.loadtxt(os.path.join(out_dir, "train_prob.txt"), ndmin=1)


def files(out_dir):
    return {name: open(os.path.join(out_dir, name), "rb").read()
            for name in ("train.txt", "train_prob.txt", "synth.json")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One 20k-row dataset with the defaults, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth")
    info = synth.write_synthetic(out, 20_000, seed=0, progress=False)
    rows = read_rows(out)
    return out, info, rows, np.array([int(r[0]) for r in rows]), read_probs(out)


def test_lines_have_the_criteo_kaggle_format(data):
    _, _, rows, labels, _ = data
    assert len(rows) == 20_000 and {len(r) for r in rows} == {40}
    assert set(labels) == {0, 1}
    for r in rows[:3000]:
        dense = [int(x) for x in r[1:14] if x != ""]  # raises if not an integer
        assert min(dense, default=0) >= -1
        assert all(c == "" or HEX.fullmatch(c) for c in r[14:])
    missing = np.array([[x == "" for x in r[1:]] for r in rows]).mean(axis=0)
    assert missing[13] == 0 and missing[14] == 0  # C1, C2 never missing
    assert 0.75 < missing[13 + 21] < 0.88  # C22 mostly missing, as in Criteo
    assert 0.40 < missing[0] < 0.50 and missing[1] == 0  # I1 often, I2 never
    dense = np.array([int(r[5]) for r in rows if r[5]])  # I5: large heavy-tailed counts
    assert np.median(dense) > 500 and dense.max() > 20 * np.median(dense)


def test_same_arguments_give_the_same_bytes_and_seeds_differ(tmp_path, monkeypatch):
    a = synth.write_synthetic(tmp_path / "a", 3000, seed=5, progress=False)
    synth.write_synthetic(tmp_path / "b", 3000, seed=5, progress=False)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    monkeypatch.setattr(synth, "BLOCK_ROWS", 700)  # rows do not depend on the blocking
    synth.write_synthetic(tmp_path / "c", 3000, seed=5, progress=False)
    assert files(tmp_path / "a") == files(tmp_path / "c")
    c = synth.write_synthetic(tmp_path / "d", 3000, seed=6, progress=False)
    assert files(tmp_path / "a")["train.txt"] != files(tmp_path / "d")["train.txt"]
    assert a["model"]["global_bias"] != c["model"]["global_bias"]
    # a longer file starts with the shorter one
    synth.write_synthetic(tmp_path / "e", 4000, seed=5, progress=False)
    assert files(tmp_path / "e")["train.txt"].startswith(files(tmp_path / "a")["train.txt"])


def test_probabilities_are_aligned_with_the_rows(data):
    out, _, rows, labels, probs = data
    lines = open(os.path.join(out, "train_prob.txt")).read().splitlines()
    assert len(lines) == len(rows) and all(re.fullmatch(r"0\.\d{6}", s) for s in lines[:1000])
    assert probs.min() > 0 and probs.max() < 1
    assert abs(labels.mean() - probs.mean()) < 0.015  # calibrated
    assert probs[labels == 1].mean() > probs[labels == 0].mean() + 0.1


def test_base_ctr_is_near_criteos(data):
    _, info, _, labels, _ = data
    assert 0.2 < labels.mean() < 0.3
    assert info["base_ctr"] == labels.mean()


def test_oracle_auc_and_log_loss_match_sklearn(data):
    _, info, _, labels, probs = data
    assert abs(info["oracle_auc"] - roc_auc_score(labels, probs)) < 1e-3
    assert abs(info["oracle_log_loss"] - log_loss(labels, probs)) < 1e-6
    # interactions carry much of the signal: biases and dense features alone do clearly worse
    assert info["oracle_auc"] > info["first_order_auc"] + 0.08


def test_category_frequencies_are_zipf_like(data):
    _, info, rows, _, _ = data
    column = 14 + 2  # C3, the largest table
    assert info["table_sizes"][2] > 100_000
    _, counts = np.unique([r[column] for r in rows if r[column]], return_counts=True)
    assert counts.max() > 200 * np.median(counts)
    assert np.mean(counts <= 2) > 0.7  # most values are rare
    assert counts.max() / counts.sum() > 0.05  # a few are very frequent


@pytest.mark.parametrize("zipf", [0.5, 1.0, 1.1, 2.0])
def test_ids_follow_the_law_that_zipf_probabilities_states(zipf):
    """The drawn ids' frequencies match the exact probabilities, for any skew (1.0 is its own formula)."""
    n, draws = 50, 200_000
    p = synth_model.zipf_probabilities(n, zipf)
    assert abs(p.sum() - 1) < 1e-12 and (np.diff(p) < 0).all()  # a proper, decreasing law
    u = np.random.default_rng(0).random((draws, 1))
    counts = np.bincount(synth_model.zipf_ids(u, np.array([float(n)]), zipf)[:, 0], minlength=n)
    expected = draws * p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 100  # 49 degrees of freedom: p < 1e-5 beyond this


def test_a_smaller_zipf_spreads_lookups_over_more_rows(tmp_path):
    seen = {}
    for zipf in (1.1, 0.5):
        info = synth.write_synthetic(tmp_path / str(zipf), 3000, scale=0.01, zipf=zipf, progress=False)
        assert info["zipf_exponent"] == zipf
        rows = [line.split("\t") for line in (tmp_path / str(zipf) / "train.txt").read_text().splitlines()]
        seen[zipf] = len({r[14 + 2] for r in rows if r[14 + 2]})  # distinct values of C3
    assert seen[0.5] > 1.5 * seen[1.1]


def test_written_categories_decode_to_ids_within_the_table(data):
    _, info, rows, _, _ = data
    for f in (0, 2, 8):
        values = np.array([int(r[14 + f], 16) for r in rows if r[14 + f]], dtype=np.uint64)
        ids = synth_model.unmix_ids(values, synth_model._mix_keys(0, f))
        assert ids.max() < info["table_sizes"][f]


def test_id_mixing_is_unique_and_invertible():
    rng = np.random.default_rng(1)
    for feature in (0, 7, 25):
        keys = synth_model._mix_keys(123, feature)
        ids = np.concatenate([np.arange(300_000), rng.integers(0, 2**31 - 2, 100_000)]).astype(np.uint64)
        ids = np.sort(ids)
        ids = ids[np.r_[True, np.diff(ids) != 0]]
        mixed = synth_model.mix_ids(ids, keys)
        assert (np.diff(np.sort(mixed)) != 0).all()
        assert mixed.min() >= 1 and mixed.max() < 2**31 - 1  # never "00000000" (= missing in DLRM)
        np.testing.assert_array_equal(synth_model.unmix_ids(mixed, keys), ids)
    edge = np.array([0, 2**31 - 3], dtype=np.uint64)
    np.testing.assert_array_equal(synth_model.unmix_ids(synth_model.mix_ids(edge, keys), keys), edge)
    assert not np.array_equal(synth_model.mix_ids(ids[:100], synth_model._mix_keys(123, 1)), mixed[:100])


def test_an_interrupted_run_leaves_no_train_txt(tmp_path, monkeypatch):
    real = synth._format_lines
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(synth, "BLOCK_ROWS", 1000)
    monkeypatch.setattr(synth, "_format_lines", failing)
    with pytest.raises(MLETError, match="disk full; no train.txt was written"):
        synth.write_synthetic(tmp_path / "new", 5000, progress=False)
    assert os.listdir(tmp_path / "new") == []  # no train.txt, no temporary files

    monkeypatch.setattr(synth, "_format_lines", real)
    synth.write_synthetic(tmp_path / "old", 2000, progress=False)
    before = files(tmp_path / "old")
    monkeypatch.setattr(synth, "_format_lines", failing)
    calls.clear()
    with pytest.raises(MLETError, match="disk full"):
        synth.write_synthetic(tmp_path / "old", 5000, seed=9, progress=False, force=True)
    assert files(tmp_path / "old") == before  # the finished dataset is still whole
    assert sorted(os.listdir(tmp_path / "old")) == ["synth.json", "train.txt", "train_prob.txt"]


def test_memory_does_not_grow_with_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "BLOCK_ROWS", 1000)
    peaks = []
    for rows in (3000, 12000):
        tracemalloc.start()
        synth.write_synthetic(tmp_path / str(rows), rows, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.1 * peaks[0]


def test_table_sizes():
    assert synth_model.table_sizes(1) == list(synth_model.CRITEO_TABLE_SIZES)
    small = synth_model.table_sizes(0.01)
    assert small[2] == 101313 and small[8] == 3 and min(small) == 3
    assert synth_model.table_sizes(1e-9) == [min(n, 4) for n in synth_model.CRITEO_TABLE_SIZES]
    for bad in (0, -1, float("nan"), 1000):
        with pytest.raises(MLETError, match="--scale"):
            synth_model.table_sizes(bad)


def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["synth", str(out), "--rows", "500", "--seed", "1", "--rank", "4", "--scale", "0.001"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "wrote 500 rows" in captured.out and "oracle AUC" in captured.out
    assert captured.err == ""  # no progress bar when stderr is not a terminal
    info = json.loads((out / "synth.json").read_text())
    assert (info["rows"], info["seed"], info["rank"], info["scale"]) == (500, 1, 4, 0.001)
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "train.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    before = (out / "train.txt").read_bytes()

    assert main(["synth", str(out), "--rows", "500", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass --force" in err
    assert (out / "train.txt").read_bytes() == before
    assert main(["synth", str(out), "--rows", "500", "--seed", "2", "--force", "--quiet"]) == 0
    assert (out / "train.txt").read_bytes() != before


@pytest.mark.parametrize("args, flag", [
    (["--rows", "0"], "--rows/--samples"), (["--rows", "1.5"], "--rows/--samples"),
    (["--samples", "many"], "--rows/--samples"),
    (["--rows", "5", "--scale", "0"], "--scale"), (["--rows", "5", "--scale", "-1"], "--scale"),
    (["--rows", "5", "--scale", "x"], "--scale"), (["--rows", "5", "--rank", "0"], "--rank"),
    (["--rows", "5", "--rank", "2.5"], "--rank"), (["--rows", "5", "--seed", "s"], "--seed"),
    (["--rows", "5", "--zipf", "0"], "--zipf"), (["--rows", "5", "--zipf", "x"], "--zipf"),
])
def test_cli_bad_arguments_name_the_flag(tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "d")] + args)
    assert exit_info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, message", [
    (["--rank", "5000"], "--rank"), (["--scale", "1000"], "--scale"), (["--zipf", "6"], "--zipf"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    assert main(["synth", str(tmp_path / "d"), "--rows", "5"] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dlrm-mlet: error:") and message in err
    (tmp_path / "file").write_text("x")
    assert main(["synth", str(tmp_path / "file"), "--rows", "5"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    synth.write_synthetic(tmp_path / "a", 3000, progress=True)
    assert "3.00k/3.00k" in terminal.getvalue() and "rows/s" in terminal.getvalue()
    terminal.truncate(0)
    synth.write_synthetic(tmp_path / "b", 3000, progress=False)
    assert terminal.getvalue() == ""
