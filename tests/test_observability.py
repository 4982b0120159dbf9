"""Effective rank, the training monitor and `dlrm-mlet inspect`."""

import json

import numpy as np
import pytest
import torch

from dlrm_mlet.checkpoint_io import atomic_save
from dlrm_mlet.dlrm.checkpoints import fold_checkpoint
from dlrm_mlet.cli import main
from dlrm_mlet.dlrm.monitor import Monitor
from dlrm_mlet.core.spectrum import effective_rank, gram, singular_values
from test_checkpoint import dlrm_ckpt, train
from test_folding import TinyDLRM, batch


def test_effective_rank_of_known_matrices():
    assert effective_rank(torch.linalg.svdvals(torch.eye(8))) == pytest.approx(8)
    u, v = torch.randn(100, 1), torch.randn(1, 16)
    assert effective_rank(torch.linalg.svdvals(u @ v)) == pytest.approx(1, abs=1e-3)
    low = torch.randn(500, 3) @ torch.randn(3, 16)
    assert effective_rank(torch.linalg.svdvals(low)) < 3 + 1e-3
    assert effective_rank(torch.zeros(4)) == 0.0
    # Two equal directions and one ten times weaker: between 2 and 3.
    assert 2 < effective_rank([1.0, 1.0, 0.1]) < 3


def test_singular_values_of_the_folded_table_without_forming_it():
    a, b = torch.randn(3000, 64), torch.randn(8, 64)
    w = a.double() @ b.double().t()
    expected = torch.linalg.svdvals(w)
    assert torch.allclose(singular_values(a, b), expected, rtol=1e-6)
    # The k-wide product runs in the table's precision (float32), the d-wide sums in float64.
    assert torch.allclose(gram(a, b), w.t() @ w, rtol=1e-5, atol=1e-5 * float((w.t() @ w).abs().max()))
    # A row sample estimates the full table's spectrum.
    sample = torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:1500]
    assert torch.allclose(singular_values(a, b, sample), expected, rtol=0.1)


class Writer:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))


def test_monitor_logs_rank_spectrum_and_rare_versus_frequent_updates():
    model = TinyDLRM(rows=(400, 7, 300), d=4, k=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    monitor, writer = Monitor(freq=5, sample_rows=100), Writer()
    g = torch.Generator().manual_seed(0)
    for step in range(1, 21):
        dense, offsets, _ = batch(model, seed=step)
        # Row 0 of every table is in every bag: a frequent row; the rest are mostly rare.
        indices = [torch.cat([torch.zeros(8, dtype=torch.long),
                              torch.randint(1, e.num_embeddings, (8,), generator=g)]) for e in model.emb_l]
        offsets = [torch.arange(8) * 2 for _ in model.emb_l]
        optimizer.zero_grad()
        model(dense, offsets, indices).sum().backward()
        optimizer.step()
        monitor.after_step(model, writer, step)
    assert [s for s, _ in writer.scalars["MLET/effective_rank/emb_l.0"]] == [5, 10, 15, 20]
    assert 1 <= writer.scalars["MLET/effective_rank/mean"][-1][1] <= 4
    assert "MLET/proj_norm/emb_l.2" in writer.scalars
    assert "MLET/singular_value_0/emb_l.1" in writer.scalars
    frequent = writer.scalars["MLET/update_frequent/emb_l.0"]
    rare = writer.scalars["MLET/update_rare/emb_l.0"]
    assert len(frequent) == 3 and len(rare) == 3
    # Measured: frequent rows moved 14-47x more than rare ones at each log; both move.
    assert all(f > r > 0 for (_, f), (_, r) in zip(frequent, rare)), (frequent, rare)
    assert monitor.counts[0][0] == 8 * 20 - 8  # row 0, counted from the second step on


def saved(tmp_path):
    model = TinyDLRM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer)
    ckpt = dlrm_ckpt(model, optimizer)
    atomic_save(ckpt, tmp_path / "m.pt.mlet")
    atomic_save(fold_checkpoint(ckpt), tmp_path / "m.pt")
    torch.save(dict(ckpt, state_dict=fold_checkpoint(ckpt)["state_dict"]), tmp_path / "stock.pt")
    return tmp_path


@pytest.mark.parametrize(
    "name,kind,loadable",
    [("m.pt.mlet", "MLET (unfolded)", "no: it holds unfolded MLET tables"),
     ("m.pt", "plain stock layout", "yes"),
     ("stock.pt", "plain stock layout", "only with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1")],
)
def test_inspect_each_kind_of_checkpoint(tmp_path, capsys, name, kind, loadable):
    folder = saved(tmp_path)
    assert main(["inspect", str(folder / name)]) == 0
    out = capsys.readouterr().out
    assert kind in out and f"stock DLRM can load it as is: {loadable}" in out
    assert "emb_l.2" in out and "total" in out
    assert main(["inspect", "--json", str(folder / name)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [t["rows"] for t in info["tables"]] == [40, 7, 300]
    assert all(0 < t["effective_rank"] <= 4 + 1e-6 for t in info["tables"])
    if name.endswith(".mlet"):
        assert info["tables"][0]["hidden_dim"] == 16 and info["total_bytes"] > info["total_folded_bytes"]


def test_inspect_gives_the_same_spectrum_folded_and_unfolded(tmp_path, capsys):
    folder = saved(tmp_path)
    main(["inspect", "--json", str(folder / "m.pt.mlet")])
    unfolded = json.loads(capsys.readouterr().out)
    main(["inspect", "--json", str(folder / "m.pt")])
    folded = json.loads(capsys.readouterr().out)
    for a, b in zip(unfolded["tables"], folded["tables"]):
        assert np.allclose(a["singular_values"], b["singular_values"], rtol=1e-5)


def test_inspect_plot_is_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    folder = saved(tmp_path)
    assert main(["inspect", str(folder / "m.pt.mlet"), "--plot", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_unreadable_files_one_line(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "notables.pt")
    for path in ("x.pt", "notables.pt", "missing.pt"):
        assert main(["inspect", str(tmp_path / path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dlrm-mlet: error: ") and err.count("\n") == 1


def test_a_run_shorter_than_the_log_frequency_says_it_writes_no_mlet_scalars(patched_module, tmp_path, monkeypatch,
                                                                              capsys):
    import sys

    from dlrm_mlet.tools.synth_processed import write_processed

    monkeypatch.chdir(tmp_path)
    write_processed(tmp_path, 3000, seed=1, scale=0.001, rank=2, support="published", progress=False)
    sys.argv = ["dlrm_s_pytorch.py", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4", "--arch-mlp-top=8-1",
                "--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={tmp_path / 'train.txt'}",
                f"--processed-data-file={tmp_path / 'kaggleAdDisplayChallenge_processed.npz'}", "--mlet-mmap-data",
                "--mini-batch-size=128", "--mlet-hidden-dim=16", "--print-freq=8", "--loss-function=bce",
                "--round-targets=True"]
    patched_module.run()
    assert "MLET: --mlet-log-freq=1024 is more than this run's 21 steps: no MLET/* scalars will be written" in \
        capsys.readouterr().out
