"""The install a user gets: a wheel built from the project, installed (not editable) into a new venv.

The venv sees the packages of the Python running the tests (torch and
friends are not what is tested: a ``.pth`` file names this Python's
site-packages, whether it is a system Python or itself a venv, where
``system_site_packages`` would show the base interpreter's instead), but
dlrm_mlet must come from the wheel: its patch files, its command and a
patched DLRM run all work from there, away from the clone.
"""

import os
import shutil
import site
import subprocess
import sys
import venv

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = ["--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4", "--arch-mlp-top=8-1",
        "--arch-embedding-size=50-40-30", "--data-size=256", "--mini-batch-size=64", "--num-batches=4",
        "--loss-function=bce", "--round-targets=True", "--test-freq=4", "--print-freq=4", "--numpy-rand-seed=1",
        "--mlet-hidden-dim=16"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv dlrm-mlet command) with dlrm-mlet installed from a freshly built wheel."""
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), ROOT],
                           capture_output=True, text=True, env=env, cwd=root)
    assert build.returncode == 0, build.stderr[-2000:]
    wheels = list((root / "dist").glob("dlrm_mlet-*.whl"))
    assert len(wheels) == 1
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = str(root / "venv" / "bin" / "python")
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    with open(os.path.join(own, "tests-python.pth"), "w") as handle:  # after the venv's own: the wheel wins
        handle.write("\n".join(site.getsitepackages()) + "\n")
    # as the README says, with DLRM's run-time needs (here already there: the .pth above names them)
    done = subprocess.run([python, "-m", "pip", "install", "-q", f"{wheels[0]}[dlrm]"],
                          capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return python, str(root / "venv" / "bin" / "dlrm-mlet"), env


def test_the_wheel_installs_the_package_with_its_patch_and_command(installed, tmp_path):
    python, command, env = installed
    where = subprocess.run([python, "-c", "import dlrm_mlet, dlrm_mlet.dlrm.patching as p; print(dlrm_mlet.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip()
    assert os.path.dirname(os.path.dirname(python)) in where and ROOT not in where  # the wheel's copy, not the clone's
    version = subprocess.run([command, "--version"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("dlrm-mlet ")


def test_patch_a_patched_run_and_dlrm_mlet_run_from_the_wheel(installed, dlrm_dir, tmp_path):
    python, command, env = installed
    patched, stock = tmp_path / "patched", tmp_path / "stock"
    shutil.copytree(dlrm_dir, patched)
    shutil.copytree(dlrm_dir, stock)
    done = subprocess.run([command, "patch", str(patched)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for script, launcher in ((patched, []), (stock, [command, "run"])):
        out = tmp_path / f"{script.name}.pt"
        cmd = launcher + [str(script / "dlrm_s_pytorch.py")] if launcher else [python, str(script / "dlrm_s_pytorch.py")]
        run = subprocess.run(cmd + TINY + [f"--save-model={out}"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        assert out.exists() and (tmp_path / f"{script.name}.pt.mlet").exists()
