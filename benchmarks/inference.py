"""Inference cost of a folded MLET model in stock DLRM, against plain baselines.

The folded model is built the way users get it: an MLET model made by patched
DLRM's own table construction, folded by ``fold_model``, its state dict loaded
strictly into stock DLRM's ``DLRM_Net``. It is timed against stock DLRM at the
same ``d`` (the expected ratio is 1.00: the folded model *is* that model) and at
``4 d`` (the iso-accuracy comparison the paper makes). Forward passes only,
under ``torch.no_grad``, models interleaved, median of repetitions.

    python benchmarks/inference.py [--full]
"""

import argparse
import shutil
import statistics
import tempfile
import time

import torch

from common import bench_batches, bench_model, criteo_rows, dlrm_copies, import_script, machine_lines, md_table, save


def time_model(model, data):
    with torch.no_grad():
        for dense, offsets, indices, _ in data[:3]:
            model(dense, offsets, indices)
        start = time.perf_counter()
        for dense, offsets, indices, _ in data:
            model(dense, offsets, indices)
    return (time.perf_counter() - start) / len(data) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--d", type=int, default=16)
    args = parser.parse_args()
    scale, reps = (0.1, 7) if args.full else (0.01, 5)
    rows = criteo_rows(scale)
    work = tempfile.mkdtemp(prefix="dlrm-mlet-bench-")
    stock_path, patched_path = dlrm_copies(work)
    stock = import_script(stock_path, "stock_dlrm")
    patched = import_script(patched_path, "patched_dlrm")
    from dlrm_mlet import dlrm_glue, fold_model

    dlrm_glue.use_config(dlrm_glue.Config(hidden_dim=args.k))
    mlet = bench_model(patched, rows, args.d)
    fold_model(mlet)
    folded = bench_model(stock, rows, args.d)
    folded.load_state_dict(mlet.state_dict(), strict=True)
    dlrm_glue.reset()
    models = {f"baseline d={args.d}": bench_model(stock, rows, args.d),
              f"folded MLET d={args.d} k={args.k}": folded,
              f"baseline d={4 * args.d}": bench_model(stock, rows, 4 * args.d)}
    results = {}
    for batch in (128, 2048):
        data = bench_batches(rows, count=40 if batch == 128 else 10, size=batch)
        times = {name: [] for name in models}
        for _ in range(reps):
            for name, model in models.items():
                times[name].append(time_model(model, data))
        base = statistics.median(times[f"baseline d={args.d}"])
        for name, values in times.items():
            results.setdefault(name, {})[str(batch)] = {
                "ms_per_batch_median": statistics.median(values), "min": min(values), "max": max(values),
                "ratio_to_baseline_same_d": statistics.median(values) / base}
            print(f"batch {batch:>5} {name:<24} {statistics.median(values):8.3f} ms "
                  f"({statistics.median(values) / base:.2f}x baseline d={args.d})", flush=True)
    save("inference", {"scale": scale, "reps": reps, "results": results}, render)
    shutil.rmtree(work, ignore_errors=True)


def render(data):
    lines = ["## Inference (`benchmarks/inference.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", "Forward passes in stock DLRM's `DLRM_Net`, no grad; median of "
              f"{data['reps']} interleaved repetitions.", ""]
    return lines + md_table(["model", "batch 128 ms", "ratio", "batch 2048 ms", "ratio"], [
        [name] + [v for b in ("128", "2048") for v in (f"{by_batch[b]['ms_per_batch_median']:.3f}",
                                                       f"{by_batch[b]['ratio_to_baseline_same_d']:.2f}")]
        for name, by_batch in data["results"].items()])


if __name__ == "__main__":
    main()
