"""Nothing lost when a run diverges: a save with NaN or inf writes nothing and stops DLRM in one line.

A good run saves first; then a run with the same ``--save-model`` goes bad
and tries to save. ``PATH`` and ``PATH.mlet`` (and in distributed mode every
rank's shard) must keep the good run's bytes, and DLRM must stop with one line
naming the parameter, the row, the step and what to change.

The bad values are injected. A real divergence makes every prediction NaN:
DLRM's test accuracy is then 0 (never "best", so it never saves) and BCE on
NaN predictions raises in ``binary_cross_entropy`` first. So the tests put
NaN or inf where a run that blew up leaves them, at the point DLRM saves:

* a table row, injected after the last optimizer step of the epoch, so DLRM
  runs its own test with it (the other rows still predict, accuracy stays
  above 0) and reaches the save by itself;
* a projection or an MLP weight, injected just before the save: with those
  non-finite every prediction is NaN, so only injection at the save reaches it.
"""

import os
import sys

import pytest
import torch

from test_dlrm_integration import BASE, MLET
from test_resume import run_torchrun

DIST_ARGS = [
    "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1",
    "--arch-embedding-size=1000-2000-500-50-70", "--data-size=2048", "--mini-batch-size=128",
    "--num-indices-per-lookup=3", "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1",
    "--test-freq=16", "--print-freq=16", "--mlet-hidden-dim=64", "--optimizer=adagrad", "--dist-backend=gloo",
]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("m.pt")}


def poison_after_last_step(monkeypatch, key, row, value):
    """A bad row appears at step 16 (the epoch's last), just before DLRM's test and save."""
    from dlrm_mlet import dlrm_glue

    after_step = dlrm_glue.after_step

    def poisoned(model, writer, step=None):
        after_step(model, writer, step)
        if step == 16:
            with torch.no_grad():
                dict(model.named_parameters())[key][row] = value

    monkeypatch.setattr(dlrm_glue, "after_step", poisoned)


def poison_before_save(monkeypatch, key, row, value):
    from dlrm_mlet import dlrm_glue

    save = dlrm_glue.save_model

    def poisoned(ckpt, path, model):
        with torch.no_grad():
            dict(model.named_parameters())[key][row] = value
        save(ckpt, path, model)

    monkeypatch.setattr(dlrm_glue, "save_model", poisoned)


@pytest.mark.parametrize("inject,key,row,value", [
    (poison_after_last_step, "emb_l.2.table.weight", 7, float("inf")),
    (poison_after_last_step, "emb_l.0.table.weight", 3, float("nan")),
    (poison_before_save, "emb_l.1.proj.weight", 5, float("nan")),
    (poison_before_save, "top_l.0.weight", 0, float("inf")),
], ids=["table-inf", "table-nan", "projection-nan", "mlp-inf"])
def test_a_diverged_save_keeps_the_last_good_checkpoint_and_stops_in_one_line(
    patched_module, tmp_path, monkeypatch, capsys, inject, key, row, value
):
    monkeypatch.chdir(tmp_path)
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + MLET + [f"--save-model={tmp_path}/m.pt"]
    patched_module.run()
    good = snapshot(tmp_path)
    assert set(good) == {"m.pt", "m.pt.mlet"}
    with monkeypatch.context() as m:
        inject(m, key, row, value)
        with pytest.raises(SystemExit) as stop:
            patched_module.run()
    message = stop.value.code
    assert isinstance(message, str) and message.startswith("ERROR: --save-model: training diverged: ")
    assert "\n" not in message  # a string exit code: Python prints it and exits with status 1
    assert f"{key} row {row} is not finite (nan or inf) at epoch 0, iter 16 (step 16)" in message
    assert "lower --learning-rate (now 0.1), or K (--mlet-hidden-dim)" in message
    assert "Saving model to" in capsys.readouterr().out.split("Finished training it 16/16")[-1]
    assert snapshot(tmp_path) == good
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_distributed_no_rank_replaces_its_shard_when_one_rank_diverged(patched_dlrm, tmp_path):
    """2 gloo ranks; only rank 1's first local table (global table 3) holds a NaN row."""
    args = DIST_ARGS + [f"--save-model={tmp_path}/m.pt"]
    run_torchrun(patched_dlrm, args, tmp_path)
    good = snapshot(tmp_path)
    assert set(good) == {"m.pt", "m.pt.mlet", "m.pt.mlet.rank1"}
    bad = run_torchrun(patched_dlrm, args, tmp_path, check=False, POISON="1:emb_l.0.table.weight:11")
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 2 and lines[0] == lines[1]  # both ranks stop, with the same line
    assert ("emb_l.3.table.weight row 11 on rank 1 is not finite (nan or inf) at epoch 0, iter 16 (step 16)"
            in lines[0])
    assert "lower --learning-rate" in lines[0]
    assert snapshot(tmp_path) == good
