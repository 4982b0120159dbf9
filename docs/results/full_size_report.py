"""The report of ``full_size.py``: the curve to full size, tuned and at the paper's protocol, the controls, the plot.

    python docs/results/full_size_report.py      (reads full_size.csv here; writes full_size.md, full_size.png)

Every figure is the project's report rule (``dlrm_mlet/tools/report.py``,
``pays.py``): each arm's lr chosen on validation, its test AUC mean ± sd over
seeds; the saving is the best baseline's bytes over the smallest MLET model
whose AUC leads it by at least one standard error of the difference; the gain
at equal d is the best MLET arm of that d minus the baseline of that d, ±
that standard error. At the paper's protocol (every arm at lr 0.1, seed 0, as
the MLET papers ran it) there is no standard error: its gaps are printed as
they are, and a model matches when it is not below the best baseline.
"""

import os
import sys

from dlrm_mlet.tools import pays
from dlrm_mlet.tools.plots import pyplot, save
from dlrm_mlet.tools.report import at_single_lr, summarize, tuned as best_lr
from dlrm_mlet.tools.results_csv import read_rows
from dlrm_mlet.tools.tuning import next_lr

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = ("1%", "10%", "100%")
PAPER_LR = 0.1
COLOR = {4: "C0", 16: "C1"}  # one colour per width in both panels; the line style tells the arm


def _size(regime):
    return regime.rsplit(", ", 1)[-1]


def _rows(rows, tables="plain", optimizer="sgd"):
    return [r for r in rows if r["tables"] == tables and r["optimizer"] == optimizer]


def _arm_name(a):
    return f"MLET d={a['d']} k={a['k']}" if a["k"] else f"baseline d={a['d']}"


def _pm(s):
    if not s:
        return "-"
    return f"{s['auc']:.4f} (1 seed)" if s["n"] < 2 else f"{s['auc']:.4f} ± {s['auc_sd']:.4f} ({s['n']})"


def tuned_arm(a):
    """An arm's figures at its lr chosen on validation, once it was tried at two lrs or more: an arm run at
    one lr so far (at 100 %, the paper's protocol runs first) is not tuned yet."""
    return best_lr(a) if len(a["lrs"]) >= 2 else None


def _one_seed(rows, size):
    """Whether some tuned arm of ``size`` has a single seed: then no gap of that size has a standard error."""
    return any(tuned_arm(a)["n"] < 2 for a in summarize(_rows(rows)) if _size(a["regime"]) == size and tuned_arm(a))


def _protocol(rows):
    """The paper's protocol: each arm's seed-0 run at lr 0.1 (one seed, as the paper ran it)."""
    return [r for r in rows if int(r["seed"]) == 0 and float(r["lr"]) == PAPER_LR]


def curve_entries(rows, pick):
    """Per size, ``pays.summarize_regimes``' entry for the plain SGD arms picked by ``pick`` (``at_single_lr``:
    the paper's protocol, seed 0 alone)."""
    arms = summarize(_rows(_protocol(rows) if pick is at_single_lr else rows))
    out = {}
    for entry in pays.summarize_regimes(arms, pick):
        out[_size(entry["regime"])] = entry
    return out


def what_it_took(rows):
    lines = ["| size | training samples | rare-lookup share | runs (diverged) | training hours | median run | "
             "peak memory (largest run) |", "|" + "---|" * 7]
    for size in SIZES:
        mine = [r for r in rows if _size(r["regime"]) == size]
        if not mine:
            continue
        seconds = sorted(float(r["train_seconds"]) for r in mine if r["train_seconds"])
        peaks = [int(r["peak_memory_mib"]) for r in mine if r["peak_memory_mib"] not in ("", None)]
        lines.append(f"| {size} | {int(mine[0]['train_samples']):,} | {float(mine[0]['rare_lookup_share']):.3f} | "
                     f"{len(mine)} ({sum(r['status'] != 'ok' for r in mine)}) | {sum(seconds) / 3600:.1f} | "
                     f"{seconds[len(seconds) // 2] / 60:.1f} min | "
                     f"{'-' if not peaks else f'{max(peaks) / 1024:.1f} GiB'} |")
    return lines


def arms_table(rows):
    lines = ["| size | arm | tuned lr | tuned test AUC (seeds) | lr at the grid's edge? | paper's protocol: lr 0.1, "
             "seed 0 |", "|" + "---|" * 6]
    protocol = {(a["regime"], a["d"], a["k"]): at_single_lr(a) for a in summarize(_rows(_protocol(rows)))}
    for a in summarize(_rows(rows)):
        mine = tuned_arm(a)
        # at 100 % the grid is lr 0.1, the two lrs around the 10 % optimum, and any beyond an edge
        edge = "-" if not mine else ("no" if next_lr(a) is None else "yes")
        one = protocol.get((a["regime"], a["d"], a["k"]))
        lines.append(f"| {_size(a['regime'])} | {_arm_name(a)} | {a['best'] if mine else '-'} | "
                     f"{_pm(mine)} | {edge} | {'-' if not one else format(one['auc'], '.4f')} |")
    return lines


def _gains(entry, one_seed=False):
    if entry is None:
        return "-"
    return "; ".join(f"d={g['d']}: {g['gain']:+.4f}" + ("" if one_seed else f" ± {g['se']:.4f}")
                     for g in entry["gains"]) or "-"


def _saving(entry, one_seed=False):
    if entry is None or entry["narrowest"] is None:  # no MLET arm here yet
        return "-"
    if entry["saving"] and entry["saving"] > 1:
        m = entry["match"]
        return f"{entry['saving']:.0f}x (MLET d={m['d']} k={m['k']}{'' if not one_seed else ', one seed'})"
    # every MLET width's best k against the best baseline, the narrowest first
    return "none (" + "; ".join(f"d={w['d']} k={w['k']}: {w['gap']:+.4f}" + ("" if one_seed else f" ± {w['se']:.4f}")
                                for w in entry["widths"]) + ")"


def curve_table(rows):
    tuned_entries, paper = curve_entries(rows, tuned_arm), curve_entries(rows, at_single_lr)
    lines = ["| size | best baseline, tuned | saving, tuned (else each MLET width's gap to it) | "
             "gain at equal d, tuned | saving, paper's protocol | gain at equal d, paper's protocol |", "|" + "---|" * 6]
    for size in SIZES:
        t, p = tuned_entries.get(size), paper.get(size)
        if t is None and p is None:
            continue
        best = "-" if t is None else f"d={t['best_baseline']['d']} ({t['best_baseline']['auc']:.4f})"
        one = _one_seed(rows, size)  # no standard error yet: the gaps as they are
        lines.append(f"| {size} | {best} | {_saving(t, one)} | {_gains(t, one)} | {_saving(p, True)} | "
                     f"{_gains(p, True)} |")
    return lines


def controls_table(rows):
    """Each control's tuned arms against the curve's arms of the same size."""
    entries = []
    plain = {(_size(a["regime"]), a["d"], a["k"]): a for a in summarize(_rows(rows))}
    labels = sorted({(r["tables"], r["optimizer"]) for r in rows} - {("plain", "sgd")})
    for tables, optimizer in labels:
        for a in summarize(_rows(rows, tables, optimizer)):
            size, mine = _size(a["regime"]), tuned_arm(a)
            if optimizer != "sgd":
                other = [b for b in summarize(_rows(rows, tables, optimizer))
                         if b["regime"] == a["regime"] and not b["k"] and b["d"] == a["d"] and a["k"]]
            elif a["k"]:  # an MLET control against the plain MLET arm of its d, k
                other = [plain.get((size, a["d"], a["k"]))]
            else:  # a baseline control against the plain baseline and the best MLET arm of its d
                other = [plain.get((size, a["d"], 0))] + sorted(
                    (b for (s, d, k), b in plain.items() if s == size and d == a["d"] and k and tuned_arm(b)),
                    key=lambda b: -tuned_arm(b)["auc"])[:1]
            for b in other:
                if b is None or not tuned_arm(b) or not mine:
                    continue
                diff, se = mine["auc"] - tuned_arm(b)["auc"], pays.se_of_difference(mine, tuned_arm(b))
                control = optimizer if optimizer != "sgd" else tables
                spread = " (one seed)" if min(mine["n"], tuned_arm(b)["n"]) < 2 else f" ± {se:.4f}"
                # by size, then (a) by table-lr scale, (b), (c); then by arm
                order = (float(size.rstrip("%")), optimizer != "sgd", tables.startswith("proj"),
                         float(tables.rsplit("x", 1)[-1]) if tables.startswith("table") else 0, a["d"], a["k"])
                entries.append((order, f"| {size} | {control} | {_arm_name(a)} | {_pm(mine)} | "
                                       f"{_arm_name(b)}{'' if b['tables'] == 'plain' else ' ' + b['tables']} | "
                                       f"{diff:+.4f}{spread} |"))
    lines = ["| size | control | arm | tuned test AUC (seeds) | against | difference ± se |", "|" + "---|" * 6]
    return lines + [line for _, line in sorted(entries, key=lambda e: e[0])]


def table_lr_gains(rows, d):
    """Per size, ``(training samples, gain, se)`` of the baseline at ``d`` with its own table lr, tuned on the
    2-D grid (the scale and the lr whose run scores best on validation), over the plain baseline at ``d``."""
    out = []
    for size in SIZES:
        plain = [tuned_arm(a) for a in summarize(_rows(rows)) if _size(a["regime"]) == size and a["d"] == d
                 and not a["k"]]
        scaled = [tuned_arm(a) for tables in sorted({r["tables"] for r in rows if r["tables"].startswith("table lr")})
                  for a in summarize(_rows(rows, tables)) if _size(a["regime"]) == size and a["d"] == d]
        scaled = [s for s in scaled if s]
        if not plain or not plain[0] or not scaled:
            continue
        best = max(scaled, key=lambda s: s["val_auc"])
        samples = int(next(r["train_samples"] for r in rows if _size(r["regime"]) == size))
        out.append((samples, best["auc"] - plain[0]["auc"], pays.se_of_difference(best, plain[0])))
    return out


def plot(rows, out_png):
    plt, _ = pyplot("the full-size plot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for d in (4, 16):  # the control: is MLET's gain more than a larger step on the tables gives?
        pts = table_lr_gains(rows, d)
        if pts:
            left.errorbar([x for x, _, _ in pts], [g for _, g, _ in pts], yerr=[se for _, _, se in pts], fmt=":^",
                          color=COLOR[d], capsize=3, label=f"baseline d={d}, own table lr, tuned")
    for pick, style, what in ((tuned_arm, "-o", "tuned"), (at_single_lr, "--s", "paper's protocol")):
        entries = curve_entries(rows, pick)
        sizes = [s for s in SIZES if s in entries]
        samples = {s: int(next(r["train_samples"] for r in rows if _size(r["regime"]) == s)) for s in sizes}
        for d in (4, 16):
            pts = [(samples[s], g) for s in sizes for g in entries[s]["gains"] if g["d"] == d]
            if pts:
                left.errorbar([x for x, _ in pts], [g["gain"] for _, g in pts],
                              yerr=[g["se"] for _, g in pts], fmt=style, color=COLOR[d], capsize=3,
                              label=f"MLET d={d}, {what}")
        for d in (4, 16):  # MLET at each width against the best baseline of any width
            pts = [(samples[s], g) for s in sizes for g in entries[s]["widths"] if g["d"] == d]
            if not pts:
                continue
            right.errorbar([x for x, _ in pts], [g["gap"] for _, g in pts], yerr=[g["se"] for _, g in pts],
                           fmt=style, color=COLOR[d], capsize=3, label=f"MLET d={d}, {what}")
            for x, g in pts:  # a size ratio only beside a narrower model that matched
                if g["smaller"] > 1 and g["gap"] >= g["se"] - 1e-12:
                    right.annotate(f"{g['smaller']:.0f}x smaller", (x, g["gap"]), fontsize=7,
                                   textcoords="offset points", xytext=(4, 4))
    for ax, title in ((left, "AUC gain over the plain baseline at equal d"),
                      (right, "MLET (its best k) against the best baseline of any width")):
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training samples (one epoch)")
        ax.set_ylabel("test AUC difference")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("The full-size law: 1 %, 10 %, 100 % of Criteo-Kaggle's samples")
    save(fig, out_png)


def write_report(csv_path, out_dir):
    rows = read_rows(csv_path)
    text = ["# At full size: the curve to Criteo-Kaggle's 45.8M samples", "",
            "Written by `full_size_report.py` from `full_size.csv` (`full_size.py` ran the sweeps; their docstrings "
            "say how). " + __doc__.split("\n\n")[2].replace("\n", " "), "",
            "## What it took", "", *what_it_took(rows), "",
            "Runs went one or two at a time on 2 CPU cores, no GPU: two at once had one thread each, one alone "
            "both cores. At 100 % one run at a time: the lr-0.1 runs and the first tuned one alone, the other tuned "
            "runs each beside a 10 % control run, so their time is not the time of a run alone. A run's seconds are its wall "
            "time: evaluation included, summed over the invocations of a resumed run, and any time it was paused to "
            "free the machine included. Peak "
            "memory is the run's peak anonymous resident memory, what must fit: the pages of the memory-mapped "
            "data are the kernel's page cache and are not counted.", "",
            "## Saving and gain at equal d against the number of samples", "", *curve_table(rows), "",
            "## Every arm", "", *arms_table(rows), "",
            "## The controls", "",
            "(a) `table lr xS`: the baseline with its tables at S times the dense lr (each S its own tuned arm: a "
            "2-D grid); (b) `proj lr x0`: MLET with its projection frozen at its init; (c) `adagrad`: both arms "
            "with Adagrad, MLET against the Adagrad baseline of its d.", "", *controls_table(rows), ""]
    with open(os.path.join(out_dir, "full_size.md"), "w") as handle:
        handle.write("\n".join(text))
    if any(r["tables"] == "plain" for r in rows):
        plot(rows, os.path.join(out_dir, "full_size.png"))
    return text


if __name__ == "__main__":
    print("\n".join(write_report(os.path.join(HERE, "full_size.csv"), HERE)))
    sys.exit(0)
