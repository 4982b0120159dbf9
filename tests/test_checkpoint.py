import concurrent.futures
import os

import numpy as np
import pytest
import torch

from dlrm_mlet import MLETError, fold_model
from dlrm_mlet.checkpoint_io import atomic_save, load_checkpoint, load_dlrm_checkpoint, to_plain
from dlrm_mlet.dlrm.checkpoints import fold_checkpoint
from test_folding import TinyDLRM, batch


class RunsCode:
    """A pickle that runs a command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_atomic_save_round_trip_and_equals_torch_save_bytes(tmp_path):
    obj = {"state_dict": {"w": torch.arange(4.0)}, "iter": 3}
    ours, theirs = tmp_path / "a" / "m.pt", tmp_path / "b" / "m.pt"
    ours.parent.mkdir()
    theirs.parent.mkdir()
    atomic_save(obj, ours)
    torch.save(obj, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    assert os.listdir(ours.parent) == ["m.pt"]  # no temporary left behind


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "m.pt"
    atomic_save({"v": 1}, path)
    old = path.read_bytes()
    with pytest.raises(MLETError, match=r"cannot write .*m\.pt.*previous file there is unchanged"):
        atomic_save({"v": lambda: 0}, path)  # lambdas do not pickle
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.pt"]


def test_atomic_save_into_a_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(MLETError, match="cannot write .*nowhere/m.pt"):
        atomic_save({}, tmp_path / "nowhere" / "m.pt")


def test_load_refuses_code_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": RunsCode(marker)}, path)
    with pytest.raises(MLETError, match=r"evil\.pt: refused: .*GLOBAL.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", r"not a checkpoint \(not a file torch.save wrote: an empty file\)"),
    (b"0\t1\t5\t\t68fd1e64\n", r"not a checkpoint \(not a file torch.save wrote: it begins '0\\t1\\t5"),  # train.txt
    (b'{"rows": 3}\n', r"not a checkpoint \(not a file torch.save wrote: it begins '\{"),  # a JSON file
    (b"PK\x03\x04 truncated zip", r"not a readable checkpoint"),
], ids=["empty", "text", "json", "zip"])
def test_load_damaged_files_gives_one_line(tmp_path, content, message):
    """What was given is named as what it is; torch's advice about weights_only (which would not help) is not
    relayed."""
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(MLETError, match=r"bad\.pt: " + message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_load_truncated_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"state_dict": TinyDLRM().state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MLETError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_load_missing_and_non_dlrm_files(tmp_path):
    with pytest.raises(MLETError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(MLETError, match="neither a DLRM checkpoint"):
        load_dlrm_checkpoint(tmp_path / "list.pt")
    with pytest.raises(MLETError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_numpy_scalars_as_stock_dlrm_writes_them_load_and_become_plain(tmp_path):
    path = tmp_path / "stock.pt"
    torch.save({"state_dict": {}, "train_loss": np.float32(0.5), "test_acc": np.float64(0.75)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["test_acc"] == 0.75
    plain = to_plain(ckpt)
    assert type(plain["train_loss"]) is float and type(plain["test_acc"]) is float


def test_checkpoints_with_numpy_scalars_load_from_many_threads_at_once(tmp_path):
    """sweep --jobs loads from threads; torch's allow-list of globals is one process-wide list."""
    path = tmp_path / "stock.pt"
    torch.save({"state_dict": {"w": torch.zeros(20_000)}, "train_loss": np.float32(0.5)}, path)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        losses = list(pool.map(lambda _: load_checkpoint(path)["train_loss"], range(200)))
    assert losses == [0.5] * 200


def test_to_plain_keeps_tensors_and_state_dict_metadata():
    sd = TinyDLRM().state_dict()
    plain = to_plain({"state_dict": sd, "a": [np.int64(3)], "arr": np.ones(2)})
    assert plain["state_dict"]._metadata == sd._metadata
    assert plain["a"] == [3] and type(plain["a"][0]) is int
    assert torch.equal(plain["arr"], torch.ones(2, dtype=torch.float64))


def train(model, optimizer, steps=3):
    for step in range(steps):
        optimizer.zero_grad()
        model(*batch(model, seed=step)).sum().backward()
        optimizer.step()


def dlrm_ckpt(model, optimizer):
    return {
        "nepochs": 1, "nbatches": 3, "nbatches_test": 1, "state_dict": model.state_dict(),
        "test_acc": np.float64(0.5), "epoch": 0, "iter": 3, "train_loss": np.float32(0.25),
        "total_loss": 0, "opt_state_dict": optimizer.state_dict(),
        "mlet": {"param_groups": [[n for n, _ in model.named_parameters()]]},
    }


@pytest.mark.parametrize("opt", [torch.optim.SGD, torch.optim.Adagrad])
def test_fold_checkpoint_is_stock_and_resumes(opt, tmp_path):
    model = TinyDLRM()
    optimizer = opt(model.parameters(), lr=0.1)
    train(model, optimizer)
    folded = fold_checkpoint(dlrm_ckpt(model, optimizer))
    assert list(folded) == [
        "nepochs", "nbatches", "nbatches_test", "state_dict", "test_acc", "epoch", "iter",
        "train_loss", "total_loss", "opt_state_dict",
    ]
    path = tmp_path / "folded.pt"
    atomic_save(folded, path)
    loaded = torch.load(path, weights_only=True)  # stock DLRM's load on torch >= 2.6
    plain = TinyDLRM()
    fold_model(plain)
    plain.load_state_dict(loaded["state_dict"], strict=True)
    stock_opt = opt(plain.parameters(), lr=0.1)
    stock_opt.load_state_dict(loaded["opt_state_dict"])
    train(plain, stock_opt, steps=1)  # resuming works
    assert all(torch.isfinite(p).all() for p in plain.parameters())


def test_folded_adagrad_state_estimate():
    """Untouched rows keep a zero accumulator; touched rows get sum_A / ||proj||^2."""
    model = TinyDLRM(rows=(50,), d=4, k=16)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1)
    train(model, optimizer)
    ckpt = dlrm_ckpt(model, optimizer)
    state = fold_checkpoint(ckpt)["opt_state_dict"]["state"]
    table_sum = optimizer.state[model.emb_l[0].table.weight]["sum"]
    proj = model.emb_l[0].proj.weight.detach()
    expected = (table_sum.sum(1, keepdim=True) / proj.pow(2).sum()).expand(-1, 4)
    assert state[0]["sum"].shape == (50, 4)
    assert torch.allclose(state[0]["sum"], expected)
    assert (state[0]["sum"][table_sum.sum(1) == 0] == 0).all()
    # The bottom MLP's state (index 2 in the MLET list, 1 once folded) is carried over as is.
    assert torch.equal(state[1]["sum"], optimizer.state[model.bot_l[0].weight]["sum"])


def test_fold_checkpoint_refuses_plain_checkpoints_and_mismatched_optimizer_state():
    model = TinyDLRM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = dlrm_ckpt(model, optimizer)
    with pytest.raises(MLETError, match="already folded"):
        fold_checkpoint(fold_checkpoint(ckpt))
    ckpt["mlet"]["param_groups"][0].pop()
    with pytest.raises(MLETError, match="cannot renumber"):
        fold_checkpoint(ckpt)


def test_a_save_removes_what_killed_writes_of_the_same_file_left_and_nothing_else(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    host = socket.gethostname()
    folders = {
        "killed": f".m.pt.{host}-{dead.pid}.abc123.tmp",  # a killed write of m.pt: removed
        "alive": f".m.pt.{host}-{os.getpid()}.def456.tmp",  # a write under way: kept
        "other_host": f".m.pt.elsewhere-{dead.pid}.ghi789.tmp",  # a shared disk's other host: kept
        "other_file": f".n.pt.{host}-{dead.pid}.jkl012.tmp",  # another file's: kept
    }
    for name in folders.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "half").write_bytes(b"x" * 100)
    atomic_save({"state_dict": {}}, tmp_path / "m.pt")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"m.pt"} | {folders[k] for k in ("alive", "other_host", "other_file")}


def mapped_from(tensor, path):
    """Whether ``tensor``'s memory is a mapping of the file ``path`` (Linux's /proc/self/maps)."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *_, name = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in span.split("-"))
            if name.strip() == str(path) and start <= address < end:
                return True
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_dlrm_loads_a_checkpoint_memory_mapped_and_a_legacy_file_as_torch_does(tmp_path, zipfile):
    """Patched DLRM's CPU ``--load-model``: the same objects as DLRM's ``torch.load``; a zip file's tensors
    mapped from the file (no second copy of the tables while they go into the model), a legacy file read."""
    from dlrm_mlet.dlrm.saving import load_on_cpu

    table = torch.randn(5000, 4)
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {"emb_l.0.weight": table}, "iter": 3}, path, _use_new_zipfile_serialization=zipfile)
    loaded = load_on_cpu(str(path))
    assert loaded["iter"] == 3 and torch.equal(loaded["state_dict"]["emb_l.0.weight"], table)
    assert mapped_from(loaded["state_dict"]["emb_l.0.weight"], path) == zipfile
