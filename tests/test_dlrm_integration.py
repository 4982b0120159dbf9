"""The patch, the launcher and fold-on-save against the real facebookresearch/dlrm.

Every test here runs DLRM's own ``dlrm_s_pytorch.py`` (stock, patched, or
through ``dlrm-mlet run``) in a subprocess, as a user would. They skip, with a
message naming where a checkout is looked for, when none is present.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import import_script, run_dlrm  # noqa: F401 (fixtures come from conftest)
from dlrm_mlet.core.folding import mlet_prefixes

D = 16
ROWS = [1000, 2000, 500, 50]
BASE = [
    f"--arch-sparse-feature-size={D}",
    "--arch-mlp-bot=13-32-16",
    "--arch-mlp-top=32-1",
    "--arch-embedding-size=" + "-".join(map(str, ROWS)),
    "--data-size=2048",
    "--mini-batch-size=128",
    "--num-indices-per-lookup=3",
    "--loss-function=bce",
    "--round-targets=True",
    "--learning-rate=0.1",
    "--test-freq=16",
    "--print-freq=16",
    "--numpy-rand-seed=5",
]
MLET = ["--mlet-hidden-dim=64"]


def accuracies(stdout):
    """Every test accuracy DLRM printed, as printed (3 decimals)."""
    return re.findall(r"\baccuracy (\d+\.\d+) %", stdout)


def aucs(stdout):
    return re.findall(r"\bauc (\d+\.\d+),", stdout)


def train_losses(stdout):
    """Every training loss DLRM printed, as floats; ``nan`` and ``inf`` lines included."""
    return [float(x) for x in re.findall(r"Finished training it \d+/\d+ of epoch \d+, .*? loss (\S+)", stdout)]


def stock_net(dlrm, state_dict):
    """Stock ``DLRM_Net`` for BASE, with ``state_dict`` loaded strictly."""
    num_fea = len(ROWS) + 1
    ln_top = np.array([num_fea * (num_fea - 1) // 2 + D, 32, 1])
    net = dlrm.DLRM_Net(D, np.array(ROWS), np.array([13, 32, 16]), ln_top,
                        arch_interaction_op="dot", sigmoid_top=ln_top.size - 2, ndevices=-1)
    net.load_state_dict(state_dict, strict=True)
    return net


def random_batch(batch, seed=0):
    """A fixed batch of DLRM inputs for BASE: dense, per-table offsets, per-table indices."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, 13, generator=g)
    offsets = [torch.arange(batch) * 3 for _ in ROWS]
    indices = [torch.randint(0, n, (3 * batch,), generator=g) for n in ROWS]
    return dense, offsets, indices


def onnx_predict(session, dense, offsets, indices):
    """Run DLRM's exported graph; it names list inputs per table ("indices_3"), stacked ones without."""
    feeds = {"dense_x": dense.numpy(), "offsets": torch.stack(offsets).numpy(),
             "indices": torch.stack(indices).numpy()}
    for t in range(len(ROWS)):
        feeds[f"offsets_{t}"], feeds[f"indices_{t}"] = offsets[t].numpy(), indices[t].numpy()
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, {name: feeds[name] for name in names})
    return got


@pytest.fixture(scope="module")
def mlet_run(patched_dlrm, tmp_path_factory):
    """One MLET training run with --save-model, shared by the load tests."""
    cwd = tmp_path_factory.mktemp("mlet_run")
    path = str(cwd / "model.pt")
    proc = run_dlrm(patched_dlrm, BASE + MLET + [f"--save-model={path}"], cwd)
    return path, proc.stdout, cwd


def test_patch_applies_with_git_apply_to_a_fresh_checkout(dlrm_dir, tmp_path):
    from dlrm_mlet.dlrm.patching import patch_path

    dest = tmp_path / "dlrm"
    shutil.copytree(dlrm_dir, dest)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "apply", "--check", patch_path()], cwd=dest, check=True)
    subprocess.run(["git", "apply", patch_path()], cwd=dest, check=True)
    assert "dlrm_mlet.dlrm_glue" in (dest / "dlrm_s_pytorch.py").read_text()


def test_patch_command_applies_detects_and_reverses(dlrm_dir, tmp_path):
    dest = tmp_path / "dlrm"
    shutil.copytree(dlrm_dir, dest)
    pristine = (dest / "dlrm_s_pytorch.py").read_bytes()
    cli = [sys.executable, "-m", "dlrm_mlet", "patch", str(dest)]
    out = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "applied to" in out
    out = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert "already applied" in out
    subprocess.run(cli + ["--reverse"], capture_output=True, text=True, check=True)
    assert (dest / "dlrm_s_pytorch.py").read_bytes() == pristine


def test_patch_refuses_another_commit_and_changes_nothing(dlrm_dir, tmp_path):
    dest = tmp_path / "dlrm"
    shutil.copytree(dlrm_dir, dest)
    script = dest / "dlrm_s_pytorch.py"
    script.write_text(script.read_text().replace("import json\n", "import json  # local edit\n"))
    before = script.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "dlrm_mlet", "patch", str(dest)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "090956ee2319ddd349a42232958aefccfe3f7b0a" in proc.stderr and "nothing was changed" in proc.stderr
    assert script.read_bytes() == before


def test_patched_dlrm_without_dlrm_mlet_names_the_install_command(patched_dlrm, tmp_path):
    # Hide dlrm_mlet as if it were not installed, then run the script as __main__.
    code = (
        "import runpy, sys; sys.modules['dlrm_mlet'] = None; "
        f"sys.path.insert(0, {patched_dlrm!r}); sys.argv = ['dlrm_s_pytorch.py']; "
        f"runpy.run_path({os.path.join(patched_dlrm, 'dlrm_s_pytorch.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR: this DLRM is patched for MLET, but {sys.executable} cannot import dlrm_mlet")
    assert last.endswith("install dlrm-mlet into it (from the dlrm-mlet folder: pip install .)")


def test_mlet_off_is_byte_for_byte_stock(stock_dlrm, patched_dlrm, tmp_path):
    args = BASE + ["--weighted-pooling=learned"]
    (tmp_path / "stock").mkdir()
    stock = run_dlrm(stock_dlrm, args + [f"--save-model={tmp_path}/stock/m.pt"], tmp_path / "stock")
    for name, off in (("absent", []), ("zero", ["--mlet-hidden-dim=0"])):
        (tmp_path / name).mkdir()
        ours = run_dlrm(patched_dlrm, args + off + [f"--save-model={tmp_path}/{name}/m.pt"], tmp_path / name)
        assert ours.stdout.replace(f"/{name}/", "/stock/") == stock.stdout
        assert (tmp_path / name / "m.pt").read_bytes() == (tmp_path / "stock" / "m.pt").read_bytes()
        assert not (tmp_path / name / "m.pt.mlet").exists()


def test_mlet_saves_a_stock_checkpoint_with_stock_keys_and_plain_numbers(mlet_run, stock_dlrm, tmp_path):
    path, stdout, _ = mlet_run
    assert "MLET: 4 of 4 tables trained as n x 64 -> 16" in stdout
    folded = torch.load(path, weights_only=True)  # what stock DLRM does on torch >= 2.6
    training = torch.load(path + ".mlet", weights_only=True)
    stock_path = tmp_path / "stock.pt"
    run_dlrm(stock_dlrm, BASE + [f"--save-model={stock_path}"], tmp_path)
    stock = torch.load(stock_path, weights_only=False)
    assert list(folded) == list(stock)
    assert {k: tuple(v.shape) for k, v in folded["state_dict"].items()} == {
        k: tuple(v.shape) for k, v in stock["state_dict"].items()
    }
    for key in ("train_loss", "test_acc", "total_loss"):
        assert type(folded[key]) in (float, int), key
    assert len(mlet_prefixes(training["state_dict"])) == 4
    assert training["mlet"]["hidden_dim"] == 64
    # The folded tables are the MLET products.
    for i in range(4):
        table = training["state_dict"][f"emb_l.{i}.table.weight"]
        proj = training["state_dict"][f"emb_l.{i}.proj.weight"]
        assert torch.allclose(folded["state_dict"][f"emb_l.{i}.weight"], table @ proj.t(), atol=1e-6)


def test_unpatched_dlrm_loads_the_folded_file_and_prints_the_same_accuracy(mlet_run, stock_dlrm, tmp_path):
    path, stdout, _ = mlet_run
    saved_at = accuracies(stdout.split("Saving model")[-2])[-1]  # accuracy printed before the last save
    proc = run_dlrm(stock_dlrm, BASE + [f"--load-model={path}", "--inference-only"], tmp_path)
    assert accuracies(proc.stdout)[-1] == saved_at


def test_same_accuracy_and_auc_with_mlperf_logging_on_the_kaggle_data_path(
    patched_dlrm, stock_dlrm, criteo_sample, tmp_path
):
    data = tmp_path / "kaggle"
    data.mkdir()
    shutil.copy(criteo_sample, data / "train.txt")  # DLRM preprocesses next to the raw file
    args = [
        f"--arch-sparse-feature-size={D}", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1",
        "--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={data}/train.txt",
        f"--processed-data-file={data}/kaggleAdDisplayChallenge_processed.npz",
        "--loss-function=bce", "--round-targets=True",
        "--learning-rate=0.1", "--mini-batch-size=128", "--test-freq=67", "--print-freq=67",
        "--mlperf-logging",
    ]
    model = tmp_path / "kaggle.pt"
    # No --max-ind-range: our preprocessing works on numpy 2 where stock DLRM's fails (#394).
    trained = run_dlrm(patched_dlrm, args + MLET + [f"--save-model={model}"], tmp_path)
    assert "Preprocessing" in trained.stdout
    loaded = run_dlrm(stock_dlrm, args + [f"--load-model={model}", "--inference-only"], tmp_path)
    assert aucs(loaded.stdout)[-1] == aucs(trained.stdout)[-1]
    assert accuracies(loaded.stdout)[-1] == accuracies(trained.stdout)[-1]


def test_stock_dlrm_cannot_preprocess_criteo_on_numpy_2(stock_dlrm, criteo_sample, tmp_path):
    """Upstream issue #394, the reason the patch brings its own preprocessing."""
    shutil.copy(criteo_sample, tmp_path / "train.txt")
    proc = run_dlrm(stock_dlrm, ["--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={tmp_path}/train.txt",
                                 f"--processed-data-file={tmp_path}/kaggleAdDisplayChallenge_processed.npz",
                                 "--arch-mlp-bot=13-16", "--arch-sparse-feature-size=16"],
                    tmp_path, check=False)
    assert proc.returncode != 0 and "OverflowError" in proc.stderr


@pytest.fixture
def avazu_sample():
    from conftest import SHARED_DATA

    path = os.path.join(SHARED_DATA, "avazu", "train")
    if not os.path.isfile(path):
        pytest.skip(f"real Avazu sample not found at {path}")
    return path


@pytest.mark.parametrize("launcher", [False, True], ids=["patched", "launcher"])
def test_mlet_trains_on_the_real_avazu_sample(patched_dlrm, stock_dlrm, avazu_sample, tmp_path, launcher):
    shutil.copy(avazu_sample, tmp_path / "train.csv")
    args = [f"--arch-sparse-feature-size={D}", "--arch-mlp-bot=1-32-16", "--arch-mlp-top=32-1",
            "--data-generation=dataset", "--data-set=avazu", f"--raw-data-file={tmp_path}/train.csv",
            "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1",
            "--mini-batch-size=128", "--test-freq=57", "--print-freq=57", "--mlperf-logging",
            f"--mlet-metrics-json={tmp_path}/metrics.json", f"--save-model={tmp_path}/avazu.pt"]
    proc = run_dlrm(stock_dlrm if launcher else patched_dlrm, args + MLET, tmp_path, launcher=launcher)
    assert "Preprocessing" in proc.stdout and "Finished training it 57/57" in proc.stdout
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert metrics["samples"] == 899 and 0.5 < metrics["auc"] < 1  # the test tenth of 8,999 rows
    assert metrics["validation"]["samples"] == 900 and metrics["validation"]["auc"] != metrics["auc"]
    assert sum(b["samples"] for b in metrics["buckets"]["test"]) == 899
    state = torch.load(tmp_path / "avazu.pt", weights_only=True)["state_dict"]
    assert sum(k.startswith("emb_l.") for k in state) == 21 and state["bot_l.0.weight"].shape == (32, 1)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rwsadagrad", "sgd --mlet-table-dtype=fp16",
                                       "adagrad --mlet-table-dtype=bf16", "rwsadagrad --mlet-table-dtype=fp16"])
def test_stock_dlrm_resumes_training_from_the_folded_file(patched_dlrm, stock_dlrm, tmp_path, optimizer):
    """Every optimizer and table dtype: the folded file is a float32 stock checkpoint that stock DLRM trains on."""
    path = tmp_path / "m.pt"
    optimizer, *dtype = optimizer.split()
    opt = [f"--optimizer={optimizer}"]
    run_dlrm(patched_dlrm, BASE + MLET + opt + dtype + [f"--save-model={path}"], tmp_path)
    folded = torch.load(path, weights_only=True)
    assert {v.dtype for v in folded["state_dict"].values()} == {torch.float32}
    if dtype:
        training = torch.load(f"{path}.mlet", weights_only=True)["state_dict"]
        half = {torch.float16 if dtype[0].endswith("fp16") else torch.bfloat16}
        assert {v.dtype for k, v in training.items() if k.endswith("table.weight")} == half
    # More batches than were saved, so the resumed run really takes optimizer steps.
    proc = run_dlrm(stock_dlrm, BASE + opt + [f"--load-model={path}", "--data-size=4096"], tmp_path)
    assert "Finished training it 32/32" in proc.stdout
    resumed = train_losses(proc.stdout.split("Loading saved model")[-1])
    assert resumed and np.isfinite(resumed).all(), resumed


def final_tables(module):
    """The folded tables of the model a finished in-process run() left behind."""
    from dlrm_mlet.core.bag import MLETEmbeddingBag

    return [t.fold().weight.detach() if isinstance(t, MLETEmbeddingBag) else t.weight.detach()
            for t in module.dlrm.emb_l]


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rwsadagrad --mlet-table-dtype=fp16"])
def test_grouped_tables_train_like_one_module_per_table(patched_module, tmp_path, monkeypatch, capsys,
                                                        optimizer):
    """The speed path (one autograd node for all MLET tables) changes no result."""
    from dlrm_mlet.dlrm import tables as dlrm_tables

    monkeypatch.chdir(tmp_path)
    optimizer, *dtype = optimizer.split()
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + MLET + dtype + [f"--optimizer={optimizer}", "--nepochs=2",
                                                               "--print-freq=4", "--mlet-min-rows=100"]
    patched_module.run()
    grouped = final_tables(patched_module)
    grouped_losses = re.findall(r"loss (\d+\.\d+)", capsys.readouterr().out)
    with monkeypatch.context() as m:
        m.setattr(dlrm_tables, "grouped_forward", lambda tables, indices, offsets, weights: [
            t(i, o, per_sample_weights=w) for t, i, o, w in zip(tables, indices, offsets, weights)])
        patched_module.run()
    modules_losses = re.findall(r"loss (\d+\.\d+)", capsys.readouterr().out)
    assert len(grouped_losses) == 8 and grouped_losses == modules_losses
    # Adagrad's rule at the step sums a step's repeated rows in another order than a sparse gradient's
    # coalesce: float32 rounding, grown by 32 normalised steps (in float64 the two agree to 1e-16:
    # test_adaptive.py's twin runs).
    tolerance = 1e-4 if optimizer == "adagrad" else 1e-5
    for a, b in zip(grouped, final_tables(patched_module)):
        assert torch.allclose(a, b, atol=tolerance), (a - b).abs().max()


@pytest.mark.parametrize("flag", [None, "--mlet-fused-update", "--mlet-fused-update=fbgemm"])
def test_fused_update_trains_like_sparse_gradients(patched_module, tmp_path, monkeypatch, capsys, flag):
    """The default (SGD applied at the step), --mlet-fused-update[=fbgemm]: the same loss curve and tables
    as sparse gradients (--mlet-fused-update=off), with DLRM's lr schedule."""
    from dlrm_mlet.engine import fused, tbe
    from dlrm_mlet.core.bag import MLETEmbeddingBag

    if flag and flag.endswith("fbgemm") and tbe.available():
        pytest.skip(tbe.available())
    monkeypatch.chdir(tmp_path)
    argv = ["dlrm_s_pytorch.py"] + BASE + MLET + ["--nepochs=2", "--print-freq=4", "--lr-num-warmup-steps=8",
                                                   "--lr-decay-start-step=16", "--lr-num-decay-steps=8"]
    sys.argv = argv + ["--mlet-fused-update=off"]
    patched_module.run()
    assert {t.update.backend for t in patched_module.dlrm.emb_l} == {None}
    default = final_tables(patched_module)
    default_losses = re.findall(r"loss (\d+\.\d+)", capsys.readouterr().out)
    sys.argv = argv + ([flag] if flag else [])
    patched_module.run()
    assert {t.update.backend for t in patched_module.dlrm.emb_l if isinstance(t, MLETEmbeddingBag)} == {
        "fbgemm" if flag and flag.endswith("fbgemm") else "torch"}
    fused_losses = re.findall(r"loss (\d+\.\d+)", capsys.readouterr().out)
    assert len(default_losses) == 8 and fused_losses == default_losses
    for a, b in zip(default, final_tables(patched_module)):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "sgd --mlet-fused-update=fbgemm",
                                       "sgd --mlet-table-dtype=fp16", "adagrad --mlet-table-dtype=fp16",
                                       "rwsadagrad --mlet-table-dtype=bf16"])
def test_resuming_from_dot_mlet_gives_the_uninterrupted_result(patched_module, tmp_path, monkeypatch,
                                                               capsys, optimizer):
    """Two epochs in one go == one epoch, saved, then resumed for the second.

    Tests run once per epoch (at its end), so the data seen is the same in both
    and only the restored weights and optimizer state can make them agree.
    With fbgemm the restored rows must land in its buffer, not beside it.
    """
    from dlrm_mlet.engine import tbe

    optimizer, *extra = optimizer.split()
    if "--mlet-fused-update=fbgemm" in extra and tbe.available():
        pytest.skip(tbe.available())
    monkeypatch.chdir(tmp_path)
    args = BASE + MLET + extra + [f"--optimizer={optimizer}", "--nepochs=2"]
    sys.argv = ["dlrm_s_pytorch.py"] + args
    patched_module.run()
    uninterrupted = final_tables(patched_module)
    path = tmp_path / "m.pt"
    sys.argv = ["dlrm_s_pytorch.py"] + args[:-1] + ["--nepochs=1", f"--save-model={path}"]
    patched_module.run()
    sys.argv = ["dlrm_s_pytorch.py"] + args + [f"--load-model={path}.mlet"]
    patched_module.run()
    out = capsys.readouterr().out
    assert "Saved at: epoch = 1/1, batch = 0/16" in out  # end of epoch 0 = start of epoch 1
    assert out.split("Loading saved model")[-1].count("Finished training it 16/16 of epoch 1") == 1
    for a, b in zip(uninterrupted, final_tables(patched_module)):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_resuming_mlet_training_from_the_folded_file_is_refused(mlet_run, patched_dlrm, tmp_path):
    path, _, _ = mlet_run
    proc = run_dlrm(patched_dlrm, BASE + MLET + [f"--load-model={path}"], tmp_path, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: --load-model=") and f"load {path}.mlet instead" in last


def test_inference_only_with_mlet_folds_the_mlet_checkpoint_on_load(mlet_run, patched_dlrm, tmp_path):
    path, stdout, _ = mlet_run
    saved_at = accuracies(stdout.split("Saving model")[-2])[-1]
    proc = run_dlrm(
        patched_dlrm, BASE + MLET + [f"--load-model={path}.mlet", "--inference-only"], tmp_path
    )
    assert "folding the MLET checkpoint" in proc.stdout
    assert accuracies(proc.stdout)[-1] == saved_at


# Measured on the mlet_run model (numpy seed 5; seeds 1 and 2 in brackets), against the
# unquantized folded model: accuracy on DLRM's 2,048 test samples moved by 0.049 points
# (one sample) at 8 and at 4 bits [8 bits: 0.000, 0.049; 4 bits: 0.098, 0.391]; on a
# 2,048-sample batch the largest prediction change was 1.2e-4 at 8 bits [4.3e-4, 6.2e-4]
# and 1.8e-3 at 4 bits [1.0e-2, 9.9e-3], while zeroing every table moves it by 2.9e-2.
# The data's labels are coin flips (accuracy ~50 %), so accuracy is a coarse check; the
# prediction bound is the one that tells a working quantization from a broken one.
QUANTIZED_ACCURACY_POINTS = {8: 0.1, 4: 0.5}
QUANTIZED_MAX_PREDICTION_CHANGE = {8: 5e-4, 4: 5e-3}


@pytest.mark.parametrize("bits", [8, 4])
def test_stock_dlrm_quantizes_the_folded_model(mlet_run, stock_dlrm, tmp_path, bits):
    path, stdout, _ = mlet_run
    unquantized = float(accuracies(stdout.split("Saving model")[-2])[-1])
    proc = run_dlrm(
        stock_dlrm,
        BASE + [f"--load-model={path}", "--inference-only", f"--quantize-emb-with-bit={bits}"],
        tmp_path,
    )
    assert "quantized emb sizes" in proc.stdout  # DLRM's quantized lookups really ran
    quantized = float(accuracies(proc.stdout)[-1])
    assert abs(quantized - unquantized) <= QUANTIZED_ACCURACY_POINTS[bits], (quantized, unquantized)

    # The same quantization in process, prediction by prediction.
    dlrm = import_script(stock_dlrm, "stock_dlrm_s_pytorch")
    state = torch.load(path, weights_only=True)["state_dict"]
    net, qnet = stock_net(dlrm, state), stock_net(dlrm, state)
    qnet.quantize_embedding(bits)
    assert qnet.quantize_emb and qnet.emb_l is None
    batch = random_batch(2048)
    with torch.no_grad():
        change = float((qnet(*batch) - net(*batch)).abs().max())
    assert 0 < change <= QUANTIZED_MAX_PREDICTION_CHANGE[bits], change


@pytest.mark.parametrize("pooling", ["learned", "fixed"])
def test_weighted_pooling_with_mlet_tables(patched_dlrm, stock_dlrm, tmp_path, pooling):
    path = tmp_path / "m.pt"
    args = BASE + [f"--weighted-pooling={pooling}"]
    trained = run_dlrm(patched_dlrm, args + MLET + [f"--save-model={path}"], tmp_path)
    saved_at = accuracies(trained.stdout.split("Saving model")[-2])[-1]
    loaded = run_dlrm(stock_dlrm, args + [f"--load-model={path}", "--inference-only"], tmp_path)
    assert accuracies(loaded.stdout)[-1] == saved_at
    if pooling == "learned":
        assert "v_W_l.0" in torch.load(path, weights_only=True)["state_dict"]


def test_stock_dlrm_exports_the_folded_model_to_onnx_matching_pytorch(mlet_run, stock_dlrm, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path, _, _ = mlet_run
    # Resuming at the end of the data trains nothing, so this exports the loaded model itself.
    run_dlrm(stock_dlrm, BASE + [f"--load-model={path}", "--save-onnx"], tmp_path)
    session = ort.InferenceSession(str(tmp_path / "dlrm_s_pytorch.onnx"))

    dlrm = import_script(stock_dlrm, "stock_dlrm_s_pytorch")
    net = stock_net(dlrm, torch.load(path, weights_only=True)["state_dict"])
    batch = random_batch(64)
    with torch.no_grad():
        expected = net(*batch).numpy()
    got = onnx_predict(session, *batch)
    assert np.abs(got - expected).max() <= 1e-5


def test_onnx_serving_scores_what_dlrm_scores_in_fp32_and_close_to_dlrms_int8(patched_dlrm, tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.pt"  # DLRM's --mlperf-logging loads only what it saved
    run_dlrm(patched_dlrm, BASE + MLET + ["--mlperf-logging", f"--save-model={path}"], tmp_path)
    scored = {}
    for name, flags in (("dlrm", []), ("onnx", ["--mlet-onnx-serving=fp32"]),
                        ("dlrm8", ["--quantize-emb-with-bit=8"]), ("onnx8", ["--mlet-onnx-serving=int8"])):
        metrics = tmp_path / f"{name}.json"
        proc = run_dlrm(patched_dlrm, BASE + [f"--load-model={path}", "--inference-only", "--mlperf-logging",
                                              f"--mlet-metrics-json={metrics}"] + flags, tmp_path)
        assert ("ONNX Runtime serves" in proc.stdout) == name.startswith("onnx")
        scored[name] = json.loads(metrics.read_text())
    assert scored["onnx"]["auc"] == pytest.approx(scored["dlrm"]["auc"], abs=1e-5)  # float sums in another order
    assert scored["onnx"]["log_loss"] == pytest.approx(scored["dlrm"]["log_loss"], abs=1e-6)
    assert scored["onnx8"]["log_loss"] != scored["onnx"]["log_loss"]  # really quantized
    # Tables as DLRM's int8, and the MLPs int8 too: close to DLRM's int8 (tables only)
    assert scored["onnx8"]["log_loss"] == pytest.approx(scored["dlrm8"]["log_loss"], abs=2e-3)
    assert scored["onnx8"]["auc"] == pytest.approx(scored["dlrm8"]["auc"], abs=0.01)


def test_mlet_training_with_save_onnx_exports_a_folded_graph(patched_dlrm, stock_dlrm, tmp_path):
    from dlrm_mlet.core.bag import MLETEmbeddingBag

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "m.pt"
    # One test, at the last batch: the saved files hold the model the export saw.
    proc = run_dlrm(patched_dlrm, BASE + MLET + ["--save-onnx", f"--save-model={path}"], tmp_path)
    assert proc.stdout.count("Saving model") == 1 and "Testing at - 16/16 of epoch 0" in proc.stdout
    graph = onnx.load(str(tmp_path / "dlrm_s_pytorch.onnx")).graph
    shapes = {tuple(t.dims) for t in graph.initializer}
    assert all((n, D) in shapes for n in ROWS)
    assert not any(64 in s for s in shapes)

    dlrm = import_script(stock_dlrm, "stock_dlrm_s_pytorch")
    folded = stock_net(dlrm, torch.load(path, weights_only=True)["state_dict"])
    # The two-layer model as it trained: stock DLRM_Net with MLET tables, from the .mlet file.
    mlet = stock_net(dlrm, torch.load(path, weights_only=True)["state_dict"])
    mlet.emb_l = torch.nn.ModuleList(MLETEmbeddingBag(n, D, 64, _init=False) for n in ROWS)
    mlet.load_state_dict(torch.load(f"{path}.mlet", weights_only=True)["state_dict"], strict=True)
    batch = random_batch(64)
    with torch.no_grad():
        from_folded, from_mlet = folded(*batch).numpy(), mlet(*batch).numpy()
    got = onnx_predict(ort.InferenceSession(str(tmp_path / "dlrm_s_pytorch.onnx")), *batch)
    assert got.shape == (64, 1) and np.abs(from_folded - 0.5).max() > 1e-3  # not a constant model
    assert np.abs(got - from_folded).max() <= 1e-5
    assert np.abs(got - from_mlet).max() <= 1e-5


def test_launcher_on_an_unmodified_checkout_equals_the_patch(stock_dlrm, patched_dlrm, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    args = BASE + MLET + ["--weighted-pooling=learned", "--mlet-min-rows=100"]
    patched = run_dlrm(patched_dlrm, args + [f"--save-model={tmp_path}/p/m.pt"], tmp_path / "p")
    launched = run_dlrm(stock_dlrm, args + [f"--save-model={tmp_path}/l/m.pt"], tmp_path / "l", launcher=True)
    assert "MLET: 3 of 4 tables" in launched.stdout
    assert launched.stdout.replace("/l/", "/p/") == patched.stdout
    for name in ("m.pt", "m.pt.mlet"):
        assert (tmp_path / "l" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()
    # The user's checkout is untouched.
    assert "dlrm_mlet" not in open(os.path.join(stock_dlrm, "dlrm_s_pytorch.py")).read()


def test_resuming_through_dlrm_mlet_run_is_resuming_through_the_patched_checkout(stock_dlrm, patched_dlrm,
                                                                                tmp_path):
    """One way into DLRM: a run saved, then resumed for a second epoch, through ``dlrm-mlet run`` on an
    unmodified checkout prints and saves what the same through the patched checkout does."""
    outputs = {}
    for name, dlrm, launcher in (("p", patched_dlrm, False), ("l", stock_dlrm, True)):
        (tmp_path / name).mkdir()
        save = [f"--save-model={tmp_path}/{name}/m.pt"]
        run_dlrm(dlrm, BASE + MLET + ["--nepochs=1"] + save, tmp_path / name, launcher=launcher)
        outputs[name] = run_dlrm(dlrm, BASE + MLET + ["--nepochs=2", f"--load-model={tmp_path}/{name}/m.pt.mlet"]
                                 + save, tmp_path / name, launcher=launcher).stdout
    assert "MLET: resuming at epoch 2 of 2, batch 0 of 16" in outputs["l"]
    assert outputs["l"].replace("/l/", "/p/") == outputs["p"]
    for file in ("m.pt", "m.pt.mlet"):
        assert (tmp_path / "l" / file).read_bytes() == (tmp_path / "p" / file).read_bytes()


def test_launcher_on_a_patched_checkout_does_not_hook_twice(patched_dlrm, tmp_path):
    proc = run_dlrm(patched_dlrm, BASE + MLET, tmp_path, launcher=True)
    assert proc.stdout.count("MLET: 4 of 4 tables") == 1


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--mlet-hidden-dim=-1"], "--mlet-hidden-dim: expected an integer >= 0 or a dash-separated list of them, got '-1'"),
        (["--mlet-hidden-dim=abc"], "--mlet-hidden-dim: expected an integer >= 0 or a dash-separated list"),
        (["--mlet-hidden-dim=64-8"], "--mlet-hidden-dim=8 is below --arch-sparse-feature-size=16"),
        (["--mlet-hidden-dim=8"], "--mlet-hidden-dim=8 is below --arch-sparse-feature-size=16"),
        (MLET + ["--qr-flag", "--mlet-memory-budget=1GiB"], "--mlet-memory-budget plans plain tables' K; it "
         "cannot be combined with --qr-flag"),
        (MLET + ["--md-flag", "--mlet-fused-update=fbgemm"], "--mlet-fused-update=fbgemm trains plain tables only; "
         "drop it with --md-flag"),
        (MLET + ["--quantize-emb-with-bit=8"], "--quantize-emb-with-bit quantizes tables for inference"),
        (MLET + ["--mlet-min-rows=x"], "--mlet-min-rows: expected an integer >= 0"),
        (MLET + ["--mlet-proj-init=uniform"], "--mlet-proj-init: unknown projection init 'uniform'"),
        (["--mlet-min-rows=10"], "--mlet-min-rows has no effect without --mlet-hidden-dim"),
        (["--mlet-fused-update"], "--mlet-fused-update has no effect without --mlet-hidden-dim"),
        (MLET + ["--mlet-fused-update=fbgemm", "--optimizer=adagrad"],
         "--mlet-fused-update=fbgemm applies plain SGD steps; it cannot be combined with --optimizer=adagrad"),
        (MLET + ["--mlet-fused-update=cuda"], "--mlet-fused-update: expected no value, off or fbgemm, got 'cuda'"),
        (MLET + ["--mlet-fused-update=fbgemm", "--use-gpu"], "--mlet-fused-update=fbgemm runs fbgemm's CPU kernels"),
        (MLET + ["--mlet-table-dtype=fp8"], "--mlet-table-dtype: expected one of fp32, fp16, bf16, got 'fp8'"),
        (["--mlet-table-dtype=fp16"], "--mlet-table-dtype has no effect without --mlet-hidden-dim"),
        (MLET + ["--mlet-table-dtype=bf16", "--mlet-fused-update=fbgemm"],
         "--mlet-fused-update=fbgemm trains fp32 tables; drop it with --mlet-table-dtype=bf16"),
        (MLET + ["--mlet-memory-budget=lots"], "--mlet-memory-budget: expected a size such as 24GiB or 500MB, got 'lots'"),
        (["--mlet-memory-budget=1GiB"], "--mlet-memory-budget has no effect without --mlet-hidden-dim"),
        (["--mlet-hidden-dim=64-0-128-64", "--mlet-memory-budget=1GiB"],
         "--mlet-memory-budget picks the K per table; give one --mlet-hidden-dim K as its cap, not a list"),
        (MLET + ["--mlet-budget-rule=rare"], "--mlet-budget-rule has no effect without --mlet-memory-budget"),
        (["--mlet-onnx-serving=int8"], "--mlet-onnx-serving scores a saved model: give it with --inference-only "
         "--load-model=PATH"),
        (["--mlet-onnx-serving=int4", "--inference-only"], "--mlet-onnx-serving: expected fp32 or int8, got 'int4'"),
        (["--mlet-onnx-serving=int8", "--inference-only", "--load-model=m.pt", "--quantize-emb-with-bit=8"],
         "drop --quantize-emb-with-bit"),
        (MLET + ["--mlet-memory-budget=1GiB", "--mlet-budget-rule=most"],
         "--mlet-budget-rule: expected one of uniform, rare, got 'most'"),
    ],
)
def test_bad_options_are_refused_before_any_work(patched_module, capsys, flags, message):
    """In-process through DLRM's real run(): its parser, then our check, then nothing."""
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + flags
    with pytest.raises(SystemExit) as stop:
        patched_module.run()
    assert stop.value.code == f"ERROR: {stop.value.code[7:]}" and "\n" not in stop.value.code
    assert message in stop.value.code
    assert "Using CPU" not in capsys.readouterr().out  # stopped before DLRM set anything up


@pytest.mark.parametrize("launcher", [False, True], ids=["patched", "launcher"])
def test_a_bad_option_is_one_line_on_stderr(patched_dlrm, stock_dlrm, tmp_path, launcher):
    dlrm = stock_dlrm if launcher else patched_dlrm
    proc = run_dlrm(dlrm, BASE + ["--mlet-hidden-dim=-1"], tmp_path, launcher=launcher, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "ERROR: --mlet-hidden-dim: expected an integer >= 0 or a dash-separated list of them, got '-1'"]
    assert "Using CPU" not in proc.stdout


def training_bytes(ckpt):
    """What the saved run held for its tables: weights in their dtype and the optimizer's state of them."""
    state = ckpt["state_dict"]
    names = [name for group in ckpt["mlet"]["param_groups"] for name in group]
    tables = {i for i, name in enumerate(names) if name.startswith("emb_l.")}
    weights = sum(v.numel() * v.element_size() for k, v in state.items() if k.startswith("emb_l."))
    optimizer = sum(v.numel() * v.element_size() for i, s in ckpt["opt_state_dict"]["state"].items() if i in tables
                    for k, v in s.items() if torch.is_tensor(v) and v.dim() > 0)
    return weights + optimizer


@pytest.mark.parametrize("flags", [["--optimizer=rwsadagrad", "--mlet-table-dtype=fp16"],
                                   ["--optimizer=adagrad", "--mlet-budget-rule=rare"]])
def test_a_memory_budget_plans_a_k_per_table_that_fits(patched_module, tmp_path, monkeypatch, capsys, flags):
    """The plan is printed, the tables are built as planned, and what training held fits the budget."""
    monkeypatch.chdir(tmp_path)
    budget = 3 * 2**20
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + flags + [
        "--mlet-hidden-dim=256", f"--mlet-memory-budget={budget}", f"--save-model={tmp_path}/m.pt"]
    patched_module.run()
    out = capsys.readouterr().out
    planned = re.search(r"--mlet-hidden-dim=([\d-]+)", out).group(1)
    ks = [int(k) for k in planned.split("-")] if "-" in planned else [int(planned)] * len(ROWS)
    assert "MLET: --mlet-memory-budget plan" in out and "of 3 MiB budget" in out
    ckpt = torch.load(tmp_path / "m.pt.mlet", weights_only=True)
    for i, (n, k) in enumerate(zip(ROWS, ks)):
        key = f"emb_l.{i}.table.weight" if k else f"emb_l.{i}.weight"
        assert ckpt["state_dict"][key].shape == (n, k or D)
    assert max(ks) <= 256 and all(k == 0 or k >= D for k in ks) and any(ks)
    used = training_bytes(ckpt)
    assert 0.5 * budget < used <= budget, (used, budget, ks)
    if "--mlet-budget-rule=rare" in flags:  # random data: the largest table is served first
        assert ks[ROWS.index(max(ROWS))] == max(ks)


def test_a_budget_too_small_for_any_mlet_table_is_one_line(patched_dlrm, tmp_path):
    plain = sum(ROWS) * D * 4
    proc = run_dlrm(patched_dlrm, BASE + ["--mlet-hidden-dim=64", f"--mlet-memory-budget={plain + 1000}"],
                    tmp_path, check=False)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert re.fullmatch(r"ERROR: --mlet-memory-budget 222.85 KiB fits no uniform k: the tables take 221.88 KiB "
                        r"plain, and k=16 on all 4 MLET tables needs 4 KiB more \(the rare rule .*\)", line), line


def test_one_k_per_table(patched_module, tmp_path, monkeypatch, capsys):
    """A dash-separated K list: a width per table, 0 keeps a table plain; the fold is still stock."""
    monkeypatch.chdir(tmp_path)
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + ["--mlet-hidden-dim=64-0-128-64", f"--save-model={tmp_path}/m.pt"]
    patched_module.run()
    assert "MLET: 3 of 4 tables trained as n x 64-128 -> 16" in capsys.readouterr().out
    training = torch.load(tmp_path / "m.pt.mlet", weights_only=True)
    assert training["state_dict"]["emb_l.2.table.weight"].shape == (500, 128)
    assert training["state_dict"]["emb_l.1.weight"].shape == (2000, 16)
    folded = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert [folded[f"emb_l.{i}.weight"].shape for i in range(4)] == [(n, D) for n in ROWS]
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + ["--mlet-hidden-dim=64-64"]
    with pytest.raises(SystemExit) as stop:
        patched_module.run()
    assert stop.value.code == "ERROR: --mlet-hidden-dim lists 2 values for 4 tables"


def test_narrow_hidden_dim_with_explicit_opt_in(patched_dlrm, tmp_path):
    proc = run_dlrm(patched_dlrm, BASE + ["--mlet-hidden-dim=8", "--mlet-allow-narrow"], tmp_path)
    assert "trained as n x 8 -> 16" in proc.stdout


def test_dlrm_mlet_run_refuses_a_script_that_is_not_the_pinned_commit(stock_dlrm, tmp_path, capsys):
    from dlrm_mlet.cli import main

    other = tmp_path / "dlrm"
    shutil.copytree(stock_dlrm, other)
    with open(other / "dlrm_s_pytorch.py", "a") as handle:
        handle.write("# a local change\n")
    assert main(["run", str(other / "dlrm_s_pytorch.py"), "--nepochs=1"]) == 2
    err = capsys.readouterr().err
    assert "dlrm_s_pytorch.py differs from DLRM commit 090956ee" in err and err.count("\n") == 1


def test_dlrm_mlet_run_takes_the_checkout_folder_too(stock_dlrm, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dlrm_mlet", "run", stock_dlrm] + BASE + MLET, cwd=tmp_path,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MLET: 4 of 4 tables" in proc.stdout
