"""The patch machinery on a small git repo of our own (no DLRM needed)."""

import subprocess

import pytest

from dlrm_mlet import MLETError
from dlrm_mlet.dlrm import patching
from dlrm_mlet.dlrm.patching import apply_hunks, git_blob_id, parse_patch, patch_checkout

ORIGINAL = "".join(f"line {i}\n" for i in range(1, 41))


def make_patch(tmp_path, edit):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dlrm_s_pytorch.py").write_text(ORIGINAL)
    (repo / "other.py").write_text("a\nb\nc\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "."], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "base"], cwd=repo, check=True)
    edit(repo)
    diff = subprocess.run(["git", "diff", "--full-index"], cwd=repo, capture_output=True, text=True, check=True)
    return diff.stdout


def edit_both(repo):
    text = ORIGINAL.replace("line 3\n", "line 3\nadded after 3\n").replace("line 30\n", "")
    (repo / "dlrm_s_pytorch.py").write_text(text.replace("line 38\n", "changed 38\n"))
    (repo / "other.py").write_text("a\nB\nc\n")


def test_blob_id_is_gits(tmp_path):
    (tmp_path / "f").write_bytes(b"hello\n")
    git = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True)
    assert git_blob_id(b"hello\n") == git.stdout.strip()


def test_apply_and_reverse_several_hunks_in_several_files(tmp_path, monkeypatch):
    text = make_patch(tmp_path, edit_both)
    files = parse_patch(text)
    assert [f.path for f in files] == ["dlrm_s_pytorch.py", "other.py"]
    assert len(files[0].hunks) == 3
    lines = ORIGINAL.splitlines(keepends=True)
    patched = "".join(apply_hunks(lines, files[0].hunks))
    assert git_blob_id(patched.encode()) == files[0].new_blob
    back = "".join(apply_hunks(patched.splitlines(keepends=True), files[0].hunks, reverse=True))
    assert back == ORIGINAL

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "dlrm_s_pytorch.py").write_text(ORIGINAL)
    (checkout / "other.py").write_text("a\nb\nc\n")
    patch_file = tmp_path / "p.patch"
    patch_file.write_text(text)
    monkeypatch.setattr(patching, "patch_path", lambda: str(patch_file))
    assert "applied to" in patch_checkout(str(checkout))
    assert (checkout / "other.py").read_text() == "a\nB\nc\n"
    assert "already applied" in patch_checkout(str(checkout))
    assert "removed from" in patch_checkout(str(checkout), reverse=True)
    assert (checkout / "dlrm_s_pytorch.py").read_text() == ORIGINAL
    assert "not applied" in patch_checkout(str(checkout), reverse=True)


def test_half_patched_or_edited_checkouts_are_refused_untouched(tmp_path, monkeypatch):
    patch_file = tmp_path / "p.patch"
    patch_file.write_text(make_patch(tmp_path, edit_both))
    monkeypatch.setattr(patching, "patch_path", lambda: str(patch_file))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "dlrm_s_pytorch.py").write_text(ORIGINAL)
    (checkout / "other.py").write_text("a\nB\nc\n")  # already patched, the other is not
    with pytest.raises(MLETError, match="some files are patched and others are not"):
        patch_checkout(str(checkout))
    (checkout / "other.py").write_text("a\nb\nc\nlocal\n")
    with pytest.raises(MLETError, match="other.py differs from DLRM commit 090956ee.*nothing was changed"):
        patch_checkout(str(checkout))
    assert (checkout / "dlrm_s_pytorch.py").read_text() == ORIGINAL
    (checkout / "other.py").write_text("import dlrm_mlet.dlrm_glue as mlet  # an older dlrm-mlet's patch\n")
    with pytest.raises(MLETError, match=r"other.py holds another dlrm-mlet version's patch; put DLRM's file "
                                        r"back \(git checkout other.py\) and patch again"):
        patch_checkout(str(checkout))
    assert not patching.is_patched_checkout(str(checkout))
    (checkout / "other.py").unlink()
    with pytest.raises(MLETError, match="other.py is missing"):
        patch_checkout(str(checkout))


def test_not_a_dlrm_checkout(tmp_path):
    with pytest.raises(MLETError, match="not a DLRM checkout"):
        patch_checkout(str(tmp_path))


def test_the_shipped_patch_is_small_and_only_calls_the_glue():
    with open(patching.patch_path()) as handle:
        files = {f.path: f for f in parse_patch(handle.read())}
    assert set(files) == {"dlrm_s_pytorch.py", "torchrec_dlrm/dlrm_main.py"}

    def lines(f, tag):
        return [text for _, _, body in f.hunks for t, text in body if t == tag]

    main = files["dlrm_s_pytorch.py"]
    assert len(lines(main, "+")) <= 26 and len(lines(main, "-")) <= 6
    code = [line for line in lines(main, "+") if line.strip() and not line.strip().startswith("#")]
    assert all("mlet" in line or line.strip() in ("try:", "except ImportError:") for line in code)
    trainer = files["torchrec_dlrm/dlrm_main.py"]
    assert len(lines(trainer, "+")) <= 15 and len(lines(trainer, "-")) <= 5
