"""Training memory and speed of half-precision k-wide tables, per optimizer (#15).

For SGD, Adagrad and DLRM's row-wise RWSAdagrad, four whole
``dlrm_s_pytorch.py`` runs each: stock DLRM d=16 (the baseline) and patched
DLRM with MLET d=16 k=256 and ``--mlet-table-dtype`` fp32, fp16 and bf16
(random data, the bench architecture, 26 tables at ``--scale`` x
Criteo-Kaggle's sizes, batch 128, as ``whole_run.py``). Measured per
configuration:

* training bytes: the tables' tensors and the optimizer's state of them, as
  the run saved them (``--save-model``, one extra run), beside what
  ``core.budget.training_bytes`` predicts, so the planner's arithmetic is
  checked against the real thing;
* peak RSS of the run (without the save, which allocates its own copies);
* DLRM's own ms/it, interleaved over ``--reps`` repetitions, as a median of
  per-repetition ratios to the baseline and to fp32 MLET of the same optimizer.

    python benchmarks/table_memory.py       # 3 repetitions, about 8 minutes here

Results go to results/table_memory.json.
"""

import argparse
import os
import statistics
import sys
import tempfile

import torch

from common import criteo_rows, dlrm_copies, machine_lines, md_table, mib, run_measured, save
from whole_run import dlrm_args, ms_per_it

# Criteo Terabyte's table sizes at --max-ind-range=40000000, as DLRM's torchrec_dlrm/README.MD trains it.
TERABYTE_40M = [40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209, 11938,
                155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36]
GPUS = (("1 x 80 GB", 80e9), ("1 x 141 GB", 141e9), ("8 x 80 GB", 8 * 80e9), ("8 x 141 GB", 8 * 141e9))
OPTIMIZERS = ("sgd", "adagrad", "rwsadagrad")
DTYPES = ("fp32", "fp16", "bf16")
D, K = 16, 256


def configs():
    """(name, optimizer, k, table dtype): per optimizer, the baseline then MLET in each dtype."""
    for optimizer in OPTIMIZERS:
        yield f"baseline {optimizer}", optimizer, 0, "fp32"
        for dtype in DTYPES:
            yield f"MLET {dtype} {optimizer}", optimizer, K, dtype


def command(stock, patched, base, optimizer, k, dtype):
    if not k:
        return [sys.executable, stock] + [a for a in base if not a.startswith("--mlet-")] + [f"--optimizer={optimizer}"]
    return [sys.executable, patched] + base + [f"--optimizer={optimizer}", f"--mlet-hidden-dim={k}",
                                               f"--mlet-table-dtype={dtype}"]


def saved_table_bytes(path):
    """Bytes of the tables and of the optimizer's state of them, in the file a run saved."""
    from dlrm_mlet.dlrm.checkpoints import param_groups_by_name
    from dlrm_mlet.checkpoint_io import load_checkpoint

    ckpt = load_checkpoint(path)
    names = [name for group in param_groups_by_name(ckpt) for name in group]
    tables = {i for i, name in enumerate(names) if name.startswith("emb_l.")}
    weights = sum(v.numel() * v.element_size() for key, v in ckpt["state_dict"].items() if key.startswith("emb_l."))
    state = sum(v.numel() * v.element_size() for i, s in ckpt["opt_state_dict"]["state"].items() if i in tables
                for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return weights, state


def fits():
    """What fits where, by ``core.budget``'s arithmetic: training embedding bytes at full size.

    Per dataset, d in (16, 128), the plain baseline and MLET k=256 in each dtype
    and optimizer; the GPU columns compare with the cards' memory, all of it
    for embeddings (an upper bound: activations, the MLPs and fragmentation
    also need room; several GPUs hold a share each, as row-wise sharding
    balances it).
    """
    from dlrm_mlet.core.budget import training_bytes

    out = []
    for dataset, rows in (("Criteo-Kaggle", criteo_rows(1.0)), ("Criteo-Terabyte 40M", TERABYTE_40M)):
        for d in (16, 128):
            for k, dtype in ((0, "fp32"),) + tuple((K, t) for t in DTYPES):
                for optimizer in OPTIMIZERS:
                    total = sum(training_bytes(n, d, k, dtype, optimizer) for n in rows)
                    out.append({"dataset": dataset, "rows": sum(rows), "d": d, "k": k, "table_dtype": dtype,
                                "optimizer": optimizer, "bytes": total,
                                "fits": {name: total <= size for name, size in GPUS}})
    return out


def main():
    from dlrm_mlet.core.budget import training_cost

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batches", type=int, default=240)
    parser.add_argument("--scale", type=float, default=0.01)
    args = parser.parse_args()
    rows = criteo_rows(args.scale)
    base = dlrm_args(rows, args.batches, max(1, args.batches // 6))
    table = list(configs())
    times, peak, measured = {c[0]: [] for c in table}, {}, {}
    with tempfile.TemporaryDirectory() as work:
        stock, patched = dlrm_copies(work)
        for name, optimizer, k, dtype in table:  # the save runs: what training held, as saved
            path = os.path.join(work, "m.pt")
            run_measured(command(stock, patched, base, optimizer, k, dtype) + [  # DLRM saves after a test
                f"--test-freq={args.batches}", f"--save-model={path}"], work)
            measured[name] = saved_table_bytes(path + (".mlet" if k else ""))
            print(f"{name}: tables {measured[name][0] / 2**20:.1f} MiB + state {measured[name][1] / 2**20:.1f} MiB",
                  flush=True)
        for rep in range(args.reps):
            for name, optimizer, k, dtype in table:
                out, rss = run_measured(command(stock, patched, base, optimizer, k, dtype), work)
                times[name].append(ms_per_it(out))
                peak[name] = max(peak.get(name, 0), rss)
                print(f"rep {rep + 1}/{args.reps} {name}: {times[name][-1]:.2f} ms/it, "
                      f"peak RSS {rss / 2**20:.0f} MiB", flush=True)
    results = []
    for name, optimizer, k, dtype in table:
        baseline, fp32 = times[f"baseline {optimizer}"], times[f"MLET fp32 {optimizer}"]
        predicted = [sum(training_cost(n, D, k, dtype, optimizer)[j] for n in rows) for j in (0, 1)]
        results.append({
            "name": name, "optimizer": optimizer, "k": k, "table_dtype": dtype,
            "table_bytes": measured[name][0], "state_bytes": measured[name][1],
            "predicted_table_bytes": predicted[0], "predicted_state_bytes": predicted[1],
            "peak_rss_bytes": peak[name], "ms_per_it": times[name],
            "ratio_to_baseline": statistics.median(t / b for t, b in zip(times[name], baseline)),
            "ratio_to_fp32_mlet": statistics.median(t / b for t, b in zip(times[name], fp32)) if k else None,
        })
    payload = {"reps": args.reps, "batches": args.batches, "scale": args.scale, "d": D, "k": K, "tables": rows,
               "results": results, "fits": fits(), "gpus": [name for name, _ in GPUS]}
    print(save("table_memory", payload, render))


def render(data):
    lines = ["## Half-precision tables and optimizer state (`benchmarks/table_memory.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Whole `dlrm_s_pytorch.py` runs as in the section above (26 tables at {data['scale']} x "
              f"Criteo-Kaggle's sizes, {sum(data['tables']):,} rows, batch 128, {data['batches']} batches): stock "
              f"DLRM d={data['d']} and patched DLRM MLET d={data['d']} k={data['k']} with `--mlet-table-dtype`, "
              "per `--optimizer`. Table and state bytes: the tensors the run saved (tables, and the optimizer's "
              "state of them), with `core.budget`'s prediction beside them. Peak RSS: the run without the save. "
              f"ms/it ratios: median over {data['reps']} interleaved repetitions, each against the same "
              "repetition's baseline / fp32 MLET run with the same optimizer.", ""]
    lines += md_table(["run", "tables MiB", "optimizer state MiB", "predicted MiB (tables + state)", "peak RSS MiB",
                       "ms/it median", "/ baseline", "/ fp32 MLET"], [
        [r["name"], mib(r["table_bytes"]), mib(r["state_bytes"]),
         f"{mib(r['predicted_table_bytes'])} + {mib(r['predicted_state_bytes'])}", mib(r["peak_rss_bytes"]),
         f"{statistics.median(r['ms_per_it']):.2f}", f"{r['ratio_to_baseline']:.2f}",
         f"{r['ratio_to_fp32_mlet']:.2f}" if r.get("ratio_to_fp32_mlet") else "-"] for r in data["results"]])
    lines += ["", "### What fits where (arithmetic, full-size tables)", "",
              "Training embedding bytes from `core.budget.training_bytes` (the rule the table above checks): "
              "tables in their dtype, float32 projections, float32 optimizer state. A GPU column says whether "
              "that many bytes fit in the cards' memory at all, with nothing else on them (several cards: "
              "each holds a share, as row-wise sharding balances it); activations, MLPs and allocator slack "
              "need room too, so a close fit is not a fit.", ""]
    return lines + md_table(["dataset", "d", "tables", "optimizer", "GiB", *data["gpus"]], [
        [f["dataset"], f["d"], "plain" if not f["k"] else f"k={f['k']} {f['table_dtype']}", f["optimizer"],
         f"{f['bytes'] / 2**30:.1f}", *("yes" if f["fits"][g] else "no" for g in data["gpus"])]
        for f in data["fits"]])


if __name__ == "__main__":
    main()
