"""The paper's experiment: the sweep against real DLRM (the report's tests are in test_report.py)."""

import csv
import os

from dlrm_mlet.cli import main
from dlrm_mlet.data.frequency import BUCKETS
from dlrm_mlet.tools.synth import write_synthetic


def test_sweep_tunes_records_divergence_and_resumes_without_rerunning(dlrm_dir, tmp_path, capsys):
    write_synthetic(tmp_path / "data", 3000, seed=1, progress=False)
    out = tmp_path / "r.csv"
    argv = ["sweep", "--raw-data-file", str(tmp_path / "data" / "train.txt"), "--out", str(out),
            "--dlrm-dir", dlrm_dir, "--d", "4", "--k", "32", "--lrs", "0.1,1000", "--jobs", "2", "--quiet",
            "--", "--mlet-proj-init=xavier"]  # an MLET option: the baselines leave it out (DLRM would refuse it)
    assert main(argv) == 0
    rows = {(r["k"], r["lr"]): r for r in csv.DictReader(open(out))}
    assert sorted(rows) == [("0", "0.1"), ("0", "1000.0"), ("32", "0.1"), ("32", "1000.0")]
    base, mlet = rows["0", "0.1"], rows["32", "0.1"]
    for r in (base, mlet):
        assert r["status"] == "ok" and 0.5 < float(r["val_auc"]) < 1 and 0.5 < float(r["test_auc"]) < 1
        assert sum(int(r[f"test_{b[0]}_samples"]) for b in BUCKETS) == 214  # every test sample in one bucket
    assert base["inference_embedding_bytes"] == mlet["inference_embedding_bytes"]  # folded: stock size
    trained = int(mlet["training_embedding_bytes"]) / int(mlet["inference_embedding_bytes"])
    assert 8 <= trained < 8.5  # k/d = 8, plus the projections
    blown = rows["32", "1000.0"]  # an lr no model survives: recorded, with why, and no metrics
    assert blown["status"] == "diverged" and blown["note"] and blown["test_auc"] in ("", "0.5")
    assert "d=4 k=32 lr=1000.0 seed=0: diverged" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "r_work" / "runs" / "d4_k32_lr0.1_s0_e1" / "model.pt")  # sizes kept
    before = open(out).read()
    assert main(argv) == 0  # everything done: nothing runs again, the rows stay
    assert open(out).read() == before and "d=4 k=" not in capsys.readouterr().out
    assert main(["report", str(out), "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "d=4 k=32 lr=1000" in report.split("Diverged runs")[1]


def test_sweep_takes_learning_rates_only_from_lrs(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    raw.write_text("")
    assert main(["sweep", "--raw-data-file", str(raw), "--out", str(tmp_path / "r.csv"),
                 "--dlrm-dir", str(tmp_path), "--", "--learning-rate=0.3"]) == 2
    assert "give learning rates with --lrs" in capsys.readouterr().err


def test_a_finite_low_auc_run_is_an_ordinary_result_and_constant_predictions_are_diverged():
    from dlrm_mlet.dlrm.evaluation import binary_metrics
    from dlrm_mlet.tools.sweep import _collapsed

    y = [0, 1, 0, 1, 1, 0, 0, 1]
    weak = binary_metrics([0.5, 0.49, 0.52, 0.48, 0.47, 0.51, 0.50, 0.49], y)  # AUC below 0.5, finite
    assert weak["auc"] < 0.5 and not weak["constant"] and _collapsed(weak, weak) == ""
    flat = binary_metrics([0.3] * 8, y)
    assert flat["constant"] and _collapsed(weak, flat) == "val predictions all equal: the model collapsed"


def test_a_sweep_refused_for_a_missing_dlrm_leaves_no_folder(tmp_path, capsys):
    raw = tmp_path / "train.txt"
    raw.write_text("x\n")
    assert main(["sweep", "--raw-data-file", str(raw), "--out", str(tmp_path / "r.csv"),
                 "--dlrm-dir", str(tmp_path / "nodlrm"), "--quiet"]) == 2
    assert "not a DLRM checkout" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]


def test_sweep_scores_int8_and_int4_serving_and_keeps_qr_tables_apart(dlrm_dir, tmp_path, capsys):
    write_synthetic(tmp_path / "data", 3000, seed=1, progress=False)
    out = tmp_path / "r.csv"
    argv = ["sweep", "--raw-data-file", str(tmp_path / "data" / "train.txt"), "--out", str(out),
            "--dlrm-dir", dlrm_dir, "--d", "4", "--k", "32", "--lrs", "0.1", "--quiet"]
    assert main(argv + ["--quantize", "8,4"]) == 0
    assert main(argv + ["--k", "0", "--", "--qr-flag", "--qr-threshold=100"]) == 0  # the same (d, k, lr): kept apart
    rows = {(r["tables"], r["k"]): r for r in csv.DictReader(open(out))}
    assert sorted(rows) == [("plain", "0"), ("plain", "32"), ("qr mult c4 t100", "0")]
    for r in (rows["plain", "0"], rows["plain", "32"]):
        n_rows = int(r["inference_embedding_bytes"]) // (4 * 4)  # fp32, d = 4
        assert int(r["inference_embedding_bytes_int8"]) == n_rows * (4 + 8)  # a byte a value, fp32 scale and bias
        assert int(r["inference_embedding_bytes_int4"]) == n_rows * (2 + 4)  # half a byte, fp16 scale and bias
        for bits, tolerance in ((8, 0.01), (4, 0.05)):
            assert abs(float(r[f"test_auc_int{bits}"]) - float(r["test_auc"])) < tolerance
            assert float(r[f"test_log_loss_int{bits}"]) != float(r["test_log_loss"])  # really quantized
            assert r[f"val_auc_int{bits}"] != ""
    assert "quantized emb sizes" in open(tmp_path / "r_work" / "runs" / "d4_k32_lr0.1_s0_e1" / "int4.log").read()
    qr = rows["qr mult c4 t100", "0"]
    assert qr["test_auc_int8"] == "" and int(qr["inference_embedding_bytes"]) < int(rows["plain", "0"]["inference_embedding_bytes"])
    assert main(["frontier", str(out), "--plot", str(tmp_path / "f.png")]) == 0
    text = capsys.readouterr().out
    assert "| MLET | int4 | 4 | 32 |" in text and "| QR mult c4 t100 | fp32 | 4 | - |" in text
    assert main(argv + ["--quantize", "8", "--", "--qr-flag"]) == 2  # stock serves no quantized QR table
    assert "quantized serving is scored for plain tables only" in capsys.readouterr().err
    # A precision added to a finished sweep: its runs trained again (the same models), their rows completed
    assert main(argv + ["--quantize", "onnx"]) == 0
    again = {(r["tables"], r["k"]): r for r in csv.DictReader(open(out))}
    assert sorted(again) == sorted(rows)
    for key in (("plain", "0"), ("plain", "32")):
        r, before = again[key], rows[key]
        assert r["test_auc"] == before["test_auc"] and r["test_auc_int8"] == before["test_auc_int8"]
        assert r["inference_embedding_bytes_onnx_int8"] == before["inference_embedding_bytes_int8"]
        assert abs(float(r["test_auc_onnx_int8"]) - float(r["test_auc"])) < 0.01
        assert float(r["test_log_loss_onnx_int8"]) != float(r["test_log_loss"]) and r["val_auc_onnx_int8"] != ""
    assert "int8 ONNX export" in open(tmp_path / "r_work" / "runs" / "d4_k32_lr0.1_s0_e1" / "onnx_int8.log").read()
    assert main(["frontier", str(out), "--plot", str(tmp_path / "g.png")]) == 0
    assert "| MLET | onnx_int8 | 4 | 32 |" in capsys.readouterr().out


def _dlrm_processes(folder):
    """Processes whose command line names ``folder`` (a sweep's DLRM runs)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if str(folder).encode() in handle.read() and int(pid) != os.getpid():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_sweep_stopped_by_sigterm_stops_its_run_and_resumes_it_from_its_checkpoint(dlrm_dir, tmp_path):
    """What a job scheduler does: SIGTERM in the middle of a long run, later the same command again.
    The run under way stops with the sweep, and the next sweep resumes it from its last checkpoint to
    the result of a sweep never stopped (on processed data read memory-mapped, as at full size)."""
    import signal
    import subprocess
    import sys
    import time

    from dlrm_mlet.tools.synth_processed import write_processed

    write_processed(tmp_path / "data", 300_000, seed=2, scale=0.002, rank=4, support="published", progress=False)
    data = ["--", f"--processed-data-file={tmp_path / 'data' / 'kaggleAdDisplayChallenge_processed.npz'}",
            "--mlet-mmap-data"]

    def sweep(out, work):
        return ["sweep", "--raw-data-file", str(tmp_path / "data" / "train.txt"), "--out", str(out), "--dlrm-dir",
                dlrm_dir, "--work", str(work), "--d", "4", "--k", "32", "--lrs", "0.1", "--no-baseline", "--quiet",
                "--checkpoint-every", "1024"] + data

    assert main(sweep(tmp_path / "ref.csv", tmp_path / "ref")) == 0
    out, work = tmp_path / "r.csv", tmp_path / "w"
    run = work / "runs" / "d4_k32_lr0.1_s0_e1"
    proc = subprocess.Popen([sys.executable, "-m", "dlrm_mlet"] + sweep(out, work), stderr=subprocess.PIPE, text=True)
    while not (run / "resume.pt").exists():
        assert proc.poll() is None, "the sweep ended before its run wrote a checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "interrupted: d=4 k=32 lr=0.1 seed=0 (run the sweep again to resume it from its checkpoint)" in \
        proc.stderr.read()
    time.sleep(0.5)
    assert _dlrm_processes(work) == []  # its run stopped with it
    assert not out.exists() and (run / "resume.pt").exists()
    assert main(sweep(out, work)) == 0
    log = (run / "run.log").read_text()
    assert "MLET: resuming from" in log and "Saved at: epoch = 0/1, batch = 1024/" in log
    ref, row = next(csv.DictReader(open(tmp_path / "ref.csv"))), next(csv.DictReader(open(out)))
    assert row["test_auc"] == ref["test_auc"] and row["val_auc"] == ref["val_auc"]
    assert int(row["train_samples"]) == 257_143 and int(row["peak_memory_mib"]) > 0
    assert not (run / "resume.pt").exists()  # removed with the run's other checkpoints once it is a row


def _add_rows(path, seed, count):
    from dlrm_mlet.tools.results_csv import FIELDS, update_rows

    for i in range(count):
        row = {**dict.fromkeys(FIELDS, ""), "dataset": "kaggle", "regime": "r", "optimizer": "sgd", "tables": "plain",
               "d": "4", "k": "0", "lr": str(0.001 * (i + 1)), "seed": str(seed), "epochs": "1", "status": "ok"}
        update_rows(path, lambda rows, row=row: rows + [row])


def test_sweeps_writing_one_csv_at_once_keep_each_others_rows(tmp_path):
    """A curve and its controls sweep into one CSV from two processes: every row of both is kept."""
    import multiprocessing

    path = str(tmp_path / "r.csv")
    procs = [multiprocessing.get_context("fork").Process(target=_add_rows, args=(path, seed, 25)) for seed in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    rows = list(csv.DictReader(open(path)))
    assert sorted((r["seed"], r["lr"]) for r in rows) == sorted(
        (str(seed), str(0.001 * (i + 1))) for seed in (0, 1) for i in range(25))


def test_a_sweep_whose_largest_run_would_not_fit_is_refused_before_any_run(dlrm_dir, tmp_path, capsys, monkeypatch):
    from dlrm_mlet.dlrm import space
    from dlrm_mlet.tools.synth_processed import write_processed

    write_processed(tmp_path / "data", 4000, seed=2, scale=0.01, rank=2, support="published", progress=False)
    monkeypatch.setattr(space, "free_bytes", lambda path: 2**20)
    argv = ["sweep", "--raw-data-file", str(tmp_path / "data" / "train.txt"), "--out", str(tmp_path / "r.csv"),
            "--dlrm-dir", dlrm_dir, "--d", "4,16", "--k", "256", "--lrs", "0.1", "--quiet", "--",
            f"--processed-data-file={tmp_path / 'data' / 'kaggleAdDisplayChallenge_processed.npz'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the run d=16 k=256 writes" in err and "it has 1 MiB: free some space or give --work elsewhere" in err
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r_work" / "runs").exists()
