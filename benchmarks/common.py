"""What every benchmark shares: the machine record, DLRM copies, result files.

Each benchmark saves ``results/<name>.json`` and renders its own section of
``RESULTS.md`` from it (``results/<name>.md``, by the script's ``render``);
``write_results_md`` puts the sections together in ``ORDER``, so the markdown
always shows what the committed scripts last measured, never hand-typed numbers.
"""

import datetime
import json
import os
import platform
import shlex
import statistics
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from dlrm_mlet.files import atomic_write_text  # noqa: E402
# The bench architecture's tables: Criteo-Kaggle's 26 sizes times a scale, scaled as synth scales them.
from dlrm_mlet.tools.synth_model import table_sizes as criteo_rows  # noqa: E402,F401


def machine():
    import numpy
    import torch

    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)" for i in threadpool_info()]
    except ImportError:
        blas = []
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "blas": blas,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def dlrm_copies(work):
    """Stock and patched copies of the user's DLRM checkout (theirs stays untouched)."""
    from dlrm_mlet.dlrm.patching import patch_checkout

    from dlrm_mlet.dlrm.script import default_dlrm_dir

    source = default_dlrm_dir()
    if not os.path.isfile(os.path.join(source, "dlrm_s_pytorch.py")):
        sys.exit(f"benchmarks need a DLRM checkout at the pinned commit: set DLRM_DIR (looked in {source})")
    stock, patched = os.path.join(work, "stock"), os.path.join(work, "patched")
    for dest in (stock, patched):
        if not os.path.isdir(dest):
            shutil.copytree(source, dest)
    patch_checkout(patched)
    return os.path.join(stock, "dlrm_s_pytorch.py"), os.path.join(patched, "dlrm_s_pytorch.py")


def import_script(path, name):
    """Import a DLRM script (stock or patched copy) as a module, with its folder on the path."""
    from dlrm_mlet.dlrm.script import import_dlrm_script

    return import_dlrm_script(path, name)


def bench_model(dlrm, rows, d):
    """``dlrm.DLRM_Net`` on the bench architecture (``13-512-256-64-d``, top ``512-256-1``).

    Patched DLRM builds MLET tables when the glue's config asks for them (``dlrm_glue.use_config``).
    """
    import numpy as np

    np.random.seed(0)
    num_fea = len(rows) + 1
    ln_top = np.array([num_fea * (num_fea - 1) // 2 + d, 512, 256, 1])
    return dlrm.DLRM_Net(d, np.array(rows), np.array([13, 512, 256, 64, d]), ln_top,
                         arch_interaction_op="dot", sigmoid_top=2, ndevices=-1, loss_function="bce")


def bench_batches(rows, count=64, size=128, seed=0):
    """Random (dense, offsets, indices, target) batches, one index per table and sample as in Criteo."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 13, generator=g), torch.stack([torch.arange(size)] * len(rows)),
             torch.stack([torch.randint(0, n, (size,), generator=g) for n in rows]),
             torch.randint(0, 2, (size, 1), generator=g).float()) for _ in range(count)]


# Runs the command from a small Python process and prints the peak RSS of that
# child last: measured from a process as big as a benchmark with models loaded,
# a forked child would count the parent's pages in its own high-water mark.
_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "print('peak-rss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(code)\n"
)


def run_measured(cmd, cwd, env=None):
    """Run a command; returns (stdout, peak RSS in bytes) of that command alone."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS] + list(cmd), cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    if proc.returncode != 0 or not last.startswith("peak-rss "):
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return out, int(last.split()[1])


def command_line():
    """How this benchmark was started, as a reader would retype it from the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return shlex.join(["python", script, *sys.argv[1:]])


def save(name, payload, render):
    """``results/<name>.json``, its section ``results/<name>.md`` (``render(payload)``: lines), RESULTS.md.

    Every result records the machine it ran on and the command that made it.
    """
    payload = {"machine": machine(), "command": command_line(), **payload}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    atomic_write_text(path, json.dumps(payload, indent=1))
    atomic_write_text(os.path.join(RESULTS, f"{name}.md"), "\n".join(render(payload)) + "\n")
    write_results_md()
    return path


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    return json.load(open(path)) if os.path.exists(path) else None


NO_GPU = ["## Training step time on one GPU", "",
          "Not measured: the machines these results come from have no GPU. "
          "`python benchmarks/train_step.py --use-gpu` runs the same benchmark on "
          "one GPU (DLRM's `--use-gpu`) and fills this section."]
NO_GPU_FULL = ["## MLET on one GPU at full Criteo-Kaggle size", "",
               "Not measured: no GPU was available. `python benchmarks/gpu_step.py` is ready to run on one GPU "
               "with about 60 GB free: stock d=16 against MLET d=16 k=256 with fp32 and fp16 tables at batch 2048 "
               "and 16384, 33.8M rows, with peak GPU memory; it fills this section."]
# Sections in RESULTS.md: (result name, what to write while it is missing: None = nothing)
ORDER = [("whole_run", None), ("every_path", None), ("every_path_compare", None), ("every_path_against", None), ("step_phases", None), ("real_data_step", None), ("table_memory", None), ("train_step", None),
         ("train_step_full", None), ("profile_step", None), ("embedding_update", None),
         ("train_step_gpu", NO_GPU), ("gpu_step", NO_GPU_FULL), ("train_step_gpu_full", None), ("inference", None),
         ("fold", None), ("monitor_cost", None), ("preprocess_memory", None), ("torchrec_comm", None),
         ("torchrec_profile", None)]


def write_results_md():
    parts = ["# Benchmark results", "",
             "Written by the scripts in `benchmarks/` from `benchmarks/results/*.json`; "
             "rerun a script to refresh its section.", ""]
    for name, missing in ORDER:
        section = os.path.join(RESULTS, f"{name}.md")
        if os.path.exists(section):
            parts += open(section).read().rstrip("\n").split("\n") + [""]
        elif missing:
            parts += missing + [""]
    atomic_write_text(os.path.join(HERE, "RESULTS.md"), "\n".join(parts))


def mib(n):
    return f"{n / 2**20:,.1f}"


def both_summaries(own, base):
    """``own`` ms/it against ``base`` (one per repetition, paired): the median of the per-repetition ratios,
    their min and max, and the ratio of the medians (what every comparison here reports)."""
    ratios = [a / b for a, b in zip(own, base)]
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_of_medians": statistics.median(own) / statistics.median(base)}


def md_table(header, rows):
    """A markdown table's lines: the header, its rule, one line per row of cells."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def machine_lines(m, command):
    blas = "; ".join(m["blas"]) or "unknown"
    return [f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), torch {m['torch']} "
            f"({m['torch_threads']} threads), numpy {m['numpy']}, BLAS: {blas}"
            + (f", GPU: {m['gpu']}" if m.get("gpu") else ", no GPU") + ".",
            "", f"Command: `{command}`"]
