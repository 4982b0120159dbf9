"""MLET on a GPU: the same results as on the CPU, and DLRM's ``--use-gpu`` path.

DLRM users train on GPUs, where every tensor our code creates must follow the
table's device. These tests compare each piece on CUDA against the CPU and run
patched DLRM with ``--use-gpu``. They skip on machines without a GPU (CI has
none), and run wherever one is.
"""

import copy
import re

import numpy as np
import pytest
import torch

from conftest import run_dlrm  # noqa: F401 (fixtures come from conftest)
from dlrm_mlet import MLETEmbeddingBag, MLETError
from dlrm_mlet.engine import fused
from dlrm_mlet.dlrm.monitor import Monitor
from dlrm_mlet.core.spectrum import singular_values
from dlrm_mlet.engine.grouped import grouped_forward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
GPU = torch.device("cuda")
USE_GPU = ["--use-gpu"]


def tables_and_batch(mode, one_hot, weighted, seed=3):
    tables = [MLETEmbeddingBag(n, 4, 16, mode=mode) for n in (50, 70, 9)]
    tables.insert(1, torch.nn.EmbeddingBag(30, 4, mode=mode, sparse=True))
    for t in tables:
        with torch.no_grad():
            (t.table.weight if isinstance(t, MLETEmbeddingBag) else t.weight).normal_()
    g = torch.Generator().manual_seed(seed)
    if one_hot:
        indices = [torch.randint(0, t.num_embeddings, (8,), generator=g) for t in tables]
        offsets = [torch.arange(8) for _ in tables]
    else:
        indices = [torch.randint(0, t.num_embeddings, (20,), generator=g) for t in tables]
        offsets = [torch.tensor([0, 2, 2, 5, 9, 12, 15, 19]) for _ in tables]
    weights = [torch.rand(i.shape, generator=g) if weighted else None for i in indices]
    upstream = [torch.randn(8, 4, generator=g) for _ in tables]
    return tables, indices, offsets, weights, upstream


def on(device, tensors):
    return [None if t is None else t.to(device) for t in tensors]


@pytest.mark.parametrize("mode,weighted", [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("one_hot", [True, False])
def test_grouped_tables_on_the_gpu_match_the_cpu(mode, one_hot, weighted):
    tables, indices, offsets, weights, upstream = tables_and_batch(mode, one_hot, weighted)
    twins = [copy.deepcopy(t).to(GPU) for t in tables]
    expected = grouped_forward(tables, indices, offsets, weights)
    got = grouped_forward(twins, on(GPU, indices), on(GPU, offsets), on(GPU, weights))
    sum((e * u).sum() for e, u in zip(expected, upstream)).backward()
    sum((o * u).sum() for o, u in zip(got, on(GPU, upstream))).backward()
    for e, o in zip(expected, got):
        assert o.device.type == "cuda"
        assert torch.allclose(e, o.cpu(), atol=1e-5)
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert pb.grad.is_sparse == pa.grad.is_sparse
            assert torch.allclose(pa.grad.to_dense(), pb.grad.to_dense().cpu(), atol=1e-5)


def test_fused_update_on_the_gpu_is_sgd_on_sparse_gradients():
    tables, indices, offsets, weights, upstream = tables_and_batch("sum", False, False)
    tables = [t.to(GPU) for t in tables]
    twins = copy.deepcopy(tables)
    fused.use(twins)
    optimizers = [torch.optim.SGD([p for t in ts for p in t.parameters()], lr=0.5) for ts in (tables, twins)]
    for step in range(3):
        for ts, opt, fuse in ((tables, optimizers[0], False), (twins, optimizers[1], True)):
            out = grouped_forward(ts, on(GPU, indices), on(GPU, offsets), weights)
            opt.zero_grad()
            sum((o * u).sum() for o, u in zip(out, on(GPU, upstream))).backward()
            opt.step()
            assert fused.pending_rows(ts) == 0
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-5)


def test_fold_on_the_gpu_matches_the_cpu_and_stays_there():
    bag = MLETEmbeddingBag(5000, 16, 256)
    with torch.no_grad():
        bag.table.weight.normal_()
    expected = bag.fold().weight
    folded = copy.deepcopy(bag).to(GPU).fold()
    assert folded.weight.device.type == "cuda"
    assert torch.allclose(folded.weight.cpu(), expected, atol=1e-4)
    with torch.no_grad():
        bag.table.weight[4321, 7] = float("nan")
    with pytest.raises(MLETError, match="row 4321 is not finite"):
        bag.to(GPU).fold(name="emb_l.3")


class Writer:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value


class TwoTables(torch.nn.Module):
    """The part of ``DLRM_Net`` the monitor looks at: ``emb_l`` and forward(dense, offsets, indices)."""

    def __init__(self):
        super().__init__()
        self.emb_l = torch.nn.ModuleList([MLETEmbeddingBag(3000, 8, 64), torch.nn.EmbeddingBag(500, 8, sparse=True)])

    def forward(self, dense, offsets, indices):
        return sum(t(i, o).sum() for t, i, o in zip(self.emb_l, indices, offsets))


def test_monitor_counts_and_logs_on_the_gpu_like_on_the_cpu():
    """DLRM hands the monitor CUDA indices under --use-gpu; its counts and spectra follow them."""
    logged = []
    for device in ("cpu", GPU):
        np.random.seed(0)  # MLET tables draw their init from numpy, as DLRM's do
        torch.manual_seed(0)
        model = TwoTables().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor, writer = Monitor(freq=2, sample_rows=2048), Writer()
        g = torch.Generator().manual_seed(1)
        for step in range(4):
            indices = [torch.randint(0, 3000, (64,), generator=g).to(device),
                       torch.randint(0, 500, (64,), generator=g).to(device)]
            optimizer.zero_grad()
            model(None, [torch.arange(64, device=device)] * 2, indices).backward()
            optimizer.step()
            monitor.after_step(model, writer)
        logged.append(writer.scalars)
    cpu, gpu = logged
    assert set(gpu) == set(cpu) and "MLET/update_rare/emb_l.0" in gpu and "MLET/effective_rank/mean" in gpu
    assert gpu["MLET/update_rare/emb_l.0"] > 0  # the rows moved, and by as much as on the CPU
    for tag, value in cpu.items():
        assert gpu[tag] == pytest.approx(value, rel=1e-3), tag


def test_singular_values_on_the_gpu_match_the_cpu():
    a, b = torch.randn(10000, 64), torch.randn(16, 64)
    rows = torch.randperm(10000, generator=torch.Generator().manual_seed(0))[:2048]
    assert torch.allclose(singular_values(a.to(GPU), b.to(GPU), rows).cpu(), singular_values(a, b, rows), rtol=1e-4)


BASE = [
    "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1",
    "--arch-embedding-size=1000-2000-500-50", "--data-size=2048", "--mini-batch-size=128",
    "--num-indices-per-lookup=3", "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1",
    "--test-freq=16", "--print-freq=16", "--numpy-rand-seed=5",
]


def accuracies(stdout):
    return [float(a) for a in re.findall(r"\baccuracy (\d+\.\d+) %", stdout)]


@pytest.mark.parametrize("fused_flag", [["--mlet-fused-update=off"], []])
def test_patched_dlrm_trains_mlet_on_the_gpu_and_stock_dlrm_loads_the_result(
    patched_dlrm, stock_dlrm, tmp_path, fused_flag
):
    path = str(tmp_path / "model.pt")
    mlet = ["--mlet-hidden-dim=64", "--mlet-log-freq=4"] + fused_flag  # the monitor logs on the GPU too
    one_gpu = {"CUDA_VISIBLE_DEVICES": "0"}  # several GPUs: tests/test_multi_gpu.py
    proc = run_dlrm(patched_dlrm, BASE + USE_GPU + mlet + [f"--save-model={path}"], tmp_path, env=one_gpu)
    assert "Using 1 GPU(s)" in proc.stdout and "MLET: 4 of 4 tables" in proc.stdout
    saved_at = accuracies(proc.stdout.split("Saving model")[-2])[-1]
    on_gpu = run_dlrm(stock_dlrm, BASE + USE_GPU + [f"--load-model={path}", "--inference-only"], tmp_path,
                      env=one_gpu)
    assert accuracies(on_gpu.stdout)[-1] == saved_at
    # Stock DLRM maps a GPU-saved checkpoint to the CPU itself; only float rounding differs there.
    on_cpu = run_dlrm(stock_dlrm, BASE + [f"--load-model={path}", "--inference-only"], tmp_path)
    assert abs(accuracies(on_cpu.stdout)[-1] - saved_at) <= 0.2
