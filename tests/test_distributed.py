"""MLET in DLRM's distributed mode: 2 gloo processes on loopback, one stock checkpoint."""

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import import_script, run_dlrm

ROWS = [1000, 2000, 500, 50, 70]  # 5 tables over 2 ranks: an uneven split on purpose
ARGS = [
    "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1",
    "--arch-embedding-size=" + "-".join(map(str, ROWS)), "--data-size=25600",
    "--mini-batch-size=128", "--num-indices-per-lookup=3", "--loss-function=bce",
    "--round-targets=True", "--learning-rate=0.1", "--test-freq=200", "--print-freq=100",
    "--mlet-hidden-dim=64", "--optimizer=adagrad", "--weighted-pooling=learned",
]
HERE = os.path.dirname(__file__)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script_args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}"] + script_args
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def distributed_run(patched_dlrm, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dist")
    preds = cwd / "pred.pt"
    proc = torchrun([os.path.join(HERE, "dist_harness.py"), patched_dlrm, str(preds), "--",
                     "--dist-backend=gloo", f"--save-model={cwd}/m.pt"] + ARGS, cwd)
    return cwd, proc.stdout, torch.load(preds)


def test_rank_zero_writes_one_complete_stock_checkpoint(distributed_run):
    cwd, stdout, _ = distributed_run
    assert "Running on 2 ranks using gloo backend" in stdout
    folded = torch.load(cwd / "m.pt", weights_only=True)
    shapes = {k: tuple(v.shape) for k, v in folded["state_dict"].items()}
    for g, n in enumerate(ROWS):
        assert shapes[f"emb_l.{g}.weight"] == (n, 16)
        assert shapes[f"v_W_l.{g}"] == (n,)
    assert "bot_l.0.weight" in shapes and not any(".module." in k for k in shapes)
    assert "mlet" not in folded
    # One optimizer group over the single-process parameter list, as stock DLRM builds it.
    assert folded["opt_state_dict"]["param_groups"][0]["params"] == list(range(len(shapes)))
    # Each rank wrote its own unfolded shard.
    assert {p.name for p in cwd.iterdir() if ".mlet" in p.name} == {"m.pt.mlet", "m.pt.mlet.rank1"}


def test_single_process_stock_dlrm_reproduces_the_distributed_predictions(distributed_run, stock_dlrm):
    cwd, _, batch = distributed_run
    dlrm = import_script(stock_dlrm, "stock_dlrm_for_dist")
    num_fea = len(ROWS) + 1
    ln_top = np.array([num_fea * (num_fea - 1) // 2 + 16, 32, 1])
    net = dlrm.DLRM_Net(16, np.array(ROWS), np.array([13, 32, 16]), ln_top, arch_interaction_op="dot",
                        sigmoid_top=ln_top.size - 2, ndevices=-1, weighted_pooling="learned")
    net.load_state_dict(torch.load(cwd / "m.pt", weights_only=True)["state_dict"], strict=True)
    with torch.no_grad():
        pred = net(batch["dense"], list(batch["offsets"]), list(batch["indices"]))
    assert pred.shape == batch["pred"].shape == (64, 1)
    assert (pred - batch["pred"]).abs().max() <= 1e-5


def test_stock_single_process_dlrm_loads_it_and_prints_the_distributed_accuracy(
    distributed_run, stock_dlrm, tmp_path
):
    cwd, stdout, _ = distributed_run
    saved_at = stdout.split("Saving model")[-2].rsplit("accuracy ", 1)[1].split(" %")[0]
    args = [a for a in ARGS if not a.startswith("--mlet")]
    proc = run_dlrm(stock_dlrm, args + [f"--load-model={cwd}/m.pt", "--inference-only"], tmp_path)
    assert f"accuracy {saved_at} %" in proc.stdout.split("Testing for inference only")[-1]


def epoch_1_results(stdout):
    """The training losses and test accuracy DLRM printed during epoch 1, as printed."""
    epoch_1 = stdout[stdout.rfind("\n", 0, stdout.index("of epoch 1")) + 1:]
    return (re.findall(r"Finished training it \d+/\d+ of epoch 1, .*? loss (\S+)", epoch_1),
            re.findall(r"\baccuracy (\S+) %", epoch_1))


def test_mlet_training_resumes_from_the_shards_with_as_many_ranks(distributed_run, patched_dlrm, tmp_path):
    """Epoch 0, saved as shards, then epoch 1 resumed from them == two epochs in one go.

    Random data repeats each epoch, so only the restored tables, MLPs and Adagrad
    state (each rank its own shard) can make epoch 1 agree.
    """
    cwd, _, _ = distributed_run
    harness = os.path.join(HERE, "dist_harness.py")
    # Saved at the end of epoch 0: a two-epoch run resumes with epoch 1.
    proc = torchrun([harness, patched_dlrm, str(tmp_path / "resumed.pt"), "--", "--dist-backend=gloo",
                     f"--load-model={cwd}/m.pt.mlet", "--nepochs=2"] + ARGS, tmp_path)
    assert "Finished training it 200/200 of epoch 1" in proc.stdout
    assert "of epoch 0" not in proc.stdout.split("Loading saved model")[-1]
    whole = torchrun([harness, patched_dlrm, str(tmp_path / "whole.pt"), "--", "--dist-backend=gloo",
                      "--nepochs=2"] + ARGS, tmp_path)
    losses, accuracy = epoch_1_results(proc.stdout)
    assert len(losses) == 2 and len(accuracy) == 1 and np.isfinite([float(x) for x in losses]).all()
    assert (losses, accuracy) == epoch_1_results(whole.stdout)
    resumed, uninterrupted = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "whole.pt")
    assert torch.equal(resumed["indices"], uninterrupted["indices"])
    diff = (resumed["pred"] - uninterrupted["pred"]).abs().max().item()
    assert diff <= 1e-6, diff
    single = run_dlrm(patched_dlrm, ARGS + [f"--load-model={cwd}/m.pt.mlet"], tmp_path, check=False)
    assert single.returncode != 0
    assert "saved by 2 ranks, loaded by 1" in single.stderr.strip().splitlines()[-1]


def test_half_tables_with_rowwise_adagrad_train_distributed_and_fold_to_one_float32_checkpoint(
        patched_dlrm, stock_dlrm, tmp_path):
    """fp16 k-wide tables and RWSAdagrad on 2 ranks: one complete fp32 stock checkpoint, same predictions."""
    preds = tmp_path / "pred.pt"
    args = [a for a in ARGS if not a.startswith("--optimizer")] + ["--optimizer=rwsadagrad", "--mlet-table-dtype=fp16"]
    torchrun([os.path.join(HERE, "dist_harness.py"), patched_dlrm, str(preds), "--", "--dist-backend=gloo",
              f"--save-model={tmp_path}/m.pt"] + args, tmp_path)
    shard = torch.load(tmp_path / "m.pt.mlet", weights_only=True)["state_dict"]
    assert {v.dtype for k, v in shard.items() if k.endswith("table.weight")} == {torch.float16}
    folded = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert {v.dtype for v in folded.values()} == {torch.float32}
    batch = torch.load(preds)
    dlrm = import_script(stock_dlrm, "stock_dlrm_for_dist_half")
    num_fea = len(ROWS) + 1
    ln_top = np.array([num_fea * (num_fea - 1) // 2 + 16, 32, 1])
    net = dlrm.DLRM_Net(16, np.array(ROWS), np.array([13, 32, 16]), ln_top, arch_interaction_op="dot",
                        sigmoid_top=ln_top.size - 2, ndevices=-1, weighted_pooling="learned")
    net.load_state_dict(folded, strict=True)
    with torch.no_grad():
        pred = net(batch["dense"], list(batch["offsets"]), list(batch["indices"]))
    assert (pred - batch["pred"]).abs().max() <= 1e-5
