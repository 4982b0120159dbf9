"""Did a change slow any path? This checkout against another, interleaved in every repetition.

``every_path_compare.py`` compares two ``every_path.py`` results measured one
after the other, so whatever the machine did in between is in the
comparison. Here each repetition runs every path of ``every_path.py`` (stock
DLRM and MLET, SGD/Adagrad/row-wise Adagrad x fp32/fp16/bf16) from this
checkout and, right after, from ``CHECKOUT`` (another dlrm-mlet folder, say a
``git worktree`` of the commit before a change: its own patch, its package
on PYTHONPATH), so both versions meet the same machine. Per path: this
checkout's MLET ms/it over the other's, the median of the per-repetition
ratios (min-max) and the ratio of the medians.

    git worktree add ../before <commit>
    python benchmarks/every_path_against.py ../before --reps 5

Results go to results/every_path_against.json.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from common import both_summaries, criteo_rows, dlrm_copies, machine_lines, md_table, run_measured, save
from every_path import LRS, K, configs
from whole_run import dlrm_args, ms_per_it


def patched_copy(checkout, stock_script, work):
    """A copy of the stock DLRM checkout patched by ``checkout``'s own dlrm-mlet."""
    dest = os.path.join(work, "against")
    shutil.copytree(os.path.dirname(stock_script), dest)
    code = "import sys; from dlrm_mlet.dlrm.patching import patch_checkout; patch_checkout(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, dest], check=True, env=_env(checkout))
    return os.path.join(dest, "dlrm_s_pytorch.py")


def _env(checkout, eager=False):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    return dict(env, TORCH_COMPILE_DISABLE="1") if eager else env


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", help="the other dlrm-mlet folder (its package and patch)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batches", type=int, default=240)
    parser.add_argument("--scale", type=float, default=0.01)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.checkout, "dlrm_mlet", "dlrm", "patching.py")):
        sys.exit(f"{args.checkout}: not a dlrm-mlet folder (no dlrm_mlet/dlrm/patching.py)")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = [a for a in dlrm_args(criteo_rows(args.scale), args.batches, max(1, args.batches // 6))
            if not a.startswith("--learning-rate")]
    paths = [c for c in configs() if c[2] is not None]
    times = {(name, side): [] for name, *_ in paths for side in ("this", "other")}
    with tempfile.TemporaryDirectory() as work:
        stock, patched = dlrm_copies(work)
        other = patched_copy(args.checkout, stock, work)
        for rep in range(args.reps):
            for name, optimizer, dtype, eager in paths:
                cmd = base + [f"--optimizer={optimizer}", f"--learning-rate={LRS[optimizer]}",
                              f"--mlet-hidden-dim={K}", f"--mlet-table-dtype={dtype}"]
                for side, script, checkout in (("this", patched, here), ("other", other, args.checkout)):
                    out, _ = run_measured([sys.executable, script] + cmd, work, env=_env(checkout, eager))
                    times[name, side].append(ms_per_it(out))
                print(f"rep {rep + 1}/{args.reps} {name}: {times[name, 'this'][-1]:.2f} ms/it here, "
                      f"{times[name, 'other'][-1]:.2f} there", flush=True)
    results = []
    for name, *_ in paths:
        mine, theirs = times[name, "this"], times[name, "other"]
        results.append({"name": name, "ms_per_it": mine, "other_ms_per_it": theirs, **both_summaries(mine, theirs)})
    payload = {"reps": args.reps, "batches": args.batches, "scale": args.scale, "k": K, "results": results}
    print(save("every_path_against", payload, render))


def render(data):
    lines = ["## Every path, this checkout against another, interleaved (`benchmarks/every_path_against.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Each repetition ({data['reps']}) runs every MLET path (k={data['k']}, {data['batches']} batches, "
              f"26 tables at {data['scale']} x Criteo-Kaggle's sizes) from this checkout, then from the other; "
              "ratio: this checkout's ms/it over the other's (below 1: faster here), the median of the "
              "per-repetition ratios (min-max) and the ratio of the medians.", ""]
    lines += md_table(["path", "ms/it here (median)", "ms/it there (median)", "median of ratios (min-max)",
                       "ratio of medians"], [
        [r["name"], f"{statistics.median(r['ms_per_it']):.2f}", f"{statistics.median(r['other_ms_per_it']):.2f}",
         f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})", f"{r['ratio_of_medians']:.2f}"]
        for r in data["results"]])
    return lines


if __name__ == "__main__":
    main()
