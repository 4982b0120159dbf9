"""MLET's step time and GPU memory at full Criteo-Kaggle size, at realistic batch sizes (#15 item 5).

Batch 128 on a GPU is host-bound (kernel launches, Python); what a team
training on Criteo pays is the step at batch 2048 to 16384 with the full
33.8M-row tables on the card. This times ``DLRM_Net``'s step as DLRM's loop
runs it (``train_step.Trainer``: forward, BCE loss, backward, SGD step) on one
GPU for stock DLRM d=16 and patched DLRM MLET d=16 k=256 with fp32 and fp16
tables, at each ``--batches`` size, and records peak GPU memory per
configuration (one model on the card at a time). The MLET paper reports a
step about 1.25x the baseline's; the aim is at most 1.10x.

Table values do not change the step's work, so MLET tables are filled by
torch's multi-threaded ``uniform_`` instead of DLRM's single-threaded numpy
draws (8.7e9 of them at k=256: minutes); the baseline keeps stock DLRM's init.

    python benchmarks/gpu_step.py           # needs a GPU with about 60 GB free; about 6 minutes on an H200

Results go to results/gpu_step.json.
"""

import argparse
import statistics
import sys
import tempfile
import time

import torch

from common import bench_batches, criteo_rows, dlrm_copies, import_script, machine_lines, md_table, mib, save
from train_step import Trainer

CONFIGS = [("baseline d=16", 0, "fp32"), ("MLET d=16 k=256 fp32", 256, "fp32"), ("MLET d=16 k=256 fp16", 256, "fp16")]


def fast_table_init():
    """Skip DLRM's numpy draws for MLET tables (values do not change the step's work)."""
    from dlrm_mlet.core import pair

    def uniform(weight):
        with torch.no_grad():
            return weight.uniform_(-(1 / weight.shape[0]) ** 0.5, (1 / weight.shape[0]) ** 0.5)
    pair.uniform_table_ = uniform


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="2048,16384", help="batch sizes (2048,16384)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per configuration and batch size")
    parser.add_argument("--scale", type=float, default=1.0, help="table sizes as a fraction of Criteo-Kaggle's")
    parser.add_argument("--cpu-check", action="store_true",
                        help="run on the CPU and save nothing: a check that the script works, at e.g. --scale 0.001")
    args = parser.parse_args()
    if not (args.cpu_check or torch.cuda.is_available()):
        sys.exit("gpu_step.py needs a GPU: torch sees none (torch.cuda.is_available() is False)")
    device = torch.device("cpu" if args.cpu_check else "cuda")
    gpu = device.type == "cuda"
    fast_table_init()
    rows = criteo_rows(args.scale)
    sizes = [int(b) for b in args.batches.split(",")]
    work = tempfile.mkdtemp(prefix="dlrm-mlet-gpu-")
    stock_path, patched_path = dlrm_copies(work)
    stock, patched = import_script(stock_path, "stock_dlrm"), import_script(patched_path, "patched_dlrm")
    results = []
    for name, k, dtype in CONFIGS:
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer = Trainer(stock, patched, rows, k, 16, "torch" if k else "", device, table_dtype=dtype)  # the default
        built = time.perf_counter() - start
        for size in sizes:
            batches = [tuple(t.to(device) for t in b) for b in bench_batches(rows, count=8, size=size)]
            trainer.run(batches, 10)  # warm-up
            ms = [trainer.run(batches, args.steps // 5) for _ in range(5)]
            results.append({"name": name, "k": k, "table_dtype": dtype, "batch": size,
                            "ms_per_it": ms, "ms_per_it_median": statistics.median(ms)})
            print(f"{name} batch {size}: {statistics.median(ms):.2f} ms/it", flush=True)
        peak = torch.cuda.max_memory_allocated() if gpu else 0
        for r in results:
            if r["name"] == name:
                r["peak_gpu_bytes"], r["build_seconds"] = peak, built
        del trainer
    for r in results:
        base = next(b["ms_per_it_median"] for b in results if b["k"] == 0 and b["batch"] == r["batch"])
        r["ratio_to_baseline"] = r["ms_per_it_median"] / base
    if not gpu:
        return
    save("gpu_step", {"scale": args.scale, "rows": sum(rows), "steps": args.steps, "results": results}, render)


def render(data):
    lines = ["## MLET on one GPU at full Criteo-Kaggle size (`benchmarks/gpu_step.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"`DLRM_Net`'s training step (forward, BCE, backward, SGD) on one GPU, tables at {data['scale']} "
              f"x Criteo-Kaggle's sizes ({data['rows']:,} rows), median of 5 blocks of {data['steps'] // 5} steps; "
              "peak GPU memory with that configuration alone on the card. The paper's figure: about 1.25x.", ""]
    return lines + md_table(["run", "batch", "ms/it", "/ baseline", "peak GPU MiB"], [
        [r["name"], r["batch"], f"{r['ms_per_it_median']:.2f}", f"{r['ratio_to_baseline']:.2f}",
         mib(r["peak_gpu_bytes"])] for r in data["results"]])


if __name__ == "__main__":
    main()
