"""The paper's experiment: accuracy against inference-time embedding size, baseline vs MLET.

``run_sweep`` trains patched DLRM (DLRM's Kaggle bench architecture, bottom MLP
ending in ``d``) once per (d, k, seed), ``k = 0`` being the plain baseline, and
appends one row per run to a CSV: test AUC, accuracy and log loss (from
``--mlet-metrics-json``), training time, and the embedding bytes at training
and at inference. A finished row is never run again, so an interrupted sweep
resumes where it stopped. ``report`` turns the CSV into a markdown table, a
plot of AUC against inference embedding size, and the size reduction MLET
gives at equal AUC.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

from ..core.folding import mlet_table_bytes
from ..dlrm.checkpoints import MLET_SUFFIX
from ..dlrm.patching import patch_checkout
from ..errors import MLETError
from ..files import StagedFiles, atomic_write, atomic_write_text, load_checkpoint

FIELDS = [
    "dataset", "d", "k", "seed", "epochs", "test_auc", "test_accuracy", "test_log_loss",
    "train_seconds", "train_ms_per_it", "inference_embedding_bytes", "training_embedding_bytes",
]
DENSE_FEATURES = {"kaggle": 13, "avazu": 1}


def bench_args(data_set, d):
    """DLRM's reference Kaggle command (bench/dlrm_s_criteo_kaggle.sh) at width ``d``."""
    return [
        f"--arch-sparse-feature-size={d}", f"--arch-mlp-bot={DENSE_FEATURES[data_set]}-512-256-64-{d}",
        "--arch-mlp-top=512-256-1", "--data-generation=dataset", f"--data-set={data_set}",
        "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1",
        "--mini-batch-size=128", "--print-freq=1024", "--print-time", "--test-freq=1000000000",
        "--test-mini-batch-size=16384", "--mlperf-logging",
    ]


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(FIELDS) - set(rows[0]):
        raise MLETError(f"{path}: not a sweep results file (columns {', '.join(rows[0])})")
    return rows


def write_rows(path, rows):
    """Rewrite the whole CSV atomically: never a torn row."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def patched_copy(dlrm_dir, work):
    """A patched copy of the user's checkout under ``work`` (theirs stays as it is)."""
    dest = os.path.join(work, "dlrm-patched")
    if not os.path.isfile(os.path.join(dest, "dlrm_s_pytorch.py")):
        if not os.path.isfile(os.path.join(dlrm_dir, "dlrm_s_pytorch.py")):
            raise MLETError(f"{dlrm_dir}: not a DLRM checkout (no dlrm_s_pytorch.py); set --dlrm-dir or DLRM_DIR")
        with StagedFiles(work, "dlrm-patched", f"cannot write {dest}") as stage:
            shutil.copytree(dlrm_dir, stage.path("dlrm-patched"))
            patch_checkout(stage.path("dlrm-patched"))
            stage.publish([(stage.path("dlrm-patched"), dest)])
    return os.path.join(dest, "dlrm_s_pytorch.py")


def embedding_bytes(model_path):
    """(inference, training) bytes of the embedding tables of a saved run."""
    state = load_checkpoint(model_path)["state_dict"]
    inference = sum(v.numel() * v.element_size() for k, v in state.items() if k.startswith("emb_l."))
    training = inference
    if os.path.exists(model_path + MLET_SUFFIX):
        trained, folded = mlet_table_bytes(load_checkpoint(model_path + MLET_SUFFIX)["state_dict"])
        training = inference - folded + trained
    return inference, training


def run_one(script, data_set, data_args, d, k, seed, epochs, work, extra_args, log):
    metrics = os.path.join(work, "metrics.json")
    model = os.path.join(work, "model.pt")
    for stale in (metrics, model, model + MLET_SUFFIX):
        if os.path.exists(stale):
            os.remove(stale)
    args = bench_args(data_set, d) + data_args + [
        f"--numpy-rand-seed={seed}", f"--nepochs={epochs}", f"--mlet-metrics-json={metrics}",
        f"--save-model={model}", f"--tensor-board-filename={os.path.join(work, 'tb', f'd{d}_k{k}_s{seed}')}",
    ] + ([f"--mlet-hidden-dim={k}"] if k else []) + list(extra_args)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, script] + args, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    text = open(log).read()
    if proc.returncode != 0 or not os.path.exists(metrics):
        tail = text.strip().splitlines()[-1:] or ["no output"]
        raise MLETError(f"run d={d} k={k} seed={seed} failed ({tail[0]}); full log: {log}")
    result = json.load(open(metrics))
    times = [float(x) for x in re.findall(r"([\d.]+) ms/it", text)]
    inference, training = embedding_bytes(model)
    return {
        "dataset": data_set, "d": d, "k": k, "seed": seed, "epochs": epochs,
        "test_auc": result["auc"], "test_accuracy": result["accuracy"], "test_log_loss": result["log_loss"],
        "train_seconds": round(seconds, 2),
        "train_ms_per_it": round(sum(times) / len(times), 3) if times else "",
        "inference_embedding_bytes": inference, "training_embedding_bytes": training,
    }


def run_sweep(dlrm_dir, data_set, raw_data_file, out_csv, ds, ks, seeds, epochs=1, work=None,
              extra_args=(), quiet=False):
    """Train every missing (d, k, seed) and append it to ``out_csv``; returns all rows."""
    from ..progress import progress_bar

    if data_set not in DENSE_FEATURES:
        raise MLETError(f"--data-set must be one of {', '.join(DENSE_FEATURES)}, got {data_set!r}")
    if not os.path.isfile(raw_data_file):
        raise MLETError(f"{raw_data_file}: no such file")
    extra_args = [a for a in extra_args if a != "--"]
    work = os.path.abspath(work or os.path.splitext(out_csv)[0] + "_work")
    os.makedirs(work, exist_ok=True)
    script = patched_copy(dlrm_dir, work)
    rows = read_rows(out_csv)
    done = {(int(r["d"]), int(r["k"]), int(r["seed"])) for r in rows if r["dataset"] == data_set}
    plan = [(d, k, s) for s in seeds for d in ds for k in [0] + list(ks) if (d, k, s) not in done]
    data_args = [f"--raw-data-file={os.path.abspath(raw_data_file)}"]
    with progress_bar(len(plan), "sweep", quiet=quiet, unit=" runs") as bar:
        for d, k, seed in plan:
            log = os.path.join(work, f"d{d}_k{k}_s{seed}.log")
            row = run_one(script, data_set, data_args, d, k, seed, epochs, work, extra_args, log)
            rows.append(row)
            write_rows(out_csv, rows)
            bar.update()
            if quiet or not sys.stderr.isatty():
                print(f"d={d} k={k} seed={seed}: AUC {row['test_auc']:.4f}, log loss "
                      f"{row['test_log_loss']:.4f}, {row['train_seconds']} s", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def summarize(rows):
    """Mean and standard deviation over seeds, per (dataset, d, k)."""
    import numpy as np

    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], int(r["d"]), int(r["k"])), []).append(r)
    summary = []
    for (dataset, d, k), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][2] > 0, g[0][2], g[0][1])):
        stat = lambda field: np.array([float(r[field]) for r in group if r[field] not in ("", None)])  # noqa: E731
        auc, loss, acc = stat("test_auc"), stat("test_log_loss"), stat("test_accuracy")
        summary.append({
            "dataset": dataset, "d": d, "k": k, "seeds": len(group),
            "auc": auc.mean(), "auc_sd": auc.std(ddof=1) if len(auc) > 1 else 0.0,
            "log_loss": loss.mean(), "accuracy": acc.mean(),
            "ms_per_it": stat("train_ms_per_it").mean() if len(stat("train_ms_per_it")) else float("nan"),
            "inference_bytes": int(group[0]["inference_embedding_bytes"]),
            "training_bytes": int(group[0]["training_embedding_bytes"]),
        })
    return summary


def iso_auc(summary):
    """For each baseline, the smallest MLET model at least as accurate (mean AUC)."""
    lines = []
    for dataset in sorted({s["dataset"] for s in summary}):
        base = [s for s in summary if s["dataset"] == dataset and s["k"] == 0]
        mlet = [s for s in summary if s["dataset"] == dataset and s["k"] > 0]
        for b in sorted(base, key=lambda s: s["inference_bytes"]):
            match = [m for m in mlet if m["auc"] >= b["auc"]]
            if not match:
                lines.append(f"{dataset}: baseline d={b['d']} (AUC {b['auc']:.4f}) is not reached by any "
                             "MLET model tried")
                continue
            m = min(match, key=lambda s: (s["inference_bytes"], -s["auc"]))
            ratio = b["inference_bytes"] / m["inference_bytes"]
            saving = f"{ratio:.1f}x smaller at inference" if ratio > 1 else (
                "the same size: no saving" if ratio == 1 else f"{1 / ratio:.1f}x larger: no saving")
            lines.append(
                f"{dataset}: baseline d={b['d']} (AUC {b['auc']:.4f}, {b['inference_bytes'] / 2**20:.2f} MiB) "
                f"is matched at the smallest by MLET d={m['d']} k={m['k']} (AUC {m['auc']:.4f}, "
                f"{m['inference_bytes'] / 2**20:.2f} MiB): {saving}"
            )
        for d in sorted({s["d"] for s in mlet}):
            b = next((s for s in base if s["d"] == d), None)
            best = max((s for s in mlet if s["d"] == d), key=lambda s: s["auc"])
            if b is not None and best["auc"] <= b["auc"]:
                lines.append(f"{dataset}: at d={d} no k beats the baseline (best MLET AUC {best['auc']:.4f} "
                             f"with k={best['k']}, baseline {b['auc']:.4f})")
    return lines


def markdown_table(summary, oracle=None):
    head = ("| dataset | model | d | k | inference emb MiB | training emb MiB | test AUC (mean ± sd) | "
            "log loss | accuracy % | train ms/it | seeds |")
    lines = [head, "|" + "---|" * 11]
    for s in summary:
        lines.append(
            f"| {s['dataset']} | {'MLET' if s['k'] else 'baseline'} | {s['d']} | {s['k'] or '-'} | "
            f"{s['inference_bytes'] / 2**20:.3f} | {s['training_bytes'] / 2**20:.3f} | "
            f"{s['auc']:.4f} ± {s['auc_sd']:.4f} | {s['log_loss']:.4f} | {100 * s['accuracy']:.2f} | "
            f"{s['ms_per_it']:.2f} | {s['seeds']} |"
        )
    if oracle:
        lines.append(f"\nOracle (true click probabilities): AUC {oracle['oracle_auc']:.4f}, "
                     f"log loss {oracle['oracle_log_loss']:.4f}")
    return "\n".join(lines)


def plot(summary, out_png, oracle=None, title=None):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401 (used as matplotlib.ticker)
    except ImportError:
        raise MLETError("the report's plot needs matplotlib: pip install 'dlrm-mlet[plot]'") from None
    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [s for s in summary if s["dataset"] == dataset]
        for k in sorted({s["k"] for s in rows}):
            line = sorted((s for s in rows if s["k"] == k), key=lambda s: s["inference_bytes"])
            ax.errorbar([s["inference_bytes"] / 2**20 for s in line], [s["auc"] for s in line],
                        yerr=[s["auc_sd"] for s in line], marker="o" if k else "s", capsize=3,
                        lw=2.5 if k == 0 else 1.5, color="black" if k == 0 else None,
                        label="baseline" if k == 0 else f"MLET k={k}")
            for s in line if k == min(s["k"] for s in rows) else ():  # label each d once
                ax.annotate(f"d={s['d']}", (s["inference_bytes"] / 2**20, s["auc"]), fontsize=7,
                            textcoords="offset points", xytext=(-8, -14))
        if oracle:
            ax.axhline(oracle["oracle_auc"], color="gray", ls="--", lw=1, label="oracle AUC")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set(xlabel="inference embedding size (MiB, log scale)", ylabel="test AUC",
               title=title or f"{dataset}: AUC vs embedding size")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:  # never a half-drawn PNG under the asked name; PNG whatever the name's extension
        atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    finally:
        plt.close(fig)


def report(csv_path, out_png=None, oracle_path=None, title=None, progress=None):
    """Markdown (table + iso-AUC lines); writes the plot. Returns the markdown.

    ``progress()`` is called after each of the three stages (read, summarise, plot).
    """
    progress = progress or (lambda: None)
    rows = read_rows(csv_path)
    if not rows:
        raise MLETError(f"{csv_path}: no sweep results")
    oracle = json.load(open(oracle_path)) if oracle_path else None
    progress()
    summary = summarize(rows)
    text = markdown_table(summary, oracle) + "\n\n" + "\n".join(f"- {line}" for line in iso_auc(summary))
    progress()
    if out_png:
        plot(summary, out_png, oracle, title)
    progress()
    return text
