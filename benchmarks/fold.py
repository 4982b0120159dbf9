"""Fold cost: seconds and peak extra memory to fold one table, against one BLAS pass.

Each size runs in a fresh process so its peak RSS (a high-water mark) is its
own. "Extra" is the peak beyond the MLET table, the projection and the folded
table, i.e. the scratch the fold needs; the target is <= 64 MiB whatever n.
The reference is the time of one ``torch.mm(table, proj.T, out=folded)``: a
single BLAS pass over the table with no chunking and no checks.

    python benchmarks/fold.py           # n = 1e5, 1e6 (k=256, d=16)
    python benchmarks/fold.py --full    # also n = 1e7 (a 10 GB table)
"""

import argparse
import json
import subprocess
import sys
import textwrap

from common import REPO, machine_lines, md_table, save

CHILD = textwrap.dedent("""
    import json, resource, time, torch
    from dlrm_mlet.core.folding import fold_weight
    n, k, d = {n}, {k}, {d}
    a = torch.empty(n, k).uniform_(-1e-3, 1e-3)
    b = torch.randn(d, k) * 0.25
    fold_weight(a[:1000], b, "warm-up")
    torch.mm(a[:1000], b.t())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fold_seconds, mm_seconds = [], []
    start = time.perf_counter()
    out = fold_weight(a, b, "bench")
    fold_seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(2):
        start = time.perf_counter(); torch.mm(a, b.t(), out=out); mm_seconds.append(time.perf_counter() - start)
        start = time.perf_counter(); fold_weight(a, b, "bench"); fold_seconds.append(time.perf_counter() - start)
    print(json.dumps({{"fold_seconds": min(fold_seconds), "mm_seconds": min(mm_seconds),
                      "extra_bytes": peak - before - out.numel() * 4,
                      "table_bytes": a.numel() * 4, "folded_bytes": out.numel() * 4}}))
""")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also fold a 1e7-row table")
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--d", type=int, default=16)
    args = parser.parse_args()
    sizes = [10**5, 10**6] + ([10**7] if args.full else [])
    results = []
    for n in sizes:
        code = CHILD.format(n=n, k=args.k, d=args.d)
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        row = dict(json.loads(out.stdout.strip().splitlines()[-1]), n=n, k=args.k, d=args.d)
        row["ratio_to_mm"] = row["fold_seconds"] / row["mm_seconds"]
        results.append(row)
        print(f"n={n:>9}: fold {row['fold_seconds']:.3f} s, one BLAS pass {row['mm_seconds']:.3f} s "
              f"({row['ratio_to_mm']:.2f}x), extra memory {row['extra_bytes'] / 2**20:.1f} MiB", flush=True)
    save("fold", {"results": results}, render)


def render(data):
    lines = ["## Folding (`benchmarks/fold.py`)", ""]
    lines += machine_lines(data["machine"], data["command"]) + [""]
    return lines + md_table(
        ["rows n", "k", "d", "table GiB", "fold s", "one BLAS pass s", "fold / BLAS", "extra memory MiB"],
        [[f"{r['n']:,}", r["k"], r["d"], f"{r['table_bytes'] / 2**30:.2f}", f"{r['fold_seconds']:.3f}",
          f"{r['mm_seconds']:.3f}", f"{r['ratio_to_mm']:.2f}", f"{r['extra_bytes'] / 2**20:.1f}"]
         for r in data["results"]])


if __name__ == "__main__":
    main()
