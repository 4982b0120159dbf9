import gc
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlrm_mlet.dlrm.patching import git_blob_id, parse_patch, patch_checkout, patch_path
from dlrm_mlet.dlrm.script import default_dlrm_dir, import_dlrm_script

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same numpy and torch RNG state."""
    np.random.seed(0)
    torch.manual_seed(0)


def dlrm_checkout_dir():
    return default_dlrm_dir()


@pytest.fixture(scope="session")
def dlrm_dir():
    """The user's DLRM checkout at the pinned commit; the DLRM tests skip without it."""
    path = dlrm_checkout_dir()
    script = os.path.join(path, "dlrm_s_pytorch.py")
    if not os.path.isfile(script):
        pytest.skip(
            f"no DLRM checkout: set DLRM_DIR or put facebookresearch/dlrm at commit 090956ee in "
            f"{path} (looked for $DLRM_DIR, then ${{XDG_CACHE_HOME:-~/.cache}}/dlrm-mlet/dlrm)"
        )
    with open(patch_path()) as handle:
        expected = {f.path: f.old_blob for f in parse_patch(handle.read())}
    for rel, blob in expected.items():
        with open(os.path.join(path, rel), "rb") as handle:
            if git_blob_id(handle.read()) != blob:
                pytest.fail(f"{path}/{rel} is not the pinned DLRM commit 090956ee")
    return path


@pytest.fixture(scope="session")
def stock_dlrm(dlrm_dir, tmp_path_factory):
    """An unpatched copy, so tests never touch the user's checkout."""
    dest = tmp_path_factory.mktemp("stock") / "dlrm"
    shutil.copytree(dlrm_dir, dest)
    return str(dest)


@pytest.fixture(scope="session")
def patched_dlrm(dlrm_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("patched") / "dlrm"
    shutil.copytree(dlrm_dir, dest)
    patch_checkout(str(dest))
    return str(dest)


@pytest.fixture(scope="session")
def patched_module(patched_dlrm):
    """The patched script imported in this process, for runs checked from the inside."""
    from dlrm_mlet import dlrm_glue

    module = import_script(patched_dlrm, "patched_dlrm_s_pytorch")
    # DLRM never closes its SummaryWriter: its thread goes on writing to the relative
    # "run_kaggle_pt" after a test has left the folder it ran in. Anchored where it is made.
    writer = module.SummaryWriter
    module.SummaryWriter = lambda log_dir=None, *args, **kwargs: writer(
        os.path.abspath(log_dir) if log_dir else None, *args, **kwargs)
    yield module
    module.SummaryWriter = writer
    dlrm_glue.reset()


@pytest.fixture(scope="session", params=["synthetic", "real"])
def criteo_sample(request, tmp_path_factory):
    """A 10,000-row Criteo-Kaggle ``train.txt``: the generator's rows with some 32-bit hashes, as real
    Criteo's are (stock DLRM wraps them to int32 on numpy 1 and fails on numpy 2), so the data path
    is checked on every machine; and the real sample, where it is."""
    if request.param == "real":
        path = os.path.join(SHARED_DATA, "criteo", "train_examples.txt")
        if not os.path.isfile(path):
            pytest.skip(f"real Criteo sample not found at {path}")
        return path
    from dlrm_mlet.tools.synth import write_synthetic

    folder = tmp_path_factory.mktemp("criteo-synthetic")
    write_synthetic(folder, 10_000, progress=False)
    with_32bit_hashes(folder / "train.txt")
    return str(folder / "train.txt")


def with_32bit_hashes(path, first=0):
    """Rewrite a Criteo text file with every seventh row's first hash (from row ``first``) at 2^31 or
    above: the generator's values stay below it, real Criteo's do not."""
    lines = path.read_text().splitlines()
    for k in range(first, len(lines), 7):
        fields = lines[k].split("\t")
        fields[14] = f"{0x80000000 + k * 977:08x}"
        lines[k] = "\t".join(fields)
    path.write_text("".join(line + "\n" for line in lines))


def terabyte_layouts(root, rows, bins=False):
    """24 synthetic days of ``rows / 24`` rows preprocessed as DLRM's processed .npz (``root/raw``) and
    as its memory-map day files (``root/mm``; ``bins``: its .bin files too); returns both layouts."""
    from dlrm_mlet.data.criteo import preprocess_criteo
    from dlrm_mlet.tools.synth import write_synthetic_days

    write_synthetic_days(root / "raw", rows, 24, progress=False)
    plain = preprocess_criteo("terabyte", str(root / "raw" / "day"), str(root / "raw" / "terabyte_processed.npz"),
                              max_ind_range=1000, quiet=True)
    (root / "mm").mkdir()
    for i in range(24):
        (root / "mm" / f"day_{i}").write_bytes((root / "raw" / f"day_{i}").read_bytes())
    mapped = preprocess_criteo("terabyte", str(root / "mm" / "day"), str(root / "mm" / "terabyte_processed.npz"),
                               max_ind_range=1000, memory_map=True, bins=bins, quiet=True)
    return plain, mapped


def run_dlrm(dlrm, args, cwd, launcher=False, check=True, env=None):
    """Run DLRM (patched, stock, or stock through ``dlrm-mlet run``); returns the process."""
    script = os.path.join(dlrm, "dlrm_s_pytorch.py")
    cmd = [sys.executable, "-m", "dlrm_mlet", "run", script] if launcher else [sys.executable, script]
    full_env = dict(os.environ, PYTHONHASHSEED="0", **(env or {}))
    proc = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"DLRM failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def import_script(dlrm, name):
    """Import a DLRM checkout's dlrm_s_pytorch.py in this process under ``name``."""
    return import_dlrm_script(dlrm, name)


def leave_group_and_exit(script):
    """End a torchrun harness of DLRM after its outputs are written: exit code 0, no teardown.

    DLRM keeps the model (its DDP MLPs hold the gloo group) in a module global, so
    its group's C++ side dies during interpreter finalization, where it aborted in 1
    of 145 loaded runs here and once in CI ("terminate called without an active
    exception", no Python frame), even after destroy_process_group(). Stock DLRM
    exits the same way; that teardown is not what the harnesses test.
    """
    del script.dlrm
    gc.collect()
    leave_gloo()


def leave_gloo():
    """End a gloo worker once its outputs are written: barrier, destroy the group, exit 0 with no teardown.

    The interpreter's finalization can abort a process whose gloo worker threads still hold
    work ("terminate called without an active exception"), after destroy_process_group()
    too: seen in about 1 run in 100 of the TorchRec workers on loaded machines. What the
    workers test is written before this; the teardown is torch's, not ours.
    """
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
