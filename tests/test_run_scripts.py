"""The README's commands on a machine without DLRM: one line saying what to do.

The fresh-machine run itself (new venv, clean clone, quickstart alone) is
``.ci/fresh_quickstart.sh``, which CI runs before the tests.
"""

import os
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def quickstart(tmp_path, dlrm_dir):
    # https refused at once, as on a machine without internet, but without waiting for a timeout
    env = dict(os.environ, DLRM_DIR=str(dlrm_dir), WORK=str(tmp_path / "work"), GIT_ALLOW_PROTOCOL="file")
    return subprocess.run(["bash", os.path.join(ROOT, "run_scripts", "quickstart.sh")], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["missing", "not_dlrm"])
def test_quickstart_without_dlrm_says_what_to_do_in_one_line(tmp_path, kind):
    dlrm_dir = tmp_path / "dlrm"
    if kind == "not_dlrm":
        dlrm_dir.mkdir()
        (dlrm_dir / "notes.txt").write_text("not DLRM\n")
    proc = quickstart(tmp_path, dlrm_dir)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ") and "set DLRM_DIR to a checkout of facebookresearch/dlrm" in proc.stderr
    assert not (tmp_path / "work").exists()  # stopped before any work
    if kind == "not_dlrm":
        assert (dlrm_dir / "notes.txt").read_text() == "not DLRM\n"  # the user's folder is left alone
    else:
        assert not dlrm_dir.exists()  # no half-cloned folder left behind
