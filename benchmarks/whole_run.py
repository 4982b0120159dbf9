"""Training speed as users see it: whole ``dlrm_s_pytorch.py`` runs, stock against patched.

``train_step.py`` times ``DLRM_Net``'s step inside one process; a user runs
DLRM's script, whose loop adds its own work (data loading, the LR scheduler,
DLRM's timers, our glue's calls). This benchmark times that: each
configuration is one real run (random data, the bench architecture
``13-512-256-64-16`` / ``512-256-1``, 26 tables at ``--scale`` x Criteo-Kaggle's
sizes, one index per table and sample, batch 128, ``--batches`` batches, SGD
lr 0.1) and its speed is DLRM's own ``--print-time`` ms/it, averaged over the
prints after the first (which holds the warm-up). Runs are interleaved
(stock, patched k=64, ..., stock, ...) for ``--reps`` repetitions, so drift on
a shared machine falls on every configuration alike; each repetition's
patched / stock ratio is taken against the stock run of the same repetition,
and the median (min-max) of those ratios is reported, beside the in-process
ratio of the last ``train_step.py`` result.

    python benchmarks/whole_run.py            # 5 repetitions, about 6 minutes here

Results go to results/whole_run.json.
"""

import argparse
import re
import statistics
import sys
import tempfile

from common import both_summaries, criteo_rows, dlrm_copies, load, machine_lines, md_table, mib, run_measured, save

CONFIGS = [  # name, MLET k (0: stock DLRM), extra patched-DLRM flags
    ("stock d=16", 0, []),
    ("MLET k=64", 64, []),  # the default update: SGD at the step (--mlet-fused-update's)
    ("MLET k=128", 128, []),
    ("MLET k=256", 256, []),
    ("MLET k=512", 512, []),
    ("MLET k=256 sparse", 256, ["--mlet-fused-update=off"]),  # sparse gradient tensors for DLRM's SGD
    ("MLET k=256 fbgemm", 256, ["--mlet-fused-update=fbgemm"]),
]


def dlrm_args(rows, batches, print_freq):
    return ["--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16", "--arch-mlp-top=512-256-1",
            "--arch-embedding-size=" + "-".join(map(str, rows)), "--data-generation=random",
            "--num-indices-per-lookup=1", "--num-indices-per-lookup-fixed=True", "--mini-batch-size=128",
            f"--num-batches={batches}", f"--print-freq={print_freq}", "--print-time", "--loss-function=bce",
            "--round-targets=True", "--learning-rate=0.1", "--test-freq=0", "--numpy-rand-seed=0",
            "--mlet-log-freq=0"]


def ms_per_it(stdout):
    """DLRM's printed ms/it, the first print (warm-up) left out."""
    times = [float(t) for t in re.findall(r"([\d.]+) ms/it", stdout)]
    if len(times) < 2:
        raise RuntimeError(f"expected several ms/it prints, got {times}:\n{stdout[-2000:]}")
    return statistics.mean(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", type=int, default=240)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--only", help="comma-separated configuration names (default: all)")
    args = parser.parse_args()
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only.split(",") or c[1] == 0]
    rows = criteo_rows(args.scale)
    base = dlrm_args(rows, args.batches, max(1, args.batches // 6))
    with tempfile.TemporaryDirectory() as work:
        stock, patched = dlrm_copies(work)
        times = {name: [] for name, _, _ in configs}
        peak = {}
        for rep in range(args.reps):
            for name, k, extra in configs:
                script = stock if k == 0 else patched
                cmd = [sys.executable, script] + base + ([f"--mlet-hidden-dim={k}"] + extra if k else [])
                if k == 0:
                    cmd = [c for c in cmd if c != "--mlet-log-freq=0"]  # stock DLRM has no --mlet-* options
                out, rss = run_measured(cmd, work)
                times[name].append(ms_per_it(out))
                peak[name] = max(peak.get(name, 0), rss)
                print(f"rep {rep + 1}/{args.reps} {name}: {times[name][-1]:.2f} ms/it", flush=True)
    stock_times = times[configs[0][0]]
    in_process = {r["name"]: r.get("ratio_to_baseline_d16") for r in (load("train_step") or {}).get("results", [])}
    results = []
    for name, k, extra in configs:
        results.append({
            "name": name, "k": k, "flags": extra, "ms_per_it": times[name],
            "ms_per_it_median": statistics.median(times[name]), **both_summaries(times[name], stock_times),
            "in_process_ratio": in_process.get(f"MLET d=16 k={k}" + (" " + name.split()[-1] if extra else ""))
            if k else None,
            "peak_rss_bytes": peak[name],
        })
    payload = {"reps": args.reps, "batches": args.batches, "scale": args.scale, "tables": rows, "results": results}
    print(save("whole_run", payload, render))


def render(data):
    lines = ["## Whole DLRM runs: stock against patched (`benchmarks/whole_run.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Real `dlrm_s_pytorch.py` runs: random data, bench architecture at d=16, 26 tables at "
              f"{data['scale']} x Criteo-Kaggle's sizes ({sum(data['tables']):,} rows), batch 128, "
              f"{data['batches']} batches, SGD lr 0.1; speed is DLRM's own `--print-time` ms/it (first print, "
              f"the warm-up, left out). {data['reps']} repetitions, configurations interleaved; each ratio is "
              "against the stock run of the same repetition, median (min-max) over repetitions. In-process: "
              "`train_step.py`'s ratio for the same configuration (the component view).", ""]
    stock = data["results"][0]["ms_per_it_median"]
    lines += md_table(["run", "ms/it median", "/ stock d=16, median (min-max)", "median ms/it / stock's",
                       "in-process ratio", "peak RSS MiB"], [
        [r["name"], f"{r['ms_per_it_median']:.2f}", f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})",
         f"{r['ms_per_it_median'] / stock:.2f}", f"{r['in_process_ratio']:.2f}" if r.get("in_process_ratio") else "-",
         mib(r["peak_rss_bytes"])] for r in data["results"]])
    times = data["results"][0]["ms_per_it"]
    lines += ["", f"Stock DLRM's own ms/it ranged {min(times):.2f}-{max(times):.2f} over the repetitions: on these "
              "shared 2-core machines a single run's speed moves by tens of percent, so a repetition's ratio "
              "does too; the two summaries (median of per-repetition ratios, ratio of medians) bracket the "
              "figure, and `step_phases.py` below gives the steadier in-process view of the same step. MLET "
              "rows without a suffix use patched DLRM's default update (with SGD: applied at the step, packed "
              "tables); `sparse`: `--mlet-fused-update=off`; `fbgemm`: `--mlet-fused-update=fbgemm`."]
    return lines


if __name__ == "__main__":
    main()
