"""Where a real-data step's time goes: loading and collating, model, update; DLRM's loader against ``--mlet-mmap-data``.

On DLRM's processed Kaggle file (``dlrm-mlet synth --processed``: the
generator's law at Criteo-Kaggle's table sizes, ``--rows`` samples), stock
d=16 and MLET d=16 k=64 (patched DLRM's default SGD update) each train from
DLRM's own loader (``CriteoDataset`` and its ``DataLoader``: a Python list of
per-sample views, batches collated sample by sample) and from the
memory-mapped one (one gather a batch; the same batches, bit for bit:
tests/test_mapped.py). The four configurations take turns step by step, in
``--reps`` repetitions of ``--steps`` steps; each step is timed in four
phases: load (the loader's next batch), forward, backward, optimizer.
Reported per repetition and as the median of per-repetition ratios beside
the ratio of medians.

Building the loaders is measured apart, each in its own process: seconds and
peak memory (resident, what DLRM's loader holds) for the training and test
splits, at ``--rows`` samples and at ``--build-rows`` (10 % of Criteo-Kaggle by
default: DLRM's loader at full size needs more memory than this machine has
beside a model, which is what the memory-mapped loader is for).

    python benchmarks/real_data_step.py            # about 10 minutes here

Results go to results/real_data_step.json.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import types

import numpy as np
import torch

from common import bench_model, dlrm_copies, import_script, machine_lines, md_table, mib, run_measured, save

CONFIGS = [("stock d=16", 0, "dlrm"), ("stock d=16", 0, "mmap"), ("MLET d=16 k=64", 64, "dlrm"),
           ("MLET d=16 k=64", 64, "mmap")]
PHASES = ("load", "forward", "backward", "optimizer", "step")
LOADERS = {"dlrm": "DLRM's loader", "mmap": "--mlet-mmap-data"}
_BUILD = (  # one loader pair built in a fresh process: seconds, printed last (run_measured adds peak RSS)
    "import sys, time, types, numpy as np\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import dlrm_data_pytorch as dp\n"
    "from dlrm_mlet.data import mapped\n"
    "args = types.SimpleNamespace(data_set='kaggle', max_ind_range=-1, data_sub_sample_rate=0.0,\n"
    "    data_randomize='total', raw_data_file=sys.argv[3] + '/train.txt', processed_data_file=sys.argv[3]\n"
    "    + '/kaggleAdDisplayChallenge_processed.npz', memory_map=False, dataset_multiprocessing=False,\n"
    "    mini_batch_size=128, test_mini_batch_size=16384, num_workers=0, test_num_workers=0, mlperf_logging=False)\n"
    "np.random.seed(0); start = time.perf_counter()\n"
    "made = (dp.make_criteo_data_and_loaders if sys.argv[2] == 'dlrm' else mapped.loaders)(args)\n"
    "print('seconds', time.perf_counter() - start)\n"
)


def data_folder(path, rows, work):
    """A processed data folder: the one given, else ``rows`` samples of the full-size law written under ``work``."""
    from dlrm_mlet.tools.synth_processed import write_processed

    if path:
        return path
    folder = os.path.join(work, f"law-{rows}")
    write_processed(folder, rows, seed=0, scale=1.0, rank=32, support="calibrated", progress=False)
    return folder


def loader_args(folder):
    return types.SimpleNamespace(
        data_set="kaggle", max_ind_range=-1, data_sub_sample_rate=0.0, data_randomize="total",
        raw_data_file=os.path.join(folder, "train.txt"),
        processed_data_file=os.path.join(folder, "kaggleAdDisplayChallenge_processed.npz"), memory_map=False,
        dataset_multiprocessing=False, mini_batch_size=128, test_mini_batch_size=16384, num_workers=0,
        test_num_workers=0, mlperf_logging=False)


def build(stock_dir, folder, kind):
    out, peak = run_measured([sys.executable, "-c", _BUILD, stock_dir, kind, folder], cwd=stock_dir,
                             env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
    return {"seconds": float(out.split("seconds")[-1]), "peak_rss": peak}


def _epochs(loader):
    """The loader's batches, epoch after epoch (a small file has fewer batches than the benchmark's steps)."""
    while True:
        yield from loader


def step_phases(stock, patched, folder, steps, reps):
    from dlrm_mlet import dlrm_glue
    from dlrm_mlet.data import mapped

    args = loader_args(folder)
    runs = []
    for name, k, kind in CONFIGS:
        np.random.seed(0)
        make = stock.dp.make_criteo_data_and_loaders if kind == "dlrm" else mapped.loaders
        train_data, train_ld, _, _ = make(args)
        config = dlrm_glue.Config(hidden_dim=k, fused_update="torch" if k else "")
        dlrm_glue.use_config(config)
        model = bench_model(patched if k else stock, list(train_data.counts), 16)
        runs.append({"name": name, "loader": kind, "config": config, "model": model, "batches": _epochs(train_ld),
                     "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
                     "times": [{p: [] for p in PHASES} for _ in range(reps)]})
    dlrm_glue.reset()
    warm = 20
    for rep in range(reps):
        for step in range(steps + (warm if rep == 0 else 0)):
            for run in runs:
                dlrm_glue.use_config(run["config"])
                model, optimizer = run["model"], run["optimizer"]
                t0 = time.perf_counter()
                dense, offsets, indices, target = next(run["batches"])
                t1 = time.perf_counter()
                loss = model.loss_fn(model(dense, offsets, indices), target)
                t2 = time.perf_counter()
                optimizer.zero_grad()
                loss.backward()
                t3 = time.perf_counter()
                optimizer.step()
                t4 = time.perf_counter()
                if rep or step >= warm:
                    for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                        run["times"][rep][phase].append(seconds * 1000)
    dlrm_glue.reset()
    return [{"name": r["name"], "loader": r["loader"],
             "ms": [{p: statistics.mean(t[p]) for p in PHASES} for t in r["times"]]} for r in runs]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a processed data folder (default: --rows samples of the law, written here)")
    parser.add_argument("--rows", type=int, default=458_406, help="samples when writing the data (1 %% of Criteo)")
    parser.add_argument("--build-rows", type=int, default=4_584_062, help="samples for the loader-building "
                        "measure (0: skip it)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as work:
        stock_path, patched_path = dlrm_copies(work)
        stock, patched = import_script(stock_path, "stock_dlrm"), import_script(patched_path, "patched_dlrm")
        folder = data_folder(args.data, args.rows, work)
        results = step_phases(stock, patched, folder, args.steps, args.reps)
        builds = {}
        for rows, where in ((None, folder), (args.build_rows, None)):
            if rows == 0:
                continue
            where = where or data_folder(None, rows, work)
            with np.load(os.path.join(where, "train_day_count.npz")) as days:
                samples = int(days["total_per_file"].sum())
            builds[samples] = {kind: build(os.path.dirname(stock_path), where, kind) for kind in LOADERS}
    for r in results:
        print(r["name"], r["loader"], [{p: round(v, 3) for p, v in ms.items()} for ms in r["ms"]])
    print(builds)
    print(save("real_data_step", {"rows": args.rows, "steps": args.steps, "reps": args.reps, "results": results,
                                  "builds": {str(k): v for k, v in builds.items()}}, render))


def _summary(data, name, phase):
    """(per-repetition ms of DLRM's loader, of mmap's) for ``name``'s ``phase``."""
    by = {r["loader"]: [m[phase] for m in r["ms"]] for r in data["results"] if r["name"] == name}
    return by["dlrm"], by["mmap"]


def render(data):
    lines = ["## A real-data step: loading, model, update (`benchmarks/real_data_step.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"DLRM's processed Kaggle file of {data['rows']:,} samples of the full-size law (`dlrm-mlet synth "
              "--processed`), bench architecture, batch 128, SGD lr 0.1; the four runs take turns step by step; mean "
              f"ms a step over {data['steps']} steps, in each of {data['reps']} repetitions (shown as rep 1 / rep 2 "
              "/ ...).", ""]
    lines += md_table(["model", "loader", *PHASES, "load share"], [
        [r["name"], LOADERS[r["loader"]], *(" / ".join(f"{m[p]:.2f}" for m in r["ms"]) for p in PHASES),
         " / ".join(f"{m['load'] / m['step']:.0%}" for m in r["ms"])] for r in data["results"]])
    lines += ["", "The memory-mapped loader's step against DLRM's loader's, same model: median of per-repetition "
              "ratios (ratio of medians).", ""]
    for name in dict.fromkeys(r["name"] for r in data["results"]):
        for phase in ("load", "step"):
            dlrm, mmap = _summary(data, name, phase)
            ratios = [b / a for a, b in zip(dlrm, mmap)]
            lines.append(f"- {name}, {phase}: {statistics.median(ratios):.2f} "
                         f"({statistics.median(mmap) / statistics.median(dlrm):.2f}); {statistics.median(dlrm):.2f} "
                         f"-> {statistics.median(mmap):.2f} ms")
    lines += ["", "Building the training and test loaders, each in a fresh process: seconds and peak resident "
              "memory (the memory-mapped file's pages are the kernel's page cache and are not touched here).", ""]
    lines += md_table(["samples", "loader", "seconds", "peak MiB"], [
        [f"{int(samples):,}", LOADERS[kind], f"{b['seconds']:.1f}", mib(b["peak_rss"])]
        for samples, by in data["builds"].items() for kind, b in by.items()])
    return lines


if __name__ == "__main__":
    main()
