"""Peak memory and speed of the Terabyte preprocessing (dlrm_mlet.data.criteo), by day size.

Synthetic Terabyte-layout days (``dlrm-mlet synth --days 24``) at a few day
sizes, each preprocessed in a fresh process (``--memory-map`` with the
``--mlperf-bin-loader`` files, the MLPerf path) so its peak RSS is its own (Linux: the high-water mark
is reset after the imports, so it measures preprocessing, not torch's import).
Three times per size: without ``--max-ind-range`` (keys in dicts; the tables
grow with the data, as real tables do), with ``--max-ind-range=1000`` (tables
capped: what grows with the rows alone) and with ``--max-ind-range=4000000``
(a cap above every table here, so the same tables as uncapped, numbered through
the dense lookup a cap allows: 26 x 4M x 4 bytes allocated up front).

    python benchmarks/preprocess_memory.py                # 20k, 80k, 320k rows per day
    python benchmarks/preprocess_memory.py --rows 5000 20000 --max-ind-range -1 1000
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from common import REPO, machine_lines, md_table, mib, save

CHILD = textwrap.dedent("""
    import json, time
    import numpy as np
    from dlrm_mlet.data.criteo import preprocess_criteo
    raw, max_ind_range = {raw!r}, {max_ind_range}
    def status(field):
        with open("/proc/self/status") as handle:
            return next(int(l.split()[1]) * 1024 for l in handle if l.startswith(field + ":"))
    np.random.seed(0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM: the imports' own peak (torch) does not count
    before = status("VmRSS")
    start = time.perf_counter()
    layout = preprocess_criteo("terabyte", raw, "", max_ind_range, 0.0, True, bins=True, quiet=True)
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    with np.load(layout["fea_count"]) as data:
        distinct = int(data["counts"].sum())
    print(json.dumps({{"seconds": seconds, "peak_rss_bytes": peak, "baseline_rss_bytes": before,
                      "distinct_values": distinct}}))
""")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20000, 80000, 320000], help="rows per day")
    parser.add_argument("--max-ind-range", type=int, nargs="+", default=[-1, 1000, 4000000],
                        help="DLRM's --max-ind-range values to run (-1: none)")
    args = parser.parse_args()
    from dlrm_mlet.tools.synth import write_synthetic_days

    results = []
    for per_day in args.rows:
        work = tempfile.mkdtemp(prefix="preprocess_memory.")
        try:
            write_synthetic_days(work, 24 * per_day, 24, progress=False)
            for max_ind_range in args.max_ind_range:
                for name in os.listdir(work):  # a fresh run each time: only the raw days stay
                    if not (name.startswith("day_") and name[4:].isdigit()):
                        path = os.path.join(work, name)
                        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                code = CHILD.format(raw=os.path.join(work, "day"), max_ind_range=max_ind_range)
                out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                                     text=True, check=True)
                row = dict(json.loads(out.stdout.strip().splitlines()[-1]), rows_per_day=per_day,
                           lines=24 * per_day, max_ind_range=max_ind_range)
                row["lines_per_second"] = row["lines"] / row["seconds"]
                row["extra_rss_bytes"] = row["peak_rss_bytes"] - row["baseline_rss_bytes"]
                results.append(row)
                print(f"{per_day:>7} rows/day, --max-ind-range={max_ind_range:>7}: peak RSS "
                      f"{row['peak_rss_bytes'] / 2**20:.0f} MiB (+{row['extra_rss_bytes'] / 2**20:.0f} MiB "
                      f"over imports), {row['distinct_values']} distinct values, "
                      f"{row['lines_per_second']:.0f} lines/s", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    save("preprocess_memory", {"results": results}, render)


def render(data):
    lines = ["## Criteo Terabyte preprocessing: peak memory and speed (`benchmarks/preprocess_memory.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", "Synthetic Terabyte-layout data (24 day files), `--memory-map` with the `--mlperf-bin-loader` "
              "files, one fresh process per run. Peak RSS is the process's high-water mark; \"extra\" is "
              "that minus the RSS after imports.", ""]
    return lines + md_table(
        ["rows/day", "lines", "--max-ind-range", "distinct values", "peak RSS MiB", "extra MiB", "lines/s"],
        [[f"{r['rows_per_day']:,}", f"{r['lines']:,}", r["max_ind_range"], f"{r['distinct_values']:,}",
          mib(r["peak_rss_bytes"]), mib(r["extra_rss_bytes"]), f"{r['lines_per_second']:,.0f}"]
         for r in data["results"]])


if __name__ == "__main__":
    main()
