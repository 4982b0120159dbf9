import json
import os
import subprocess

import torch

from dlrm_mlet.checkpoint_io import atomic_save, load_checkpoint
from dlrm_mlet.cli import main
from test_checkpoint import dlrm_ckpt, train
from test_folding import TinyDLRM


def saved_mlet(tmp_path, opt=torch.optim.SGD):
    model = TinyDLRM()
    optimizer = opt(model.parameters(), lr=0.1)
    train(model, optimizer)
    path = tmp_path / "m.pt.mlet"
    atomic_save(dlrm_ckpt(model, optimizer), path)
    return model, path


def test_fold_command_writes_a_stock_checkpoint(tmp_path, capsys):
    model, src = saved_mlet(tmp_path)
    dst = tmp_path / "m.pt"
    assert main(["fold", str(src), str(dst)]) == 0
    assert "folded 3 MLET tables" in capsys.readouterr().out
    folded = torch.load(dst, weights_only=True)
    assert folded["state_dict"]["emb_l.2.weight"].shape == (300, 4)
    assert type(folded["test_acc"]) is float and "mlet" not in folded


def test_fold_command_never_overwrites_without_force(tmp_path, capsys):
    _, src = saved_mlet(tmp_path)
    dst = tmp_path / "precious.pt"
    dst.write_bytes(b"old")
    assert main(["fold", str(src), str(dst)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert dst.read_bytes() == b"old"
    assert main(["fold", str(src), str(src)]) == 2  # onto itself, even with --force
    assert main(["fold", "--force", str(src), str(dst)]) == 0


def test_fold_command_on_a_folded_file(tmp_path, capsys):
    _, src = saved_mlet(tmp_path)
    dst = tmp_path / "m.pt"
    main(["fold", str(src), str(dst)])
    capsys.readouterr()
    assert main(["fold", str(dst), str(tmp_path / "again.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already folded" in err
    assert not (tmp_path / "again.pt").exists()


def test_verify_passes_and_reports_each_table(tmp_path, capsys):
    _, src = saved_mlet(tmp_path)
    assert main(["verify", str(src)]) == 0
    out = capsys.readouterr().out
    assert "emb_l.0" in out and "emb_l.2" in out and "3/3 tables within tolerance" in out
    assert main(["verify", "--json", str(src)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and len(report["tables"]) == 3
    assert all(t["max_abs_diff"] <= 1e-5 * t["output_scale"] for t in report["tables"])


def test_verify_against_a_wrong_folded_file_fails(tmp_path, capsys):
    _, src = saved_mlet(tmp_path)
    dst = tmp_path / "m.pt"
    main(["fold", str(src), str(dst)])
    assert main(["verify", str(src), "--against", str(dst)]) == 0
    folded = load_checkpoint(dst)
    folded["state_dict"]["emb_l.1.weight"][3] += 0.01
    atomic_save(folded, dst)
    capsys.readouterr()
    assert main(["verify", str(src), "--against", str(dst)]) == 1
    out = capsys.readouterr().out
    assert "emb_l.1" in out and "FAIL" in out and "2/3 tables within tolerance" in out


def test_bad_files_give_one_line_errors(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    for argv in (["verify", str(junk)], ["fold", str(junk), str(tmp_path / "o.pt")],
                 ["verify", str(tmp_path / "missing.pt")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("dlrm-mlet: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o.pt").exists()


def test_console_script_is_installed():
    out = subprocess.run(["dlrm-mlet", "--help"], capture_output=True, text=True, check=True)
    assert "fold" in out.stdout and "verify" in out.stdout


def test_inspect_fold_and_verify_take_a_state_dict_saved_from_a_to_mlet_model(tmp_path, capsys):
    import torch

    from dlrm_mlet import fold_model, to_mlet

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.user = torch.nn.EmbeddingBag(50, 4, mode="sum")
            self.item = torch.nn.Embedding(30, 4)
            self.head = torch.nn.Linear(4, 1)

    torch.manual_seed(0)
    model = to_mlet(Model(), 32)
    path, out = tmp_path / "model_state.pt", tmp_path / "folded_state.pt"
    torch.save(model.state_dict(), path)
    assert main(["inspect", str(path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "MLET (unfolded), a state dict" in text and "user" in text and "item" in text
    assert "load it with model.load_state_dict" in text
    assert main(["verify", str(path)]) == 0
    assert "2/2 tables within tolerance" in capsys.readouterr().out
    assert main(["fold", str(path), str(out), "--quiet"]) == 0
    folded = fold_model(model)
    folded.load_state_dict(torch.load(out, weights_only=True), strict=True)  # the folded model's own keys
    assert main(["inspect", str(out), "--quiet"]) == 2  # a plain state dict of arbitrary modules: no tables to name
    assert "no embedding tables" in capsys.readouterr().err
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    assert main(["inspect", str(tmp_path / "list.pt"), "--quiet"]) == 2
    assert "neither a DLRM checkpoint" in capsys.readouterr().err


def test_fold_refuses_an_output_that_would_not_fit_before_folding(tmp_path, capsys, monkeypatch):
    from dlrm_mlet.dlrm import space

    _, src = saved_mlet(tmp_path)
    monkeypatch.setattr(space, "free_bytes", lambda path: 1024)
    assert main(["fold", str(src), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert "needs" in err and "its folder has 1 KiB" in err and err.count("\n") == 1
    assert not (tmp_path / "out.pt").exists()


def test_small_mistakes_get_the_line_a_user_expects(dlrm_dir, tmp_path, capsys):
    """A script named where a checkout is asked for (and the reverse) is understood; a missing CSV is named."""
    script = os.path.join(dlrm_dir, "dlrm_s_pytorch.py")
    assert main(["patch", script, "--check"]) == 0 and "patch applies cleanly" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"dlrm-mlet: error: {tmp_path / 'nope.csv'}: no such file"
    assert main(["report", str(tmp_path)]) == 2 and "is a folder, not a CSV" in capsys.readouterr().err
