"""MLET inside DLRM's quotient-remainder and mixed-dimension tables: trained by patched DLRM, saved folded,
loaded by unpatched DLRM with the same flags, which prints the same AUC; and the folding exact for each."""

import numpy as np
import pytest
import torch

from conftest import run_dlrm
from dlrm_mlet.checkpoint_io import load_checkpoint
from dlrm_mlet.core.bag import MLETEmbeddingBag
from dlrm_mlet.core.convert import fold_model
from dlrm_mlet.core.folding import fold_state_dict
from dlrm_mlet.dlrm.tricks import MLETQREmbeddingBag, md_hidden_dim
from dlrm_mlet.tools.synth import write_synthetic
from test_dlrm_integration import accuracies, aucs


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    data = tmp_path_factory.mktemp("kaggle")
    write_synthetic(data, 3000, seed=2, scale=0.001, progress=False)
    return data


def args_for(data, d, bottom_out, extra):
    return [f"--arch-sparse-feature-size={d}", f"--arch-mlp-bot=13-32-{bottom_out}", "--arch-mlp-top=32-1",
            "--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={data}/train.txt",
            f"--processed-data-file={data}/kaggleAdDisplayChallenge_processed.npz", "--loss-function=bce",
            "--round-targets=True", "--learning-rate=0.1", "--mini-batch-size=64", "--test-freq=20",
            "--print-freq=20", "--mlperf-logging", "--numpy-rand-seed=3", *extra]


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_tables_train_as_mlet_and_unpatched_dlrm_loads_them_with_the_same_auc(
        operation, patched_dlrm, stock_dlrm, kaggle, tmp_path):
    d = 8
    # concat makes QR tables 2d wide: every table must be one (stock DLRM too), so the threshold is 0 there
    threshold = 0 if operation == "concat" else 30
    flags = ["--qr-flag", f"--qr-threshold={threshold}", "--qr-collisions=4", f"--qr-operation={operation}"]
    args = args_for(kaggle, d, 2 * d if operation == "concat" else d, flags)
    model = tmp_path / "qr.pt"
    trained = run_dlrm(patched_dlrm, args + ["--mlet-hidden-dim=32", f"--save-model={model}"], tmp_path)
    mlet = load_checkpoint(f"{model}.mlet")["state_dict"]
    assert any(k.endswith("weight_q.table.weight") for k in mlet) and any(k.endswith("weight_r.proj.weight") for k in mlet)
    folded = load_checkpoint(model)["state_dict"]
    assert any(k.endswith(".weight_q") for k in folded) and not any("table" in k or "proj" in k for k in folded)
    loaded = run_dlrm(stock_dlrm, args + [f"--load-model={model}", "--inference-only"], tmp_path)
    assert aucs(loaded.stdout)[-1] == aucs(trained.stdout)[-1]
    assert accuracies(loaded.stdout)[-1] == accuracies(trained.stdout)[-1]


def test_md_tables_train_as_mlet_and_unpatched_dlrm_loads_them_with_the_same_auc(
        patched_dlrm, stock_dlrm, kaggle, tmp_path):
    d = 16
    flags = ["--md-flag", "--md-threshold=1", "--md-temperature=0.3"]
    args = args_for(kaggle, d, d, flags)
    model = tmp_path / "md.pt"
    trained = run_dlrm(patched_dlrm, args + ["--mlet-hidden-dim=64", f"--save-model={model}"], tmp_path)
    mlet = load_checkpoint(f"{model}.mlet")["state_dict"]
    assert any(k.endswith("embs.table.weight") for k in mlet)
    widths = {k: v.shape for k, v in mlet.items() if k.endswith("embs.proj.weight")}
    assert len({shape[0] for shape in widths.values()}) > 1  # mixed dimensions d_i, each its own k_i
    assert all(shape[1] == md_hidden_dim(64, shape[0], d) for shape in widths.values())
    loaded = run_dlrm(stock_dlrm, args + [f"--load-model={model}", "--inference-only"], tmp_path)
    assert aucs(loaded.stdout)[-1] == aucs(trained.stdout)[-1]


def test_md_with_a_table_at_or_below_the_threshold_is_refused_in_one_line(patched_dlrm, kaggle, tmp_path):
    args = args_for(kaggle, 16, 16, ["--md-flag", "--md-threshold=200"])
    proc = run_dlrm(patched_dlrm, args + ["--mlet-hidden-dim=64"], tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "at or below --md-threshold=200" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flags", [["--qr-flag", "--mlet-memory-budget=1MiB"],
                                   ["--md-flag", "--mlet-fused-update=fbgemm"]])
def test_combinations_that_do_not_compose_are_refused_before_training(flags, patched_dlrm, kaggle, tmp_path):
    proc = run_dlrm(patched_dlrm, args_for(kaggle, 8, 8, flags) + ["--mlet-hidden-dim=32"], tmp_path, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("ERROR: --mlet-")


class _StockQR(torch.nn.Module):
    """A stand-in with stock QREmbeddingBag's parameters (the tests of the real one run DLRM above)."""

    def __init__(self, num_categories, embedding_dim, num_collisions, operation="mult", mode="sum", sparse=True):
        super().__init__()
        rows = [int(np.ceil(num_categories / num_collisions)), num_collisions]
        self.weight_q = torch.nn.Parameter(torch.empty(rows[0], embedding_dim))
        self.weight_r = torch.nn.Parameter(torch.empty(rows[1], embedding_dim))


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_folding_is_exact_module_and_state_dict(operation):
    torch.manual_seed(0)
    qr = MLETQREmbeddingBag(_StockQR, 103, 4, 5, operation, lambda n, d: MLETEmbeddingBag(n, d, 32))
    indices, offsets = torch.randint(0, 103, (40,)), torch.tensor([0, 3, 3, 10, 22, 31])
    out = qr(indices, offsets)
    folded = qr.fold()
    q = torch.nn.functional.embedding_bag((indices / 5).long(), folded.weight_q, offsets, mode="sum")
    r = torch.nn.functional.embedding_bag(torch.remainder(indices, 5), folded.weight_r, offsets, mode="sum")
    expected = torch.cat((q, r), 1) if operation == "concat" else (q + r if operation == "add" else q * r)
    assert torch.allclose(out, expected, atol=1e-6)
    state = fold_state_dict({f"emb_l.0.{k}": v for k, v in qr.state_dict().items()})
    assert sorted(state) == ["emb_l.0.weight_q", "emb_l.0.weight_r"]
    assert torch.equal(state["emb_l.0.weight_q"], folded.weight_q.detach())
    model = torch.nn.ModuleDict({"qr": qr})
    assert type(fold_model(model)["qr"]) is _StockQR  # the nested MLET tables fold with their QR table


@pytest.mark.parametrize("flags,out", [(["--qr-flag", "--qr-threshold=30", "--qr-collisions=4"], 8),
                                       (["--md-flag", "--md-threshold=1"], 8)], ids=["qr", "md"])
def test_qr_and_md_with_mlet_through_dlrm_mlet_run(flags, out, stock_dlrm, kaggle, tmp_path):
    args = args_for(kaggle, 8, out, flags)
    model = tmp_path / "m.pt"
    trained = run_dlrm(stock_dlrm, args + ["--mlet-hidden-dim=32", f"--save-model={model}"], tmp_path, launcher=True)
    loaded = run_dlrm(stock_dlrm, args + [f"--load-model={model}", "--inference-only"], tmp_path)
    assert aucs(loaded.stdout)[-1] == aucs(trained.stdout)[-1]
