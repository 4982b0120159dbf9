"""The map's most telling cells at Criteo-Kaggle's full table sizes, on one GPU.

    python docs/results/full_size_gpu.py                # writes full_size_gpu.csv here
    python docs/results/full_size_gpu.py --cpu-check    # a small CPU run that checks the script, writes nothing

The map's datasets are small enough for two CPU cores; this asks whether its
finding holds with 33.8M table rows. The data is made on the GPU, from the
generator's model (``dlrm_mlet/tools/synth_model.py``: Criteo-Kaggle's table
sizes and missing rates, P(id) ~ (id + 1)^-1.1, a bias and a rank-32 latent
vector per value, FM-style interactions, 13 dense features of which six carry
part of the latent signal, Gaussian noise, base CTR 0.25), drawn with torch's
generator rather than the CPU generator's hashes (same law, other draws), and
split as DLRM splits Kaggle's days: 6/7 training, then validation and test
halves. Each cell trains stock DLRM's ``DLRM_Net`` (bench architecture, dot
interaction) or patched DLRM's with ``--mlet-hidden-dim`` for one epoch with
SGD at batch ``--batch``: baseline d = 4, 16, 64 and MLET d=4 k=256, each at
three learning rates; the lr is chosen on validation and test AUC reported by
``dlrm-mlet report full_size_gpu.csv``. Tables are filled by torch's uniform
draws instead of DLRM's single-threaded numpy ones (same distribution: numpy
would take minutes for 8.7e9 values). The rows carry the data's rare-lookup
share, measured on the generated training split.
"""

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch

from dlrm_mlet import dlrm_glue
from dlrm_mlet.data.frequency import rare_lookup_share
from dlrm_mlet.dlrm.patching import patch_checkout
from dlrm_mlet.dlrm.script import default_dlrm_dir, import_dlrm_script
from dlrm_mlet.tools import synth_model as law
from dlrm_mlet.tools.results_csv import write_rows

HERE = os.path.dirname(os.path.abspath(__file__))
RANK = 32
CELLS = [(4, 0, (0.4, 0.8, 1.6)), (16, 0, (0.4, 0.8, 1.6)), (64, 0, (0.4, 0.8, 1.6)), (4, 256, (0.1, 0.2, 0.4))]


def make_data(sizes, samples, device, seed=0):
    """Ids, dense features and labels of ``samples`` rows from the generator's model, on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    n = torch.tensor(sizes, dtype=torch.float64, device=device)
    a = 1.0 - law.ZIPF_EXPONENT
    u = torch.rand(samples, len(sizes), generator=g, device=device, dtype=torch.float64)
    ids = (torch.exp(torch.log(1 - u * (1 - (n + 1) ** a)) / a).long() - 1).clamp_(min=0)
    ids = torch.minimum(ids, n.long() - 1)
    del u
    groups = torch.rand(samples, len(law.MISSING) + 1, generator=g, device=device)
    rates = torch.tensor([m[0] for m in law.MISSING] + [0.0], device=device)
    cat_group = torch.full((law.NCAT,), len(law.MISSING), device=device, dtype=torch.long)
    for i, (_, _, cats) in enumerate(law.MISSING):
        cat_group[list(cats)] = i
    missing = groups[:, cat_group] < rates[cat_group]
    latent = torch.zeros(samples, RANK, device=device)
    square = torch.zeros(samples, device=device)
    bias = torch.zeros(samples, device=device)
    for f, size in enumerate(sizes):  # each value's bias and latent vector, drawn once per table
        params = torch.randn(size, RANK + 1, generator=g, device=device)
        rows = params[ids[:, f]] * ~missing[:, f, None]
        bias += rows[:, 0]
        latent += rows[:, 1:]
        square += (rows[:, 1:] ** 2).sum(1)
        del params
    interaction = 0.5 * ((latent ** 2).sum(1) - square) * law.INTERACTION_STD / math.sqrt(325 * RANK)
    noise = torch.randn(samples, 13, generator=g, device=device)
    rho = torch.tensor([c[3] for c in law._DENSE], device=device)
    dense = rho * latent[:, torch.arange(13, device=device) % RANK] / math.sqrt(law.NCAT) + \
        torch.sqrt(1 - rho ** 2) * noise
    weights = torch.randn(13, generator=g, device=device)
    logit = bias * law.BIAS_STD / math.sqrt(law.NCAT) + interaction + \
        dense @ weights * law.DENSE_STD / math.sqrt(13) + law.NOISE_STD * torch.randn(samples, generator=g, device=device)
    lo, hi = -30.0, 30.0  # the global bias that makes the click rate the generator's
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if torch.sigmoid(logit[:100_000] + mid).mean() < law.TARGET_CTR else (lo, mid)
    labels = (torch.rand(samples, generator=g, device=device) < torch.sigmoid(logit + lo)).float()
    ids[missing] = 0  # DLRM's preprocessing gives a missing value one row of its own; here, row 0
    return ids.int(), dense, labels


@contextmanager
def fast_uniform():
    """DLRM and dlrm-mlet draw tables with numpy's single-threaded uniform; torch's fills them far faster."""
    numpy_uniform = np.random.uniform

    def uniform(low=0.0, high=1.0, size=None):
        return torch.empty(size, dtype=torch.float64).uniform_(float(low), float(high)).numpy()

    np.random.uniform = uniform
    try:
        yield
    finally:
        np.random.uniform = numpy_uniform


def auc(scores, labels):
    """ROC AUC on the device (ranks; ties are rare in float scores)."""
    order = torch.argsort(scores)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, device=scores.device, dtype=torch.float64)
    pos = labels.sum()
    return float((ranks[labels > 0].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos)))


def train_cell(module, sizes, d, k, lr, data, splits, batch, device):
    ids, dense, labels = data
    train, val, test = splits
    dlrm_glue.use_config(dlrm_glue.Config(hidden_dim=k))
    np.random.seed(0)
    torch.manual_seed(0)
    num_fea = len(sizes) + 1
    with fast_uniform():
        model = module.DLRM_Net(d, np.array(sizes), np.array([13, 512, 256, 64, d]),
                                np.array([num_fea * (num_fea - 1) // 2 + d, 512, 256, 1]),
                                arch_interaction_op="dot", sigmoid_top=2, ndevices=-1, loss_function="bce")
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    offsets = torch.arange(max(batch, 16384), device=device).repeat(len(sizes), 1)  # one index per table and sample

    def batches(part, size):
        for start in range(part.start, part.stop, size):
            rows = slice(start, min(start + size, part.stop))
            yield dense[rows], offsets[:, :rows.stop - rows.start], ids[rows].t().long(), labels[rows, None]

    start, loss = time.perf_counter(), float("nan")
    for x, off, idx, y in batches(train, batch):
        out = model.loss_fn(model(x, off, idx), y)
        optimizer.zero_grad()
        out.backward()
        optimizer.step()
        loss = out.detach()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    def score(part):
        with torch.no_grad():
            p = torch.cat([model(x, off, idx).reshape(-1) for x, off, idx, _ in batches(part, 16384)])
        y = labels[part]
        finite = bool(torch.isfinite(p).all())
        return (auc(p.double(), y) if finite else None,
                float(torch.nn.functional.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y)) if finite else None)
    val_auc, val_loss = score(val)
    test_auc, test_loss = score(test)
    dlrm_glue.reset()
    ok = math.isfinite(float(loss)) and val_auc is not None and val_auc > 0.51
    table_bytes = sum(n * d * 4 for n in sizes)
    return {"d": d, "k": k, "lr": lr, "seed": 0, "epochs": 1, "status": "ok" if ok else "diverged",
            "note": "" if ok else f"loss {float(loss):g}, val AUC {val_auc}",
            "val_auc": val_auc if ok else "", "val_log_loss": val_loss if ok else "",
            "test_auc": test_auc if ok else "", "test_log_loss": test_loss if ok else "",
            "train_seconds": round(seconds, 2), "train_ms_per_it": round(seconds * 1000 * batch / train.stop, 3),
            "inference_embedding_bytes": table_bytes,
            "training_embedding_bytes": sum(n * (k or d) * 4 for n in sizes) + (len(sizes) * k * d * 4 if k else 0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16_000_000, help="generated samples (16M)")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--cpu-check", action="store_true", help="tables at 1/1000, 40k samples, on the CPU")
    args = parser.parse_args()
    if not (args.cpu_check or torch.cuda.is_available()):
        sys.exit("full_size_gpu.py needs a GPU (or --cpu-check)")
    device = torch.device("cpu" if args.cpu_check else "cuda")
    sizes = law.table_sizes(0.001 if args.cpu_check else 1.0)
    samples = 40_000 if args.cpu_check else args.samples
    start = time.perf_counter()
    data = make_data(sizes, samples, device)
    cut = samples * 6 // 7
    half = (samples - cut) // 2
    splits = (slice(0, cut), slice(cut, cut + half), slice(cut + half, samples))
    counts = [torch.bincount(data[0][:cut, f].long(), minlength=n).cpu().numpy() for f, n in enumerate(sizes)]
    share = rare_lookup_share(counts)
    print(f"data: {samples} samples, {sum(sizes)} table rows, rare-lookup share {share:.3f}, "
          f"CTR {float(data[2].mean()):.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    work = tempfile.mkdtemp(prefix="dlrm-mlet-full-")
    source = os.environ.get("DLRM_DIR") or default_dlrm_dir()
    patched = os.path.join(work, "dlrm")
    shutil.copytree(source, patched)
    patch_checkout(patched)
    module = import_dlrm_script(os.path.join(patched, "dlrm_s_pytorch.py"), "patched_dlrm")
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for d, k, lrs in CELLS:
        for lr in lrs:
            row = train_cell(module, sizes, d, k, lr, data, splits, args.batch, device)
            rows.append({"dataset": "kaggle", "regime": f"full-size synthetic ({machine})", "optimizer": "sgd",
                         "rare_lookup_share": share, **row})
            print(f"d={d} k={k} lr={lr}: val AUC {row['val_auc']}, test AUC {row['test_auc']}, "
                  f"{row['train_seconds']} s", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if not args.cpu_check:
        write_rows(os.path.join(HERE, "full_size_gpu.csv"), rows)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
