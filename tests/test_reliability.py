"""Nothing lost, nothing executed, every bad input answered.

Kills a saving DLRM with SIGKILL, fills and write-protects real file systems,
feeds code-running pickles and damaged files to every loader, and fuzzes the
row parsers and the fold.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_dlrm
from dlrm_mlet import MLETEmbeddingBag, MLETError
from dlrm_mlet.checkpoint_io import atomic_save, load_checkpoint
from dlrm_mlet.cli import main
from dlrm_mlet.data.avazu import AVAZU_COLUMNS, preprocess_avazu
from dlrm_mlet.data.criteo_text import parse_criteo_line
from dlrm_mlet.tools.verify import random_bags
from test_checkpoint import RunsCode, dlrm_ckpt, train
from test_dlrm_integration import BASE, MLET
from test_folding import TinyDLRM

# --------------------------------------------------------------------------- SIGKILL while saving

# Installed in the DLRM process through PYTHONPATH: from the SLOW_SAVE_FROM-th
# torch.save on, the file is written half, a marker appears, and the writer
# stalls, so the test can kill the process mid-write.
SITECUSTOMIZE = """
import io, os, time
import torch
_save, _calls = torch.save, [0]
def _slow_save(obj, f, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] < int(os.environ["SLOW_SAVE_FROM"]) or not isinstance(f, (str, os.PathLike)):
        return _save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    _save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    with open(f, "wb") as out:
        out.write(data[: len(data) // 2])
        out.flush()
        open(os.environ["SLOW_SAVE_MARKER"], "w").close()
        time.sleep(120)
        out.write(data[len(data) // 2:])
torch.save = _slow_save
"""
TWO_EPOCHS = BASE + MLET + ["--nepochs=2", "--optimizer=adagrad"]


def final_loss(stdout):
    return re.findall(r"Finished training it 16/16 of epoch 1, .* loss (\d+\.\d+)", stdout)[-1]


@pytest.fixture(scope="module")
def uninterrupted(patched_dlrm, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    proc = run_dlrm(patched_dlrm, TWO_EPOCHS + [f"--save-model={cwd}/m.pt"], cwd)
    return cwd, final_loss(proc.stdout)


def kill_while_saving(patched_dlrm, tmp_path, slow_from):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "saving"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
               SLOW_SAVE_FROM=str(slow_from), SLOW_SAVE_MARKER=str(marker))
    cmd = [sys.executable, os.path.join(patched_dlrm, "dlrm_s_pytorch.py")] + TWO_EPOCHS + \
        [f"--save-model={tmp_path}/m.pt"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "DLRM never reached the slow save"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("slow_from,killed", [(3, "the MLET file"), (4, "the folded file")])
def test_sigkill_while_saving_loses_nothing_and_training_resumes(
    patched_dlrm, uninterrupted, tmp_path, slow_from, killed
):
    """Saves happen at the end of each epoch: torch.save calls 1-2 after epoch 0, 3-4 after epoch 1."""
    kill_while_saving(patched_dlrm, tmp_path, slow_from)
    # SIGKILL skips all cleanup, so the killed write's own temporary folder
    # (atomic_save's hidden ".NAME.XXXX.tmp", holding the half-written file) stays; it must be
    # the only temporary thing there: every finished write removed its own.
    being_written = "m.pt.mlet" if slow_from == 3 else "m.pt"
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert len(left) == 1 and re.fullmatch(rf"\.{re.escape(being_written)}\.\S+\.tmp", left[0].name), left
    assert [p.name for p in left[0].iterdir()] == [being_written]
    reference_dir, reference_loss = uninterrupted
    mlet = torch.load(tmp_path / "m.pt.mlet", weights_only=True)  # complete: loads, whole
    folded = torch.load(tmp_path / "m.pt", weights_only=True)
    assert folded["epoch"] == 0, "the folded file is the previous, complete one"
    if slow_from == 3:
        assert mlet["epoch"] == 0  # killed before the new MLET file was in place: the old one stays
        # ... and training resumes from it to the uninterrupted result.
        proc = run_dlrm(patched_dlrm, TWO_EPOCHS + [f"--load-model={tmp_path}/m.pt.mlet"], tmp_path)
        assert final_loss(proc.stdout) == reference_loss
    else:
        assert mlet["epoch"] == 1  # the new MLET file was complete before the folded write began
        reference = torch.load(reference_dir / "m.pt.mlet", weights_only=True)["state_dict"]
        for key, value in reference.items():
            assert torch.allclose(mlet["state_dict"][key], value, atol=1e-6), key
    # Nothing temporary appeared since, hidden or not, file or folder.
    assert {p.name for p in tmp_path.iterdir()} >= {"m.pt", "m.pt.mlet"}
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".") or ".tmp" in p.name] == left
    # The next save of the same file removes the killed write's half-written copy.
    atomic_save({"x": 1}, tmp_path / being_written)
    assert not any(p.name.startswith(".") or ".tmp" in p.name for p in tmp_path.iterdir())


# --------------------------------------------------------------------------- full and read-only disks


@contextlib.contextmanager
def tmpfs(path, size="256k", read_only=False):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): " + mounted.stderr.decode().strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def remount_read_only(path):
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        atomic_save({"state_dict": {"w": torch.ones(10)}, "iter": 1}, disk / "m.pt")
        before = (disk / "m.pt").read_bytes()
        with pytest.raises(MLETError, match=r"cannot write .*m\.pt: .*previous file there is unchanged") as info:
            atomic_save({"state_dict": {"w": torch.ones(200_000)}, "iter": 2}, disk / "m.pt")
        assert "\n" not in str(info.value)
        assert (disk / "m.pt").read_bytes() == before
        assert os.listdir(disk) == ["m.pt"]


def test_a_read_only_disk_keeps_the_previous_checkpoint(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        atomic_save({"iter": 1}, disk / "m.pt")
        remount_read_only(disk)
        with pytest.raises(MLETError, match=r"cannot write .*Read-only file system"):
            atomic_save({"iter": 2}, disk / "m.pt")
        assert load_checkpoint(disk / "m.pt") == {"iter": 1}


def test_cli_commands_on_a_full_disk_leave_no_output(tmp_path, capsys):
    model = TinyDLRM(rows=(20_000, 7), d=4, k=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    atomic_save(dlrm_ckpt(model, optimizer), tmp_path / "m.pt.mlet")
    with tmpfs(tmp_path / "disk", size="64k") as disk:
        assert main(["fold", str(tmp_path / "m.pt.mlet"), str(disk / "m.pt")]) == 2
        assert main(["synth", str(disk / "data"), "--rows", "20000", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 2 and "No space left on device" in err
        assert not (disk / "m.pt").exists() and not (disk / "data" / "train.txt").exists()


# --------------------------------------------------------------------------- untrusted files


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"emb_l.0.table.weight": torch.ones(2, 2)}, "x": RunsCode(marker)}, path)
    return path, marker


@pytest.mark.parametrize("argv", [["fold", "{p}", "{o}"], ["verify", "{p}"], ["inspect", "{p}"]])
def test_every_command_refuses_a_pickle_that_runs_code(evil, tmp_path, capsys, argv):
    path, marker = evil
    assert main([a.format(p=path, o=tmp_path / "out.pt") for a in argv]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "GLOBAL posix.system" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("launcher", [False, True], ids=["patched", "launcher"])
def test_dlrm_resume_refuses_a_pickle_that_runs_code(patched_dlrm, stock_dlrm, evil, tmp_path, launcher):
    path, marker = evil
    proc = run_dlrm(stock_dlrm if launcher else patched_dlrm, BASE + MLET + [f"--load-model={path}"],
                    tmp_path, launcher=launcher, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR: --load-model={path}: refused") and "could run code" in last
    assert not marker.exists()


# --------------------------------------------------------------------------- other architectures


@pytest.mark.parametrize(
    "change,named",
    [
        (["--mlet-hidden-dim=128"], "emb_l.0.table.weight is 1000x64 in the file, 1000x128 in this model"),
        (["--arch-sparse-feature-size=8", "--arch-mlp-bot=13-32-8"], "emb_l.0.proj.weight is 16x64 in the file, 8x64"),
        (["--arch-embedding-size=1000-2000-500"], "emb_l.3.table.weight unexpected"),
    ],
    ids=["k", "d", "tables"],
)
def test_a_checkpoint_of_another_architecture_names_the_shapes(patched_module, tmp_path, monkeypatch, change, named):
    from dlrm_mlet import dlrm_glue

    monkeypatch.chdir(tmp_path)
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + MLET + [f"--save-model={tmp_path}/m.pt"]
    patched_module.run()
    args = [a for a in BASE + MLET if a.split("=")[0] not in {c.split("=")[0] for c in change}] + change
    sys.argv = ["dlrm_s_pytorch.py"] + args + [f"--load-model={tmp_path}/m.pt.mlet"]
    with pytest.raises(SystemExit) as stop:
        patched_module.run()
    assert "checkpoint does not match this model's architecture" in stop.value.code
    assert named in stop.value.code and "\n" not in stop.value.code
    dlrm_glue.reset()


def test_a_folded_checkpoint_of_another_architecture_names_the_table_and_both_shapes(patched_module, tmp_path,
                                                                                       monkeypatch):
    from dlrm_mlet import dlrm_glue

    monkeypatch.chdir(tmp_path)
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + MLET + [f"--save-model={tmp_path}/m.pt"]
    patched_module.run()
    args = [a for a in BASE if not a.startswith("--arch-embedding-size")] + ["--arch-embedding-size=1000-2000-700"]
    sys.argv = ["dlrm_s_pytorch.py"] + args + [f"--load-model={tmp_path}/m.pt", "--inference-only"]
    with pytest.raises(SystemExit) as stop:
        patched_module.run()
    assert "emb_l.2.weight is 500x16 in the file, 700x16 in this model" in stop.value.code
    assert "\n" not in stop.value.code
    dlrm_glue.reset()


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_an_unwritable_save_model_is_refused_before_the_first_batch(patched_dlrm, tmp_path, where):
    target = tmp_path / "no" / "m.pt" if where == "missing" else tmp_path
    proc = run_dlrm(patched_dlrm, BASE + MLET + [f"--save-model={target}"], tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: --save-model:")
    assert {"missing": "does not exist", "folder": "is a folder"}[where] in last
    assert "Finished training" not in proc.stdout and "ms/it" not in proc.stdout  # stopped before any batch


def test_check_writable_removes_what_killed_saves_left_and_names_an_unwritable_folder(tmp_path, monkeypatch):
    import socket

    from dlrm_mlet.files import check_writable

    stale = [tmp_path / f".m.pt.{socket.gethostname()}-999999.abc.tmp", tmp_path / f".m.pt.mlet.{socket.gethostname()}-999999.x.tmp"]
    for folder in stale:
        folder.mkdir()
    check_writable(tmp_path / "m.pt", "m.pt.mlet")
    assert not any(folder.exists() for folder in stale) and list(tmp_path.iterdir()) == []
    monkeypatch.setattr("tempfile.mkdtemp", lambda **kw: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    with pytest.raises(MLETError, match=r"cannot write .*m.pt: Read-only file system"):
        check_writable(tmp_path / "m.pt")


def test_ctrl_c_stops_patched_dlrm_with_one_line_and_complete_files(patched_dlrm, tmp_path):
    cmd = [sys.executable, os.path.join(patched_dlrm, "dlrm_s_pytorch.py"), *BASE, *MLET, "--nepochs=100000",
           f"--save-model={tmp_path}/m.pt"]
    # A shell without job control starts background jobs with SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: give DLRM the Ctrl-C a terminal gives, however the tests were started.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "m.pt.mlet").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ERROR: interrupted: every checkpoint on disk is complete")
    assert last.endswith(f"; to resume from the last save, add --load-model={tmp_path / 'm.pt'}.mlet")
    assert load_checkpoint(tmp_path / "m.pt")["state_dict"] and load_checkpoint(tmp_path / "m.pt.mlet")["state_dict"]


def test_fold_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    model = TinyDLRM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer)
    ckpt = dlrm_ckpt(model, optimizer)
    ckpt["state_dict"]["emb_l.1.table.weight"][3, 0] = float("nan")
    atomic_save(ckpt, tmp_path / "m.pt.mlet")
    assert main(["fold", str(tmp_path / "m.pt.mlet"), str(tmp_path / "m.pt")]) == 2
    assert "emb_l.1: folded row 3 is not finite" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_verify_against_an_unfolded_file_names_that_file(tmp_path, capsys):
    model = TinyDLRM()
    atomic_save(dlrm_ckpt(model, torch.optim.SGD(model.parameters(), lr=0.1)), tmp_path / "m.pt.mlet")
    atomic_save(dlrm_ckpt(model, torch.optim.SGD(model.parameters(), lr=0.1)), tmp_path / "other.pt")
    assert main(["verify", str(tmp_path / "m.pt.mlet"), "--against", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dlrm-mlet: error: {tmp_path / 'other.pt'}: no 'emb_l.0.weight' for table emb_l.0")


def test_a_truncated_data_file_names_its_last_line(tmp_path):
    from dlrm_mlet.data.kaggle import preprocess_kaggle
    from test_data import GOOD

    raw = tmp_path / "train.txt"
    raw.write_text(GOOD + "\n" + GOOD + "\n" + GOOD[: len(GOOD) // 2])
    with pytest.raises(MLETError, match=r"train\.txt:3: expected 40 tab-separated fields, found \d+"):
        preprocess_kaggle(str(raw))
    assert os.listdir(tmp_path) == ["train.txt"]


# --------------------------------------------------------------------------- fuzzing

HEX = st.text("0123456789abcdefABCDEF", min_size=1, max_size=8)
BAD_HEX = st.one_of(st.text("0123456789abcdefg -_x", min_size=1, max_size=10), st.text(min_size=9, max_size=12))
DENSE = st.one_of(st.just(""), st.integers(-(2**31), 2**31 - 1).map(str))
BAD_DENSE = st.one_of(st.floats(allow_nan=False).map(str), st.text("0123456789.e+-a", min_size=1, max_size=12))


@st.composite
def criteo_lines(draw):
    """A raw line and the (label, dense, keys) numpy-1 DLRM reads from it, or None if malformed."""
    label = draw(st.sampled_from(["0", "1"]))
    dense = [draw(DENSE) for _ in range(13)]
    cats = [draw(st.one_of(st.just(""), HEX)) for _ in range(26)]
    fields = [label] + dense + cats
    broken = draw(st.sampled_from([None, "count", "label", "dense", "cat"]))
    if broken == "count":
        fields = fields[: draw(st.integers(0, 39))] if draw(st.booleans()) else fields + ["0"]
    elif broken == "label":
        fields[0] = draw(st.text(max_size=3).filter(lambda t: t not in ("0", "1") and "\t" not in t))
    elif broken == "dense":
        fields[1 + draw(st.integers(0, 12))] = draw(BAD_DENSE.filter(lambda t: not re.fullmatch(r"-?\d{1,10}", t) and "\t" not in t))
    elif broken == "cat":
        fields[14 + draw(st.integers(0, 25))] = draw(BAD_HEX.filter(lambda t: not re.fullmatch(r"[0-9a-fA-F]{1,8}", t) and "\t" not in t and "\n" not in t and "\r" not in t))
    line = "\t".join(fields)
    if broken:
        return line, None
    keys = [(int(c, 16) if c else 0) for c in cats]
    keys = [k - 2**32 if k > 2**31 - 1 else k for k in keys]
    return line, (int(label), [int(v) if v else 0 for v in dense], keys)


@settings(max_examples=300, deadline=None)
@given(criteo_lines())
def test_fuzz_criteo_rows_parse_exactly_or_fail_with_a_reason(case):
    line, expected = case
    if expected is None:
        with pytest.raises(ValueError) as info:
            parse_criteo_line(line)
        assert str(info.value)
    else:
        assert parse_criteo_line(line) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["0", "1", "2", ""]),
                          st.sampled_from(["14102100", "14102123", "1410210", "14102124", "x"]),
                          st.text("abc,", max_size=4)), min_size=1, max_size=6))
def test_fuzz_avazu_rows_are_kept_exactly_or_refused_by_line(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("avazu")
    lines = []
    for click, hour, site in rows:
        fields = ["1", click, hour] + ["c"] * 21
        fields[5] = site
        lines.append(",".join(fields))
    (folder / "train.csv").write_text(",".join(AVAZU_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    bad = [n for n, (click, hour, site) in enumerate(rows, 2)
           if click not in ("0", "1") or not re.fullmatch(r"\d{6}(?:[01]\d|2[0-3])", hour) or "," in site]
    if bad:
        with pytest.raises(MLETError, match=rf"train\.csv:{bad[0]}: "):
            preprocess_avazu(str(folder / "train.csv"), str(folder / "cache"), quiet=True)
        assert not (folder / "cache").exists()
    else:
        cache = preprocess_avazu(str(folder / "train.csv"), str(folder / "cache"), quiet=True)
        assert list(np.load(os.path.join(cache, "y.npy"))) == [int(c) for c, _, _ in rows]
        assert list(np.load(os.path.join(cache, "X_int.npy"))[:, 0]) == [int(h[-2:]) for _, h, _ in rows]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), d=st.integers(1, 24), k=st.integers(1, 96), mode=st.sampled_from(["sum", "mean"]),
       bags=st.integers(1, 40), max_bag=st.integers(0, 12), weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz_fold_is_exact(n, d, k, mode, bags, max_bag, weighted, seed):
    torch.manual_seed(seed)
    table = MLETEmbeddingBag(n, d, k, mode=mode, _init=False)
    with torch.no_grad():
        table.table.weight.normal_()
        table.proj.weight.normal_()
    indices, offsets, weights = random_bags(n, bags, max_bag, torch.Generator().manual_seed(seed))
    psw = weights if weighted and mode == "sum" else None
    with torch.no_grad():
        expected = table(indices, offsets, per_sample_weights=psw)
        got = table.fold()(indices, offsets, per_sample_weights=psw)
        # float32 rounding is relative to the size of the terms summed, not of their sum
        # (which can cancel to near zero): sum |A[i]| |B|^T over each bag.
        magnitude = torch.nn.functional.embedding_bag(
            indices, table.table.weight.abs(), offsets, mode=mode,
            per_sample_weights=None if psw is None else psw.abs()) @ table.proj.weight.abs().t()
    scale = max(float(magnitude.max()), 1e-30)
    assert float((expected - got).abs().max()) <= 1e-5 * scale


def test_a_disk_too_full_for_the_checkpoints_is_refused_before_the_first_batch(patched_module, tmp_path, monkeypatch,
                                                                              capsys):
    """--save-model (and --mlet-checkpoint) know the sizes they will write once the tables are built: a disk
    without room for them stops the run in one line before any training, naming both sizes."""
    import sys

    from dlrm_mlet.dlrm import space
    from test_dlrm_integration import BASE

    monkeypatch.chdir(tmp_path)
    training, folded = {}, {}
    real = space.file_sizes

    def sizes(tables):
        training["bytes"], folded["bytes"] = real(tables)
        return training["bytes"], folded["bytes"]

    monkeypatch.setattr(space, "file_sizes", sizes)
    monkeypatch.setattr(space, "free_bytes", lambda path: 10 * 2**20)  # 10 MiB left
    sys.argv = ["dlrm_s_pytorch.py"] + BASE + ["--mlet-hidden-dim=64", f"--save-model={tmp_path / 'm.pt'}",
                                               f"--mlet-checkpoint={tmp_path / 'run.pt'}"]
    with pytest.raises(SystemExit) as stop:
        patched_module.run()
    message = str(stop.value.code)
    assert message.startswith("ERROR: --save-model (") and "--mlet-checkpoint (" in message and "\n" not in message
    assert "has 10 MiB: free some space or write elsewhere" in message
    assert "Finished training" not in capsys.readouterr().out and not list(tmp_path.glob("*.pt*"))
    # the sizes are the files' own: the training file holds 64-wide tables, the folded one 16-wide
    assert training["bytes"] > 3.9 * folded["bytes"]
    monkeypatch.setattr(space, "free_bytes", lambda path: 10 * 2**30)
    patched_module.run()  # with room, the same run trains and saves
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.pt.mlet").exists()


@pytest.mark.parametrize("optimizer,state", [("sgd", 0), ("adagrad", 100 * 8 * 4), ("rwsadagrad", 100 * 4)])
def test_the_space_check_counts_each_optimizers_state_for_dlrms_own_tables(optimizer, state):
    """A plain table's checkpoint holds its weights and the optimizer's state for them: Adagrad one float32 an
    element, DLRM's row-wise Adagrad one a row, SGD none (the rule's own count, as for the MLET tables)."""
    from torch import nn

    from dlrm_mlet.dlrm import space
    from dlrm_mlet.dlrm.session import Config, reset, use_config

    use_config(Config(optimizer=optimizer))
    try:
        training, folded = space.file_sizes([nn.EmbeddingBag(100, 8, mode="sum")])
    finally:
        reset()
    assert training == folded == 100 * 8 * 4 + state
