"""Every path a big-table user takes, as whole DLRM runs: SGD, Adagrad, row-wise Adagrad x fp32/fp16/bf16 tables.

Each optimizer's MLET runs (d=16, k=256, ``--mlet-table-dtype``) are timed
against stock DLRM d=16 **with the same optimizer**, in real
``dlrm_s_pytorch.py`` runs as ``whole_run.py`` times them (random data, the
bench architecture, 26 tables at ``--scale`` x Criteo-Kaggle's sizes, batch
128, DLRM's own ms/it, the warm-up print left out). All configurations are
interleaved for ``--reps`` repetitions; each ratio is taken against the
same repetition's run, and both summaries are kept: the median of the
per-repetition ratios and the ratio of the median ms/it.

The limit, stated: for each path, the work MLET adds to a step is counted
(bytes of k-wide rows gathered and written back, accumulator rows for the
Adagrads, the projections' multiply-adds) and priced at this machine's
measured copy bandwidth and BLAS rate, beside the measured extra ms.

    python benchmarks/every_path.py            # 3 repetitions, about 10 minutes on 2 cores

The TorchRec step is in the same loop: each repetition also times TorchRec's
DLRM under ``DistributedModelParallel`` on 2 gloo ranks of this machine
(``torchrec_comm.py``'s model: 26 tables at 1/1000 of Criteo-Kaggle's sizes,
one id per feature, batch 128 per rank, fused Adagrad on the tables), stock
``EmbeddingBagCollection`` against the d-wide MLET collection, table-wise
and row-wise (``--no-torchrec`` leaves it out; it needs TorchRec).

Results go to results/every_path.json.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import torch

import torchrec_comm
from common import both_summaries, criteo_rows, dlrm_copies, machine_lines, md_table, run_measured, save
from whole_run import dlrm_args, ms_per_it

OPTIMIZERS = ("sgd", "adagrad", "rwsadagrad")
DTYPES = ("fp32", "fp16", "bf16")
LRS = {"sgd": 0.1, "adagrad": 0.01, "rwsadagrad": 0.01}
K, D, BATCH = 256, 16, 128
TORCHREC_PLANS = ("table_wise", "row_wise")


def configs():
    """(name, optimizer, table dtype or None for stock, whether half tables round eagerly)."""
    for optimizer in OPTIMIZERS:
        yield f"stock {optimizer}", optimizer, None, False
        for dtype in DTYPES:
            yield f"MLET {optimizer} {dtype}", optimizer, dtype, False
            if dtype == "fp16" and optimizer == "sgd":  # what the compiled rounding saves
                yield f"MLET {optimizer} {dtype} eager", optimizer, dtype, True


def machine_rates():
    """(bytes/s of a large copy, multiply-adds/s of the step's batched k-wide products) on this machine."""
    a = torch.empty(64 * 2**20 // 4)
    b = torch.empty_like(a)
    copies = []
    for _ in range(5):
        start = time.perf_counter()
        b.copy_(a)
        copies.append(time.perf_counter() - start)
    bandwidth = 2 * a.numel() * 4 / statistics.median(copies)  # read and write
    x, w = torch.randn(26, BATCH, K), torch.randn(26, D, K)
    products = []
    for _ in range(20):
        start = time.perf_counter()
        torch.bmm(x, w.transpose(1, 2))
        products.append(time.perf_counter() - start)
    return bandwidth, 26 * BATCH * K * D / statistics.median(products)


def extra_work(optimizer, dtype):
    """Bytes moved and multiply-adds MLET adds to one step, beyond stock's d-wide tables."""
    width = {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]
    rows = 26 * BATCH
    gathered = rows * (K * width - D * 4)  # forward: k-wide rows instead of d-wide
    written = 2 * rows * (K * width - D * 4)  # update: read and write the touched rows
    state = {"sgd": 0, "adagrad": 2 * rows * (K - D) * 4, "rwsadagrad": 0}[optimizer]  # per-element sums
    if dtype != "fp32":
        written += 2 * rows * K * 4  # the rows also pass through float32 for the rule and the rounding
    return gathered + written + state, 3 * rows * K * D  # projection forward and its two gradients


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batches", type=int, default=240)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--no-torchrec", action="store_true", help="leave the TorchRec step out")
    args = parser.parse_args()
    plans = () if args.no_torchrec or importlib.util.find_spec("torchrec") is None else TORCHREC_PLANS
    rows = criteo_rows(args.scale)
    base = [a for a in dlrm_args(rows, args.batches, max(1, args.batches // 6))
            if not a.startswith("--learning-rate")]
    every = list(configs())
    times = {name: [] for name, *_ in every}
    eager_env = dict(os.environ, TORCH_COMPILE_DISABLE="1")
    with tempfile.TemporaryDirectory() as work:
        stock, patched = dlrm_copies(work)
        for rep in range(args.reps):
            for name, optimizer, dtype, eager in every:
                cmd = [sys.executable, stock if dtype is None else patched] + base + [
                    f"--optimizer={optimizer}", f"--learning-rate={LRS[optimizer]}"]
                if dtype is None:
                    cmd = [c for c in cmd if c != "--mlet-log-freq=0"]
                else:
                    cmd += [f"--mlet-hidden-dim={K}", f"--mlet-table-dtype={dtype}"]
                out, _ = run_measured(cmd, work, env=eager_env if eager else None)
                times[name].append(ms_per_it(out))
                print(f"rep {rep + 1}/{args.reps} {name}: {times[name][-1]:.2f} ms/it", flush=True)
            if plans:
                for plan, by_config in torchrec_comm.step_ms(plans).items():
                    for config, r in by_config.items():
                        times.setdefault(f"TorchRec {plan} {config}", []).append(r["ms_median"])
                    print(f"rep {rep + 1}/{args.reps} TorchRec {plan}: stock {by_config['stock d']['ms_median']:.2f}, "
                          f"MLET {by_config['MLET d-wide']['ms_median']:.2f} ms/step", flush=True)
    bandwidth, macs = machine_rates()
    results = []
    for plan in plans:
        own, base_t = times[f"TorchRec {plan} MLET d-wide"], times[f"TorchRec {plan} stock d"]
        moved, products = extra_work("adagrad", "fp32")  # per rank: 26 x 128 rows a step, as in DLRM's step
        results.append(summary(f"TorchRec {plan.replace('_', '-')}", "adagrad", "fp32", own, base_t, None, moved,
                               products, bandwidth, macs))
    for name, optimizer, dtype, _ in every:
        if dtype is None:
            continue
        moved, products = extra_work(optimizer, dtype)
        results.append(summary(name, optimizer, dtype, times[name], times[f"stock {optimizer}"],
                               times[f"MLET {optimizer} fp32"], moved, products, bandwidth, macs))
    payload = {"reps": args.reps, "batches": args.batches, "scale": args.scale, "tables": rows, "k": K, "d": D,
               "bandwidth_bytes_per_s": bandwidth, "multiply_adds_per_s": macs, "results": results}
    print(save("every_path", payload, render))


def summary(name, optimizer, dtype, own, base_t, fp32, moved, products, bandwidth, macs):
    """One path's row: both summaries against stock (and against fp32 MLET), the extra ms and its bound."""
    row = {
        "name": name, "optimizer": optimizer, "table_dtype": dtype, "ms_per_it": own, "stock_ms_per_it": base_t,
        **both_summaries(own, base_t),
        "extra_ms": statistics.median(own) - statistics.median(base_t),
        "bound_ms": 1000 * (moved / bandwidth + products / macs), "bytes_moved": moved, "multiply_adds": products,
    }
    if fp32 is not None:
        row["to_fp32_median"] = statistics.median(a / b for a, b in zip(own, fp32))
        row["to_fp32_of_medians"] = statistics.median(own) / statistics.median(fp32)
    return row


def render(data):
    lines = ["## Every path: SGD, Adagrad, row-wise Adagrad x fp32/fp16/bf16 tables (`benchmarks/every_path.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Whole `dlrm_s_pytorch.py` runs as in the section above (26 tables at {data['scale']} x "
              f"Criteo-Kaggle's sizes, batch 128, {data['batches']} batches, d={data['d']}), MLET k={data['k']} "
              "against stock DLRM **with the same optimizer** (lr 0.1 SGD, 0.01 the Adagrads). "
              f"{data['reps']} interleaved repetitions: the median of the per-repetition ratios (min-max) and the "
              "ratio of the median ms/it, both. `eager`: half tables' stochastic rounding without torch.compile "
              "(`TORCH_COMPILE_DISABLE=1`), the same bits. Bound: the bytes MLET adds to a step (k-wide rows gathered, "
              "written back, accumulator rows, the float32 pass of half rows) at this machine's copy bandwidth "
              f"({data['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s), plus the projections' multiply-adds at its "
              f"BLAS rate for these shapes ({data['multiply_adds_per_s'] / 1e9:.1f} G/s).", ""]
    lines += md_table(["run", "stock ms/it (median)", "MLET ms/it (median)", "/ stock: median of ratios (min-max)",
                       "/ stock: ratio of medians", "/ fp32 MLET (median, of medians)", "extra ms", "bound ms"], [
        [r["name"], f"{statistics.median(r['stock_ms_per_it']):.2f}", f"{statistics.median(r['ms_per_it']):.2f}",
         f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})", f"{r['ratio_of_medians']:.2f}",
         f"{r['to_fp32_median']:.2f}, {r['to_fp32_of_medians']:.2f}" if "to_fp32_median" in r else "-",
         f"{r['extra_ms']:+.2f}", f"{r['bound_ms']:.2f}"]
        for r in data["results"]])
    if any(r["name"].startswith("TorchRec") for r in data["results"]):
        lines += ["", "TorchRec rows: ms per step of TorchRec's DLRM under DistributedModelParallel on 2 gloo ranks "
                  "sharing the cores (26 tables at 1/1000 of Criteo-Kaggle's sizes, one id per feature, batch 128 "
                  "per rank, fused Adagrad on the tables), stock `EmbeddingBagCollection` against the d-wide MLET "
                  "collection, timed in each repetition between the DLRM runs; bound: Adagrad's extra bytes and "
                  "products for one rank's 26 x 128 rows (row-wise also all-reduces the projections' gradients, "
                  "not counted)."]
    return lines


if __name__ == "__main__":
    main()
