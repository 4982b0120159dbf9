"""MLET on several GPUs in one process: DLRM's ``--use-gpu`` with more than one device.

There DLRM runs ``parallel_forward``: table ``k`` lives on ``cuda:(k % ndevices)``,
its indices are moved there just before ``apply_emb``, and the MLPs are replicated.
So grouped MLET tables must group per device and answer on each table's device,
fused updates must apply each table's rows where it lives, and the monitor must
count indices that reach it on the CPU (its hook runs before ``parallel_forward``
moves them) for tables that sit on different GPUs. These tests skip unless torch
sees at least two GPUs (CI has none); which of them have run is said in the README.
"""

import copy
import re

import numpy as np
import pytest
import torch

from conftest import run_dlrm  # noqa: F401 (fixtures come from conftest)
from dlrm_mlet import MLETEmbeddingBag
from dlrm_mlet.engine import fused
from dlrm_mlet.dlrm.monitor import Monitor
from dlrm_mlet.engine.grouped import grouped_forward

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more CUDA GPUs")


def devices(count):
    """DLRM's placement: table k on cuda:(k % 2)."""
    return [torch.device("cuda", k % 2) for k in range(count)]


def tables_and_batch(seed=3):
    tables = [MLETEmbeddingBag(n, 4, 16) for n in (50, 70, 9, 40, 60)]
    tables.insert(2, torch.nn.EmbeddingBag(30, 4, sparse=True))
    g = torch.Generator().manual_seed(seed)
    for t in tables:
        with torch.no_grad():
            (t.table.weight if isinstance(t, MLETEmbeddingBag) else t.weight).normal_(generator=g)
    indices = [torch.randint(0, t.num_embeddings, (8,), generator=g) for t in tables]
    offsets = [torch.arange(8) for _ in tables]
    upstream = [torch.randn(8, 4, generator=g) for _ in tables]
    return tables, indices, offsets, upstream


@pytest.mark.parametrize("fuse", [False, True])
def test_grouped_tables_on_two_gpus_train_like_the_cpu(fuse):
    tables, indices, offsets, upstream = tables_and_batch()
    where = devices(len(tables))
    twins = [copy.deepcopy(t).to(d) for t, d in zip(tables, where)]
    if fuse:
        fused.use(twins)
    opts = [torch.optim.SGD([p for t in ts for p in t.parameters()], lr=0.5) for ts in (tables, twins)]
    for _ in range(3):
        for ts, opt, on_gpus in ((tables, opts[0], False), (twins, opts[1], True)):
            move = (lambda xs: [x.to(d) for x, d in zip(xs, where)]) if on_gpus else (lambda xs: xs)
            out = grouped_forward(ts, move(indices), move(offsets), [None] * len(ts))
            if on_gpus:
                assert [o.device for o in out] == where  # each answer on its table's device
            opt.zero_grad()
            sum((o * u).sum() for o, u in zip(out, move(upstream))).backward()
            opt.step()
            assert fused.pending_rows(ts) == 0
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb.cpu(), atol=1e-5)


class Writer:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value


class SpreadTables(torch.nn.Module):
    """What the monitor sees of ``DLRM_Net`` under parallel_forward: tables on two GPUs,
    indices handed to forward on the CPU."""

    def __init__(self, spread):
        super().__init__()
        self.emb_l = torch.nn.ModuleList([MLETEmbeddingBag(3000, 8, 64), MLETEmbeddingBag(2000, 8, 64),
                                          torch.nn.EmbeddingBag(500, 8, sparse=True)])
        self.where = devices(3) if spread else [torch.device("cpu")] * 3
        for t, d in zip(self.emb_l, self.where):
            t.to(d)

    def forward(self, dense, offsets, indices):
        return sum(t(i.to(d), o.to(d)).sum().cpu() for t, i, o, d in zip(self.emb_l, indices, offsets, self.where))


def test_monitor_counts_cpu_indices_for_tables_on_two_gpus_like_on_the_cpu():
    logged = []
    for spread in (False, True):
        np.random.seed(0)
        torch.manual_seed(0)
        model = SpreadTables(spread)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor, writer = Monitor(freq=2), Writer()
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            indices = [torch.randint(0, t.num_embeddings, (64,), generator=g) for t in model.emb_l]
            optimizer.zero_grad()
            model(None, [torch.arange(64)] * 3, indices).backward()
            optimizer.step()
            monitor.after_step(model, writer)
        logged.append(writer.scalars)
    cpu, gpus = logged
    assert set(gpus) == set(cpu) and "MLET/update_rare/emb_l.1" in gpus
    for tag, value in cpu.items():
        assert gpus[tag] == pytest.approx(value, rel=1e-3), tag


BASE = [
    "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1",
    "--arch-embedding-size=1000-2000-500-50-300", "--data-size=2048", "--mini-batch-size=128",
    "--num-indices-per-lookup=3", "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1",
    "--test-freq=16", "--print-freq=16", "--numpy-rand-seed=5",
]


def accuracies(stdout):
    return [float(a) for a in re.findall(r"\baccuracy (\d+\.\d+) %", stdout)]


@pytest.mark.parametrize("fused_flag", [["--mlet-fused-update=off"], []])
def test_patched_dlrm_trains_mlet_on_several_gpus_and_stock_dlrm_loads_the_result(
    patched_dlrm, stock_dlrm, tmp_path, fused_flag
):
    """parallel_forward: DLRM uses every visible GPU (at most tables - 1 of them)."""
    path = str(tmp_path / "model.pt")
    mlet = ["--mlet-hidden-dim=64", "--mlet-log-freq=4"] + fused_flag
    proc = run_dlrm(patched_dlrm, BASE + ["--use-gpu"] + mlet + [f"--save-model={path}"], tmp_path)
    used = int(re.search(r"Using (\d+) GPU\(s\)", proc.stdout).group(1))
    assert used >= 2 and "MLET: 5 of 5 tables" in proc.stdout
    losses = [float(x) for x in re.findall(r"\bloss (\S+)", proc.stdout)]  # "nan" parses too
    assert losses and all(np.isfinite(losses))
    saved_at = accuracies(proc.stdout.split("Saving model")[-2])[-1]
    on_gpus = run_dlrm(stock_dlrm, BASE + ["--use-gpu", f"--load-model={path}", "--inference-only"], tmp_path)
    assert accuracies(on_gpus.stdout)[-1] == saved_at
    on_cpu = run_dlrm(stock_dlrm, BASE + [f"--load-model={path}", "--inference-only"], tmp_path)
    assert abs(accuracies(on_cpu.stdout)[-1] - saved_at) <= 0.2
