"""``dlrm-mlet advise``: the pilot's data, its verdict's rule and words, and real pilots on data they never saw."""

import json
import os

import numpy as np
import pytest

from dlrm_mlet.cli import main
from dlrm_mlet.data.avazu import AVAZU_COLUMNS, preprocess_avazu
from dlrm_mlet.data.kaggle import KAGGLE_PROCESSED
from dlrm_mlet.errors import MLETError
from dlrm_mlet.tools import advise
from dlrm_mlet.tools.report import summarize
from dlrm_mlet.tools.synth_processed import write_processed
from conftest import terabyte_layouts
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


@pytest.fixture(scope="module")
def terabyte(tmp_path_factory):
    """24 synthetic days of 100 rows as DLRM's processed .npz and as its memory-map day files."""
    plain, mapped = terabyte_layouts(tmp_path_factory.mktemp("tb"), 2400)
    return plain["processed"], mapped["reordered"]


@pytest.mark.parametrize("layout", ["processed", "day files"])
def test_a_terabyte_pilot_keeps_its_test_day_in_dlrm_kaggle_loader_s_seven(terabyte, layout, tmp_path):
    """DLRM's Kaggle loader (the pilot's) splits by 7 days: 23 training days regrouped into 6, the last day last."""
    processed, days = terabyte
    full = advise.full_data(processed if layout == "processed" else days[3])
    assert full["days"] == [100] * 24 and full["train"] == 2300
    path = advise.write_pilot(full, 600, str(tmp_path))
    kept = list(np.load(tmp_path / "train_day_count.npz")["total_per_file"])
    assert len(kept) == 7 and sum(kept[:-1]) == 23 * 25 and kept[-1] == 25
    sources = [processed] * 24 if layout == "processed" else days
    starts = [100 * i for i in range(24)] if layout == "processed" else [0] * 24
    with np.load(path) as pilot:
        for name in ("y", "X_int"):
            rows = np.concatenate([np.load(f)[name][a:a + 25] for f, a in zip(sources, starts)])
            assert np.array_equal(pilot[name], rows)
    assert advise.full_data(path)["train"] == 23 * 25


def avazu_lines(n, seed=5):
    """Avazu rows with skewed values in every categorical column, in time order, as the raw file is."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        values = [f"v{int(rng.zipf(1.6)) % (40 + 9 * c)}" for c in range(21)]
        lines.append(",".join([str(i), str(int(rng.random() < 0.17)), f"141021{i * 24 // n:02d}"] + values))
    return lines


@pytest.fixture(scope="module")
def avazu(tmp_path_factory):
    folder = tmp_path_factory.mktemp("avazu-user")
    lines = avazu_lines(6000)
    (folder / "train.csv").write_text(",".join(AVAZU_COLUMNS) + "\n" + "".join(line + "\n" for line in lines))
    return preprocess_avazu(str(folder / "train.csv"), str(folder / "avazu_processed"), quiet=True), lines


def test_an_avazu_pilot_is_the_cache_of_its_rows_alone(avazu, tmp_path):
    """Random rows (the file runs in time order), numbered and split as if only they had been preprocessed."""
    cache, lines = avazu
    full = advise.full_data(cache)
    assert full["kind"] == "avazu" and full["rows"] == 6000 and full["train"] == 4800
    pilot = advise.write_pilot(full, 1500, str(tmp_path / "pilot"))
    rows = np.sort(np.random.default_rng(0).choice(6000, 1500, replace=False))
    assert rows[-1] > 4500  # not the first hours only
    (tmp_path / "alone.csv").write_text("".join(lines[i] + "\n" for i in rows))
    alone = preprocess_avazu(str(tmp_path / "alone.csv"), str(tmp_path / "alone"), quiet=True)
    for name in ("X_cat", "X_int", "y", "train_idx", "val_idx", "test_idx"):
        assert np.array_equal(np.load(os.path.join(pilot, f"{name}.npy")), np.load(os.path.join(alone, f"{name}.npy")))
    counts = [json.load(open(os.path.join(cache, "meta.json")))["counts"] for cache in (pilot, alone)]
    assert counts[0] == counts[1]
    assert advise.full_data(pilot)["share"] >= full["share"]


def arms_from(peaks, gap, seeds):
    sweep, rows, _ = fake_results(peaks, gap)
    sweep([(d, k, lr, s) for (d, k) in peaks for lr in (0.25, 0.5, 1.0) for s in seeds])
    return summarize(rows())


def test_once_a_step_does_not_fit_no_later_step_runs(tmp_path):
    """A third seed for close pairs, or a further lr, before every arm has its second seed would leave
    the verdict with arms at one seed each."""
    import time

    peaks = {(4, 0): 3.0, (16, 0): -1.0, (64, 0): -1.0, (4, 64): -1.0, (16, 64): -1.0}  # d=4 peaks past its grid
    sweep, rows, ran = fake_results(peaks)
    pilot = advise.Pilot("dlrm", str(tmp_path / "p.npz"), str(tmp_path), 16, 64, 1.0, 1, True)
    pilot.sweep, pilot.rows = sweep, rows
    pilot.deadline = time.monotonic() + 5  # seed 0 runs (nothing measured yet); seed 1's 15 one-second runs do not fit
    pilot.run()
    assert {seed for *_, seed in ran} == {0} and len(ran) == 15
    assert pilot.skipped == ["seed 1", "an lr beyond the edge of the grid", "seed 2 for close arms"]


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
    with pytest.raises(MLETError, match="train.txt: give DLRM's processed Criteo .npz .*, one of its memory-map "
                                        "day files .* or an Avazu cache"):
        advise.full_data(str(tmp_path / "train.txt"))
    with pytest.raises(MLETError, match="not an Avazu cache folder"):
        advise.full_data(str(tmp_path))
    with pytest.raises(MLETError, match="does not take DLRM's .bin files"):
        advise.full_data(str(tmp_path / "terabyte_processed_train.bin"))
    assert main(["advise", str(data), "--d", "16", "--k", "8", "--dlrm-dir", str(tmp_path)]) == 2
    assert "MLET needs k >> d" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["kaggle", "avazu"])
def test_advise_prints_its_verdict_first_on_data_it_never_saw(dlrm_dir, data, avazu, kind, tmp_path, capsys):
    path, samples = (data, "4000") if kind == "kaggle" else (avazu[0], "3000")
    assert main(["advise", str(path), "--minutes", "0.5", "--d", "16", "--samples", samples, "--dlrm-dir", dlrm_dir,
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
