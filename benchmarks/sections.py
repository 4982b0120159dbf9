"""How each benchmark's JSON reads in RESULTS.md (one function per benchmark)."""

import statistics

from common import machine_lines


def mib(n):
    return f"{n / 2**20:,.1f}"


def train_step(data):
    gpu = data.get("device") == "cuda"
    where = " on one GPU" if gpu else ""
    lines = [f"## Training step time and memory{where} (`benchmarks/train_step.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Random batches, 26 tables at {data['scale']} x Criteo-Kaggle's sizes "
              f"({sum(data['tables']):,} rows), batch 128, SGD lr 0.1. Step time (forward, backward, "
              f"optimizer step) of stock and patched DLRM's `DLRM_Net` in one process, configurations "
              f"taking turns: {data['rounds']} rounds of {data['steps_per_round']} steps each; median "
              f"(min-max) over rounds; the TensorBoard monitor is off here (its cost is measured below). "
              f"Peak RSS: one real `dlrm_s_pytorch.py` run per configuration.", "",
              "| run | ms/it median (min-max) | / baseline d=16 | training emb MiB | inference emb MiB | peak RSS MiB |"
              + (" peak GPU MiB |" if gpu else ""), "|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for r in data["results"]:
        ratio = f"{r['ratio_to_baseline_d16']:.2f}" if r["ratio_to_baseline_d16"] else "-"
        lines.append(f"| {r['name']} | {r['ms_per_it_median']:.2f} ({r['ms_per_it_min']:.2f}-"
                     f"{r['ms_per_it_max']:.2f}) | {ratio} | {mib(r['training_embedding_bytes'])} | "
                     f"{mib(r['inference_embedding_bytes'])} | {mib(r['peak_rss_bytes'])} |"
                     + (f" {mib(r['peak_gpu_bytes'])} |" if gpu else ""))
    by = {r["name"]: r for r in data["results"]}
    for mlet in ("MLET d=4 k=256", "MLET d=4 k=256 sparse", "MLET d=4 k=256 fbgemm"):
        if mlet in by and "baseline d=64" in by:
            iso = by[mlet]["ms_per_it_median"] / by["baseline d=64"]["ms_per_it_median"]
            lines += ["", f"Iso-accuracy comparison (the paper's): {mlet} / baseline d=64 = {iso:.2f}."]
    if gpu:
        lines += ["", "Peak RSS is the host process's; peak GPU is torch's largest CUDA allocation in the same "
                  "real `dlrm_s_pytorch.py --use-gpu` run."]
        wide = (by["baseline d=64"]["ms_per_it_median"] / by["baseline d=16"]["ms_per_it_median"]
                if "baseline d=16" in by and "baseline d=64" in by else None)
        if wide is not None and wide <= 1.05:  # the sentence below holds only when width costs nothing
            lines += ["", f"**What limits a GPU step at this size.** Baseline d=64 / d=16 = {wide:.2f}: "
                      "tables four times wider cost no time, so at batch 128 the step is bound by the host "
                      "issuing small kernels (DLRM's per-table loop, per-table sparse gradients and their "
                      "coalescing in the optimizer), not by GPU arithmetic or memory traffic; MLET's "
                      "k-wide work hides in the same way, and its cost is the few kernels it adds."]
    else:
        lines += ["", "On these shared 2-core virtual machines the same configuration's speed varies by up to "
                  "+-30 % from round to round (the min-max column), and ratios of medians move by about 0.1 "
                  "between runs of this script: differences smaller than that are noise."]
    if any(name.startswith("MLET") for name in by):
        lines += ["", "MLET rows without a suffix use patched DLRM's default update with SGD: SGD applied at "
                  "the optimizer's step to the packed k-wide rows and the projections, without gradient "
                  "tensors (`--mlet-fused-update`). `sparse`: with `--mlet-fused-update=off` (sparse "
                  "gradient tensors for DLRM's SGD; same loss curve, tested)."]
    if any(name.endswith("fbgemm") for name in by):
        lines += ["", "`fbgemm`: with `--mlet-fused-update=fbgemm` (fbgemm's CPU table-batched embedding pools "
                  "the k-wide rows and applies the SGD step, as TorchRec does; same loss curve, tested)."]
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


def profile_step(data):
    lines = ["## Operators of the sparse-gradient step (`benchmarks/profile_step.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"torch.profiler over {data['steps']} steps of patched DLRM's `DLRM_Net` in one process, "
              f"baseline d={data['d']} ({data['baseline_ms_per_step']:.2f} ms/step unprofiled) vs MLET "
              f"d={data['d']} k={data['k']} with sparse gradients (`--mlet-fused-update=off`, "
              f"{data['mlet_ms_per_step']:.2f} ms/step; the default update runs from an optimizer step "
              "pre-hook, whose work torch.profiler books as ~30 ms/step of `SGD.step` self time against ~9 "
              "ms/step unprofiled, so it is timed by `step_phases.py` instead); self CPU time per step "
              f"by operator, largest difference first (profiled total difference: "
              f"{data['profiled_extra_ms']:+.2f} ms/step).", "",
              "| operator | baseline ms/step | MLET ms/step | extra ms/step |", "|---|---|---|---|"]
    for r in data["top_extra"]:
        lines.append(f"| `{r['op']}` | {r['baseline_ms']:.3f} | {r['mlet_ms']:.3f} | {r['extra_ms']:+.3f} |")
    extra = {r["op"]: r["extra_ms"] for r in data["top_extra"]}
    bmm, rows = extra.get("aten::bmm", 0.0), extra.get("aten::index_select", 0.0)
    total = data["profiled_extra_ms"]
    if total > 0:
        lines += ["", f"**What limits the remaining overhead.** The three batched k-wide matmuls (the "
                  f"projection and its two gradients, +{bmm:.2f} ms/step) and gathering the k-wide rows "
                  f"(`index_select`, +{rows:.2f} ms/step) account for {bmm + rows:.2f} of the {total:.2f} ms/step "
                  "profiled difference (the other operators' differences partly cancel). Both are work MLET adds by design, not bookkeeping: the "
                  f"projections are 3 x 26 x 128 x {data['k']} x {data['d']} multiply-adds per step "
                  f"(about a fifth of the bench MLPs' arithmetic at k=256), and each sample reads "
                  f"{data['k']}-wide rows instead of {data['d']}-wide ones from tables far larger than "
                  "the cache. Python-side work (`_Grouped`, its backward) is what is left, about "
                  f"{extra.get('_Grouped', 0) + extra.get('_GroupedBackward', 0):.2f} ms/step."]
    return lines


def monitor_cost(data):
    lines = ["## TensorBoard monitor cost (`benchmarks/monitor_cost.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Patched DLRM's `DLRM_Net`, MLET d=16 k=256, batch 128, SGD; {data['steps']} steps per run, "
              f"{data['reps']} interleaved repetitions with and without the monitor at `--mlet-log-freq "
              f"{data['freq']}` (the default).", "",
              "| ms/step without | ms/step with | end-to-end ratio | index counting ms/step | "
              "one log of all tables s | implied cost |", "|---|---|---|---|---|---|",
              f"| {data['step_ms_plain']:.2f} | {data['step_ms_with_monitor']:.2f} | "
              f"{data['end_to_end_ratio']:.3f} | {data['counting_ms_per_step']:.3f} | "
              f"{data['log_seconds']:.3f} | {100 * data['implied_cost_fraction']:.2f} % |", "",
              "The implied cost (counting per step plus one log spread over the logging interval, over "
              "the plain step time) is the figure to read; the end-to-end ratio of two separate runs "
              "also carries their run-to-run noise."]
    return lines


def embedding_update(data):
    lines = ["## The embedding part alone: fused updates and fbgemm (`benchmarks/embedding_update.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"26 MLET tables (Criteo-like sizes x 0.01), k={data['k']}, d={data['d']}, batch 128, "
              f"forward + backward + SGD step, {data['steps']} steps x {data['reps']} interleaved repetitions.",
              "", "| variant | ms/step median (min-max) | / default |", "|---|---|---|"]
    for r in data["results"]:
        lines.append(f"| {r['name']} | {r['ms_per_step_median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | "
                     f"{r['ratio_to_default']:.2f} |")
    if data.get("missing"):
        lines += ["", data["missing"]]
    return lines


def preprocess_memory(data):
    lines = ["## Criteo Terabyte preprocessing: peak memory and speed (`benchmarks/preprocess_memory.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", "Synthetic Terabyte-layout data (24 day files), `--memory-map` with the `--mlperf-bin-loader` "
              "files, one fresh process per run. Peak RSS is the process's high-water mark; \"extra\" is "
              "that minus the RSS after imports.", "",
              "| rows/day | lines | --max-ind-range | distinct values | peak RSS MiB | extra MiB | lines/s |",
              "|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        lines.append(f"| {r['rows_per_day']:,} | {r['lines']:,} | {r['max_ind_range']} | {r['distinct_values']:,} | "
                     f"{mib(r['peak_rss_bytes'])} | {mib(r['extra_rss_bytes'])} | {r['lines_per_second']:,.0f} |")
    return lines


def whole_run(data):
    lines = ["## Whole DLRM runs: stock against patched (`benchmarks/whole_run.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Real `dlrm_s_pytorch.py` runs: random data, bench architecture at d=16, 26 tables at "
              f"{data['scale']} x Criteo-Kaggle's sizes ({sum(data['tables']):,} rows), batch 128, "
              f"{data['batches']} batches, SGD lr 0.1; speed is DLRM's own `--print-time` ms/it (first print, "
              f"the warm-up, left out). {data['reps']} repetitions, configurations interleaved; each ratio is "
              "against the stock run of the same repetition, median (min-max) over repetitions. In-process: "
              "`train_step.py`'s ratio for the same configuration (the component view).", "",
              "| run | ms/it median | / stock d=16, median (min-max) | median ms/it / stock's | in-process ratio "
              "| peak RSS MiB |", "|---|---|---|---|---|---|"]
    stock = data["results"][0]["ms_per_it_median"]
    for r in data["results"]:
        inproc = f"{r['in_process_ratio']:.2f}" if r.get("in_process_ratio") else "-"
        lines.append(f"| {r['name']} | {r['ms_per_it_median']:.2f} | {r['ratio_median']:.2f} "
                     f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['ms_per_it_median'] / stock:.2f} | {inproc} "
                     f"| {mib(r['peak_rss_bytes'])} |")
    times = data["results"][0]["ms_per_it"]
    lines += ["", f"Stock DLRM's own ms/it ranged {min(times):.2f}-{max(times):.2f} over the repetitions: on these "
              "shared 2-core machines a single run's speed moves by tens of percent, so a repetition's ratio "
              "does too; the two summaries (median of per-repetition ratios, ratio of medians) bracket the "
              "figure, and `step_phases.py` below gives the steadier in-process view of the same step. MLET "
              "rows without a suffix use patched DLRM's default update (with SGD: applied at the step, packed "
              "tables); `sparse`: `--mlet-fused-update=off`; `fbgemm`: `--mlet-fused-update=fbgemm`."]
    return lines


def step_phases(data):
    lines = ["## A real step, phase by phase (`benchmarks/step_phases.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Stock and patched `DLRM_Net` in one process, taking turns step by step, each batch made by "
              f"DLRM's own `RandomDataset` just before its step as in a real run (26 tables at {data['scale']} x "
              f"Criteo-Kaggle's sizes, batch 128, SGD lr 0.1); mean ms over {data['steps']} steps each.", "",
              "| run | embeddings | rest of forward | backward | optimizer | step | / stock |",
              "|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        ms = r["ms"]
        lines.append(f"| {r['name']} | {ms['embeddings']:.2f} | {ms['rest of forward']:.2f} | {ms['backward']:.2f} "
                     f"| {ms['optimizer']:.2f} | {ms['step']:.2f} | {r['ratio']:.2f} |")
    lines += ["", "`MLET k=256`: patched DLRM's default update with SGD (applied at the step, packed tables); "
              "`sparse`: `--mlet-fused-update=off`."]
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


def table_memory(data):
    lines = ["## Half-precision tables and optimizer state (`benchmarks/table_memory.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"Whole `dlrm_s_pytorch.py` runs as in the section above (26 tables at {data['scale']} x "
              f"Criteo-Kaggle's sizes, {sum(data['tables']):,} rows, batch 128, {data['batches']} batches): stock "
              f"DLRM d={data['d']} and patched DLRM MLET d={data['d']} k={data['k']} with `--mlet-table-dtype`, "
              "per `--optimizer`. Table and state bytes: the tensors the run saved (tables, and the optimizer's "
              "state of them), with `core.budget`'s prediction beside them. Peak RSS: the run without the save. "
              f"ms/it ratios: median over {data['reps']} interleaved repetitions, each against the same "
              "repetition's baseline / fp32 MLET run with the same optimizer.", "",
              "| run | tables MiB | optimizer state MiB | predicted MiB (tables + state) | peak RSS MiB | ms/it median "
              "| / baseline | / fp32 MLET |", "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        fp32 = f"{r['ratio_to_fp32_mlet']:.2f}" if r.get("ratio_to_fp32_mlet") else "-"
        lines.append(f"| {r['name']} | {mib(r['table_bytes'])} | {mib(r['state_bytes'])} | "
                     f"{mib(r['predicted_table_bytes'])} + {mib(r['predicted_state_bytes'])} | "
                     f"{mib(r['peak_rss_bytes'])} | {statistics.median(r['ms_per_it']):.2f} | "
                     f"{r['ratio_to_baseline']:.2f} | {fp32} |")
    lines += ["", "### What fits where (arithmetic, full-size tables)", "",
              "Training embedding bytes from `core.budget.training_bytes` (the rule the table above checks): "
              "tables in their dtype, float32 projections, float32 optimizer state. A GPU column says whether "
              "that many bytes fit in the cards' memory at all, with nothing else on them (several cards: "
              "each holds a share, as row-wise sharding balances it); activations, MLPs and allocator slack "
              "need room too, so a close fit is not a fit.", "",
              "| dataset | d | tables | optimizer | GiB | " + " | ".join(data["gpus"]) + " |",
              "|---|---|---|---|---|" + "---|" * len(data["gpus"])]
    for f in data["fits"]:
        kind = "plain" if not f["k"] else f"k={f['k']} {f['table_dtype']}"
        marks = " | ".join("yes" if f["fits"][g] else "no" for g in data["gpus"])
        lines.append(f"| {f['dataset']} | {f['d']} | {kind} | {f['optimizer']} | {f['bytes'] / 2**30:.1f} | {marks} |")
    return lines


def gpu_step(data):
    lines = ["## MLET on one GPU at full Criteo-Kaggle size (`benchmarks/gpu_step.py`)", ""]
    lines += machine_lines(data["machine"], data["command"])
    lines += ["", f"`DLRM_Net`'s training step (forward, BCE, backward, SGD) on one GPU, tables at {data['scale']} "
              f"x Criteo-Kaggle's sizes ({data['rows']:,} rows), median of 5 blocks of {data['steps'] // 5} steps; "
              "peak GPU memory with that configuration alone on the card. The paper's figure: about 1.25x.", "",
              "| run | batch | ms/it | / baseline | peak GPU MiB |", "|---|---|---|---|---|"]
    for r in data["results"]:
        lines.append(f"| {r['name']} | {r['batch']} | {r['ms_per_it_median']:.2f} | {r['ratio_to_baseline']:.2f} | "
                     f"{mib(r['peak_gpu_bytes'])} |")
    return lines


def torchrec_comm(data):
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
              "turns; 4 ranks share 2 cores here, so those times measure the CPUs, not a network.", "",
              "| ranks | plan | stock d KiB | MLET today KiB (ratio) | MLET d-wide KiB (ratio) | ms/step stock | "
              "MLET today | MLET d-wide |", "|---|---|---|---|---|---|---|---|"]
    exact = True
    for world, by_kind in data["results"].items():
        for kind, r in by_kind.items():
            s, t, w = r["stock d"], r["MLET today"], r["MLET d-wide"]
            exact &= all(c.get("formula_bytes", c["output_bytes_per_step"]) == c["output_bytes_per_step"]
                         for c in (s, t, w))
            times = [f"{c['ms_median']:.1f} ({c['ms_min']:.1f}-{c['ms_max']:.1f})" for c in (s, t, w)]
            lines.append(f"| {world} | {kind} | {kib(s['output_bytes_per_step'])} | "
                         f"{kib(t['output_bytes_per_step'])} ({t['ratio_to_stock']:.2f}) | "
                         f"{kib(w['output_bytes_per_step'])} ({w['ratio_to_stock']:.2f}) | " + " | ".join(times) + " |")
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
              "shards: (W-1)/W x B x T x n x (shard width) x 4, the d-wide shard width being d.", "",
              "| GPUs | plan | stock d | MLET today | MLET d-wide |", "|---|---|---|---|---|"]
    for world, by_kind in data["arithmetic_bytes_per_gpu"].items():
        for kind, r in by_kind.items():
            lines.append(f"| {world} | {kind} | {mib(r['stock d'])} | {mib(r['MLET today'])} | "
                         f"{mib(r['MLET d-wide'])} |")
    grad = ", ".join(f"{w} GPUs {mib(b)} MiB" for w, b in data["row_wise_grad_allreduce_bytes"].items())
    lines += ["", f"Row-wise d-wide MLET adds its projection-gradient all-reduce (ring, per GPU): {grad}."]
    return lines


NO_GPU_FULL = ["## MLET on one GPU at full Criteo-Kaggle size", "",
               "Not measured: no GPU was lent to the sessions that built #15 (fp16 tables, memory budget). "
               "`python benchmarks/gpu_step.py` is ready to run on one GPU with about 60 GB free: stock d=16 "
               "against MLET d=16 k=256 with fp32 and fp16 tables at batch 2048 and 16384, 33.8M rows, with "
               "peak GPU memory; it fills this section."]

NO_GPU = ["## Training step time on one GPU", "",
          "Not measured: the machines these results come from have no GPU, and none was lent to the "
          "session that ran them. `python benchmarks/train_step.py --use-gpu` runs the same benchmark on "
          "one GPU (DLRM's `--use-gpu`) and fills this section."]

# (result name, how it reads, what to write while it is missing: None = nothing)
SECTIONS = [("whole_run", whole_run, None), ("step_phases", step_phases, None), ("table_memory", table_memory, None), ("train_step", train_step, None), ("train_step_full", train_step, None),
            ("profile_step", profile_step, None), ("embedding_update", embedding_update, None),
            ("train_step_gpu", train_step, NO_GPU), ("gpu_step", gpu_step, NO_GPU_FULL), ("train_step_gpu_full", train_step, None), ("inference", inference, None), ("fold", fold, None),
            ("monitor_cost", monitor_cost, None), ("preprocess_memory", preprocess_memory, None),
            ("torchrec_comm", torchrec_comm, None)]
