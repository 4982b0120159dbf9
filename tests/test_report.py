"""``dlrm-mlet report`` on hand-made sweep CSVs: lr chosen on validation, iso-AUC, divergence, rare items."""

import json

import pytest

from dlrm_mlet.cli import main
from dlrm_mlet.errors import MLETError
from dlrm_mlet.tools import results_csv as sweep
from dlrm_mlet.tools.report import report

MIB = 2**20


def row(**overrides):
    """One sweep row with every column filled; the embedding bytes follow d and k unless given."""
    r = dict.fromkeys(sweep.FIELDS, "")
    r.update(dataset="kaggle", tables="plain", d=4, k=0, lr=0.1, seed=0, epochs=1, status="ok", val_auc=0.7,
             val_log_loss=0.5, val_accuracy=0.75, test_auc=0.7, test_log_loss=0.5, test_accuracy=0.75,
             train_seconds=10, train_ms_per_it=2.0)
    r.update(overrides)
    if "inference_embedding_bytes" not in overrides:
        r["inference_embedding_bytes"] = r["d"] * MIB // 4
    if "training_embedding_bytes" not in overrides:
        r["training_embedding_bytes"] = (r["k"] or r["d"]) * MIB // 4
    return r


def diverged(**overrides):
    return row(**{"status": "diverged", "note": "loss nan at iteration 12", "val_auc": "", "val_log_loss": "",
                  "val_accuracy": "", "test_auc": "", "test_log_loss": "", "test_accuracy": "",
                  "train_ms_per_it": "", **overrides})


def write(tmp_path, rows, name="r.csv"):
    path = tmp_path / name
    sweep.write_rows(path, rows)
    return str(path)


# (d, k): test AUC per seed at lr 0.1, then at lr 0.01; validation AUC = test AUC, so the best lr is plain.
ISO = {
    (4, 0): ([0.70, 0.70], [0.69, 0.69]),
    (8, 0): ([0.74, 0.74], [0.73, 0.73]),
    (16, 0): ([0.72, 0.72], [0.71, 0.71]),  # wider but worse than d=8: its reference is d=8
    (4, 32): ([0.70, 0.70], [0.742, 0.742]),
    (4, 64): ([0.71, 0.71], [0.735, 0.755]),  # mean 0.745, sd 0.0141: se 0.01 > its 0.005 lead over d=8
    (8, 64): ([0.73, 0.73], [0.76, 0.76]),
    (16, 64): ([0.715, 0.715], [0.70, 0.70]),
}


@pytest.fixture
def iso_csv(tmp_path):
    return write(tmp_path, [row(d=d, k=k, lr=lr, seed=seed, val_auc=auc, test_auc=auc)
                            for (d, k), per_lr in ISO.items() for lr, aucs in zip((0.1, 0.01), per_lr)
                            for seed, auc in enumerate(aucs)])


def section(text, heading):
    return text.split(heading + "\n\n", 1)[1].split("\n\n", 1)[0].splitlines()


def test_the_lr_is_chosen_on_validation_and_its_test_metrics_are_reported(tmp_path):
    csv = write(tmp_path, [
        row(lr=0.01, seed=0, val_auc=0.71, test_auc=0.69, test_log_loss=0.52),
        row(lr=0.01, seed=1, val_auc=0.71, test_auc=0.70, test_log_loss=0.54),
        row(lr=0.1, seed=0, val_auc=0.70, test_auc=0.75, test_log_loss=0.40),  # best on test: not chosen
        row(lr=0.1, seed=1, val_auc=0.70, test_auc=0.75, test_log_loss=0.40),
    ])
    text = report(csv)
    assert ("| kaggle | 1 | baseline | 4 | - | 0.01 (edge) | 0.7100 | 0.6950 ± 0.0071 | 0.5300 ± 0.0141 | "
            "0.7500 ± 0.0000 | 2 | 1.000 | 1.000 | 2.00 |") in text
    assert section(text, "### kaggle, epochs 1")[2] == "| baseline | 4 | - | **0.7100** | 0.7000 |"


def test_each_epoch_count_is_its_own_experiment(tmp_path):
    csv = write(tmp_path, [row(epochs=1, test_auc=0.70), row(epochs=3, test_auc=0.78, val_auc=0.6)])
    text = report(csv)
    assert "| kaggle | 1 | baseline | 4 | - | 0.1 | 0.7000 | 0.7000 ± 0.0000 |" in text
    assert "| kaggle | 3 | baseline | 4 | - | 0.1 | 0.6000 | 0.7800 ± 0.0000 |" in text
    assert "- kaggle, epochs 3: baseline d=4: reference baseline d=4 (AUC 0.7800, 1.000 MiB)" in text


def test_an_lr_with_a_diverged_seed_is_not_eligible_and_the_map_shows_it(tmp_path, capsys):
    csv = write(tmp_path, [
        row(k=0, lr=0.1, seed=0), row(k=0, lr=0.1, seed=1),
        row(k=64, lr=0.1, seed=0, val_auc=0.72, test_auc=0.73), row(k=64, lr=0.1, seed=1, val_auc=0.72, test_auc=0.73),
        row(k=64, lr=1.0, seed=0, val_auc=0.80, test_auc=0.80), diverged(k=64, lr=1.0, seed=1),
    ])
    text = report(csv)
    assert ("| kaggle | 1 | MLET | 4 | 64 | 0.1 (edge) | 0.7200 | 0.7300 ± 0.0000 | 0.5000 ± 0.0000 | 0.7300 ± 0.0000 | 2 |"
            in text)
    assert section(text, "### kaggle, epochs 1")[2:] == [
        "| baseline | 4 | - | **0.7000** | - |",
        "| MLET | 4 | 64 | **0.7200** | div 1/2 |",
    ]
    assert "Diverged runs:\n- d=4 k=64 lr=1 seed=1: loss nan at iteration 12\n" in text
    assert main(["report", csv, "--single-lr", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| test AUC at lr 1 |" in out and "| 0.5000 ± 0.0000 | diverged (1/2) | 2 |" in out
    assert "### At the single lr 1 (no tuning)\n\n- kaggle, epochs 1: no baseline was run at the single lr (it is not in their grid)\n" in out


def test_an_arm_where_every_lr_diverged_is_reported_as_such(tmp_path):
    csv = write(tmp_path, [row(k=0), diverged(d=4, k=64, lr=0.1), diverged(d=4, k=64, lr=1.0, note="")])
    text = report(csv)
    assert ("| kaggle | 1 | MLET | 4 | 64 | all lrs diverged | - | - | - | diverged (1/1) | - | 1.000 | 16.000 | - |"
            in text)
    assert section(text, "### kaggle, epochs 1")[3] == "| MLET | 4 | 64 | div 1/1 | div 1/1 |"
    assert "- d=4 k=64 lr=0.1 seed=0: loss nan at iteration 12\n- d=4 k=64 lr=1 seed=0: no note" in text
    assert section(text, "### At each model's tuned lr") == [
        "- kaggle, epochs 1: baseline d=4: reference baseline d=4 (AUC 0.7000, 1.000 MiB): "
        "no MLET model tried matches it"]


def test_iso_auc_follows_the_frontier_and_the_one_standard_error_rule(iso_csv):
    text = report(iso_csv)
    head = "- kaggle, epochs 1: baseline d="
    assert section(text, "### At each model's tuned lr") == [
        f"{head}4: reference baseline d=4 (AUC 0.7000, 1.000 MiB): matched by MLET d=4 k=64 "
        "(AUC 0.7450, 1.000 MiB; gap +0.0450, se 0.0100): same size: no saving",
        # k=64 at d=4 has the higher mean but leads d=8 by less than its se: k=32 is the match
        f"{head}8: reference baseline d=8 (AUC 0.7400, 2.000 MiB): matched by MLET d=4 k=32 "
        "(AUC 0.7420, 1.000 MiB; gap +0.0020, se 0.0000): 2.0x smaller",
        # the frontier: d=16 is worse than d=8, so the saving is against d=8's 2 MiB, not 4x
        f"{head}16: reference baseline d=8 (AUC 0.7400, 2.000 MiB): matched by MLET d=4 k=32 "
        "(AUC 0.7420, 1.000 MiB; gap +0.0020, se 0.0000): 2.0x smaller",
        "- kaggle, epochs 1: at d=16 no k beats the baseline (best MLET AUC 0.7150 with k=64, baseline 0.7200)",
    ]
    assert section(text, "### At the single lr 0.1 (no tuning)") == [
        f"{head}4: reference baseline d=4 (AUC 0.7000, 1.000 MiB): matched by MLET d=4 k=64 "
        "(AUC 0.7100, 1.000 MiB; gap +0.0100, se 0.0000): same size: no saving",
        f"{head}8: reference baseline d=8 (AUC 0.7400, 2.000 MiB): no MLET model tried matches it "
        "(closest: MLET d=8 k=64 (AUC 0.7300, 2.000 MiB; gap -0.0100, se 0.0000))",
        f"{head}16: reference baseline d=8 (AUC 0.7400, 2.000 MiB): no MLET model tried matches it "
        "(closest: MLET d=8 k=64 (AUC 0.7300, 2.000 MiB; gap -0.0100, se 0.0000))",
        "- kaggle, epochs 1: at d=8 no k beats the baseline (best MLET AUC 0.7300 with k=64, baseline 0.7400)",
        "- kaggle, epochs 1: at d=16 no k beats the baseline (best MLET AUC 0.7150 with k=64, baseline 0.7200)",
    ]
    assert "test AUC at lr 0.1 |" in text and "| MLET | 4 | 64 | 0.01 (edge) | 0.7450 | 0.7450 ± 0.0141 |" in text


def test_rare_items_per_bucket_at_the_best_lr_against_the_baseline_of_the_same_d(tmp_path):
    buckets = lambda n, auc, loss: {"test_1_10_samples": n, "test_1_10_auc": auc, "test_1_10_log_loss": loss,  # noqa: E731
                                    "test_unseen_samples": 10, "test_unseen_log_loss": loss + 0.3}
    csv = write(tmp_path, [
        row(k=0, seed=0, **buckets(100, 0.60, 0.6)), row(k=0, seed=1, **buckets(101, 0.62, 0.6)),
        row(k=64, seed=0, **buckets(100, 0.65, 0.5)), row(k=64, seed=1, **buckets(101, 0.67, 0.6)),
        row(k=64, lr=1.0, val_auc=0.5, **buckets(100, 0.99, 0.1)),  # worse on validation: not shown
        row(d=8, k=64, **buckets(100, 0.9, 0.1)),  # no baseline at d=8: not in the table
    ])
    rare = report(csv).split("## Rare items")[1]
    assert section(rare, "### kaggle, epochs 1") == [
        "| model | d | k | lr | bucket | samples | test AUC | test log loss | AUC vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
        "| baseline | 4 | - | 0.1 | unseen | 10 | - | 0.9000 | - |",
        "| baseline | 4 | - | 0.1 | 1-10 | 100.5 | 0.6100 | 0.6000 | - |",
        "| baseline | 4 | - | 0.1 | 11-100 | - | - | - | - |",
        "| baseline | 4 | - | 0.1 | >100 | - | - | - | - |",
        "| MLET | 4 | 64 | 0.1 | unseen | 10 | - | 0.8500 | - |",
        "| MLET | 4 | 64 | 0.1 | 1-10 | 100.5 | 0.6600 | 0.5500 | +0.0500 |",
        "| MLET | 4 | 64 | 0.1 | 11-100 | - | - | - | - |",
        "| MLET | 4 | 64 | 0.1 | >100 | - | - | - | - |",
    ]


def test_a_csv_without_buckets_says_so(tmp_path):
    text = report(write(tmp_path, [row()]))
    assert text.endswith("## Rare items: test metrics by training frequency\n\nno rare-item buckets in this CSV")


def test_report_writes_the_plot_the_markdown_and_the_oracle_line(iso_csv, tmp_path, capsys):
    csv = write(tmp_path, sweep.read_rows(iso_csv) + [row(epochs=3)], "two.csv")
    png, md, oracle = tmp_path / "p.png", tmp_path / "t.md", tmp_path / "synth.json"
    oracle.write_text(json.dumps({"oracle_auc": 0.8, "oracle_log_loss": 0.4}))
    assert main(["report", csv, "--plot", str(png), "--markdown", str(md), "--oracle", str(oracle), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "\nOracle (true click probabilities): AUC 0.8000, log loss 0.4000\n" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and md.read_text() in out + "\n"
    assert out.endswith(f"\nplot: {png}\n")
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_report_refuses_a_file_that_is_not_a_sweep(tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["report", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a sweep results file (columns a, b)" in err


def test_report_refuses_a_csv_from_before_the_lr_column_in_one_line(tmp_path, capsys):
    old = tmp_path / "old.csv"
    fields = [f for f in sweep.FIELDS if f not in ("lr", "status", "note") and not f.startswith("val_")]
    old.write_text(",".join(fields) + "\n" + ",".join("1" for _ in fields) + "\n")
    with pytest.raises(MLETError) as error:
        sweep.read_rows(old)
    assert main(["report", str(old), "--quiet"]) == 2
    assert capsys.readouterr().err == f"dlrm-mlet: error: {error.value}\n"


def test_a_best_lr_at_the_edge_of_the_grid_is_flagged(tmp_path):
    rows = [row(lr=lr, val_auc=v) for lr, v in ((0.1, 0.70), (0.2, 0.71), (0.4, 0.72))]  # rising to the end
    rows += [row(d=8, lr=lr, val_auc=v) for lr, v in ((0.1, 0.70), (0.2, 0.72), (0.4, 0.71))]  # inside
    rows += [row(d=16, lr=lr, val_auc=v) for lr, v in ((0.1, 0.72), (0.2, 0.71))]  # two lrs: always an edge
    text = report(write(tmp_path, rows))
    assert "| kaggle | 1 | baseline | 4 | - | 0.4 (edge) |" in text
    assert "| kaggle | 1 | baseline | 8 | - | 0.2 |" in text
    assert "| kaggle | 1 | baseline | 16 | - | 0.1 (edge) |" in text


# --------------------------------------------------------------------------- where MLET pays


def _regime(name, share, aucs, optimizer="sgd"):
    """Rows of one regime: (d, k) -> test AUC per seed (validation = test), bytes follow d."""
    return [row(regime=name, optimizer=optimizer, rare_lookup_share=share, d=d, k=k, seed=seed, val_auc=auc,
                test_auc=auc) for (d, k), per_seed in aucs.items() for seed, auc in enumerate(per_seed)]


def test_where_mlet_pays_gives_each_regime_its_saving_and_gain_at_equal_d(tmp_path, capsys):
    dense = {(4, 0): [0.70, 0.71], (16, 0): [0.72, 0.73], (4, 64): [0.70, 0.71], (16, 64): [0.72, 0.73]}
    rare = {(4, 0): [0.70, 0.70], (16, 0): [0.71, 0.71], (4, 64): [0.715, 0.715], (16, 64): [0.73, 0.74]}
    first = write(tmp_path, _regime("dense", 0.02, dense) + _regime("rare", 0.2, rare), "a.csv")
    second = write(tmp_path, _regime("rare", 0.2, {(4, 0): [0.70, 0.70], (4, 64): [0.69, 0.69]}, "adagrad"),
                   "b.csv")
    out_json, out_png = tmp_path / "map.json", tmp_path / "map.png"
    assert main(["report", first, second, "--map-json", str(out_json), "--map-plot", str(out_png),
                 "--plot", str(tmp_path / "p.png"), "--quiet"]) == 0
    text = capsys.readouterr().out
    rule, table = text.split("## Where MLET pays, by rare-lookup share\n\n")[1].split("\n\n")[:2]
    table = table.splitlines()
    # a size ratio stands only beside a model that matched
    assert table[2] == ("| dense | sgd | 0.020 | d=16 (0.7250 ± 0.0071) | none (no MLET model matched the best "
                        "baseline) | d=4 k=64: -0.0200 ± 0.0071, no match | "
                        "d=4: +0.0000 ± 0.0071 (k=64), d=16: +0.0000 ± 0.0071 (k=64) |")
    # rare: MLET d=4 (0.715) leads the best baseline (d=16, 0.71, sd 0) by more than its se (0): 4x smaller
    assert table[3] == ("| rare | sgd | 0.200 | d=16 (0.7100 ± 0.0000) | 4.0x (MLET d=4 k=64) | "
                        "d=4 k=64: +0.0050 ± 0.0000, a match 4x smaller | "
                        "d=4: +0.0150 ± 0.0000 (k=64), d=16: +0.0250 ± 0.0050 (k=64) |")
    assert table[4].startswith("| rare | adagrad | 0.200 | d=4 (0.7000 ± 0.0000) | none (no MLET model matched")
    assert rule.startswith("Per regime (one dataset and optimizer)")
    entries = json.loads(out_json.read_text())["regimes"]
    assert [(e["regime"], e["optimizer"], e["saving"]) for e in entries] == [
        ("dense", "sgd", None), ("rare", "sgd", 4.0), ("rare", "adagrad", None)]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_of_an_older_csv_read_as_one_sgd_regime_without_a_share(tmp_path):
    old = tmp_path / "old.csv"
    fields = [f for f in sweep.FIELDS if f not in sweep.LATER_FIELDS]
    values = {**row(), "d": 4, "k": 0}
    old.write_text(",".join(fields) + "\n" + ",".join(str(values[f]) for f in fields) + "\n")
    rows = sweep.read_rows(old)
    assert (rows[0]["regime"], rows[0]["optimizer"], rows[0]["rare_lookup_share"]) == ("", "sgd", "")
    assert "## Where MLET pays" not in report(str(old))  # no share: no map section


def test_report_never_replaces_a_file_without_force_and_needs_no_matplotlib_for_text(iso_csv, tmp_path, capsys,
                                                                                     monkeypatch):
    """A report can be read again: the tables always print; a file that exists is kept, one line says so."""
    png = tmp_path / "r.png"
    png.write_bytes(b"a committed plot")
    assert main(["report", iso_csv, "--quiet"]) == 0  # the default plot, r.png beside r.csv, exists
    out = capsys.readouterr().out
    assert "## Iso-AUC size reduction" in out and f"{png} exists: kept (pass --force to replace it)" in out
    assert png.read_bytes() == b"a committed plot"
    assert main(["report", iso_csv, "--quiet"]) == 0 and "## Iso-AUC size reduction" in capsys.readouterr().out
    md = tmp_path / "t.md"
    md.write_text("mine")
    assert main(["report", iso_csv, "--plot", str(tmp_path / "new.png"), "--markdown", str(md), "--quiet"]) == 0
    assert md.read_text() == "mine" and (tmp_path / "new.png").exists()
    assert f"{md} exists: kept" in capsys.readouterr().out
    assert main(["report", iso_csv, "--force", "--quiet"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    monkeypatch.setattr("dlrm_mlet.tools.plots.has_matplotlib", lambda: False)
    png.unlink()
    assert main(["report", iso_csv, "--quiet"]) == 0  # no matplotlib: the text report, no plot, one line saying so
    out = capsys.readouterr().out
    assert "## Iso-AUC size reduction" in out and "no plot: matplotlib is not installed" in out
    assert not png.exists()
