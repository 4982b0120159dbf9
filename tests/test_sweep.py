"""The paper's experiment: the sweep against real DLRM, and the report (table, plot, iso-AUC)."""

import csv

import pytest

from dlrm_mlet.tools import sweep
from dlrm_mlet.cli import main
from dlrm_mlet.tools.synth import write_synthetic

MIB = 2**20


def row(d, k, seed, auc):
    return {"dataset": "kaggle", "d": d, "k": k, "seed": seed, "epochs": 1, "test_auc": auc,
            "test_accuracy": 0.75, "test_log_loss": 0.5, "train_seconds": 10, "train_ms_per_it": 2.0,
            "inference_embedding_bytes": d * MIB // 4, "training_embedding_bytes": (k or d) * MIB // 4}


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "r.csv"
    sweep.write_rows(path, [
        row(4, 0, 0, 0.70), row(4, 0, 1, 0.70), row(16, 0, 0, 0.72), row(16, 0, 1, 0.72),
        row(4, 64, 0, 0.73), row(4, 64, 1, 0.71),  # mean 0.72: matches baseline d=16 at 4x smaller
        row(16, 64, 0, 0.715), row(16, 64, 1, 0.715),  # below baseline d=16: MLET does not help there
    ])
    return path


def test_report_gives_the_table_the_plot_and_the_iso_auc_saving(results, tmp_path, capsys):
    png, md = tmp_path / "p.png", tmp_path / "t.md"
    assert main(["report", str(results), "--plot", str(png), "--markdown", str(md), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| kaggle | MLET | 4 | 64 | 1.000 | 16.000 | 0.7200 ± 0.0141 |" in out
    assert "| kaggle | baseline | 16 | - | 4.000 | 4.000 | 0.7200 ± 0.0000 |" in out
    assert ("baseline d=16 (AUC 0.7200, 4.00 MiB) is matched at the smallest by MLET d=4 k=64 "
            "(AUC 0.7200, 1.00 MiB): 4.0x smaller at inference") in out
    assert "at d=16 no k beats the baseline (best MLET AUC 0.7150 with k=64, baseline 0.7200)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and md.read_text() in out + "\n"
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_report_refuses_a_file_that_is_not_a_sweep(tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["report", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a sweep results file (columns a, b)" in err


def test_sweep_trains_patched_dlrm_and_resumes_without_rerunning(dlrm_dir, tmp_path, capsys):
    write_synthetic(tmp_path / "data", 3000, seed=1, progress=False)
    out = tmp_path / "r.csv"
    argv = ["sweep", "--raw-data-file", str(tmp_path / "data" / "train.txt"), "--out", str(out),
            "--dlrm-dir", dlrm_dir, "--d", "4", "--k", "32", "--quiet"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(r["d"], r["k"], r["seed"]) for r in rows] == [("4", "0", "0"), ("4", "32", "0")]
    base, mlet = rows
    assert 0 < float(mlet["test_auc"]) < 1 and 0 < float(mlet["test_log_loss"])
    assert base["inference_embedding_bytes"] == mlet["inference_embedding_bytes"]  # folded: stock size
    trained = int(mlet["training_embedding_bytes"]) / int(mlet["inference_embedding_bytes"])
    assert 8 <= trained < 8.5  # k/d = 8, plus the projections
    assert "d=4 k=32 seed=0: AUC" in capsys.readouterr().out
    assert main(argv) == 0  # everything done: nothing runs again, the rows stay
    assert list(csv.DictReader(open(out))) == rows
    assert "d=4 k=" not in capsys.readouterr().out
