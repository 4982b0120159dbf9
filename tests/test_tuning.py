"""The tuned sweep's rules (``tools/tuning.py``), driven by a fake sweep whose AUC peaks at a known lr."""

import math

from dlrm_mlet.tools.results_csv import FIELDS
from dlrm_mlet.tools.tuning import close_pairs, first_grid, next_lr, tune


def fake_results(peaks, gap=None):
    """A sweep that 'trains' ``(d, k, lr, seed)`` into rows: AUC peaks at ``peaks[(d, k)]`` (in log2 lr),
    seeds add a little noise; ``gap`` adds to an arm's AUC."""
    rows, ran = [], []

    def sweep(runs):
        done = {(r["d"], r["k"], r["lr"], r["seed"]) for r in rows}
        for d, k, lr, seed in runs:
            if (str(d), str(k), str(float(lr)), str(seed)) in done:
                continue
            ran.append((d, k, lr, seed))
            auc = 0.75 - 0.01 * (math.log2(lr) - peaks[d, k]) ** 2 + 0.0005 * (seed % 2) + (gap or {}).get((d, k), 0)
            rows.append({**dict.fromkeys(FIELDS, ""), "dataset": "kaggle", "regime": "r", "optimizer": "sgd", "tables": "plain", "d": str(d),
                         "k": str(k), "lr": str(float(lr)), "seed": str(seed), "epochs": "1", "status": "ok",
                         "note": "", "val_auc": str(auc), "test_auc": str(auc), "test_log_loss": "0.5",
                         "test_accuracy": "0.75", "val_log_loss": "0.5", "val_accuracy": "0.75",
                         "rare_lookup_share": "0.1", "inference_embedding_bytes": str(4 * d),
                         "training_embedding_bytes": str(4 * max(d, k)), "train_seconds": "1", "train_ms_per_it": "1"})
    return sweep, (lambda: rows), ran


def test_an_arm_grows_its_grid_until_its_optimum_is_inside():
    sweep, rows, ran = fake_results({(4, 0): 3.0, (4, 64): -3.0})  # peaks at lr 8 and 1/8: beyond both grids
    arms = tune(sweep, rows, [(4, 0), (4, 64)], (0, 1), lambda k: first_grid("sgd", k))
    best = {(a["d"], a["k"]): a["best"] for a in arms}
    assert best == {(4, 0): 6.4, (4, 64): 0.1}  # the grid points nearest the peaks
    for arm in arms:
        assert min(arm["lrs"]) < arm["best"] < max(arm["lrs"])  # inside, with a neighbour each side
        assert {s for lr in arm["lrs"] for s in (int(r["seed"]) for r in arm["lrs"][lr]["runs"])} == {0, 1}
    assert next_lr(arms[0]) is None


def test_extension_stops_after_max_extensions():
    sweep, rows, _ = fake_results({(4, 0): 20.0})
    arms = tune(sweep, rows, [(4, 0)], (0,), lambda k: (0.2, 0.4), max_extensions=2)
    assert sorted(arms[0]["lrs"]) == [0.2, 0.4, 0.8, 1.6]


def test_close_arms_get_the_extra_seed_at_their_chosen_lr_far_ones_do_not():
    # MLET d=4 within noise of baseline d=16 (a wider one); MLET d=16 far above baseline d=16
    sweep, rows, ran = fake_results({(4, 64): -1.0, (16, 0): 0.0, (16, 64): -1.0},
                                    gap={(4, 64): 0.0004, (16, 64): 0.05})
    arms = tune(sweep, rows, [(4, 64), (16, 0), (16, 64)], (0, 1), lambda k: (0.25, 0.5, 1.0, 2.0),
                extra_seeds=(2,))
    third = {(d, k, lr) for d, k, lr, seed in ran if seed == 2}
    assert third == {(4, 64, 0.5), (16, 0, 1.0)}
    pairs = {(b["d"], m["d"]) for b, m in close_pairs(arms)}
    assert (16, 4) in pairs and (16, 16) not in pairs
    assert (16, 4) not in {(b["d"], m["d"]) for b, m in close_pairs(arms, wider=False)}


def test_first_grids_follow_k():
    assert first_grid("sgd", 0) == (0.2, 0.4, 0.8, 1.6)
    assert first_grid("sgd", 128) in (first_grid("sgd", 64), first_grid("sgd", 256))
    assert first_grid("adagrad", 64)[0] < first_grid("sgd", 64)[0]
