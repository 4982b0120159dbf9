"""Training step time and memory: stock DLRM baseline vs patched DLRM with MLET.

Stock and patched DLRM run one after the other, interleaved (A B C ... A B C
...), never two at once: on 2 cores a concurrent run distorts step times far
more than anything measured here. Each run trains the bench architecture
(``13-512-256-64-d``, top ``512-256-1``, batch 128) on random data over 26
tables with Criteo-Kaggle's sizes times ``--scale``, one index per table and
sample as in Criteo; DLRM's ``--print-time`` gives the compute-only step time
(forward, backward, optimizer; data loading excluded) per print interval, and
the first interval is dropped as warm-up.

    python benchmarks/train_step.py            # default sizes, about 8 minutes here
    python benchmarks/train_step.py --full     # bigger tables, more repetitions
    python benchmarks/train_step.py --use-gpu  # the same on one GPU (DLRM's --use-gpu)
"""

import argparse
import os
import re
import statistics
import sys
import tempfile

from common import criteo_rows, dlrm_copies, machine, run_measured, save

CONFIGS = [  # name, MLET k (0: stock baseline), d, extra patched-DLRM flags
    ("baseline d=16", 0, 16, []),
    ("MLET d=16 k=64", 64, 16, []),
    ("MLET d=16 k=128", 128, 16, []),
    ("MLET d=16 k=256", 256, 16, []),
    ("MLET d=16 k=512", 512, 16, []),
    ("MLET d=16 k=256 fused", 256, 16, ["--mlet-fused-update"]),
    ("MLET d=4 k=256", 256, 4, []),
    ("MLET d=4 k=256 fused", 256, 4, ["--mlet-fused-update"]),
    ("baseline d=64", 0, 64, []),
]


def dlrm_args(rows, d, batches, print_freq):
    return [
        f"--arch-sparse-feature-size={d}", f"--arch-mlp-bot=13-512-256-64-{d}", "--arch-mlp-top=512-256-1",
        "--arch-embedding-size=" + "-".join(map(str, rows)), "--data-generation=random",
        "--num-indices-per-lookup=1", "--num-indices-per-lookup-fixed=True", "--mini-batch-size=128",
        f"--num-batches={batches}", f"--print-freq={print_freq}", "--print-time", "--loss-function=bce",
        "--round-targets=True", "--learning-rate=0.1", "--nepochs=1", "--numpy-rand-seed=0",
    ]


def step_times(stdout):
    times = [float(t) for t in re.findall(r"([\d.]+) ms/it", stdout)]
    return times[1:]  # the first interval holds the warm-up


def embedding_bytes(rows, d, k):
    training = sum(n * (k or d) * 4 for n in rows) + (len(rows) * k * d * 4 if k else 0)
    return training, sum(n * d * 4 for n in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="tables at 1/10 of Criteo's size, 5 repetitions")
    parser.add_argument("--scale", type=float, help="table sizes as a fraction of Criteo-Kaggle's")
    parser.add_argument("--reps", type=int, help="repetitions of the interleaved cycle")
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--only", help="comma-separated config names to run (default: all)")
    parser.add_argument("--use-gpu", action="store_true", help="train on one GPU (results: train_step_gpu)")
    args = parser.parse_args()
    if args.use_gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--use-gpu: torch sees no GPU here (torch.cuda.is_available() is False)")
    scale = args.scale or (0.1 if args.full else 0.01)
    reps = args.reps or (5 if args.full else 3)
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only.split(",")]
    rows = criteo_rows(scale)
    work = tempfile.mkdtemp(prefix="dlrm-mlet-bench-")
    stock, patched = dlrm_copies(work)
    runs = {name: {"ms_per_it": [], "peak_rss": []} for name, *_ in configs}
    print_freq = max(1, args.batches // 4)
    for rep in range(reps):
        for name, k, d, extra in configs:
            script = patched if k else stock
            cmd = [sys.executable, script] + dlrm_args(rows, d, args.batches, print_freq) + \
                ([f"--mlet-hidden-dim={k}"] if k else []) + (["--use-gpu"] if args.use_gpu else []) + extra
            out, rss = run_measured(cmd, cwd=work)
            median = statistics.median(step_times(out))
            runs[name]["ms_per_it"].append(median)
            runs[name]["peak_rss"].append(rss)
            print(f"rep {rep + 1}/{reps} {name:<18} {median:8.3f} ms/it  peak RSS {rss / 2**20:8.1f} MiB", flush=True)
    results = []
    base = statistics.median(runs["baseline d=16"]["ms_per_it"]) if "baseline d=16" in runs else None
    for name, k, d, extra in configs:
        times = runs[name]["ms_per_it"]
        training, inference = embedding_bytes(rows, d, k)
        results.append({
            "name": name, "k": k, "d": d, "ms_per_it_median": statistics.median(times),
            "ms_per_it_min": min(times), "ms_per_it_max": max(times), "ms_per_it_all": times,
            "ratio_to_baseline_d16": statistics.median(times) / base if base else None,
            "training_embedding_bytes": training, "inference_embedding_bytes": inference,
            "peak_rss_bytes": max(runs[name]["peak_rss"]),
        })
    command = "python benchmarks/train_step.py" + (" --full" if args.full else "") + \
        (" --use-gpu" if args.use_gpu else "")
    save("train_step_gpu" if args.use_gpu else "train_step", {"device": "gpu" if args.use_gpu else "cpu","machine": machine(), "command": command, "scale": scale, "reps": reps,
                        "batches": args.batches, "tables": rows, "results": results})
    os.system(f"rm -rf {work}")


if __name__ == "__main__":
    main()
