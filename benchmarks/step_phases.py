"""Where the milliseconds of a real DLRM step go: stock against patched, phase by phase.

``whole_run.py`` gives the ratio a user sees; this splits it. Stock and
patched ``DLRM_Net`` (bench architecture, 26 tables at ``--scale`` x
Criteo-Kaggle's sizes, batch 128, SGD lr 0.1) train in one process, taking
turns step by step, each batch made by DLRM's own ``RandomDataset`` just
before its step as in a real run (the data generation between steps leaves
the cores idle and the caches cold, which makes every op slower than in a
tight loop: ``train_step.py`` reuses 64 batches and sees less). Each step is
timed in four phases: the embedding lookups (``apply_emb``, MLET's grouped
engine), the rest of the forward (MLPs, interaction, loss), backward, and
the optimizer step. Means over ``--steps`` steps per configuration.

    python benchmarks/step_phases.py            # about 2 minutes here

Results go to results/step_phases.json.
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from common import bench_model, criteo_rows, dlrm_copies, import_script, machine_lines, md_table, save

CONFIGS = [  # name, MLET k (0: stock), --mlet-fused-update as the glue's Config takes it, table dtype
    ("stock d=16", 0, "", "fp32"),
    ("MLET k=256", 256, "torch", "fp32"),  # patched DLRM's default with SGD
    ("MLET k=256 sparse", 256, "", "fp32"),  # --mlet-fused-update=off
    ("MLET k=256 fp16", 256, "torch", "fp16"),  # --mlet-table-dtype=fp16
    ("MLET k=256 bf16", 256, "torch", "bf16"),
]
PHASES = ("embeddings", "rest of forward", "backward", "optimizer", "step")
# The half tables' update at the step, in its three parts (engine/half_update.py), timed where it runs
HALF_PARTS = {"summed_rows": "sum repeated rows", "rule_on": "the rule in float32", "stochastic_round": "rounding"}
_parts = {"current": None}


def _time_half_parts():
    """Wrap the half update's parts with timers that record into the running configuration's lists."""
    from dlrm_mlet.engine import half_update

    for module, name in ((half_update, "summed_rows"), (half_update.half, "rule_on"),
                         (half_update, "stochastic_round")):
        function = getattr(module, name)

        def timed(*args, _function=function, _name=name, **kwargs):
            start = time.perf_counter()
            result = _function(*args, **kwargs)
            if _parts["current"] is not None:
                _parts["current"][HALF_PARTS[_name]].append((time.perf_counter() - start) * 1000)
            return result

        setattr(module, name, timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--scale", type=float, default=0.01)
    args = parser.parse_args()
    from dlrm_mlet import dlrm_glue

    rows = criteo_rows(args.scale)
    with tempfile.TemporaryDirectory() as work:
        stock_path, patched_path = dlrm_copies(work)
        stock, patched = import_script(stock_path, "stock_dlrm"), import_script(patched_path, "patched_dlrm")
    warm = 20
    total = (args.steps + warm) * len(CONFIGS)
    data = stock.dp.RandomDataset(13, np.array(rows), 128 * total, total, 128, 1, True, round_targets=True)
    runs = []
    for name, k, update, dtype in CONFIGS:
        config = dlrm_glue.Config(hidden_dim=k, fused_update=update, table_dtype=dtype)
        dlrm_glue.use_config(config)
        model = bench_model(patched if k else stock, rows, 16)
        times = {p: [] for p in PHASES + tuple(HALF_PARTS.values())}
        runs.append((name, model, torch.optim.SGD(model.parameters(), lr=0.1), config, times))
    dlrm_glue.reset()
    _time_half_parts()
    batch = 0
    for step in range(args.steps + warm):
        for name, model, optimizer, config, times in runs:
            dlrm_glue.use_config(config)
            _parts["current"] = times if step >= warm else None
            dense, offsets, indices, target = stock.dp.collate_wrapper_random_offset([data[batch]])
            batch += 1
            t0 = time.perf_counter()  # DLRM_Net.sequential_forward, its embedding call timed apart
            ly = model.apply_emb(offsets, indices, model.emb_l, model.v_W_l)
            t1 = time.perf_counter()
            x = model.apply_mlp(dense, model.bot_l)
            loss = model.loss_fn(model.apply_mlp(model.interact_features(x, ly), model.top_l), target)
            t2 = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            if step >= warm:
                for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    times[phase].append(seconds * 1000)
    stock_step = statistics.mean(runs[0][4]["step"])
    results = [{"name": name, "k": k, "fused_update": update, "table_dtype": dtype,
                "ms": {p: statistics.mean(times[p]) for p in PHASES},
                "half_update_ms": {p: statistics.median(times[p]) for p in HALF_PARTS.values() if times[p]},
                "ratio": statistics.mean(times["step"]) / stock_step}
               for (name, k, update, dtype), (_, _, _, _, times) in zip(CONFIGS, runs)]
    for r in results:
        print(r["name"], {p: round(v, 3) for p, v in r["ms"].items()}, f"ratio {r['ratio']:.3f}")
    payload = {"steps": args.steps, "scale": args.scale, "tables": rows, "results": results}
    print(save("step_phases", payload, render))


def render(data):
    lines = ["## A real step, phase by phase (`benchmarks/step_phases.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Stock and patched `DLRM_Net` in one process, taking turns step by step, each batch made by "
              f"DLRM's own `RandomDataset` just before its step as in a real run (26 tables at {data['scale']} x "
              f"Criteo-Kaggle's sizes, batch 128, SGD lr 0.1); mean ms over {data['steps']} steps each.", ""]
    phases = ("embeddings", "rest of forward", "backward", "optimizer", "step")
    lines += md_table(["run", *phases, "/ stock"], [
        [r["name"], *(f"{r['ms'][p]:.2f}" for p in phases), f"{r['ratio']:.2f}"] for r in data["results"]])
    lines += ["", "`MLET k=256`: patched DLRM's default update with SGD (applied at the step, packed tables); "
              "`sparse`: `--mlet-fused-update=off`; `fp16`/`bf16`: `--mlet-table-dtype`, the same update with "
              "stochastic rounding."]
    for r in data["results"]:
        parts = r.get("half_update_ms") or {}
        if parts:
            lines += ["", f"- {r['name']}, the half tables' update inside the optimizer phase (median ms a step): "
                      + ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items()) + "."]
    stock = data["results"][0]["ms"]
    lines += ["", "Per step beyond stock, by phase: the embeddings gather k-wide rows (one op over the packed "
              "buffer, or one per table) and project them in one batched matmul, against stock's 26 "
              "`nn.EmbeddingBag` calls; backward adds the projection's two batched gradient products (and, "
              "with `sparse`, 26 sparse gradient tensors), against stock's 26 embedding-bag backward nodes; the "
              "optimizer adds k-wide rows instead of d-wide ones, and the projections.", ""]
    for r in data["results"][1:]:
        extra = {p: r["ms"][p] - stock[p] for p in stock}
        lines.append(f"- {r['name']}: {extra['step']:+.2f} ms = embeddings {extra['embeddings']:+.2f}, backward "
                     f"{extra['backward']:+.2f}, optimizer {extra['optimizer']:+.2f}, rest of forward "
                     f"{extra['rest of forward']:+.2f} (the same MLPs: noise).")
    return lines


if __name__ == "__main__":
    main()
