"""Resume as users do it: interrupted after a mid-epoch save, then ``--load-model=PATH.mlet``.

Each test trains once without interruption, then trains again with the same
flags but stops the process right after a mid-epoch save (the save at
``--test-freq`` inside the first of two epochs), and resumes from that
``PATH.mlet``. Everything DLRM reports after the resume point must be the
same as in the uninterrupted run: every training loss it prints, the final
test AUC, log loss and accuracy (``--mlet-metrics-json``), and the final
weights. CPU float arithmetic is deterministic here and both runs do the same
operations in the same order, so losses and metrics are compared exactly and
weights to float rounding.
"""

import gc
import json
import os
import re
import subprocess
import sys
import weakref

import pytest
import torch

from test_distributed import free_port
from test_dlrm_integration import BASE, ROWS, accuracies

HERE = os.path.dirname(__file__)

SAVE_AT = 8  # of 16 batches per epoch: a mid-epoch test, the common case


class Interrupted(Exception):
    """Stands for the job being killed just after a save."""


def losses_after(stdout, epoch, it):
    """(epoch, it, loss) for every training loss DLRM printed after batch ``it`` of ``epoch``."""
    found = re.findall(r"Finished training it (\d+)/\d+ of epoch (\d+), .* loss (\d+\.\d+)", stdout)
    return [(int(e), int(i), loss) for i, e, loss in found if (int(e), int(i)) > (epoch, it)]


def train(module, argv, capsys):
    sys.argv = ["dlrm_s_pytorch.py"] + argv
    module.run()
    state = {k: v.detach().clone() for k, v in module.dlrm.state_dict().items()}
    return capsys.readouterr().out, state


def interrupt_after_save(monkeypatch, epoch, it):
    """Let DLRM save normally, then stop it right after the save at (epoch, it)."""
    from dlrm_mlet import dlrm_glue

    save = dlrm_glue.save_model

    def save_then_stop(ckpt, path, model):
        save(ckpt, path, model)
        if (ckpt["epoch"], ckpt["iter"]) == (epoch, it):
            raise Interrupted

    monkeypatch.setattr(dlrm_glue, "save_model", save_then_stop)


def assert_same_run(reference, resumed, metrics_ref, metrics_res):
    (ref_out, ref_state), (res_out, res_state) = reference, resumed
    assert "Saved at: epoch = 0/2, batch = %d/16" % SAVE_AT in res_out
    resumed_part = res_out.split("Loading saved model")[-1]
    assert losses_after(resumed_part, -1, 0) == losses_after(ref_out, 0, SAVE_AT)
    assert len(losses_after(ref_out, 0, SAVE_AT)) == 12  # print-freq 2: 4 in epoch 0, 8 in epoch 1
    assert metrics_res == metrics_ref and metrics_ref["step"] == 32
    assert list(res_state) == list(ref_state)
    for key, value in ref_state.items():
        assert torch.allclose(res_state[key], value, atol=1e-6), (key, (res_state[key] - value).abs().max())


@pytest.mark.parametrize("flags", [
    ["--optimizer=sgd", "--mlet-hidden-dim=64"],
    ["--optimizer=adagrad", "--mlet-hidden-dim=64"],
    ["--optimizer=rwsadagrad", "--mlet-hidden-dim=64"],
    ["--optimizer=rwsadagrad", "--mlet-hidden-dim=64-0-128-64", "--mlet-min-rows=100"],
    ["--optimizer=adagrad", "--mlet-hidden-dim=64-0-128-64", "--mlet-min-rows=100"],
    ["--optimizer=rwsadagrad", "--mlet-hidden-dim=64", "--mlet-table-dtype=fp16"],
    ["--optimizer=adagrad", "--mlet-hidden-dim=64", "--mlet-table-dtype=bf16"],
    # The MLPerf kind of schedule, warm-up running across the save point: DLRM does not save
    # its scheduler, so the resumed run must step it to where the saved run was.
    ["--optimizer=sgd", "--mlet-hidden-dim=64", "--lr-num-warmup-steps=12", "--lr-decay-start-step=14",
     "--lr-num-decay-steps=12"],
], ids=["sgd", "adagrad", "rwsadagrad", "rwsadagrad-k-list-min-rows", "adagrad-k-list-min-rows",
        "rwsadagrad-fp16", "adagrad-bf16",
        "sgd-warmup-decay"])
def test_mid_epoch_resume_reaches_the_uninterrupted_losses_metrics_and_weights(
    patched_module, tmp_path, monkeypatch, capsys, flags
):
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "metrics.json"
    argv = BASE + flags + ["--nepochs=2", "--test-freq=4", "--print-freq=2", "--mlperf-logging",
                           f"--mlet-metrics-json={metrics}"]
    reference = train(patched_module, argv, capsys)
    metrics_ref = json.loads(metrics.read_text())
    path = tmp_path / "m.pt"
    with monkeypatch.context() as m:
        interrupt_after_save(m, 0, SAVE_AT)
        with pytest.raises(Interrupted):
            train(patched_module, argv + [f"--save-model={path}"], capsys)
    capsys.readouterr()
    resumed = train(patched_module, argv + [f"--load-model={path}.mlet"], capsys)
    assert_same_run(reference, resumed, metrics_ref, json.loads(metrics.read_text()))


def run_torchrun(dlrm_dir, args, cwd, check=True, **hooks):
    """2 gloo ranks through ``dist_hooks_harness.py``; ``hooks`` become its environment variables."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", os.path.join(HERE, "dist_hooks_harness.py"), dlrm_dir, "--"] + args
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONHASHSEED="0",
               **hooks)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_distributed_mid_epoch_resume_from_the_shards_reaches_the_uninterrupted_run(patched_dlrm, tmp_path):
    """2 gloo ranks, 5 tables split 3 + 2, Adagrad, learned pooling weights.

    Only rank 0 prints (its local-slice loss). Test accuracy stands in for
    AUC here: ``--mlperf-logging`` fails in DLRM's distributed CPU mode
    (``mlperf_logger.barrier`` all-reduces a ``torch.cuda.FloatTensor``).
    """
    args = ["--arch-sparse-feature-size=16", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1",
            "--arch-embedding-size=1000-2000-500-50-70", "--data-size=2048", "--mini-batch-size=128",
            "--num-indices-per-lookup=3", "--loss-function=bce", "--round-targets=True",
            "--learning-rate=0.1", "--mlet-hidden-dim=64", "--optimizer=adagrad", "--weighted-pooling=learned",
            "--dist-backend=gloo", "--nepochs=2", "--test-freq=4", "--print-freq=2"]
    ref = run_torchrun(patched_dlrm, args, tmp_path, STATE_OUT=str(tmp_path / "ref"))
    save = [f"--save-model={tmp_path}/m.pt"]
    stopped = run_torchrun(patched_dlrm, args + save, tmp_path, check=False, STOP_AFTER_SAVE=f"0:{SAVE_AT}")
    assert stopped.returncode != 0 and (tmp_path / "m.pt.mlet.rank1").exists()
    res = run_torchrun(patched_dlrm, args + [f"--load-model={tmp_path}/m.pt.mlet"], tmp_path,
                       STATE_OUT=str(tmp_path / "res"))
    assert "Saved at: epoch = 0/2, batch = %d/16" % SAVE_AT in res.stdout
    expected = losses_after(ref.stdout, 0, SAVE_AT)
    assert len(expected) == 12
    resumed_part = res.stdout.split("Loading saved model")[-1]
    assert losses_after(resumed_part, -1, 0) == expected
    assert accuracies(resumed_part) == accuracies(ref.stdout)[-6:] and len(accuracies(ref.stdout)) == 8
    for rank in (0, 1):
        a = torch.load(tmp_path / f"ref.rank{rank}", weights_only=True)
        b = torch.load(tmp_path / f"res.rank{rank}", weights_only=True)
        assert list(a) == list(b)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (rank, key, (a[key] - b[key]).abs().max())


def interrupt_after_checkpoint(monkeypatch, epoch, it):
    """Let the run write its --mlet-checkpoint, then stop it right after the one at (epoch, it)."""
    from dlrm_mlet import dlrm_glue

    checkpoint = dlrm_glue.checkpoint

    def checkpoint_then_stop(model, args, state):
        checkpoint(model, args, state)
        if (state["k"], state["j"] + 1) == (epoch, it):
            raise Interrupted

    monkeypatch.setattr(dlrm_glue, "checkpoint", checkpoint_then_stop)


@pytest.mark.parametrize("flags", [
    [],  # a stock model: the option holds without MLET
    ["--mlet-hidden-dim=64"],
    ["--mlet-hidden-dim=64", "--optimizer=adagrad", "--mlet-table-lr-scale=2", "--mlet-proj-lr-scale=0.5"],
    ["--optimizer=rwsadagrad", "--mlet-table-lr-scale=4"],
], ids=["stock", "mlet", "mlet-adagrad-lr-scales", "stock-rwsadagrad-table-lr"])
def test_a_run_keeping_a_checkpoint_picks_it_up_when_started_again(patched_module, tmp_path, monkeypatch, capsys,
                                                                   flags):
    """The same command, run again after the job was stopped, continues from the last checkpoint (not
    from zero, nor from a test-time save) to the uninterrupted run's losses, metrics and weights."""
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "metrics.json"
    argv = BASE + flags + ["--nepochs=2", "--test-freq=8", "--print-freq=2", "--mlperf-logging",
                           f"--mlet-metrics-json={metrics}"]
    reference = train(patched_module, argv, capsys)
    metrics_ref = json.loads(metrics.read_text())
    keep = argv + [f"--mlet-checkpoint={tmp_path / 'run.pt'}", "--mlet-checkpoint-every=4"]
    with monkeypatch.context() as m:
        interrupt_after_checkpoint(m, 0, 12)
        with pytest.raises(Interrupted):
            train(patched_module, keep, capsys)
    capsys.readouterr()
    out, state = train(patched_module, keep, capsys)
    assert "MLET: resuming from" in out and "Saved at: epoch = 0/2, batch = 12/16" in out
    resumed_part = out.split("Loading saved model")[-1]
    assert losses_after(resumed_part, -1, 0) == losses_after(reference[0], 0, 12)
    assert json.loads(metrics.read_text()) == metrics_ref
    for key, value in reference[1].items():
        assert torch.allclose(state[key], value, atol=1e-6), (key, (state[key] - value).abs().max())


@pytest.mark.parametrize("keep", [False, True], ids=["load-model", "mlet-checkpoint"])
def test_a_finished_checkpoint_is_refused_in_one_line_saying_how_to_train_on(patched_module, tmp_path, monkeypatch,
                                                                            capsys, keep):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "m.pt"
    argv = BASE + ["--mlet-hidden-dim=64", "--nepochs=1", "--print-freq=4"]
    saved = [f"--mlet-checkpoint={path}"] if keep else [f"--save-model={path}"]
    train(patched_module, argv + saved, capsys)
    again = [f"--mlet-checkpoint={path}"] if keep else [f"--load-model={path}.mlet"]
    with pytest.raises(SystemExit) as stop:
        train(patched_module, argv + again, capsys)
    message = str(stop.value.code)
    assert "finished epoch 1 of 1 already: nothing is left to train; pass --nepochs=2" in message
    assert message.startswith(f"ERROR: {'--mlet-checkpoint' if keep else '--load-model'}=") and "\n" not in message
    out, _ = train(patched_module, argv[:-2] + ["--nepochs=2", "--print-freq=4"] + again, capsys)
    assert "MLET: resuming at epoch 2 of 2, batch 0 of 16" in out and "Finished training it 16/16 of epoch 1" in out


@pytest.mark.parametrize("flags", [[], ["--mlet-hidden-dim=64"]], ids=["stock", "mlet"])
def test_a_resumed_run_trains_without_a_second_copy_of_the_tables(patched_module, tmp_path, monkeypatch, capsys,
                                                                  flags):
    """DLRM keeps the dict it loaded (``ld_model``) until training ends: the tables it loaded must not stay
    alive beside the model's (at full Criteo-Kaggle size that copy was 8 GB)."""
    from dlrm_mlet import dlrm_glue

    monkeypatch.chdir(tmp_path)
    keep = BASE + flags + ["--nepochs=2", "--test-freq=8", "--print-freq=2",
                           f"--mlet-checkpoint={tmp_path / 'run.pt'}", "--mlet-checkpoint-every=4"]
    with monkeypatch.context() as m:
        interrupt_after_checkpoint(m, 0, 12)
        with pytest.raises(Interrupted):
            train(patched_module, keep, capsys)
    loaded_tables, alive_at_first_batch = [], []
    real_loaded, real_skip = dlrm_glue.loaded, dlrm_glue.skip_batch

    def loaded(ckpt, model, file):
        loaded_tables.extend(weakref.ref(t) for t in ckpt["state_dict"].values())
        return real_loaded(ckpt, model, file)

    def skip_batch(*args):
        if not alive_at_first_batch:
            gc.collect()
            alive_at_first_batch.append(sum(ref() is not None for ref in loaded_tables))
        return real_skip(*args)

    monkeypatch.setattr(dlrm_glue, "loaded", loaded)
    monkeypatch.setattr(dlrm_glue, "skip_batch", skip_batch)
    out, _ = train(patched_module, keep, capsys)
    assert "MLET: resuming from" in out and len(loaded_tables) >= len(ROWS)
    assert alive_at_first_batch == [0]
