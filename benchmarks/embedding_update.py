"""The embedding part of an MLET step three ways: how fbgemm's fused TBE compares.

Only the 26 MLET tables of the bench architecture (Criteo-like sizes x 0.01,
k=256, d=16, batch 128, one index per bag), their projections and an SGD step,
so the difference between the variants is not hidden under the MLPs:

* ``sparse gradients`` -- the default: one sparse gradient per table, SGD steps it;
* ``--mlet-fused-update`` -- rows handed straight to the SGD step (``dlrm_mlet.engine.fused``);
* ``--mlet-fused-update=fbgemm`` -- fbgemm's CPU table-batched embedding with
  its fused exact SGD (what TorchRec uses) under the same batched projection
  (``dlrm_mlet.engine.tbe``). Needs ``fbgemm-gpu-cpu`` (the ``[torchrec]`` install);
  recorded as missing otherwise.

    python benchmarks/embedding_update.py [--k 256] [--steps 300] [--reps 5]
"""

import argparse
import statistics
import time

import torch

from common import criteo_rows, machine_lines, md_table, save


def ours(rows, k, d, fused_update):
    from dlrm_mlet import MLETEmbeddingBag
    from dlrm_mlet.engine import fused
    from dlrm_mlet.engine.grouped import grouped_forward

    tables = [MLETEmbeddingBag(n, d, k) for n in rows]
    fused.use(tables, fused_update or None)
    optimizer = torch.optim.SGD([p for t in tables for p in t.parameters()], lr=0.01)

    def step(indices, offsets, upstream):
        out = torch.stack(grouped_forward(tables, indices, [offsets] * len(rows), [None] * len(rows)))
        optimizer.zero_grad()
        (out * upstream).sum().backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, batch = criteo_rows(0.01), 128
    g = torch.Generator().manual_seed(0)
    data = [([torch.randint(0, n, (batch,), generator=g) for n in rows], torch.arange(batch),
             torch.randn(len(rows), batch, args.d, generator=g)) for _ in range(32)]
    variants = {"sparse gradients (default)": ours(rows, args.k, args.d, ""),
                "--mlet-fused-update": ours(rows, args.k, args.d, "torch")}
    from dlrm_mlet.engine import tbe

    why = tbe.available()
    missing = why and f"--mlet-fused-update=fbgemm not measured: {why}"
    if missing:
        print(missing)
    else:
        variants["--mlet-fused-update=fbgemm"] = ours(rows, args.k, args.d, "fbgemm")
    times = {name: [] for name in variants}
    for rep in range(args.reps):
        for name, step in variants.items():
            for i in range(20):
                step(*data[i % len(data)])
            start = time.perf_counter()
            for i in range(args.steps):
                step(*data[i % len(data)])
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
            print(f"rep {rep + 1}/{args.reps} {name:<30} {times[name][-1]:.3f} ms/step", flush=True)
    base = statistics.median(times["sparse gradients (default)"])
    results = [{"name": name, "ms_per_step_median": statistics.median(t), "min": min(t), "max": max(t),
                "ratio_to_default": statistics.median(t) / base} for name, t in times.items()]
    save("embedding_update", {"k": args.k, "d": args.d, "steps": args.steps, "reps": args.reps,
                              "tables": rows, "results": results, "missing": missing}, render)


def render(data):
    lines = ["## The embedding part alone: fused updates and fbgemm (`benchmarks/embedding_update.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"26 MLET tables (Criteo-like sizes x 0.01), k={data['k']}, d={data['d']}, batch 128, "
              f"forward + backward + SGD step, {data['steps']} steps x {data['reps']} interleaved repetitions.", ""]
    lines += md_table(["variant", "ms/step median (min-max)", "/ default"], [
        [r["name"], f"{r['ms_per_step_median']:.2f} ({r['min']:.2f}-{r['max']:.2f})", f"{r['ratio_to_default']:.2f}"]
        for r in data["results"]])
    if data.get("missing"):
        lines += ["", data["missing"]]
    return lines


if __name__ == "__main__":
    main()
