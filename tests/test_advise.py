"""``dlrm-mlet advise``: the pilot's data, its verdict's rule and words, and one real pilot on data it never saw."""

import numpy as np
import pytest

from dlrm_mlet.cli import main
from dlrm_mlet.data.kaggle import KAGGLE_PROCESSED
from dlrm_mlet.errors import MLETError
from dlrm_mlet.tools import advise
from dlrm_mlet.tools.report import summarize
from dlrm_mlet.tools.synth_processed import write_processed
from test_tuning import fake_results


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    write_processed(folder, 8000, seed=11, scale=0.003, rank=16, zipf=0.9, support="published", progress=False)
    return folder / KAGGLE_PROCESSED


def test_the_pilot_is_the_first_part_of_each_day_renumbered(data, tmp_path):
    full = advise.full_data(str(data))
    path = advise.write_pilot(full, 2000, str(tmp_path))
    with np.load(data) as source, np.load(path) as pilot, np.load(tmp_path / "train_day_count.npz") as days:
        kept = list(days["total_per_file"])
        assert kept == [int(np.ceil(n * 2000 / 8000)) for n in full["days"]]
        starts = np.cumsum([0] + full["days"][:-1])
        rows = np.concatenate([np.arange(a, a + n) for a, n in zip(starts, kept)])
        assert np.array_equal(pilot["y"], source["y"][rows]) and np.array_equal(pilot["X_int"], source["X_int"][rows])
        for f in range(26):  # renumbered 0..n-1 in the order of the original numbers: the same partition
            values = np.unique(source["X_cat"][rows, f])
            assert pilot["counts"][f] == len(values)
            assert np.array_equal(values[pilot["X_cat"][:, f]], source["X_cat"][rows, f])
    pilot_data = advise.full_data(path)
    assert pilot_data["share"] >= full["share"]  # fewer samples: rows seen less often


def arms_from(peaks, gap, seeds):
    sweep, rows, _ = fake_results(peaks, gap)
    sweep([(d, k, lr, s) for (d, k) in peaks for lr in (0.25, 0.5, 1.0) for s in seeds])
    return summarize(rows())


def test_the_verdict_says_pays_only_with_a_lead_of_one_standard_error_and_more_than_one_seed():
    peaks = {(4, 0): -1.0, (16, 0): -1.0, (64, 0): -1.0, (4, 64): -1.0, (16, 64): -1.0}
    pays = arms_from(peaks, {(4, 64): 0.01, (16, 64): 0.012, (16, 0): 0.002}, (0, 1))
    line, entry = advise.verdict(pays, 16)
    assert line.startswith("verdict: MLET pays on this pilot: MLET d=4 (k=64) beat the best baseline (d=16)")
    assert "tables 4x smaller" in line and "at equal d=16 MLET gains +0.0100" in line
    no = arms_from(peaks, {(16, 0): 0.01, (64, 0): 0.02}, (0, 1))
    line, _ = advise.verdict(no, 16)
    assert line.startswith("verdict: MLET does not shrink the model on this pilot") and "(d=64" in line
    narrowest = arms_from(peaks, {(4, 0): 0.01, (4, 64): 0.012}, (0, 1))  # nothing narrower than d=4 was tried
    line, _ = advise.verdict(narrowest, 16)
    assert line.startswith("verdict: MLET does not shrink the model on this pilot: the best baseline is already "
                           "the narrowest width tried (d=4") and "MLET at d=4 (k=64) scored +0.0020" in line
    assert "no narrower MLET model matched" not in line
    one = arms_from(peaks, {(4, 64): 0.01}, (0,))
    assert advise.verdict(one, 16)[0].startswith("verdict: undecided: the pilot's time allowed one seed")


def test_bad_input_is_one_line(data, tmp_path, capsys):
    with pytest.raises(MLETError, match="processed Criteo .npz"):
        advise.full_data(str(tmp_path / "train.txt"))
    assert main(["advise", str(data), "--d", "16", "--k", "8", "--dlrm-dir", str(tmp_path)]) == 2
    assert "MLET needs k >> d" in capsys.readouterr().err


def test_advise_prints_its_verdict_first_on_data_it_never_saw(dlrm_dir, data, tmp_path, capsys):
    assert main(["advise", str(data), "--minutes", "0.5", "--d", "16", "--samples", "4000", "--dlrm-dir", dlrm_dir,
                 "--work", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("verdict: ") and "baseline d=" in first
    assert "What the pilot could not see: it trained on" in out and "The full run" in out
    assert "--mlet-table-lr-scale" in out  # the control the pilot leaves out is named
    for arm in ("baseline d=4 ", "baseline d=16 ", "baseline d=64 ", "MLET d=4 k=64 ", "MLET d=16 k=64 "):
        assert arm in out


def test_every_mlet_width_is_set_against_the_best_baseline_of_any_width():
    """The papers' 4x is d=16 against d=64: each width's best k is scored, not only the narrowest."""
    from dlrm_mlet.tools import pays
    from dlrm_mlet.tools.report import tuned

    peaks = {(4, 0): -1.0, (16, 0): -1.0, (64, 0): -1.0, (4, 64): -1.0, (16, 64): -1.0}
    arms = arms_from(peaks, {(64, 0): 0.004, (16, 64): 0.005, (4, 64): 0.001}, (0, 1))
    (entry,) = pays.summarize_regimes(arms, tuned)
    widths = {w["d"]: w for w in entry["widths"]}
    assert sorted(widths) == [4, 16] and entry["narrowest"] == widths[4]
    assert widths[16]["gap"] == pytest.approx(0.001) and widths[16]["smaller"] == 4
    assert widths[4]["gap"] == pytest.approx(-0.003) and widths[4]["smaller"] == 16
    assert entry["saving"] == 4  # d=16 leads d=64; d=4 does not
