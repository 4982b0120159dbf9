"""What TorchRec's embedding output distribution sends per step: stock, today's MLET, d-wide MLET.

On W gloo ranks of this machine (W = 2 and 4; the 4 ranks as 2 hosts of 2), a
TorchRec DLRM with Criteo-Kaggle's 26 tables at 1/1000 of their sizes, one id
per feature, batch 128 per rank, trains under hand-written table-wise,
row-wise, column-wise (2 shards per table) and, on 4 ranks, table-row-wise
plans, as

- ``stock d``: a stock ``EmbeddingBagCollection`` at width d;
- ``MLET today``: ``MLETEmbeddingBagCollection`` under TorchRec's default
  sharders (the k-wide pooled rows cross the network, then the projections run
  data-parallel);
- ``MLET d-wide``: the same under ``dlrm_mlet.torchrec.sharders()`` (each rank
  projects its shards' pooled rows before the output distribution).

Bytes: what each rank hands the output distribution's collectives in the
forward pass, counted at the ``torch.distributed`` calls TorchRec makes inside
its output dists, to other ranks only (an all-to-all's splits for other ranks;
a reduce-scatter's input less the rank's own share), summed over the ranks; the
backward pass sends the same amount back. Separately, the projection-gradient
all-reduce the row-wise d-wide plan adds (payload; a ring all-reduce sends
2 (W-1)/W of it per rank). Step time: forward, backward and optimizer steps
(fused Adagrad on the tables, Adagrad on the rest), configurations taking
turns, median over rounds. The measured bytes are checked against the formula
the 8- and 64-GPU arithmetic uses.

    python benchmarks/torchrec_comm.py [--rounds R --steps S]
"""

import argparse
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common import criteo_rows, machine_lines, md_table, mib, save

D, K, BATCH, SCALE, DENSE = 16, 256, 128, 0.001, 13
CONFIGS = ("stock d", "MLET today", "MLET d-wide")
PLANS = {2: ("table_wise", "row_wise", "column_wise"), 4: ("table_wise", "row_wise", "column_wise", "table_row_wise")}
LOCAL = 2  # ranks per "host" for table-row-wise
# The arithmetic: Criteo's 26 tables, d and k as measured, a per-GPU batch typical of large runs.
SCALE_BATCH, SCALE_WORLDS = 2048, (8, 64)

_counted = {"output": 0, "allreduce": 0}
_phase = {"output": False}


def _to_others(split_bytes, group):
    me = dist.get_rank(group)
    return sum(b for r, b in enumerate(split_bytes) if r != me)


def _install_counters():
    """Count what TorchRec's output dists hand ``torch.distributed`` (and any all-reduce: the projections')."""
    a2a, rs_tensor, rs_list, all_reduce = (dist.all_to_all_single, dist.reduce_scatter_tensor,
                                           dist.reduce_scatter, dist.all_reduce)

    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, group=None, **kw):
        if _phase["output"]:
            world = dist.get_world_size(group)
            splits = input_split_sizes or [input.numel() // world] * world  # elements (pooled a2a)
            rows = input.shape[0] if input.dim() > 1 and input_split_sizes else None
            per = input.numel() // rows * input.element_size() if rows else input.element_size()
            _counted["output"] += _to_others([s * per for s in splits], group)
        return a2a(output, input, output_split_sizes, input_split_sizes, group=group, **kw)

    def reduce_scatter_tensor(output, input, op=dist.ReduceOp.SUM, group=None, **kw):
        if _phase["output"]:
            world = dist.get_world_size(group)
            _counted["output"] += _to_others([input.numel() * input.element_size() // world] * world, group)
        return rs_tensor(output, input, op=op, group=group, **kw)

    def reduce_scatter(output, input_list, op=dist.ReduceOp.SUM, group=None, **kw):
        if _phase["output"]:
            _counted["output"] += _to_others([t.numel() * t.element_size() for t in input_list], group)
        return rs_list(output, input_list, op=op, group=group, **kw)

    def all_reduce_counted(tensor, op=dist.ReduceOp.SUM, group=None, **kw):
        _counted["allreduce"] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, op=op, group=group, **kw)

    dist.all_to_all_single, dist.reduce_scatter_tensor, dist.reduce_scatter = (
        all_to_all_single, reduce_scatter_tensor, reduce_scatter)
    dist.all_reduce = all_reduce_counted


def _watch_output_dists(dmp):
    """Mark the forward of each TorchRec output dist (inside the MLET wrapper, if any) as the counted phase."""
    collection = dmp.module.model.sparse_arch.embedding_bag_collection
    ebc = getattr(collection, "ebc", collection)
    for output_dist in ebc._output_dists:
        target = getattr(output_dist, "output_dist", output_dist)
        target.register_forward_pre_hook(lambda *_: _phase.__setitem__("output", True))
        target.register_forward_hook(lambda *_: _phase.__setitem__("output", False))


def _plan(model, kind, world, config):
    from torchrec.distributed import sharding_plan as sp
    from torchrec.distributed.types import ShardingPlan

    from dlrm_mlet.torchrec import MLETEmbeddingBagCollectionSharder

    path = "model.sparse_arch.embedding_bag_collection"
    module, sharder = model.model.sparse_arch.embedding_bag_collection, None
    if config == "MLET today":
        module, path = module.ebc, path + ".ebc"
    elif config == "MLET d-wide":
        sharder = MLETEmbeddingBagCollectionSharder()
    names = [c.name for c in module.embedding_bag_configs()]
    make = {
        "table_wise": lambda i: sp.table_wise(rank=i % world),
        "row_wise": lambda i: sp.row_wise(),
        "column_wise": lambda i: sp.column_wise(ranks=[i % world, (i + 1) % world]),
        "table_row_wise": lambda i: sp.table_row_wise(host_index=i % (world // LOCAL)),
    }[kind]
    return ShardingPlan({path: sp.construct_module_sharding_plan(
        module, {n: make(i) for i, n in enumerate(names)}, sharder=sharder, local_size=LOCAL, world_size=world,
        device_type="cpu")})


def _build(config, kind, world, rows):
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed import DistributedModelParallel
    from torchrec.models.dlrm import DLRM, DLRMTrain
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from dlrm_mlet.torchrec import MLETEmbeddingBagCollection, sharders, sparse_parameters

    torch.manual_seed(0)
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=D, num_embeddings=n, feature_names=[f"f{i}"])
              for i, n in enumerate(rows)]
    meta = torch.device("meta")
    ebc = (EmbeddingBagCollection(tables=tables, device=meta) if config == "stock d"
           else MLETEmbeddingBagCollection(tables, K, device=meta))
    model = DLRMTrain(DLRM(ebc, DENSE, [64, D], [64, 1]))
    apply_optimizer_in_backward(torch.optim.Adagrad, sparse_parameters(model), {"lr": 0.01})
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=_plan(model, kind, world, config),
                                   sharders=sharders() if config == "MLET d-wide" else None)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda params: torch.optim.Adagrad(params, lr=0.01))
    _watch_output_dists(dmp)
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense])


def _batches(rows, rank, count):
    from torchrec import KeyedJaggedTensor
    from torchrec.datasets.utils import Batch

    g = torch.Generator().manual_seed(rank)
    out = []
    for _ in range(count):
        ids = torch.stack([torch.randint(0, n, (BATCH,), generator=g) for n in rows])
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=[f"f{i}" for i in range(len(rows))], values=ids.flatten(),
                                                  lengths=torch.ones(ids.numel(), dtype=torch.long))
        out.append(Batch(dense_features=torch.rand(BATCH, DENSE, generator=g), sparse_features=kjt,
                         labels=torch.randint(0, 2, (BATCH,), generator=g)))
    return out


def _steps(dmp, optimizer, batches):
    for batch in batches:
        optimizer.zero_grad()
        loss, _ = dmp(batch)
        loss.backward()
        optimizer.step()


def _worker(rank, world, port, rounds, steps, out, kinds=None, configs=CONFIGS):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_WORLD_SIZE=str(LOCAL))
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    torch.set_num_threads(1)
    _install_counters()
    rows = criteo_rows(SCALE)
    batches = _batches(rows, rank, steps)
    results = {}
    for kind in kinds or PLANS[world]:
        models = {config: _build(config, kind, world, rows) for config in configs}
        counted, times = {}, {config: [] for config in configs}
        for config, (dmp, optimizer) in models.items():  # warm up, then count one step's bytes
            _steps(dmp, optimizer, batches[:2])
            _counted.update(output=0, allreduce=0)
            _steps(dmp, optimizer, batches[:1])
            totals = torch.tensor([_counted["output"], _counted["allreduce"]], dtype=torch.float64)
            dist.all_reduce(totals)  # (after the count: not an MLET all-reduce)
            counted[config] = totals.tolist()
        for _ in range(rounds):
            for config, (dmp, optimizer) in models.items():
                dist.barrier()
                start = time.perf_counter()
                _steps(dmp, optimizer, batches)
                dist.barrier()
                times[config].append((time.perf_counter() - start) / steps * 1000)
        results[kind] = {
            config: {"output_bytes_per_step": counted[config][0], "allreduce_bytes_per_step": counted[config][1],
                     "ms_median": statistics.median(times[config]), "ms_min": min(times[config]),
                     "ms_max": max(times[config])}
            for config in configs
        }
        del models
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def expected_bytes(kind, world, tables, width, batch, shards=1):
    """Forward output-dist bytes per step, all ranks together, of ``tables`` tables sending ``width`` each.

    Table-wise: each owner sends every other rank its rows ((W-1) B w per table).
    Row-wise: every rank sends every other rank its rows of partial sums (W (W-1) B w).
    Column-wise: each of a table's ``shards`` owners sends its shard's rows ((W-1) B w per shard, w the shard's width).
    """
    per = {"table_wise": world - 1, "row_wise": world * (world - 1), "column_wise": (world - 1) * shards}[kind]
    return per * batch * tables * width * 4


def _spawn(world, rounds, steps, work, kinds=None, configs=CONFIGS):
    """Per plan and configuration: bytes counted and step ms (median, min, max over ``rounds``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(work, f"{world}.pt")
    mp.start_processes(_worker, args=(world, port, rounds, steps, out, kinds, configs), nprocs=world,
                       start_method="spawn")
    return torch.load(out, weights_only=True)


def step_ms(kinds, rounds=1, steps=20, world=2):
    """Stock d against MLET d-wide, step ms per plan: what ``every_path.py`` interleaves with its DLRM runs."""
    with tempfile.TemporaryDirectory(prefix="dlrm-mlet-step-") as work:
        return _spawn(world, rounds, steps, work, tuple(kinds), ("stock d", "MLET d-wide"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    tables = len(criteo_rows(SCALE))
    results = {}
    with tempfile.TemporaryDirectory(prefix="dlrm-mlet-comm-") as work:
        for world in PLANS:
            results[str(world)] = _spawn(world, args.rounds, args.steps, work)
    # Width each configuration sends per table (column-wise: per shard) and the check against the formula.
    widths = {"stock d": (D, D / 2), "MLET today": (K, K / 2), "MLET d-wide": (D, D)}
    for world, by_kind in results.items():
        for kind, by_config in by_kind.items():
            for config, r in by_config.items():
                r["ratio_to_stock"] = r["output_bytes_per_step"] / by_config["stock d"]["output_bytes_per_step"]
                r["ms_ratio_to_stock"] = r["ms_median"] / by_config["stock d"]["ms_median"]
                if kind != "table_row_wise":
                    whole, shard = widths[config]
                    width, shards = (shard, 2) if kind == "column_wise" else (whole, 1)
                    r["formula_bytes"] = expected_bytes(kind, int(world), tables, width, BATCH, shards)
    arithmetic = {
        str(world): {kind: {config: expected_bytes(kind, world, tables, widths[config][kind == "column_wise"],
                                                   SCALE_BATCH, 2 if kind == "column_wise" else 1) / world
                            for config in CONFIGS}
                     for kind in ("table_wise", "row_wise", "column_wise")}
        for world in SCALE_WORLDS
    }
    payload = {
        "d": D, "k": K, "batch": BATCH,
        "tables": tables, "rows": sum(criteo_rows(SCALE)), "rounds": args.rounds, "steps_per_round": args.steps,
        "results": results, "scale_batch": SCALE_BATCH,
        "arithmetic_bytes_per_gpu": arithmetic,
        "row_wise_grad_allreduce_bytes": {str(w): 2 * (w - 1) / w * tables * D * K * 4 for w in SCALE_WORLDS},
    }
    print(save("torchrec_comm", payload, render))


def render(data):
    def kib(n):
        return f"{n / 2**10:,.1f}"

    d, k = data["d"], data["k"]
    lines = ["## TorchRec: what the embedding output distribution sends (`benchmarks/torchrec_comm.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"TorchRec DLRM, {data['tables']} tables at Criteo-Kaggle's sizes / 1000 ({data['rows']:,} rows), "
              f"d={d}, k={k}, one id per feature, batch {data['batch']} per rank, gloo ranks on this machine (4 "
              "ranks: 2 hosts of 2), hand-written plans (column-wise: 2 shards per table). `stock d`: a stock "
              "`EmbeddingBagCollection` at width d; `MLET today`: MLET under TorchRec's default sharders; "
              "`MLET d-wide`: under `dlrm_mlet.torchrec.sharders()`. KiB: the forward output distribution's bytes "
              "per step, all ranks together, as TorchRec hands them to its collectives for other ranks (the "
              "backward sends as much back); ratio to stock. Step time: forward, backward and optimizer, median "
              f"(min-max) of {data['rounds']} rounds of {data['steps_per_round']} steps, configurations taking "
              "turns; 4 ranks share 2 cores here, so those times measure the CPUs, not a network.", ""]
    rows, exact = [], True
    for world, by_kind in data["results"].items():
        for kind, r in by_kind.items():
            s, t, w = r["stock d"], r["MLET today"], r["MLET d-wide"]
            exact &= all(c.get("formula_bytes", c["output_bytes_per_step"]) == c["output_bytes_per_step"]
                         for c in (s, t, w))
            rows.append([world, kind, kib(s["output_bytes_per_step"]),
                         f"{kib(t['output_bytes_per_step'])} ({t['ratio_to_stock']:.2f})",
                         f"{kib(w['output_bytes_per_step'])} ({w['ratio_to_stock']:.2f})"]
                        + [f"{c['ms_median']:.1f} ({c['ms_min']:.1f}-{c['ms_max']:.1f})" for c in (s, t, w)])
    lines += md_table(["ranks", "plan", "stock d KiB", "MLET today KiB (ratio)", "MLET d-wide KiB (ratio)",
                       "ms/step stock", "MLET today", "MLET d-wide"], rows)
    rw = data["results"]["2"]["row_wise"]["MLET d-wide"]["allreduce_bytes_per_step"] / 2
    lines += ["", f"Table-, row- and table-row-wise: d-wide MLET sends what stock sends (1.00), today's MLET k/d = "
              f"{k // d} times as much. Column-wise, each of a table's n shards sends a d-wide partial product and "
              f"the receiver adds them: n times stock's bytes (here n = 2), against today's k/d. Row-wise d-wide "
              f"MLET also sums its projections' gradients among the ranks holding them: one all-reduce of "
              f"{kib(rw)} KiB per rank per step here ({data['tables']} x d x k floats)."
              + (" The measured bytes equal the formula below in every row (table-row-wise has none)." if exact
                 else " **Some measured bytes differ from the formula below.**")]
    batch = data["scale_batch"]
    lines += ["", f"**At scale (arithmetic).** Criteo's {data['tables']} tables, d={d}, k={k}, batch {batch:,} per GPU, "
              "forward output distribution per GPU per step, fp32 (MiB; the backward sends as much again). "
              "Table-wise: (W-1)/W x B x T x w x 4 bytes; row-wise: (W-1) x B x T x w x 4; column-wise with n "
              "shards: (W-1)/W x B x T x n x (shard width) x 4, the d-wide shard width being d.", ""]
    lines += md_table(["GPUs", "plan", "stock d", "MLET today", "MLET d-wide"], [
        [world, kind, mib(r["stock d"]), mib(r["MLET today"]), mib(r["MLET d-wide"])]
        for world, by_kind in data["arithmetic_bytes_per_gpu"].items() for kind, r in by_kind.items()])
    grad = ", ".join(f"{w} GPUs {mib(b)} MiB" for w, b in data["row_wise_grad_allreduce_bytes"].items())
    lines += ["", f"Row-wise d-wide MLET adds its projection-gradient all-reduce (ring, per GPU): {grad}."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
