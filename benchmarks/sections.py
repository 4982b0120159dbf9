"""How each benchmark's JSON reads in RESULTS.md (one function per benchmark)."""

from common import machine_lines


def mib(n):
    return f"{n / 2**20:,.1f}"


def train_step(data):
    lines = ["## Training step time and memory (`benchmarks/train_step.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Random data, 26 tables at {data['scale']} x Criteo-Kaggle's sizes "
              f"({sum(data['tables']):,} rows), batch 128, {data['batches']} batches per run, "
              f"{data['reps']} interleaved repetitions; compute-only step time (DLRM's `--print-time`).", "",
              "| run | ms/it median (min-max) | / baseline d=16 | training emb MiB | inference emb MiB | peak RSS MiB |",
              "|---|---|---|---|---|---|"]
    for r in data["results"]:
        ratio = f"{r['ratio_to_baseline_d16']:.2f}" if r["ratio_to_baseline_d16"] else "-"
        lines.append(f"| {r['name']} | {r['ms_per_it_median']:.2f} ({r['ms_per_it_min']:.2f}-"
                     f"{r['ms_per_it_max']:.2f}) | {ratio} | {mib(r['training_embedding_bytes'])} | "
                     f"{mib(r['inference_embedding_bytes'])} | {mib(r['peak_rss_bytes'])} |")
    by = {r["name"]: r for r in data["results"]}
    if "MLET d=4 k=256" in by and "baseline d=64" in by:
        iso = by["MLET d=4 k=256"]["ms_per_it_median"] / by["baseline d=64"]["ms_per_it_median"]
        lines += ["", f"Iso-accuracy comparison (the paper's): MLET d=4 k=256 / baseline d=64 = {iso:.2f}."]
    if data.get("notes"):
        lines += [""] + data["notes"]
    return lines


def inference(data):
    lines = ["## Inference (`benchmarks/inference.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", "Forward passes in stock DLRM's `DLRM_Net`, no grad; median of "
              f"{data['reps']} interleaved repetitions.", "",
              "| model | batch 128 ms | ratio | batch 2048 ms | ratio |", "|---|---|---|---|---|"]
    for name, by_batch in data["results"].items():
        a, b = by_batch["128"], by_batch["2048"]
        lines.append(f"| {name} | {a['ms_per_batch_median']:.3f} | {a['ratio_to_baseline_same_d']:.2f} | "
                     f"{b['ms_per_batch_median']:.3f} | {b['ratio_to_baseline_same_d']:.2f} |")
    return lines


def fold(data):
    lines = ["## Folding (`benchmarks/fold.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", "| rows n | k | d | table GiB | fold s | one BLAS pass s | fold / BLAS | extra memory MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        lines.append(f"| {r['n']:,} | {r['k']} | {r['d']} | {r['table_bytes'] / 2**30:.2f} | "
                     f"{r['fold_seconds']:.3f} | {r['mm_seconds']:.3f} | {r['ratio_to_mm']:.2f} | "
                     f"{r['extra_bytes'] / 2**20:.1f} |")
    return lines


SECTIONS = [("train_step", train_step), ("inference", inference), ("fold", fold)]
