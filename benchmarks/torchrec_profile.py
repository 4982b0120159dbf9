"""Where a TorchRec step's extra milliseconds go: stock ``EmbeddingBagCollection`` against d-wide MLET, op by op.

``every_path.py`` times the whole TorchRec step; this profiles it. One gloo
rank, one thread, ``torchrec_comm.py``'s model and table-wise plan (26 tables
at 1/1000 of Criteo-Kaggle's sizes, one id per feature, batch 128, fused
Adagrad on the tables): both configurations warm up, take turns for
``--reps`` timed rounds of ``--steps`` steps, then one profiled round each.
The table lists the operators whose self time per step grew most under
MLET, with both configurations' figures.

    python benchmarks/torchrec_profile.py        # about a minute here

Results go to results/torchrec_profile.json.
"""

import argparse
import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

import torchrec_comm as comm
from common import criteo_rows, machine_lines, md_table, save

CONFIGS = ("stock d", "MLET d-wide")


def per_step_ms(prof, steps):
    """Self CPU ms per step of every operator in a profile."""
    return {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=0, world_size=1, timeout=datetime.timedelta(seconds=300))
    torch.set_num_threads(1)
    comm.LOCAL = 1
    rows = criteo_rows(comm.SCALE)
    batches = comm._batches(rows, 0, args.steps)
    models = {c: comm._build(c, "table_wise", 1, rows) for c in CONFIGS}
    times = {c: [] for c in CONFIGS}
    for dmp, optimizer in models.values():
        comm._steps(dmp, optimizer, batches[:5])
    for _ in range(args.reps):
        for c, (dmp, optimizer) in models.items():
            start = time.perf_counter()
            comm._steps(dmp, optimizer, batches)
            times[c].append((time.perf_counter() - start) / args.steps * 1000)
    ops = {}
    for c, (dmp, optimizer) in models.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            comm._steps(dmp, optimizer, batches)
        ops[c] = per_step_ms(prof, args.steps)
    dist.destroy_process_group()
    names = set(ops["stock d"]) | set(ops["MLET d-wide"])
    grown = sorted(names, key=lambda n: ops["MLET d-wide"].get(n, 0) - ops["stock d"].get(n, 0), reverse=True)
    payload = {"steps": args.steps, "reps": args.reps, "tables": len(rows),
               "step_ms": {c: statistics.median(t) for c, t in times.items()},
               "step_ms_all": times,
               "ops": [{"op": n, "stock_ms": ops["stock d"].get(n, 0.0), "mlet_ms": ops["MLET d-wide"].get(n, 0.0)}
                       for n in grown[:args.top]]}
    print(save("torchrec_profile", payload, render))


def render(data):
    stock, mlet = data["step_ms"]["stock d"], data["step_ms"]["MLET d-wide"]
    lines = ["## TorchRec: where the step's extra time goes (`benchmarks/torchrec_profile.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"One gloo rank, one thread, `torchrec_comm.py`'s model, table-wise ({data['tables']} tables at "
              "1/1000 of Criteo-Kaggle's sizes, one id per feature, batch 128, fused Adagrad on the tables). "
              f"Step: stock {stock:.2f} ms, d-wide MLET {mlet:.2f} ms (median of {data['reps']} rounds of "
              f"{data['steps']} steps, taking turns; {mlet / stock:.2f}x). Operators whose self time per step "
              "grew most under MLET (one profiled round each):", ""]
    lines += md_table(["operator", "stock ms/step", "MLET ms/step", "extra ms/step"], [
        [r["op"][:70], f"{r['stock_ms']:.3f}", f"{r['mlet_ms']:.3f}", f"{r['mlet_ms'] - r['stock_ms']:+.3f}"]
        for r in data["ops"]])
    return lines


if __name__ == "__main__":
    main()
